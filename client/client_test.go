package client_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/client"
	"github.com/sshca/sshca/services"
)

// api answers every v1 endpoint behind the real handler with fixed values, and records what
// it was asked; err, when set, is every authorized call's answer.
type api struct {
	caKey ssh.Signer
	err   error

	token   string
	issued  ca.CertRequest
	revoked ca.RevokeRequest
	keyCall string
}

var validBefore = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

func (a *api) IssueRequest(_ context.Context, token string, req ca.CertRequest) (ca.Issued, error) {
	a.token, a.issued = token, req
	if a.err != nil {
		return ca.Issued{}, a.err
	}
	return a.issue(req.PublicKey, req.Principals)
}

func (a *api) issue(key string, principals []string) (ca.Issued, error) {
	pub, err := ca.ParsePublicKey(key)
	if err != nil {
		return ca.Issued{}, err
	}
	c := &ssh.Certificate{Key: pub, Serial: 18446744073709551615, CertType: ssh.UserCert, KeyId: "alice#18446744073709551615",
		ValidPrincipals: principals, ValidBefore: uint64(validBefore.Unix())}
	if err := c.SignCert(rand.Reader, a.caKey); err != nil {
		return ca.Issued{}, err
	}
	return ca.Issued{Cert: c, Record: ca.Certificate{ValidAfter: validBefore.Add(-time.Hour), ValidBefore: validBefore}}, nil
}

func (a *api) UserCAKeys() []ssh.PublicKey        { return []ssh.PublicKey{a.caKey.PublicKey()} }
func (a *api) HostCAKeys() []ssh.PublicKey        { return []ssh.PublicKey{a.caKey.PublicKey()} }
func (a *api) RevokedHostCAKeys() []ssh.PublicKey { return nil }

func (a *api) Renew(_ context.Context, token string) (ca.Issued, error) {
	a.token = token
	if a.err != nil {
		return ca.Issued{}, a.err
	}
	return a.issue(strings.TrimSpace(string(ssh.MarshalAuthorizedKey(a.caKey.PublicKey()))), []string{"web1.example.com"})
}

var record = ca.Certificate{Serial: 7, KeyID: "alice#7", Kind: ca.UserCert, Identity: "https://idp|alice", Principals: []string{"alice"},
	KeyFingerprint: "SHA256:k", CAFingerprint: "SHA256:c", ValidAfter: validBefore.Add(-time.Hour), ValidBefore: validBefore}

func (a *api) Revoke(_ context.Context, token string, req ca.RevokeRequest) (ca.RevokeResult, error) {
	a.token, a.revoked = token, req
	if a.err != nil {
		return ca.RevokeResult{}, a.err
	}
	return ca.RevokeResult{Revoked: []ca.RevocationEntry{{Kind: ca.RevokedSerial, Value: "7", Expiry: validBefore}},
		Certificates: []ca.Certificate{record}, BlockedUntil: validBefore, Matches: []string{"https://idp|alice"}, Version: 42}, nil
}

func (a *api) RevocationsPage(_ context.Context, token string, after ca.RevocationCursor, limit int) (ca.RevocationPage, error) {
	a.token = token
	if !after.IsZero() || limit != client.DefaultPageLimit {
		return ca.RevocationPage{}, ca.Invalid("page after %+v of %d", after, limit)
	}
	st := ca.RevocationState{CA: a.caKey.PublicKey(), Version: 3, Entries: []ca.RevocationEntry{{Kind: ca.RevokedKeyID, Value: "alice#7", Expiry: validBefore}}}
	return ca.RevocationPage{User: st, Host: ca.RevocationState{CA: a.caKey.PublicKey()}}, a.err
}

func (a *api) ListCertificates(_ context.Context, token string, q ca.CertQuery) (ca.CertPage, error) {
	a.token = token
	if q != (ca.CertQuery{Identity: "alice@example.com", Principal: "alice", Live: true, Limit: client.DefaultPageLimit}) {
		return ca.CertPage{}, ca.Invalid("query %+v", q)
	}
	return ca.CertPage{Certificates: []ca.ListedCertificate{{Certificate: record, Revoked: ca.RevokedBySerial}}}, a.err
}

