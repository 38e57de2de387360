package services_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/services"
)

// fakeService answers IssueRequest with err, or with a certificate; it records the request.
// Like the authority, it parses the key only after "authenticating" (it accepts any token).
type fakeService struct {
	err  error
	seen ca.CertRequest
	key  ssh.Signer
	host []ca.RevocationState // HostRevocationStates
}

func (f *fakeService) IssueRequest(_ context.Context, token string, req ca.CertRequest) (ca.Issued, error) {
	f.seen = req
	if f.err != nil {
		return ca.Issued{}, f.err
	}
	pub, err := ca.ParsePublicKey(req.PublicKey)
	if err != nil {
		return ca.Issued{}, err
	}
	c := &ssh.Certificate{Key: pub, Serial: 18446744073709551615, CertType: ssh.UserCert, KeyId: "a#1",
		ValidPrincipals: []string{"alice"}, ValidBefore: uint64(time.Now().Add(time.Hour).Unix())}
	if err := c.SignCert(rand.Reader, f.key); err != nil {
		return ca.Issued{}, err
	}
	return ca.Issued{Cert: c, Record: ca.Certificate{ValidBefore: time.Now().Add(time.Hour)}}, nil
}
func (f *fakeService) UserCAKeys() []ssh.PublicKey                      { return []ssh.PublicKey{f.key.PublicKey()} }
func (f *fakeService) HostCAKeys() []ssh.PublicKey                      { return []ssh.PublicKey{f.key.PublicKey()} }
func (f *fakeService) RevokedHostCAKeys() []ssh.PublicKey               { return nil }
func (f *fakeService) MaxTTL(ca.CertKind) time.Duration                 { return time.Hour }
func (f *fakeService) Renew(context.Context, string) (ca.Issued, error) { return ca.Issued{}, f.err }
func (f *fakeService) Revoke(context.Context, string, ca.RevokeRequest) (ca.RevokeResult, error) {
	return ca.RevokeResult{}, f.err
}
func (f *fakeService) RevocationsPage(context.Context, string, ca.RevocationCursor, int) (ca.RevocationPage, error) {
	return ca.RevocationPage{}, f.err
}
func (f *fakeService) ListCertificates(context.Context, string, ca.CertQuery) (ca.CertPage, error) {
	return ca.CertPage{}, f.err
}
func (f *fakeService) UserRevocationStates(context.Context) ([]ca.RevocationState, error) {
	return []ca.RevocationState{{Version: 3, CA: f.key.PublicKey()}}, f.err
}
func (f *fakeService) HostRevocationStates(context.Context) ([]ca.RevocationState, error) {
	return f.host, f.err
}

func newServer(t *testing.T, svc *fakeService) *httptest.Server {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	svc.key, _ = ssh.NewSignerFromKey(priv)
	h := services.NewHTTPHandler(services.MakeEndpoints(svc), services.HTTPOptions{
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		RenderKRL:      func(...ca.RevocationState) ([]byte, error) { return []byte("KRL"), nil },
	})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

func post(t *testing.T, url, body string, hdr map[string]string) (*http.Response, map[string]any) {
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer tok")
	req.Header.Set("Content-Type", "application/json")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&m)
	return resp, m
}

// TestErrorMapping: each domain error kind gets its status, the caller-safe message, and
// never the cause; an unknown error is a bare 500.
func TestErrorMapping(t *testing.T) {
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	sshPub, _ := ssh.NewPublicKey(pub)
	body := `{"public_key":"` + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub))) + `"}`
	for _, tt := range []struct {
		err  error
		code int
		msg  string
	}{
		{ca.Invalid("bad ttl"), 400, "bad ttl"},
		{ca.Unauthenticated("token expired", errors.New("secret detail")), 401, "token expired"},
		{ca.Denied("policy denied the request", "no root for you"), 403, "policy denied the request"},
		{ca.Unavailable("redis down", errors.New("dial tcp 10.0.0.1:6379: password=hunter2")), 503, "redis down"},
		{errors.New("boom: internal secret"), 500, "internal error"},
	} {
		srv := newServer(t, &fakeService{err: tt.err})
		resp, m := post(t, srv.URL+"/v1/certs/user", body, nil)
		if resp.StatusCode != tt.code || m["error"] != tt.msg {
			t.Errorf("%v: %d %v, want %d %q", tt.err, resp.StatusCode, m, tt.code, tt.msg)
		}
		if b, _ := json.Marshal(m); strings.Contains(string(b), "secret") || strings.Contains(string(b), "hunter2") {
			t.Errorf("%v: the cause leaks: %s", tt.err, b)
		}
		if tt.code == 401 && resp.Header.Get("WWW-Authenticate") == "" {
			t.Error("401 without WWW-Authenticate")
		}
	}
}

func TestSourceIPFromTrustedProxyOnly(t *testing.T) {
	svc := &fakeService{}
	srv := newServer(t, svc)
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	sshPub, _ := ssh.NewPublicKey(pub)
	body := `{"public_key":"` + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub))) + `"}`
	resp, m := post(t, srv.URL+"/v1/certs/user", body, map[string]string{"X-Forwarded-For": "203.0.113.9, 127.0.0.5"})
	if resp.StatusCode != 200 || svc.seen.SourceIP != "203.0.113.9" {
		t.Errorf("status %d source %q (%v)", resp.StatusCode, svc.seen.SourceIP, m)
	}
	if m["serial"] != "18446744073709551615" {
		t.Errorf("serial %v: a uint64 must travel as a decimal string", m["serial"])
	}
	r := httptest.NewRequest(http.MethodPost, "/", nil)
	r.RemoteAddr = "198.51.100.7:1234"
	r.Header.Set("X-Forwarded-For", "203.0.113.9")
	if ip := services.ClientIP(r, []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}); ip != "198.51.100.7" {
		t.Errorf("untrusted peer's X-Forwarded-For believed: %s", ip)
	}
}

func TestKRLETag(t *testing.T) {
	srv := newServer(t, &fakeService{})
	resp, err := http.Get(srv.URL + "/v1/krl")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	etag := resp.Header.Get("ETag")
	if resp.StatusCode != 200 || !strings.HasPrefix(etag, `"3-`) || resp.Header.Get("X-KRL-Version") != "3" {
		t.Fatalf("GET /v1/krl: %d etag %q", resp.StatusCode, etag)
	}
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v1/krl", nil)
	req.Header.Set("If-None-Match", etag)
	resp, _ = http.DefaultClient.Do(req)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotModified {
		t.Errorf("If-None-Match: %d, want 304", resp.StatusCode)
	}
}
