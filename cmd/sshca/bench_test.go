package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// benchLine is the last line of `sshca bench`.
var benchLine = regexp.MustCompile(`^certs/s: (\d+)  p50: ([0-9.]+) ms  p99: ([0-9.]+) ms  errors: (\d+)  server_cpu_us_per_cert: (\d+|n/a)$`)

type benchFigures struct {
	certsPerSec, p50, p99 float64
	errors                int
	serverCPU             string
}

// runBenchCLI runs `sshca bench args...` and parses the last line of its standard output.
func runBenchCLI(t *testing.T, args ...string) (benchFigures, string, string, error) {
	t.Helper()
	cmd := newRootCommand()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(append([]string{"bench"}, args...))
	err := cmd.ExecuteContext(context.Background())
	lines := strings.Split(strings.TrimRight(out.String(), "\n"), "\n")
	m := benchLine.FindStringSubmatch(lines[len(lines)-1])
	if m == nil {
		t.Fatalf("sshca bench %v: last line %q is not the figures line (err %v)\n%s\n%s", args, lines[len(lines)-1], err, out.String(), errOut.String())
	}
	var f benchFigures
	f.certsPerSec, _ = strconv.ParseFloat(m[1], 64)
	f.p50, _ = strconv.ParseFloat(m[2], 64)
	f.p99, _ = strconv.ParseFloat(m[3], 64)
	f.errors, _ = strconv.Atoi(m[4])
	f.serverCPU = m[5]
	t.Logf("sshca bench %s:\n%s", strings.Join(args, " "), out.String())
	return f, out.String(), errOut.String(), err
}

// TestBench drives a `sshca dev` (in this process, so --server-pid is ours) closed loop and
// open loop: every certificate is issued and verified, none refused by the rate limits (the
// bench spreads its requests over identities and source addresses), and a wrong --server
// path counts its requests as errors.
func TestBench(t *testing.T) {
	base, state := startDev(t)
	pid := strconv.Itoa(os.Getpid())

	f, out, progress, err := runBenchCLI(t, "--server", base, "--state", state, "--concurrency", "4", "--duration", "2s", "--tokens", "1500", "--server-pid", pid)
	if err != nil {
		t.Fatalf("closed loop: %v", err)
	}
	if f.certsPerSec <= 0 || f.errors != 0 || f.p99 < f.p50 || f.p50 <= 0 || f.serverCPU == "n/a" {
		t.Errorf("closed loop figures %+v", f)
	}
	if !strings.Contains(out, "identities (sub bench-") || !strings.Contains(out, "source addresses 127.") || !strings.Contains(out, "client_cpu_us_per_cert: ") {
		t.Errorf("closed loop does not say how it spreads the load or its own CPU:\n%s", out)
	}
	if !regexp.MustCompile(`(?m)^bench: +1s  \d+ requests`).MatchString(progress) {
		t.Errorf("no progress line on stderr after a second:\n%s", progress)
	}

	genProfile := filepath.Join(t.TempDir(), "gen.pprof")
	f, out, _, err = runBenchCLI(t, "--server", base, "--state", state, "--rate", "50/s", "--duration", "1s", "--self-pprof-out", genProfile)
	if err != nil {
		t.Fatalf("open loop: %v", err)
	}
	// The generator's own profile: a gzipped protobuf (runtime/pprof), named on the output.
	if b, err := os.ReadFile(genProfile); err != nil || len(b) < 2 || b[0] != 0x1f || b[1] != 0x8b {
		t.Errorf("--self-pprof-out: %v, %d bytes, want a gzipped profile", err, len(b))
	}
	if !strings.Contains(out, "CPU profile of this generator over the window in "+genProfile) {
		t.Errorf("open loop does not name the generator's profile:\n%s", out)
	}
	if f.certsPerSec <= 0 || f.errors != 0 || f.p99 < f.p50 || f.serverCPU != "n/a" {
		t.Errorf("open loop figures %+v", f)
	}
	if !strings.Contains(out, "50 requests in") || !strings.Contains(out, "open loop at 50/s") {
		t.Errorf("open loop at 50/s for 1s did not send 50 requests:\n%s", out)
	}

	f, out, _, err = runBenchCLI(t, "--server", base+"/wrong", "--state", state, "--concurrency", "4", "--duration", "1s", "--tokens", "20")
	if err == nil || f.errors != 20 || f.certsPerSec != 0 {
		t.Errorf("wrong path: err %v, figures %+v, want 20 errors and an error", err, f)
	}
	if !strings.Contains(out, "HTTP 404: 20") {
		t.Errorf("wrong path: errors not by kind:\n%s", out)
	}
}