func (a *api) UserRevocationStates(context.Context) ([]ca.RevocationState, error) {
	return []ca.RevocationState{{Version: 5, CA: a.caKey.PublicKey()}}, a.err
}

func (a *api) HostRevocationStates(context.Context) ([]ca.RevocationState, error) {
	return []ca.RevocationState{{Version: 2, CA: a.caKey.PublicKey()}}, a.err
}

var caKey = ca.CAKey{CA: ca.UserCert, Fingerprint: "SHA256:next", Algorithm: "ssh-ed25519", State: ca.KeyState("next"), Created: validBefore}

func (a *api) Keys(_ context.Context, token string) (ca.Keyring, error) {
	a.token, a.keyCall = token, "list"
	return ca.Keyring{Version: 9, Keys: []ca.CAKey{caKey}}, a.err
}

func (a *api) GenerateKey(_ context.Context, token string, kind ca.CertKind, typ string) (ca.CAKey, error) {
	a.token, a.keyCall = token, "generate "+string(kind)+" "+typ
	return caKey, a.err
}

func (a *api) PromoteKey(_ context.Context, token string, kind ca.CertKind, force bool) (ca.CAKey, error) {
	a.token, a.keyCall = token, "promote "+string(kind)+map[bool]string{true: " force"}[force]
	return caKey, a.err
}

func (a *api) RetireKey(_ context.Context, token, fp string, force bool) (ca.CAKey, error) {
	a.token, a.keyCall = token, "retire "+fp+map[bool]string{true: " force"}[force]
	return caKey, a.err
}

func (a *api) CompromisedKey(_ context.Context, token, fp string) (ca.CAKey, error) {
	a.token, a.keyCall = token, "compromised "+fp
	return caKey, a.err
}

func newAPI(t *testing.T) (*api, *client.Client) {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	s, _ := ssh.NewSignerFromKey(priv)
	a := &api{caKey: s}
	h := services.NewHTTPHandler(services.MakeEndpoints(a), services.HTTPOptions{
		Keys:      a,
		Login:     &services.LoginConfig{Issuer: "https://idp", ClientID: "sshca", Scopes: []string{"openid", "email"}},
		RenderKRL: func(st ...ca.RevocationState) ([]byte, error) { return []byte("KRL"), nil },
	})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return a, client.New(srv.URL + "/")
}

func diff(t *testing.T, what string, want, got any) {
	t.Helper()
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("%s (-want +got):\n%s", what, d)
	}
}

