package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/client"
	"github.com/sshca/sshca/internal/testenv"
)

// renewFixture is a host key and its certificate (valid from start-1m until start+life)
// written where renewLoop reads them, and a server that fails the first fails renewals with
// 503 and then answers with a certificate valid for renewedLife more.
type renewFixture struct {
	keyPath, certPath string
	calls             atomic.Int32
	srv               *httptest.Server
}

func newRenewFixture(t *testing.T, start time.Time, life, renewedLife time.Duration, fails int32) *renewFixture {
	t.Helper()
	dir := t.TempDir()
	_, hostPriv, _ := ed25519.GenerateKey(rand.Reader)
	_, caPriv, _ := ed25519.GenerateKey(rand.Reader)
	caSigner, _ := ssh.NewSignerFromKey(caPriv)
	hostSigner, _ := ssh.NewSignerFromKey(hostPriv)
	certLine := func(before time.Time) string {
		c := &ssh.Certificate{Key: hostSigner.PublicKey(), CertType: ssh.HostCert, ValidPrincipals: []string{"web1"},
			ValidAfter: uint64(start.Add(-time.Minute).Unix()), ValidBefore: uint64(before.Unix())}
		if err := c.SignCert(rand.Reader, caSigner); err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(c)))
	}
	f := &renewFixture{keyPath: filepath.Join(dir, "host"), certPath: filepath.Join(dir, "host-cert.pub")}
	block, err := ssh.MarshalPrivateKey(hostPriv, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.keyPath, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.certPath, []byte(certLine(start.Add(life))+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/certs/host/renew" || !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ") {
			http.Error(w, `{"error":"unexpected call"}`, http.StatusBadRequest)
			return
		}
		if f.calls.Add(1) <= fails {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte(`{"error":"store unavailable"}`))
			return
		}
		json.NewEncoder(w).Encode(client.CertResponse{Certificate: certLine(start.Add(life + renewedLife))})
	}))
	t.Cleanup(f.srv.Close)
	return f
}

// TestRenewLoopOnFakeClock: on an injected clock, with no real waiting, the renewal loop waits
// until 2/3 of the certificate's life (jitter of a tenth: 34-46 s of 60 s), retries a failing
// server after 1 s then 2 s, writes the renewed certificate, and then waits for 2/3 of the new
// one's life.
func TestRenewLoopOnFakeClock(t *testing.T) {
	start := time.Unix(1_900_000_000, 0)
	clk := clockwork.NewFakeClockAt(start)
	f := newRenewFixture(t, start, 60*time.Second, time.Hour, 2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out testenv.SyncBuffer
	done := make(chan error, 1)
	go func() { done <- renewLoop(ctx, &out, f.srv.URL, f.keyPath, f.certPath, "", clk) }()

	// step advances the fake clock by d and returns once the loop waits again: a timer that
	// fired made the loop call the server before it waits on its next timer.
	step := func(d time.Duration) {
		t.Helper()
		if err := clk.BlockUntilContext(ctx, 1); err != nil {
			t.Fatal(err)
		}
		clk.Advance(d)
		wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
		defer wcancel()
		if err := clk.BlockUntilContext(wctx, 1); err != nil {
			t.Fatalf("the loop did not wait again after %v: %v\n%s", d, err, out.String())
		}
	}
	step(33 * time.Second)
	if n := f.calls.Load(); n != 0 {
		t.Fatalf("renewed after 33 s of a 60 s certificate (%d calls), want 34-46 s", n)
	}
	step(13 * time.Second) // 46 s: the latest renewal time
	if n := f.calls.Load(); n != 1 {
		t.Fatalf("%d calls at 46 s, want 1", n)
	}
	step(999 * time.Millisecond)
	if n := f.calls.Load(); n != 1 {
		t.Fatalf("retried before its 1 s backoff (%d calls)", n)
	}
	step(time.Millisecond)
	if n := f.calls.Load(); n != 2 {
		t.Fatalf("%d calls after the 1 s backoff, want 2", n)
	}
	step(2 * time.Second)
	if n := f.calls.Load(); n != 3 {
		t.Fatalf("%d calls after the 2 s backoff, want 3", n)
	}
	cert, err := readCert(f.certPath)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := time.Unix(int64(cert.ValidBefore), 0), start.Add(60*time.Second+time.Hour); !got.Equal(want) {
		t.Errorf("certificate file valid before %v, want the renewed one's %v", got, want)
	}
	// The renewed certificate has 1h+60s-49s left at 49 s: the next renewal is 2/3 of that
	// later, give or take a tenth; nothing is called before.
	step(2*time.Hour/3 - 7*time.Minute)
	if n := f.calls.Load(); n != 3 {
		t.Errorf("renewed the new certificate too early (%d calls)", n)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("renewLoop: %v", err)
	}
	for _, want := range []string{"retrying in 1s", "retrying in 2s", "renewed " + f.certPath} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

// TestRenewLoopGivesUpAtExpiry: a server that never renews makes the loop retry with backoff
// doubling up to a minute and give up, with an error saying so, once the next retry would
// come after the certificate expired (fake clock).
func TestRenewLoopGivesUpAtExpiry(t *testing.T) {
	start := time.Unix(1_900_000_000, 0)
	clk := clockwork.NewFakeClockAt(start)
	f := newRenewFixture(t, start, 10*time.Minute, time.Hour, 1<<30)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out testenv.SyncBuffer
	done := make(chan error, 1)
	go func() { done <- renewLoop(ctx, &out, f.srv.URL, f.keyPath, f.certPath, "", clk) }()
	for {
		blocked := make(chan error, 1)
		go func() { blocked <- clk.BlockUntilContext(ctx, 1) }()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), "expired before it could be renewed") {
				t.Fatalf("renewLoop: %v, want the expiry error", err)
			}
			// The first try comes at 340-460 s, then retries 1, 2, 4, 8, 16, 32, 60, 60 s
			// apart while the next one still falls before 600 s: 8 to 10 tries.
			if n := f.calls.Load(); n < 8 || n > 10 {
				t.Errorf("%d renewal attempts before expiry, want 8-10 (backoff 1 s doubling to 1 min)", n)
			}
			if !strings.Contains(out.String(), "retrying in 32s") || !strings.Contains(out.String(), "retrying in 1m0s") {
				t.Errorf("backoff did not grow to a minute:\n%s", out.String())
			}
			return
		case err := <-blocked:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("the loop neither waits nor ended:\n%s", out.String())
		}
		if clk.Since(start) > time.Hour {
			t.Fatalf("still retrying an hour after a 10 min certificate expired:\n%s", out.String())
		}
		clk.Advance(time.Second)
	}
}
