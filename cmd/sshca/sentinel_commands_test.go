package main

import (
	"context"
	"encoding/json"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
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

// TestCommandsSentinelPassword: Sentinels that require a password of their own (not the data
// nodes', which require none here) are reached by a command given --sentinel-master with that
// password from SSHCA_SENTINEL_PASSWORD or --sentinel-password-file, never from a flag's value;
// without it, or with a wrong one, the command fails saying where to give it, and no error or
// output carries the password. The credentials without --sentinel-master, or beside --config,
// are refused.
func TestCommandsSentinelPassword(t *testing.T) {
	const secret = "s3ntinel-only-Pa55"
	s := testenv.StartRedisSentinelAuth(t, secret)
	sentinelURL := "redis://" + s.Sentinels[0]
	migrate := []string{"store", "migrate", "--redis", sentinelURL, "--sentinel-master", testenv.SentinelMaster}
	dir := t.TempDir()
	wrongFile, rightFile := filepath.Join(dir, "wrong"), filepath.Join(dir, "right")
	writeFileMode(t, wrongFile, "not-"+secret+"\n", 0o600)
	writeFileMode(t, rightFile, secret+"\n", 0o600)
	noSecret := func(what, out string, err error) {
		t.Helper()
		if strings.Contains(out, secret) || err != nil && strings.Contains(err.Error(), secret) {
			t.Errorf("%s shows the Sentinels' password: %v\n%s", what, err, out)
		}
	}

	t.Setenv(sentinelPasswordEnv, "")
	out, err := runCLI(t, "", migrate...)
	noSecret("without the password", out, err)
	if err == nil || !strings.Contains(err.Error(), sentinelPasswordEnv) || !strings.Contains(err.Error(), "--sentinel-password-file") {
		t.Errorf("store migrate through Sentinels that require a password, given none: %v\n%s; want a refusal naming %s and --sentinel-password-file", err, out, sentinelPasswordEnv)
	}
	out, err = runCLI(t, "", append(migrate, "--sentinel-password-file", wrongFile)...)
	noSecret("with a wrong password", out, err)
	if err == nil || !strings.Contains(err.Error(), "Sentinel") || strings.Contains(err.Error(), "not-"+secret) {
		t.Errorf("store migrate with a wrong Sentinel password: %v\n%s; want a refusal that does not show it", err, out)
	}
	out, err = runCLI(t, "", append(migrate, "--sentinel-password-file", rightFile)...)
	noSecret("with --sentinel-password-file", out, err)
	if err != nil || !strings.Contains(out, "store layout") {
		t.Errorf("store migrate with --sentinel-password-file: %v\n%s", err, out)
	}
	t.Setenv(sentinelPasswordEnv, secret)
	out, err = runCLI(t, "", migrate...)
	noSecret("with "+sentinelPasswordEnv, out, err)
	if err != nil || !strings.Contains(out, "at layout 3 already") {
		t.Errorf("store migrate with %s: %v\n%s", sentinelPasswordEnv, err, out)
	}
	// The migration reached the master the Sentinels name.
	master := redis.NewClient(&redis.Options{Addr: s.MasterAddr(t)})
	defer master.Close()
	if v, err := master.Get(context.Background(), store.Keys{}.StoreLayout()).Result(); err != nil || v != "3" {
		t.Errorf("the master's layout after migrate through the Sentinels: %q %v", v, err)
	}
	out, err = runCLI(t, "", "store", "migrate", "--help")
	noSecret("--help with the password in the environment", out, err)
	if _, err := runCLI(t, "", "store", "migrate", "--redis", sentinelURL, "--sentinel-password-file", rightFile); err == nil || !strings.Contains(err.Error(), "give them with --sentinel-master") {
		t.Errorf("--sentinel-password-file without --sentinel-master: %v; want a refusal", err)
	}
	if _, err := runCLI(t, "", "store", "migrate", "--config", filepath.Join(dir, "x.yaml"), "--sentinel-username", "u"); err == nil || !strings.Contains(err.Error(), "give it alone") {
		t.Errorf("--sentinel-username with --config: %v; want a refusal", err)
	}
}