// TestRoundTrip: every endpoint of the v1 API, called with the client, reaches the real
// handler with what the caller asked, and its answer arrives typed and whole.
func TestRoundTrip(t *testing.T) {
	ctx := context.Background()
	a, c := newAPI(t)
	_, userPriv, _ := ed25519.GenerateKey(rand.Reader)
	userKey, _ := ssh.NewSignerFromKey(userPriv)
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(userKey.PublicKey())))

	got, err := c.IssueUser(ctx, "tok-u", client.CertRequest{PublicKey: line, Principals: []string{"alice"}, TTL: "5m", Reason: "JIRA-1"})
	if err != nil {
		t.Fatal(err)
	}
	diff(t, "user request", ca.CertRequest{Kind: ca.UserCert, PublicKey: line, Principals: []string{"alice"}, TTL: "5m", Reason: "JIRA-1", SourceIP: "127.0.0.1"}, a.issued)
	if a.token != "tok-u" || !strings.HasPrefix(got.Certificate, "ssh-ed25519-cert-v01@openssh.com ") {
		t.Errorf("token %q, certificate %.40q", a.token, got.Certificate)
	}
	got.Certificate = ""
	diff(t, "user answer", client.CertResponse{Serial: "18446744073709551615", KeyID: "alice#18446744073709551615", Principals: []string{"alice"},
		ValidAfter: "2030-01-02T02:04:05Z", ValidBefore: "2030-01-02T03:04:05Z"}, got)

	if _, err := c.IssueHost(ctx, "tok-h", client.CertRequest{PublicKey: line, Hostnames: []string{"web1.example.com"}}); err != nil {
		t.Fatal(err)
	}
	diff(t, "host request", ca.CertRequest{Kind: ca.HostCert, PublicKey: line, Principals: []string{"web1.example.com"}, SourceIP: "127.0.0.1"}, a.issued)

	renewed, err := c.RenewHost(ctx, "proof")
	if err != nil || a.token != "proof" || len(renewed.Principals) != 1 || renewed.Principals[0] != "web1.example.com" {
		t.Errorf("renew: %v, token %q, %+v", err, a.token, renewed)
	}

	rev, err := c.Revoke(ctx, "tok-r", client.RevokeRequest{Identity: "alice@example.com", AllMatches: true, Reason: "left"})
	if err != nil {
		t.Fatal(err)
	}
	diff(t, "revoke request", ca.RevokeRequest{Identity: "alice@example.com", AllMatches: true, Reason: "left"}, a.revoked)
	wantCert := client.Certificate{Serial: "7", KeyID: "alice#7", Kind: "user", Identity: "https://idp|alice", Principals: []string{"alice"},
		KeyFingerprint: "SHA256:k", CAFingerprint: "SHA256:c", ValidAfter: "2030-01-02T02:04:05Z", ValidBefore: "2030-01-02T03:04:05Z"}
	diff(t, "revoke answer", client.RevokeResponse{Revoked: []client.RevocationEntry{{Kind: "serial", Value: "7", Expires: "2030-01-02T03:04:05Z"}},
		Certificates: []client.Certificate{wantCert}, BlockedUntil: "2030-01-02T03:04:05Z", Matches: []string{"https://idp|alice"}, Version: "42"}, rev)
	if _, err := c.Revoke(ctx, "tok-r", client.RevokeRequest{Serial: "7", Reason: "lost"}); err != nil || a.revoked.Serial != 7 {
		t.Errorf("revoke by serial: %v, %+v", err, a.revoked)
	}

	lists, err := c.Revocations(ctx, "tok-l")
	if err != nil {
		t.Fatal(err)
	}
	caLine := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(a.caKey.PublicKey())))
	fp := ssh.FingerprintSHA256(a.caKey.PublicKey())
	diff(t, "revocations", client.RevocationsResponse{
		UserCA: client.RevocationScope{CA: caLine, Fingerprint: fp, Version: "3", Entries: []client.RevocationEntry{{Kind: "key_id", Value: "alice#7", Expires: "2030-01-02T03:04:05Z"}}},
		HostCA: client.RevocationScope{CA: caLine, Fingerprint: fp, Version: "0", Entries: []client.RevocationEntry{}},
	}, lists)

	inv, err := c.Inventory(ctx, "tok-i", client.CertQuery{Identity: "alice@example.com", Principal: "alice", Live: true})
	if err != nil {
		t.Fatal(err)
	}
	listed := wantCert
	listed.Revoked = "serial"
	diff(t, "inventory", []client.Certificate{listed}, inv)

	krl, err := c.KRL(ctx, "")
	if err != nil || string(krl.Data) != "KRL" || krl.Version != 5 || krl.ETag == "" || krl.NotModified {
		t.Fatalf("KRL: %v %+v", err, krl)
	}
	again, err := c.KRL(ctx, krl.ETag)
	if err != nil || !again.NotModified || again.ETag != krl.ETag || len(again.Data) != 0 {
		t.Errorf("KRL with its ETag: %v %+v, want not modified", err, again)
	}
	if host, err := c.HostKRL(ctx); err != nil || string(host) != "KRL" {
		t.Errorf("host KRL: %v %q", err, host)
	}

	keys, err := c.UserCAKeys(ctx)
	if err != nil || len(keys) != 1 || ssh.FingerprintSHA256(keys[0]) != fp {
		t.Errorf("user CA keys: %v %v", err, keys)
	}
	kh, err := c.KnownHosts(ctx)
	if err != nil || kh != "@cert-authority * "+caLine+" sshca-host-ca\n" {
		t.Errorf("known_hosts: %v %q", err, kh)
	}
	lc, err := c.LoginConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	diff(t, "login config", client.LoginConfig{Issuer: "https://idp", ClientID: "sshca", Scopes: []string{"openid", "email"}}, lc)

	ring, err := c.Keys(ctx, "tok-k")
	if err != nil || a.keyCall != "list" || a.token != "tok-k" {
		t.Fatalf("keys: %v %q %q", err, a.keyCall, a.token)
	}
	diff(t, "keyring", ca.Keyring{Version: 9, Keys: []ca.CAKey{caKey}}, ring)
	for _, tt := range []struct {
		call func(context.Context, string, client.KeyRequest) (ca.CAKey, error)
		req  client.KeyRequest
		want string
	}{
		{c.GenerateKey, client.KeyRequest{CA: "user", Type: "ed25519"}, "generate user ed25519"},
		{c.PromoteKey, client.KeyRequest{CA: "host", Force: true}, "promote host force"},
		{c.RetireKey, client.KeyRequest{Fingerprint: "SHA256:x"}, "retire SHA256:x"},
		{c.CompromisedKey, client.KeyRequest{Fingerprint: "SHA256:y"}, "compromised SHA256:y"},
	} {
		k, err := tt.call(ctx, "tok-k", tt.req)
		if err != nil || a.keyCall != tt.want {
			t.Errorf("%s: %v, the server did %q", tt.want, err, a.keyCall)
		}
		diff(t, tt.want, caKey, k)
	}
}

