package main

import (
	"context"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/internal/testenv"
)

// TestClusterTwoReplicas: two `sshca serve` replicas (in this process, each with its own
// Redis client, witness and audit head) share one Redis Cluster of three masters with one
// replica each (redis.wait_replicas 1). Both issue; a token spent on one is refused on the
// other; a certificate issued by one and revoked through the other is REVOKED in the KRL of a
// bastion agent that pulls from the first (ssh-keygen -Q); a key generated through one is
// published by the other (the keyring); and the records of both replicas make one audit chain
// that verifies, with every action of the test in it. Every script and transaction ran on a
// Cluster, so each kept its keys in one hash slot (a cross-slot one fails with CROSSSLOT).
func TestClusterTwoReplicas(t *testing.T) {
	c := testenv.StartRedisClusterWithReplicas(t, 3, 1)
	idp := startIssuer(t, "sshca")
	cfgA := serveConfig(t, c.Addrs[0], identity.IssuerConfig{IssuerURL: idp.URL(), Audiences: []string{"sshca"}})
	cfgA.Redis = RedisConfig{Addrs: c.Addrs, ClusterMode: true, WaitReplicas: 1, DialTimeout: time.Second, ReadTimeout: time.Second}
	cfgA.Keyring = KeyringConfig{Enabled: true, KMS: "softkms:", KeyDir: filepath.Join(t.TempDir(), "keys"), TrustRefresh: time.Second, Refresh: 100 * time.Millisecond}
	cfgB := *cfgA // the same CA keys, audit key and keyring directory: replicas of one service
	baseA, baseB := startServe(t, cfgA), startServe(t, &cfgB)
	mint := minter(t, idp)
	dir := t.TempDir()
	userKey := keygen(t, dir, "alice")
	body := map[string]any{"public_key": readFile(t, userKey+".pub")}
	alice := map[string]any{"sub": "u-alice", "preferred_username": "alice"}

	// Issuance on both.
	certs := map[string]issuedCert{}
	for name, base := range map[string]string{"A": baseA, "B": baseB} {
		certs[name] = issue(t, base, "user", mint(alice), body)
		path := filepath.Join(dir, name+"-cert.pub")
		writeFile(t, path, certs[name].Certificate+"\n")
		// ssh-keygen -L verifies the signature.
		if out := testenv.Run(t, testenv.Need(t, "ssh-keygen"), "-L", "-f", path); !strings.Contains(out, "Serial: "+certs[name].Serial) {
			t.Errorf("replica %s's certificate, read by ssh-keygen -L, lacks its serial %s:\n%s", name, certs[name].Serial, out)
		}
	}

	// Replay protection across replicas: spent on A, refused on B (and on A).
	tok := mint(alice)
	issue(t, baseA, "user", tok, body)
	for name, base := range map[string]string{"B": baseB, "A": baseA} {
		if code, out := call(t, http.MethodPost, base+"/v1/certs/user", tok, body); code != http.StatusUnauthorized {
			t.Errorf("a token spent on replica A, presented to %s: %d %s, want 401", name, code, out)
		}
	}

	// Revocation: B's certificate revoked through A reaches an agent that pulls from B.
	target, err := url.Parse(baseB)
	if err != nil {
		t.Fatal(err)
	}
	front := httptest.NewTLSServer(httputil.NewSingleHostReverseProxy(target))
	t.Cleanup(front.Close)
	serverCA := filepath.Join(dir, "server-ca.pem")
	writeFile(t, serverCA, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: front.Certificate().Raw})))
	flags := agentFlags{server: front.URL, serverCA: serverCA, krlPath: filepath.Join(dir, "sshca.krl"),
		userCA: filepath.Join(dir, "user_ca.pub"), health: "127.0.0.1:0", poll: 100 * time.Millisecond}
	startAgent(t, flags)
	admin := mint(map[string]any{"sub": "sre", "preferred_username": "sre", "groups": []string{"sshca-admins"}})
	if code, out := call(t, http.MethodPost, baseA+"/v1/revocations", admin, map[string]any{"serial": certs["B"].Serial, "reason": "cluster test"}); code != http.StatusOK {
		t.Fatalf("POST /v1/revocations on A for B's certificate = %d %s", code, out)
	}
	keygenBin := testenv.Need(t, "ssh-keygen")
	waitFor(t, 5*time.Second, "the agent's KRL revokes B's certificate", func() bool {
		out, _ := exec.Command(keygenBin, "-Q", "-f", flags.krlPath, filepath.Join(dir, "B-cert.pub")).CombinedOutput()
		return strings.Contains(string(out), "REVOKED")
	})
	if out, _ := exec.Command(keygenBin, "-Q", "-f", flags.krlPath, filepath.Join(dir, "A-cert.pub")).CombinedOutput(); !strings.Contains(string(out), ": ok") {
		t.Errorf("A's certificate, not revoked, is not ok in the agent's KRL: %s", out)
	}

	// The keyring: a key generated through A is published by B.
	published := func(base string) int {
		_, b := call(t, http.MethodGet, base+"/v1/ca/user.pub", "", nil)
		return strings.Count(string(b), "\n")
	}
	before := published(baseB)
	if out, err := runCLIEnv(t, baseA, mint(map[string]any{"sub": "sre", "preferred_username": "sre", "groups": []string{"sshca-admins"}}), "keys", "generate", "--ca", "user"); err != nil {
		t.Fatalf("sshca keys generate on A: %v\n%s", err, out)
	}
	waitFor(t, 5*time.Second, "replica B publishes the key generated through A", func() bool {
		return published(baseB) == before+1
	})

	// One audit chain: both replicas' records, in one verified chain.
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs})
	defer cc.Close()
	key, err := readAuditKey(cfgA.Audit.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	serials := map[string]bool{}
	actions := map[ca.Action]int{}
	rep, err := audit.New(cc, audit.Options{Key: key}).Verify(context.Background(), func(e audit.Entry) {
		actions[e.Record.Action]++
		if e.Record.Serial != 0 {
			serials[strconv.FormatUint(e.Record.Serial, 10)] = true
		}
	})
	if err != nil {
		t.Fatalf("the audit chain of two replicas does not verify: %v", err)
	}
	for name, cert := range certs {
		if !serials[cert.Serial] {
			t.Errorf("the certificate issued by %s (serial %s) has no audit record in the chain", name, cert.Serial)
		}
	}
	t.Logf("one audit chain of %d records from two replicas: %v", rep.Records, actions)
}