// TestBenchVerify: a certificate for another key, or signed by a key the server does not
// publish, is an error of the bench, not a certificate counted.
func TestBenchVerify(t *testing.T) {
	base, _ := startDev(t)
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	key, _ := ssh.NewPublicKey(pub)
	other, _, _ := ed25519.GenerateKey(rand.Reader)
	otherKey, _ := ssh.NewPublicKey(other)
	tok := devToken(t, base, map[string]any{"sub": "u-alice", "preferred_username": "alice", "email": "alice@example.com", "email_verified": true})
	code, body := call(t, http.MethodPost, base+"/v1/certs/user", tok, map[string]any{"public_key": string(ssh.MarshalAuthorizedKey(key))})
	if code != http.StatusOK {
		t.Fatalf("issue = %d %s", code, body)
	}
	caKeys, err := fetchUserCAKeys(context.Background(), http.DefaultClient, base+"/v1/ca/user.pub")
	if err != nil {
		t.Fatal(err)
	}
	if err := verifyBenchCert(body, key, caKeys, time.Now()); err != nil {
		t.Errorf("the real certificate: %v", err)
	}
	if err := verifyBenchCert(body, otherKey, caKeys, time.Now()); err == nil || !strings.Contains(err.Error(), "another key") {
		t.Errorf("for another key: %v", err)
	}
	if err := verifyBenchCert(body, key, []ssh.PublicKey{otherKey}, time.Now()); err == nil || !strings.Contains(err.Error(), "not in /v1/ca/user.pub") {
		t.Errorf("another CA: %v", err)
	}
	if err := verifyBenchCert([]byte(`{"certificate":"`+strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key)))+`"}`), key, caKeys, time.Now()); err == nil {
		t.Error("a plain key was taken for a certificate")
	}
	// Checked at the time its answer came: valid then, expired an hour later (a long run's
	// first certificates have expired by the end of its window, and are not errors).
	if err := verifyBenchCert(body, key, caKeys, time.Now().Add(time.Hour)); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("an hour later: %v, want expired", err)
	}
}

// TestBenchLongRun takes the long-run path (tokens spooled to a file and streamed, keys
// reused, a sample verified) with a few hundred requests: every token reaches the server
// exactly once (a token given twice would be refused as replayed, an error), and the
// figures line is as for a short run.
func TestBenchLongRun(t *testing.T) {
	base, state := startDev(t)
	old := benchMemTokens
	benchMemTokens = 50
	t.Cleanup(func() { benchMemTokens = old })

	// A window long enough for all 300 (which then run out), spread so that no rate limit
	// refuses any: 3 addresses of 100 (the per-address burst), 20 identities of 15.
	f, out, _, err := runBenchCLI(t, "--server", base, "--state", state, "--concurrency", "4", "--duration", "20s", "--tokens", "300",
		"--source-addresses", "3", "--identity-burst", "5")
	if err != nil {
		t.Fatalf("long run: %v", err)
	}
	if f.errors != 0 || f.certsPerSec <= 0 {
		t.Errorf("long run figures %+v", f)
	}
	for _, want := range []string{"long run: tokens streamed from a file, 50 keys reused in turn, every 6. certificate verified",
		"300 requests in", "300 certificates, a sample of 50 verified", "tokens ran out"} {
		if !strings.Contains(out, want) {
			t.Errorf("long run output lacks %q:\n%s", want, out)
		}
	}
}

