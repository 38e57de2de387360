package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sshca/sshca/bastion"
	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/identity/devissuer"
	"github.com/sshca/sshca/internal/testenv"
)

// TestRevocationEndToEnd: real redis-server, real sshd, real ssh, the bastion agent following
// the Redis stream. A certificate revoked through the API is refused by sshd within a second,
// measured by real ssh attempts over many revocations; the live session of a revoked
// certificate is ended; a revoked identity gets no new certificate; and a redis-server restart
// mid-test loses no revocation.
func TestRevocationEndToEnd(t *testing.T) {
	testenv.Need(t, "sshd", "/usr/sbin")
	testenv.Need(t, "ssh")
	r := testenv.StartRedisPersistent(t)
	idp := startIssuer(t, "sshca")
	base := startServe(t, serveConfig(t, r.Addr, identity.IssuerConfig{IssuerURL: idp.URL(), Audiences: []string{"sshca"}}))
	dir := t.TempDir()
	mint := minter(t, idp)
	admin := mint(map[string]any{"sub": "admin", "preferred_username": "admin1", "email": "admin@example.com", "email_verified": true, "groups": []string{"sshca-admins"}})

	// The bastion agent, before sshd starts: it writes the empty KRL and the trusted CA keys.
	flags := agentFlags{redis: redisTarget{url: "redis://" + r.Addr}, krlPath: filepath.Join(dir, "sshca.krl"), userCA: filepath.Join(dir, "user_ca.pub"),
		health: "127.0.0.1:0", sshdLog: filepath.Join(dir, "sshd.log"), poll: time.Second}
	agent := startAgent(t, flags)
	sshd, kh := startBastionSSHD(t, base, mint, dir, flags)

	userKey := keygen(t, dir, "alice")
	alice := func() string {
		return mint(map[string]any{"sub": "u-alice", "preferred_username": "alice", "email": "alice@example.com", "email_verified": true})
	}
	newCert := func(name string) (string, issuedCert) {
		c := issue(t, base, "user", alice(), map[string]any{"public_key": readFile(t, userKey+".pub"), "ttl": "10m"})
		path := filepath.Join(dir, name+"-cert.pub")
		writeFile(t, path, c.Certificate+"\n")
		return path, c
	}
	revoke := func(body map[string]any) {
		t.Helper()
		body["reason"] = "test"
		if code, out := call(t, http.MethodPost, base+"/v1/revocations", admin, body); code != http.StatusOK {
			t.Fatalf("POST /v1/revocations = %d %s", code, out)
		}
	}

	// A live session, and then its certificate is revoked: sshd refuses it, the session ends.
	certPath, c0 := newCert("c0")
	if out, err := sshd.SSH(userKey, certPath, kh, "true"); err != nil {
		t.Fatalf("login before revocation: %v\n%s", err, out)
	}
	sessionDone := startSession(t, sshd, userKey, certPath, kh)
	revoke(map[string]any{"serial": c0.Serial})
	waitFor(t, 5*time.Second, "a revoked certificate is refused", func() bool {
		_, err := sshd.SSH(userKey, certPath, kh, "true")
		return err != nil
	})
	select {
	case <-sessionDone:
	case <-time.After(5 * time.Second):
		t.Fatal("the live session of the revoked certificate was not ended")
	}
	if m, _ := agentHealth(t, agent); !m.Connected {
		t.Errorf("agent health: %+v", m)
	}

	// Revoke-to-refusal latency over many revocations, by real ssh attempts, with a
	// redis-server restart half way.
	const n = 50
	var latencies []time.Duration
	var revoked []string
	for i := range n {
		if i == n/2 {
			r.Stop()
			r.Start()
			waitFor(t, 20*time.Second, "the agent reconnects after the redis-server restart", func() bool {
				st := agent.Status()
				return st.Connected && st.Source == "redis"
			})
		}
		path, c := newCert("c" + strconv.Itoa(i+1))
		if out, err := sshd.SSH(userKey, path, kh, "true"); err != nil {
			t.Fatalf("round %d: login before revocation: %v\n%s", i, err, out)
		}
		start := time.Now()
		revoke(map[string]any{"serial": c.Serial})
		for {
			if _, err := sshd.SSH(userKey, path, kh, "true"); err != nil {
				break
			}
			if time.Since(start) > 10*time.Second {
				t.Fatalf("round %d: serial %s still accepted after 10s", i, c.Serial)
			}
		}
		latencies = append(latencies, time.Since(start))
		revoked = append(revoked, path)
	}
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	p50, p99 := latencies[len(latencies)/2], latencies[(len(latencies)*99-1)/100]
	t.Logf("revoke-to-refusal over %d revocations by real ssh attempts: p50 %s, p99 %s, max %s", n, p50, p99, latencies[n-1])
	fmt.Printf("REVOCATION LATENCY n=%d p50=%s p99=%s max=%s\n", n, p50, p99, latencies[n-1])
	// The figure is reported above; what is asserted is a bound no healthy run comes near
	// (a quiet run measures p99 ≈ 0.45 s), so a loaded CI machine does not fail on noise
	// while a lost wake-up (the agent falling back to a 5 s re-read) still does.
	if p99 >= 3*time.Second {
		t.Errorf("p99 revoke-to-refusal %s, want < 3s", p99)
	}

	// Nothing was lost across the restart: every revoked certificate is in the installed KRL.
	keygenBin := testenv.Need(t, "ssh-keygen")
	for _, p := range append(revoked, certPath) {
		out, _ := exec.Command(keygenBin, "-Q", "-f", flags.krlPath, p).CombinedOutput()
		if !strings.Contains(string(out), "REVOKED") {
			t.Errorf("%s is not in the installed KRL after the restart: %s", p, out)
		}
	}

	// Revoking the identity: its certificates go, and it gets no new one.
	fresh, _ := newCert("fresh")
	revoke(map[string]any{"identity": "alice@example.com"})
	waitFor(t, 5*time.Second, "the identity's certificates are refused", func() bool {
		_, err := sshd.SSH(userKey, fresh, kh, "true")
		return err != nil
	})
	code, out := call(t, http.MethodPost, base+"/v1/certs/user", alice(), map[string]any{"public_key": readFile(t, userKey+".pub")})
	if code != http.StatusForbidden || !strings.Contains(string(out), "were revoked") {
		t.Errorf("new certificate for a revoked identity: %d %s", code, out)
	}

	// The KRL over HTTP is the same state, with an ETag.
	resp, err := http.Get(base + "/v1/krl")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	etag := resp.Header.Get("ETag")
	req, _ := http.NewRequest(http.MethodGet, base+"/v1/krl", nil)
	req.Header.Set("If-None-Match", etag)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if etag == "" || resp.StatusCode != http.StatusNotModified {
		t.Errorf("GET /v1/krl with If-None-Match %q = %d, want 304", etag, resp.StatusCode)
	}
}

