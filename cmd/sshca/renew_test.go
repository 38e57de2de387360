package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
)

// TestHostRenewal: a host renews its certificate with a proof of possession signed by its
// key, keeping its host names; replayed, forged, foreign or revoked proofs are refused; and
// `sshca cert host --renew` keeps the file renewed and runs the reload command.
func TestHostRenewal(t *testing.T) {
	base, _ := startDev(t)
	dir := t.TempDir()
	hostKeyPath := keygen(t, dir, "host")
	hostKey := parseSigner(t, readFile(t, hostKeyPath))
	ci := devToken(t, base, map[string]any{"sub": "ci-job", "groups": []string{"ci"}})
	hc := issue(t, base, "host", ci, map[string]any{"public_key": readFile(t, hostKeyPath+".pub"), "hostnames": []string{"web1.dev.internal", "localhost"}, "ttl": "1h"})
	cert := parseCert(t, hc.Certificate)

	renew := func(token string) (int, []byte) {
		return call(t, http.MethodPost, base+"/v1/certs/host/renew", token, map[string]any{})
	}
	tok, err := ca.SignRenewToken(hostKey, cert, time.Now(), "id-1")
	if err != nil {
		t.Fatal(err)
	}
	code, out := renew(tok)
	if code != 200 {
		t.Fatalf("renew = %d %s", code, out)
	}
	if !strings.Contains(string(out), `"principals":["localhost","web1.dev.internal"]`) || strings.Contains(string(out), `"serial":"`+hc.Serial+`"`) {
		t.Errorf("renewed certificate: %s", out)
	}
	if code, out := renew(tok); code != 401 || !strings.Contains(string(out), "already used") {
		t.Errorf("replayed proof: %d %s", code, out)
	}
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	otherSigner, _ := ssh.NewSignerFromKey(other)
	forged, _ := ca.SignRenewToken(otherSigner, cert, time.Now(), "id-2")
	if code, out := renew(forged); code != 401 || !strings.Contains(string(out), "not signed by the certificate's key") {
		t.Errorf("proof signed by another key: %d %s", code, out)
	}
	foreign := &ssh.Certificate{Key: hostKey.PublicKey(), CertType: ssh.HostCert, ValidPrincipals: []string{"web1.dev.internal"},
		ValidAfter: uint64(time.Now().Add(-time.Minute).Unix()), ValidBefore: uint64(time.Now().Add(time.Hour).Unix())}
	_ = foreign.SignCert(rand.Reader, otherSigner)
	ftok, _ := ca.SignRenewToken(hostKey, foreign, time.Now(), "id-3")
	if code, out := renew(ftok); code != 401 || !strings.Contains(string(out), "not signed by this host CA") {
		t.Errorf("certificate from another CA: %d %s", code, out)
	}
	stale, _ := ca.SignRenewToken(hostKey, cert, time.Now().Add(-10*time.Minute), "id-4")
	if code, _ := renew(stale); code != 401 {
		t.Errorf("expired proof: %d", code)
	}
	admin := devToken(t, base, map[string]any{"sub": "admin", "preferred_username": "admin1", "groups": []string{"sshca-admins"}})
	if c, out := call(t, http.MethodPost, base+"/v1/revocations", admin, map[string]any{"serial": hc.Serial, "reason": "host decommissioned"}); c != 200 {
		t.Fatalf("revoke: %d %s", c, out)
	}
	rtok, _ := ca.SignRenewToken(hostKey, cert, time.Now(), "id-5")
	if code, out := renew(rtok); code != 403 || !strings.Contains(string(out), "revoked") {
		t.Errorf("revoked certificate: %d %s", code, out)
	}

	// The CLI: creates the host key, prints the sshd line, renews at 2/3 of a 60s lifetime
	// (with jitter of a tenth) and reloads. The renewal timer is injected: it records how long
	// the loop would wait and fires at once the first time (the certificate is still valid, so
	// the server renews it as it would 40s later), then never.
	keyPub := filepath.Join(dir, "new_host_key.pub")
	reloaded := filepath.Join(dir, "reloaded")
	t.Setenv("SSHCA_TOKEN", devToken(t, base, map[string]any{"sub": "ci-job", "groups": []string{"ci"}}))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var buf testenv.SyncBuffer
	waits := make(chan time.Duration, 16)
	after := func(d time.Duration) <-chan time.Time {
		waits <- d
		if len(waits) > 1 {
			return nil // later renewals: wait until the test ends
		}
		fired := make(chan time.Time, 1)
		fired <- time.Now()
		return fired
	}
	done := make(chan error, 1)
	go func() {
		done <- runCert(ctx, &buf, "host", certFlags{server: base, key: keyPub, tokenEnv: "SSHCA_TOKEN", ttl: "60s",
			names: []string{"localhost"}, renew: true, reloadCmd: "echo ok >> " + reloaded, clock: afterClock{clockwork.NewRealClock(), after}})
	}()
	waitFor(t, 30*time.Second, "the CLI renews and reloads", func() bool { _, err := os.Stat(reloaded); return err == nil })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("cert host --renew: %v\n%s", err, buf.String())
	}
	for _, want := range []string{"created host key", "HostCertificate " + filepath.Join(dir, "new_host_key-cert.pub"), "renewed "} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, buf.String())
		}
	}
	// left is at most 60s (the certificate's ValidBefore, in whole seconds, minus the time
	// taken since it was signed); the wait is 2/3 of it with jitter of a tenth: 34s-46s.
	if first := <-waits; first < 33*time.Second || first > 46*time.Second {
		t.Errorf("first renewal after %v, want about 40s (2/3 of 60s, jitter 6s)", first)
	}
	if st, err := os.Stat(filepath.Join(dir, "new_host_key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("host key mode: %v %v", st, err)
	}
}

// afterClock is the real clock with After replaced by after.
type afterClock struct {
	clockwork.Clock
	after func(time.Duration) <-chan time.Time
}

func (c afterClock) After(d time.Duration) <-chan time.Time { return c.after(d) }

func parseSigner(t *testing.T, pemKey string) ssh.Signer {
	s, err := ssh.ParsePrivateKey([]byte(pemKey))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func parseCert(t *testing.T, line string) *ssh.Certificate {
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	return pub.(*ssh.Certificate)
}
