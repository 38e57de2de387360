package main

import (
	"encoding/json"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/internal/testenv"
)

// TestBastionAgentOnCluster: a bastion agent given one node of a Redis Cluster of three
// masters and --cluster follows the revocations that `sshca serve` on that Cluster writes: a
// revoked certificate is REVOKED in its KRL (ssh-keygen -Q), one not revoked is ok.
func TestBastionAgentOnCluster(t *testing.T) {
	c := testenv.StartRedisCluster(t, 3)
	idp := startIssuer(t, "sshca")
	cfg := serveConfig(t, c.Addrs[0], identity.IssuerConfig{IssuerURL: idp.URL(), Audiences: []string{"sshca"}})
	cfg.Redis = RedisConfig{Addrs: c.Addrs, ClusterMode: true, DialTimeout: time.Second, ReadTimeout: time.Second}
	base := startServe(t, cfg)
	mint := minter(t, idp)
	dir := t.TempDir()
	flags := agentFlags{redis: redisTarget{url: "redis://" + c.Addrs[2], cluster: true},
		krlPath: filepath.Join(dir, "sshca.krl"), userCA: filepath.Join(dir, "user_ca.pub"), health: "127.0.0.1:0",
		poll: 100 * time.Millisecond, caRefresh: time.Second}
	startAgent(t, flags)
	paths := map[string]string{}
	serials := map[string]string{}
	for _, name := range []string{"kept", "revoked"} {
		key := keygen(t, dir, name)
		code, out := call(t, http.MethodPost, base+"/v1/certs/user", mint(map[string]any{"sub": "u-" + name, "preferred_username": name}),
			map[string]any{"public_key": readFile(t, key+".pub")})
		var cert issuedCert
		if code != http.StatusOK || json.Unmarshal(out, &cert) != nil {
			t.Fatalf("issue %s = %d %s", name, code, out)
		}
		paths[name], serials[name] = filepath.Join(dir, name+"-cert.pub"), cert.Serial
		writeFile(t, paths[name], cert.Certificate+"\n")
	}
	admin := mint(map[string]any{"sub": "sre", "preferred_username": "sre", "groups": []string{"sshca-admins"}})
	if code, out := call(t, http.MethodPost, base+"/v1/revocations", admin, map[string]any{"serial": serials["revoked"], "reason": "cluster agent"}); code != http.StatusOK {
		t.Fatalf("revoke = %d %s", code, out)
	}
	keygenBin := testenv.Need(t, "ssh-keygen")
	waitFor(t, 10*time.Second, "the agent's KRL revokes the revoked certificate", func() bool {
		out, _ := exec.Command(keygenBin, "-Q", "-f", flags.krlPath, paths["revoked"]).CombinedOutput()
		return strings.Contains(string(out), "REVOKED")
	})
	if out, _ := exec.Command(keygenBin, "-Q", "-f", flags.krlPath, paths["kept"]).CombinedOutput(); !strings.Contains(string(out), ": ok") {
		t.Errorf("the certificate not revoked is not ok in the agent's KRL: %s", out)
	}
}
