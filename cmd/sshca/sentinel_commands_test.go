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

// TestCommandsThroughSentinel: on a Sentinel deployment (one master, one replica, three
// sentinels) a bastion agent given one Sentinel's URL and --sentinel-master follows
// revocations before and after the master is killed (SIGKILL): a certificate revoked through
// the promoted master is REVOKED in the agent's KRL (ssh-keygen -Q), which it read from the
// new master that the Sentinels named. `sshca audit verify` through the Sentinel after the
// failover finds the chain on the new master. The killed node stays down: a client that
// kept its address would find nothing. A plain --redis URL of a Sentinel is refused,
// naming --sentinel-master.
func TestCommandsThroughSentinel(t *testing.T) {
	s := testenv.StartRedisSentinel(t)
	idp := startIssuer(t, "sshca")
	cfg := serveConfig(t, "127.0.0.1:1", identity.IssuerConfig{IssuerURL: idp.URL(), Audiences: []string{"sshca"}})
	cfg.Redis = RedisConfig{Addrs: s.Sentinels, MasterName: testenv.SentinelMaster, WaitReplicas: 1, WaitTimeout: 500 * time.Millisecond,
		DialTimeout: time.Second, ReadTimeout: time.Second}
	base := startServe(t, cfg)
	mint := minter(t, idp)
	dir := t.TempDir()
	sentinelURL := "redis://" + s.Sentinels[1]

	if out, err := runCLI(t, "", "audit", "verify", "--redis", sentinelURL, "--key-file", cfg.Audit.KeyFile); err == nil || !strings.Contains(err.Error(), "add --sentinel-master") {
		t.Errorf("audit verify with a plain URL of a Sentinel: %v\n%s; want a refusal naming --sentinel-master", err, out)
	}

	flags := agentFlags{redis: redisTarget{url: sentinelURL, sentinelMaster: testenv.SentinelMaster},
		krlPath: filepath.Join(dir, "sshca.krl"), userCA: filepath.Join(dir, "user_ca.pub"), health: "127.0.0.1:0",
		poll: 100 * time.Millisecond, caRefresh: time.Second}
	startAgent(t, flags)
	keygenBin := testenv.Need(t, "ssh-keygen")
	admin := func() string {
		return mint(map[string]any{"sub": "sre", "preferred_username": "sre", "groups": []string{"sshca-admins"}})
	}
	// issueRevoke issues a certificate for name and revokes it, retrying while the store
	// fails over (503), and waits until the agent's KRL revokes it. A revocation that the
	// master holds but no replica confirmed (503, "in force there") is enough for the agent,
	// which reads the master: the killed node stays down, so only a client that asks the
	// Sentinels finds where the revocation is.
	issueRevoke := func(name string, within time.Duration) {
		t.Helper()
		key := keygen(t, dir, name)
		var cert issuedCert
		waitFor(t, within, name+"'s certificate is issued", func() bool {
			code, out := call(t, http.MethodPost, base+"/v1/certs/user", mint(map[string]any{"sub": "u-" + name, "preferred_username": name}),
				map[string]any{"public_key": readFile(t, key+".pub")})
			return code == http.StatusOK && json.Unmarshal(out, &cert) == nil
		})
		certPath := filepath.Join(dir, name+"-cert.pub")
		writeFile(t, certPath, cert.Certificate+"\n")
		waitFor(t, within, name+"'s certificate is revoked on the master", func() bool {
			code, out := call(t, http.MethodPost, base+"/v1/revocations", admin(), map[string]any{"serial": cert.Serial, "reason": "sentinel commands"})
			return code == http.StatusOK || code == http.StatusServiceUnavailable && strings.Contains(string(out), "in force there")
		})
		waitFor(t, within, "the agent's KRL revokes "+name+"'s certificate", func() bool {
			out, _ := exec.Command(keygenBin, "-Q", "-f", flags.krlPath, certPath).CombinedOutput()
			return strings.Contains(string(out), "REVOKED")
		})
	}
	issueRevoke("before", 10*time.Second)

	old := s.MasterAddr(t)
	s.Node(old).Kill()
	var newMaster string
	waitFor(t, sentinelFailoverPromise(testenv.SentinelDownAfter)+10*time.Second, "the sentinels name a new master", func() bool {
		newMaster = s.MasterAddr(t)
		return newMaster != "" && newMaster != old
	})
	issueRevoke("after", 30*time.Second)
	t.Logf("master %s killed, %s promoted: the agent through %s followed the revocation made after", old, newMaster, s.Sentinels[1])

	out, err := runCLI(t, "", "audit", "verify", "--redis", sentinelURL, "--sentinel-master", testenv.SentinelMaster, "--key-file", cfg.Audit.KeyFile)
	if err != nil || !strings.Contains(out, "OK: ") {
		t.Errorf("audit verify through the Sentinel after the failover: %v\n%s", err, out)
	}
}
