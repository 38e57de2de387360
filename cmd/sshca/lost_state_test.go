package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/bastion"
	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/krl"
)

// startServeStoppable is startServe with a stop: a replica restart.
func startServeStoppable(t *testing.T, cfg *Config) (base string, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	errc := make(chan error, 1)
	go func() { errc <- serve(ctx, cfg, testLog(t), ready) }()
	select {
	case addr := <-ready:
		base = "http://" + addr
	case err := <-errc:
		cancel()
		t.Fatalf("serve: %v", err)
	case <-time.After(60 * time.Second):
		cancel()
		t.Fatal("serve did not start within 60s")
	}
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			cancel()
			<-errc
		}
	}
	t.Cleanup(stop)
	return base, stop
}

// startAgentStoppable runs the bastion agent in-process until stop: a bastion restart.
func startAgentStoppable(t *testing.T, flags agentFlags) (*bastion.Agent, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan *bastion.Agent, 1)
	done := make(chan error, 1)
	go func() { done <- runAgent(ctx, flags, testLog(t), ready) }()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
		}
	}
	t.Cleanup(stop)
	select {
	case a := <-ready:
		return a, stop
	case err := <-done:
		t.Fatalf("agent: %v", err)
	}
	return nil, stop
}

func getBody(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func installedVersion(t *testing.T, path string) uint64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	k, err := krl.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	return k.Version
}

// lostStateRig is what the lost-state and rebuild tests share: redis-server with the shipped
// configuration and ACL users (persistence by explicit SAVE only, a test admin user for
// SAVE/FLUSHALL), an OIDC issuer, a serve replica and a bastion agent, both stoppable.
type lostStateRig struct {
	srv         *testenv.ConfiguredRedis
	admin       *redis.Client
	ctx         context.Context
	mint        func(map[string]any) string
	cfg         *Config
	redisURL    string // the sshca user's
	base        string
	stopReplica func()
	dir         string
	flags       agentFlags
	agent       *bastion.Agent
	stopAgent   func()
}

func startLostStateRig(t *testing.T, configure ...func(*Config)) *lostStateRig {
	t.Helper()
	r := &lostStateRig{ctx: context.Background()}
	r.srv = testenv.StartRedisConfig(t, filepath.Join("..", "..", "deploy", "redis", "redis.conf"),
		"--user", "test-admin", "on", ">test-admin-pw", "~*", "&*", "+@all",
		"--appendonly", "no", "--save", "")
	r.admin = redis.NewClient(&redis.Options{Addr: r.srv.Addr, Username: "test-admin", Password: "test-admin-pw"})
	t.Cleanup(func() { r.admin.Close() })
	idp := startIssuer(t, "sshca")
	r.mint = minter(t, idp)
	r.cfg = serveConfig(t, r.srv.Addr, identity.IssuerConfig{IssuerURL: idp.URL(), Audiences: []string{"sshca"}})
	r.cfg.Redis.Username, r.cfg.Redis.Password = "sshca", "CHANGE-ME-sshca"
	r.redisURL = "redis://sshca:CHANGE-ME-sshca@" + r.srv.Addr
	for _, c := range configure {
		c(r.cfg)
	}
	r.base, r.stopReplica = startServeStoppable(t, r.cfg)
	r.dir = t.TempDir()
	r.flags = agentFlags{redis: redisTarget{url: "redis://bastion:CHANGE-ME-bastion@" + r.srv.Addr}, krlPath: filepath.Join(r.dir, "sshca.krl"),
		userCA: filepath.Join(r.dir, "user_ca.pub"), health: "127.0.0.1:0", poll: time.Second, caRefresh: time.Second}
	r.agent, r.stopAgent = startAgentStoppable(t, r.flags)
	return r
}