type agentStatus struct {
	Connected  bool   `json:"connected"`
	KRLVersion uint64 `json:"krl_version"`
}

func agentHealth(t *testing.T, a *bastion.Agent) (agentStatus, error) {
	st := a.Status()
	b, _ := json.Marshal(st)
	var s agentStatus
	return s, json.Unmarshal(b, &s)
}

// minter mints tokens from the test issuer.
func minter(t *testing.T, idp *devissuer.Issuer) func(map[string]any) string {
	return func(claims map[string]any) string {
		t.Helper()
		tok, err := idp.Mint(claims)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
}

// startAgent runs the bastion agent with flags until the test ends.
func startAgent(t *testing.T, flags agentFlags) *bastion.Agent {
	t.Helper()
	return startAgentLog(t, flags, testLog(t))
}

// startAgentLog is startAgent logging to log.
func startAgentLog(t *testing.T, flags agentFlags, log *slog.Logger) *bastion.Agent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan *bastion.Agent, 1)
	agentDone := make(chan error, 1)
	go func() { agentDone <- runAgent(ctx, flags, log, ready) }()
	t.Cleanup(func() { cancel(); <-agentDone })
	var agent *bastion.Agent
	select {
	case agent = <-ready:
	case err := <-agentDone:
		agentDone <- err // for the cleanup, which waits for it
		t.Fatalf("agent: %v", err)
	}
	waitFor(t, 10*time.Second, "the agent writes the trusted CA keys", func() bool {
		b, err := os.ReadFile(flags.userCA)
		return err == nil && strings.HasPrefix(string(b), "ecdsa-sha2-nistp256 ")
	})
	return agent
}