// TestErrors: an answer other than 200 is a *client.Error with the status, the service's
// message and reasons, and the endpoint; the cause of a 503 stays on the server.
func TestErrors(t *testing.T) {
	ctx := context.Background()
	a, c := newAPI(t)
	a.err = ca.Denied("policy denied the request", "no root", "ttl too long")
	_, err := c.IssueUser(ctx, "tok", client.CertRequest{PublicKey: "x", Principals: []string{"root"}})
	var e *client.Error
	if !errors.As(err, &e) {
		t.Fatalf("%v (%T), want a *client.Error", err, err)
	}
	diff(t, "403", &client.Error{Status: 403, Message: "policy denied the request", Reasons: []string{"no root", "ttl too long"}, Endpoint: "POST /v1/certs/user"}, e)
	if want := "POST /v1/certs/user: policy denied the request: no root; ttl too long (HTTP 403)"; err.Error() != want {
		t.Errorf("Error()\n got %q\nwant %q", err, want)
	}

	a.err = ca.Unavailable("revocation store unavailable", errors.New("dial tcp 10.0.0.9:6379: secret detail"))
	for name, call := range map[string]func() error{
		"GET /v1/revocations": func() error { _, err := c.Revocations(ctx, "t"); return err },
		"GET /v1/certs": func() error {
			_, err := c.Inventory(ctx, "t", client.CertQuery{Identity: "alice@example.com", Principal: "alice", Live: true})
			return err
		},
		"GET /v1/krl": func() error { _, err := c.KRL(ctx, ""); return err },
		"POST /v1/keys/promote": func() error {
			_, err := c.PromoteKey(ctx, "t", client.KeyRequest{CA: "user"})
			return err
		},
	} {
		err := call()
		if !errors.As(err, &e) || e.Status != 503 || e.Endpoint != name || e.Message != "revocation store unavailable" || strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: %v", name, err)
		}
	}

	_, err = c.Inventory(ctx, "t", client.CertQuery{Principal: "root"})
	if !errors.As(err, &e) || e.Status != 400 || e.Endpoint != "GET /v1/certs" {
		t.Errorf("inventory with a query the service refuses: %v", err)
	}
	if _, err := client.New("http://127.0.0.1:1").LoginConfig(ctx); err == nil || errors.As(err, &e) || !strings.Contains(err.Error(), "server unreachable") {
		t.Errorf("no server: %v", err)
	}
}