// TestStoreLostStateFailsClosed restores redis-server from an RDB copy taken before N
// revocations (the shipped configuration and ACL users, persistence by explicit SAVE only).
// (a) With the CA replica that made them still running, its in-memory witness notices: /readyz
// 503 naming the lost state, issuance 503 "revocation state lost", /v1/krl 503, and a
// revocation is still accepted (200). The bastion agent, still running, fails static (its
// own witness of the feed). (b) After restarting the replica (its witness gone: it cannot tell
// by itself) and the agent, the agent's installed KRL is the witness: it refuses the older KRL
// the rolled-back store offers, keeps the installed file, and alerts in its status.
func TestStoreLostStateFailsClosed(t *testing.T) {
	r := startLostStateRig(t)
	srv, admin, ctx, mint, cfg, dir, flags := r.srv, r.admin, r.ctx, r.mint, r.cfg, r.dir, r.flags
	base, stopReplica, agent, stopAgent := r.base, r.stopReplica, r.agent, r.stopAgent

	adminTok := func() string {
		return mint(map[string]any{"sub": "admin", "preferred_username": "admin1", "email": "admin@example.com", "email_verified": true, "groups": []string{"sshca-admins"}})
	}
	alice := func() string {
		return mint(map[string]any{"sub": "u-alice", "preferred_username": "alice", "email": "alice@example.com", "email_verified": true})
	}
	userKey := keygen(t, dir, "alice")
	body := map[string]any{"public_key": readFile(t, userKey+".pub"), "ttl": "10m"}
	revoke := func(b map[string]any) (int, string) {
		b["reason"] = "test"
		code, out := call(t, http.MethodPost, base+"/v1/revocations", adminTok(), b)
		return code, string(out)
	}
	revokeNew := func() {
		t.Helper()
		c := issue(t, base, "user", alice(), body)
		if code, out := revoke(map[string]any{"serial": c.Serial}); code != http.StatusOK {
			t.Fatalf("revoke = %d %s", code, out)
		}
	}

	revokeNew() // the store is in use: generation and marks exist
	if err := admin.Save(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	snapshot, err := os.ReadFile(filepath.Join(srv.Dir, "dump.rdb"))
	if err != nil {
		t.Fatal(err)
	}
	const n = 5
	for range n {
		revokeNew()
	}
	waitFor(t, 10*time.Second, "the agent installs the KRL of every revocation", func() bool {
		return agent.Status().KRLVersion == n+1
	})
	installed, err := os.ReadFile(flags.krlPath)
	if err != nil {
		t.Fatal(err)
	}
	if code, out := getBody(t, base+"/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz before the restore = %d %s", code, out)
	}

	// The store is restored to the copy taken before the N revocations.
	srv.Kill()
	if err := os.WriteFile(filepath.Join(srv.Dir, "dump.rdb"), snapshot, 0o600); err != nil {
		t.Fatal(err)
	}
	srv.Start()

	// (a) The replica that made the revocations is still running.
	waitFor(t, 10*time.Second, "/readyz says the state was lost", func() bool {
		code, out := getBody(t, base+"/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(out, "store_state") && strings.Contains(out, "revocation state lost")
	})
	code, out := call(t, http.MethodPost, base+"/v1/certs/user", alice(), body)
	if code != http.StatusServiceUnavailable || !strings.Contains(string(out), "revocation state lost") || !strings.Contains(string(out), "sshca store rebuild") {
		t.Errorf("issuance on the restored store = %d %s, want 503 revocation state lost", code, out)
	}
	if code, out := getBody(t, base+"/v1/krl"); code != http.StatusServiceUnavailable || !strings.Contains(out, "revocation state lost") || !strings.Contains(out, "sshca store rebuild") {
		t.Errorf("/v1/krl on the restored store = %d %q, want 503 saying the revocation state was lost and to run sshca store rebuild", code, out)
	}
	other := keygen(t, dir, "mallory")
	if code, out := revoke(map[string]any{"public_key": readFile(t, other+".pub")}); code != http.StatusOK {
		t.Errorf("revoke on the restored store = %d %s, want 200 (revocations are still accepted)", code, out)
	}
	waitFor(t, 15*time.Second, "the running agent fails static and says why", func() bool {
		st := agent.Status()
		return !st.Connected && (strings.Contains(st.LastError, "revocation state lost") || st.Alert != "")
	})
	if b, _ := os.ReadFile(flags.krlPath); !bytes.Equal(b, installed) {
		t.Errorf("the agent replaced its KRL (version %d) after the restore", installedVersion(t, flags.krlPath))
	}
	t.Logf("(a) replica running: /readyz, issuance and /v1/krl 503, revoke 200; agent: %+v", agent.Status())

	// (b) The replica and the bastion agent restart: nothing in memory remembers the newer
	// state, the agent's installed KRL does.
	stopReplica()
	stopAgent()
	base, _ = startServeStoppable(t, cfg)
	if code, out := getBody(t, base+"/readyz"); code != http.StatusOK {
		t.Logf("/readyz of the restarted replica = %d %s", code, out)
	}
	agent, _ = startAgentStoppable(t, flags)
	waitFor(t, 15*time.Second, "the restarted agent refuses the older KRL and alerts", func() bool {
		st := agent.Status()
		return !st.Connected && strings.Contains(st.Alert, "lost or rolled back") && st.KRLVersion == n+1
	})
	// A revocation through the restarted replica still gives a KRL older than the installed one.
	revokeNew()
	time.Sleep(2 * time.Second)
	st := agent.Status()
	if st.Connected || st.Alert == "" || st.OfferedVersion >= n+1 {
		t.Errorf("after a new revocation on the rolled-back store: %+v", st)
	}
	if b, _ := os.ReadFile(flags.krlPath); !bytes.Equal(b, installed) {
		t.Errorf("the restarted agent replaced its KRL (version %d, had %d)", installedVersion(t, flags.krlPath), n+1)
	}
	t.Logf("(b) replica and agent restarted: agent %+v", st)
}

// TestArchiveWitnessDetectsRollback: `sshca audit archive` records the store's generation
// marks in the archive, a witness outside the store. The store is then restored from an RDB
// copy taken before the archive's revocations, with the CA replica and the bastion agent
// stopped, so nothing in memory remembers the newer state. With a real archive file:
// `sshca audit verify --archive` says the store is older than the archive; `sshca audit
// archive` refuses to archive it (its record would make the older state the newest); a replica
// started with audit.archive_file fails closed (/readyz 503, issuance 503), while one started
// without it cannot tell (/readyz 200). After `sshca store rebuild`, the replica with the
// archive is ready again.
func TestArchiveWitnessDetectsRollback(t *testing.T) {
	r := startLostStateRig(t)
	srv, admin, ctx, mint, cfg, redisURL, dir := r.srv, r.admin, r.ctx, r.mint, r.cfg, r.redisURL, r.dir
	adminTok := func() string {
		return mint(map[string]any{"sub": "admin", "preferred_username": "admin1", "email": "admin@example.com", "email_verified": true, "groups": []string{"sshca-admins"}})
	}
	alice := func() string {
		return mint(map[string]any{"sub": "u-alice", "preferred_username": "alice", "email": "alice@example.com", "email_verified": true})
	}
	userKey := keygen(t, dir, "alice")
	body := map[string]any{"public_key": readFile(t, userKey+".pub"), "ttl": "10m"}
	revokeNew := func() {
		t.Helper()
		c := issue(t, r.base, "user", alice(), body)
		if code, out := call(t, http.MethodPost, r.base+"/v1/revocations", adminTok(), map[string]any{"serial": c.Serial, "reason": "test"}); code != http.StatusOK {
			t.Fatalf("revoke = %d %s", code, out)
		}
	}
	revokeNew()
	if err := admin.Save(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	snapshot, err := os.ReadFile(filepath.Join(srv.Dir, "dump.rdb"))
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		revokeNew()
	}
	archive := filepath.Join(dir, "audit.archive")
	archiveCmd := func() (string, error) {
		return runCLI(t, "", "audit", "archive", "--redis", redisURL, "--key-file", cfg.Audit.KeyFile, "--out", archive)
	}
	verifyCmd := func() (string, error) {
		return runCLI(t, "", "audit", "verify", "--redis", redisURL, "--key-file", cfg.Audit.KeyFile, "--archive", archive)
	}
	if out, err := archiveCmd(); err != nil {
		t.Fatalf("audit archive: %v\n%s", err, out)
	}
	// The intact store is at or beyond the archive's record, also after further writes and a
	// second archive run.
	revokeNew()
	if out, err := archiveCmd(); err != nil {
		t.Fatalf("second audit archive on the intact store: %v\n%s", err, out)
	}
	if out, err := verifyCmd(); err != nil || !strings.Contains(out, "at or beyond the archive's record") {
		t.Fatalf("audit verify on the intact store: %v\n%s", err, out)
	}

	_, userPub := getBody(t, r.base+"/v1/ca/user.pub")
	_, knownHosts := getBody(t, r.base+"/v1/ca/known_hosts")
	userCAFile, hostCAFile := filepath.Join(dir, "user-ca.pub"), filepath.Join(dir, "host-ca.pub")
	writeFile(t, userCAFile, userPub)
	writeFile(t, hostCAFile, strings.TrimPrefix(strings.SplitN(knownHosts, "\n", 2)[0], "@cert-authority * ")+"\n")

	r.stopReplica()
	r.stopAgent()
	srv.Kill()
	if err := os.WriteFile(filepath.Join(srv.Dir, "dump.rdb"), snapshot, 0o600); err != nil {
		t.Fatal(err)
	}
	srv.Start()

	if out, err := verifyCmd(); err == nil || !strings.Contains(err.Error(), "older than the audit archive's record") {
		t.Errorf("audit verify on the restored store: %v\n%s; want it to say the store is older than the archive", err, out)
	}
	before, _ := os.ReadFile(archive)
	if out, err := archiveCmd(); err == nil || !strings.Contains(err.Error(), "nothing archived") {
		t.Errorf("audit archive on the restored store: %v\n%s; want a refusal", err, out)
	}
	if after, _ := os.ReadFile(archive); !bytes.Equal(after, before) {
		t.Error("audit archive wrote to the archive of a rolled-back store")
	}

	// A replica that never saw the newer state cannot tell by itself.
	blind, stopBlind := startServeStoppable(t, cfg)
	if code, out := getBody(t, blind+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz of a replica without the archive = %d %s (it has no witness; expected 200)", code, out)
	}
	stopBlind()
	// With the archive it can.
	withArchive := *cfg
	withArchive.Audit.ArchiveFile = archive
	base, _ := startServeStoppable(t, &withArchive)
	waitFor(t, 10*time.Second, "/readyz of the replica with the archive says the state was lost", func() bool {
		code, out := getBody(t, base+"/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(out, "revocation state lost")
	})
	if code, out := call(t, http.MethodPost, base+"/v1/certs/user", alice(), body); code != http.StatusServiceUnavailable || !strings.Contains(string(out), "revocation state lost") {
		t.Errorf("issuance on the restored store = %d %s, want 503 revocation state lost", code, out)
	}

	out, err := runCLI(t, "", "store", "rebuild", "--redis", redisURL, "--audit-key", cfg.Audit.KeyFile, "--archive", archive,
		"--user-ca", userCAFile, "--host-ca", hostCAFile, "--token-lifetime", "10m")
	if err != nil {
		t.Fatalf("store rebuild: %v\n%s", err, out)
	}
	if !strings.Contains(out, "restored: 5 revocations") {
		t.Errorf("store rebuild did not restore the 5 revocations:\n%s", out)
	}
	waitFor(t, 10*time.Second, "the replica with the archive is ready after the rebuild", func() bool {
		code, _ := getBody(t, base+"/readyz")
		return code == http.StatusOK
	})
	// The rebuilt store is no longer older than the archive's record (the chain in Redis,
	// restored from the copy, cannot go on in the same file: that is the chain's check).
	if out, err := verifyCmd(); err != nil && strings.Contains(err.Error(), "older than the audit archive's record") {
		t.Errorf("audit verify after the rebuild still finds the store older than the archive: %v\n%s", err, out)
	}
}