// startBastionSSHD starts sshd as a bastion runs it: a host certificate from the CA, the
// agent's trusted CA keys and KRL, logging to the file the agent follows. It returns sshd and
// a known_hosts file that trusts the host CA.
func startBastionSSHD(t *testing.T, base string, mint func(map[string]any) string, dir string, flags agentFlags) (*testenv.SSHD, string) {
	t.Helper()
	hostKey := keygen(t, dir, "host_key")
	hc := issue(t, base, "host", mint(map[string]any{"sub": "ci", "groups": []string{"ci"}}), map[string]any{
		"public_key": readFile(t, hostKey+".pub"), "hostnames": []string{"127.0.0.1"}})
	writeFile(t, hostKey+"-cert.pub", hc.Certificate+"\n")
	_, knownHosts := call(t, http.MethodGet, base+"/v1/ca/known_hosts", "", nil)
	kh := filepath.Join(dir, "known_hosts")
	writeFile(t, kh, string(knownHosts))
	sshd := testenv.StartSSHD(t, testenv.SSHDConfig{
		HostKey: hostKey, HostCertificate: hostKey + "-cert.pub",
		TrustedUserCAKeys: flags.userCA, RevokedKeys: flags.krlPath,
		Principals: []string{"alice"}, LogFile: flags.sshdLog,
	})
	return sshd, kh
}

// startSession opens a long ssh session and waits until sshd has logged it; the channel gets
// the session's end. The session is killed when the test ends.
func startSession(t *testing.T, sshd *testenv.SSHD, key, cert, knownHosts string) <-chan error {
	t.Helper()
	// A session that ssh could not open is not what the callers measure: on a loaded machine
	// sshd's preauth child has been seen to lose its monitor ("mm_log_handler: write: Broken
	// pipe") and ssh to exit before any session began. That is retried, twice at most, with
	// ssh's own words in the log; waiting 10 s for a session that ssh already gave up on
	// only hid them.
	for attempt := 1; ; attempt++ {
		before := strings.Count(sshd.Log(), "Starting session: command")
		var stderr testenv.SyncBuffer
		session := exec.Command("ssh", sshArgs(sshd, key, cert, knownHosts, "sleep 120")...)
		session.Stderr = &stderr
		if err := session.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- session.Wait() }()
		t.Cleanup(func() { _ = session.Process.Kill() })
		started := func() bool { return strings.Count(sshd.Log(), "Starting session: command") > before }
		var exited error
		gone := false // ssh has exited, with exited as its error
		for deadline := time.Now().Add(10 * time.Second); !gone && !started() && time.Now().Before(deadline); {
			select {
			case exited = <-done:
				gone = true
			case <-time.After(20 * time.Millisecond):
			}
		}
		switch {
		case started() && gone:
			// It began and already ended: hand its end on to the caller.
			ended := make(chan error, 1)
			ended <- exited
			return ended
		case started():
			return done
		case !gone:
			t.Fatalf("timed out after 10s waiting until sshd logs the session; ssh said: %s", stderr.String())
		case attempt == 3:
			t.Fatalf("ssh exited (%v) before a session began, %d times; last time it said: %s", exited, attempt, stderr.String())
		default:
			t.Logf("ssh exited (%v) before a session began, retrying; it said: %s", exited, stderr.String())
		}
	}
}

func sshArgs(s *testenv.SSHD, key, cert, knownHosts string, command string) []string {
	return []string{"-F", "none", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
		"-o", "UserKnownHostsFile=" + knownHosts, "-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-i", key, "-o", "CertificateFile=" + cert,
		"-p", strconv.Itoa(s.Port), s.User + "@127.0.0.1", command}
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	testenv.Eventually(t, within, what, cond)
}
