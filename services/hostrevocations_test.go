package services_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/krl"
	"github.com/sshca/sshca/revocation"
	"github.com/sshca/sshca/services"
)

func newKey(t *testing.T) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func line(k ssh.PublicKey) string { return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))) }

func get(t *testing.T, url, ifNoneMatch string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if ifNoneMatch != "" {
		req.Header.Set("If-None-Match", ifNoneMatch)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

// TestHostRevocationsPublished: what is revoked under the host CA keys reaches both places
// clients look. /v1/krl/host revokes the host certificate revoked by serial (in the scope of
// the key that signed it, here a retired one), the one revoked by key ID, the banned host key
// and the compromised host CA key; /v1/ca/known_hosts has an @revoked line for the banned key
// and the compromised key (once each, though the compromised key is banned too) and none for
// certificates. Entries keep their own expiries: a ban and a compromise are permanent.
func TestHostRevocationsPublished(t *testing.T) {
	active, retired, gone := newKey(t), newKey(t), newKey(t)
	hostKey, bannedHost, otherHost := newKey(t), newKey(t), newKey(t)
	cert := func(signer ssh.Signer, key ssh.PublicKey, serial uint64, id string) *ssh.Certificate {
		c := &ssh.Certificate{Key: key, Serial: serial, CertType: ssh.HostCert, KeyId: id, ValidPrincipals: []string{"web1"},
			ValidBefore: uint64(time.Now().Add(time.Hour).Unix())}
		if err := c.SignCert(rand.Reader, signer); err != nil {
			t.Fatal(err)
		}
		return c
	}
	bySerial := cert(retired, hostKey.PublicKey(), 4242, "web1#4242")
	byKeyID := cert(active, otherHost.PublicKey(), 77, "web2#77")
	live := cert(active, hostKey.PublicKey(), 4243, "web1#4243")
	bannedCert := cert(active, bannedHost.PublicKey(), 5, "web3#5")
	keyEntry := func(k ssh.PublicKey) string { return base64.StdEncoding.EncodeToString(k.Marshal()) }
	generated := time.Date(2026, 11, 29, 20, 0, 0, 0, time.UTC)
	svc := &fakeService{host: []ca.RevocationState{
		{CA: active.PublicKey(), Version: 7, Changed: generated.Add(-time.Hour), Entries: []ca.RevocationEntry{
			{Kind: ca.RevokedKeyID, Value: "web2#77", Expiry: time.Now().Add(time.Hour)},
			{Kind: ca.RevokedKey, Value: keyEntry(bannedHost.PublicKey())},
			{Kind: ca.RevokedKey, Value: keyEntry(gone.PublicKey())},
		}},
		{CA: retired.PublicKey(), Version: 2, Changed: generated.Add(900 * time.Millisecond), Entries: []ca.RevocationEntry{
			{Kind: ca.RevokedSerial, Value: "4242", Expiry: time.Now().Add(time.Hour)},
		}},
		{Version: 1, Entries: []ca.RevocationEntry{{Kind: ca.RevokedKey, Value: keyEntry(gone.PublicKey())}}},
	}}
	svc.key = active
	h := services.NewHTTPHandler(services.MakeEndpoints(svc), services.HTTPOptions{RenderKRL: revocation.EncodeKRL})
	srv := httptest.NewServer(h)
	defer srv.Close()

	resp, body := get(t, srv.URL+"/v1/krl/host", "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v1/krl/host = %d %s", resp.StatusCode, body)
	}
	k, err := krl.Parse(body)
	if err != nil {
		t.Fatalf("the host KRL does not parse: %v", err)
	}
	for name, c := range map[string]*ssh.Certificate{"by serial": bySerial, "by key ID": byKeyID, "of a banned key": bannedCert} {
		if !k.IsRevoked(c) {
			t.Errorf("the host KRL does not revoke the certificate %s", name)
		}
	}
	if k.IsRevoked(live) {
		t.Error("the host KRL revokes a certificate nobody revoked")
	}
	if !k.IsKeyRevoked(gone.PublicKey()) || !k.IsKeyRevoked(bannedHost.PublicKey()) {
		t.Error("the host KRL does not revoke the compromised CA key and the banned host key")
	}
	if want := revocation.ComposeVersion(0, 10); k.Version != want || resp.Header.Get("X-KRL-Version") != "10" {
		t.Errorf("host KRL version %d, X-KRL-Version %q; want %d, 10", k.Version, resp.Header.Get("X-KRL-Version"), want)
	}
	if !k.GeneratedDate.Equal(generated) {
		t.Errorf("generated %v, want the newest change of the states %v", k.GeneratedDate, generated)
	}
	etag := resp.Header.Get("ETag")
	if again, _ := get(t, srv.URL+"/v1/krl/host", etag); etag == "" || again.StatusCode != http.StatusNotModified {
		t.Errorf("GET /v1/krl/host with its ETag %q = %d, want 304", etag, again.StatusCode)
	}

	resp, body = get(t, srv.URL+"/v1/ca/known_hosts", "")
	want := "@cert-authority * " + line(active.PublicKey()) + " sshca-host-ca\n" +
		"@revoked * " + line(bannedHost.PublicKey()) + " sshca-revoked-key\n" +
		"@revoked * " + line(gone.PublicKey()) + " sshca-host-ca-compromised\n"
	if resp.StatusCode != http.StatusOK || string(body) != want {
		t.Errorf("GET /v1/ca/known_hosts = %d\n%s\nwant\n%s", resp.StatusCode, body, want)
	}

	// A store that cannot answer: 503 on both, never a list without what is revoked.
	svc.err = ca.Unavailable("revocation store unavailable", errors.New("dial tcp: refused"))
	for _, path := range []string{"/v1/krl/host", "/v1/ca/known_hosts"} {
		resp, body := get(t, srv.URL+path, "")
		if resp.StatusCode != http.StatusServiceUnavailable || strings.Contains(string(body), "refused") {
			t.Errorf("GET %s with the store down = %d %s, want 503 without the cause", path, resp.StatusCode, body)
		}
	}
}