// TestBenchTokensSpooled: spooled tokens come back each exactly once, with the exp asked
// for, then the stream ends; the spool file is removed on close.
func TestBenchTokensSpooled(t *testing.T) {
	base, state := startDev(t)
	secret, err := readDevSecret(state)
	if err != nil {
		t.Fatal(err)
	}
	exp := time.Now().Add(50 * time.Minute).Unix()
	toks, err := mintBenchTokens(context.Background(), base+"/dev/token", secret, 40, 3, "t", exp, &tls.Config{}, true, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	name := toks.file.Name()
	if err := toks.start(); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for j := range 40 {
		tok := toks.get(j)
		parts := strings.Split(tok, ".")
		if len(parts) != 3 || seen[tok] {
			t.Fatalf("token %d %q: not a JWS, or seen before", j, tok)
		}
		seen[tok] = true
		payload, err := base64.RawURLEncoding.DecodeString(parts[1])
		if err != nil {
			t.Fatal(err)
		}
		var claims struct {
			Exp int64 `json:"exp"`
		}
		if err := json.Unmarshal(payload, &claims); err != nil || claims.Exp != exp {
			t.Errorf("token %d: exp %d (%v), want %d", j, claims.Exp, err, exp)
		}
	}
	if tok := toks.get(40); tok != "" {
		t.Errorf("a 41st token from a spool of 40: %q", tok)
	}
	toks.close()
	if _, err := os.Stat(name); !os.IsNotExist(err) {
		t.Errorf("spool file %s still there after close: %v", name, err)
	}
}

// TestBenchStartAt: with --start-at the window waits for that time (so two generators share
// one window), and a time already past starts it at once with a warning.
func TestBenchStartAt(t *testing.T) {
	base, state := startDev(t)
	t0 := time.Now()
	at := t0.Add(6 * time.Second).Truncate(time.Second)
	_, out, _, err := runBenchCLI(t, "--server", base, "--state", state, "--concurrency", "2", "--duration", "1s", "--tokens", "10",
		"--start-at", strconv.FormatInt(at.Unix(), 10))
	if err != nil {
		t.Fatal(err)
	}
	if end := time.Now(); end.Before(at) || strings.Contains(out, "warning: the window starts") {
		t.Errorf("bench ended at %s, before --start-at %s, or warned:\n%s", end.Format(time.RFC3339Nano), at.Format(time.RFC3339), out)
	}
	_, out, _, err = runBenchCLI(t, "--server", base, "--state", state, "--concurrency", "2", "--duration", "1s", "--tokens", "10",
		"--start-at", strconv.FormatInt(t0.Add(-time.Minute).Unix(), 10))
	if err != nil || !strings.Contains(out, "warning: the window starts") {
		t.Errorf("--start-at a minute ago: err %v, no warning:\n%s", err, out)
	}
}

// TestBenchOpensConnectionsBeforeTheWindow: the window measures requests over kept-alive
// connections; every connection (and its TLS handshake) is opened before it, one per source
// address over HTTP/2 and one per request in flight over HTTP/1.1 (--http1). A server behind
// a TLS proxy that counts the connections it accepts and the protocol each request came by.
func TestBenchOpensConnectionsBeforeTheWindow(t *testing.T) {
	base, state := startDev(t)
	target, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	conns, protos := 0, map[string]int{}
	// lateConns counts the connections opened after the first certificate request arrived.
	var firstPost bool
	lateConns := 0
	proxy := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) { r.SetURL(target) }}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		protos[r.Proto]++
		if r.Method == http.MethodPost {
			firstPost = true
		}
		mu.Unlock()
		proxy.ServeHTTP(w, r)
	}))
	srv.EnableHTTP2 = true
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			mu.Lock()
			conns++
			if firstPost {
				lateConns++
			}
			mu.Unlock()
		}
	}
	srv.StartTLS()
	defer srv.Close()
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		http1       bool
		proto       string
		wantConns   int
		wantOpening string
	}{
		{false, "HTTP/2.0", 1, "1 connections opened before the window (HTTP/2)"},
		{true, "HTTP/1.1", 4, "4 connections opened before the window (HTTP/1.1)"},
	} {
		mu.Lock()
		conns, protos, firstPost, lateConns = 0, map[string]int{}, false, 0
		mu.Unlock()
		args := []string{"--server", srv.URL, "--tls-ca", caFile, "--token-url", base + "/dev/token", "--state", state,
			"--concurrency", "4", "--duration", "1s", "--tokens", "40", "--source-addresses", "1"}
		if tc.http1 {
			args = append(args, "--http1")
		}
		f, out, _, err := runBenchCLI(t, args...)
		if err != nil || f.errors != 0 {
			t.Fatalf("http1=%v: err %v, figures %+v", tc.http1, err, f)
		}
		srv.CloseClientConnections() // the next case starts with none
		mu.Lock()
		gotConns, gotProtos, gotLate := conns, protos, lateConns
		mu.Unlock()
		if !strings.Contains(out, tc.wantOpening) {
			t.Errorf("http1=%v: output does not say %q:\n%s", tc.http1, tc.wantOpening, out)
		}
		// Every request, the warm-up's included, came by the protocol asked for, and no
		// connection was opened beyond those of the warm-up (the window's requests reused them).
		if gotLate != 0 {
			t.Errorf("http1=%v: %d of %d connections were opened after the first certificate request", tc.http1, gotLate, gotConns)
		}
		if gotConns != tc.wantConns || len(gotProtos) != 1 || gotProtos[tc.proto] == 0 {
			t.Errorf("http1=%v: %d connections accepted (want %d), requests by protocol %v (want only %s)", tc.http1, gotConns, tc.wantConns, gotProtos, tc.proto)
		}
	}
}
