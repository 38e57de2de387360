package identity_test

import (
	"context"
	"encoding/base64"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/identity/devissuer"
	"github.com/sshca/sshca/internal/testenv"
)

// startIssuer serves a development issuer on a loopback httptest server.
func startIssuer(t testing.TB, alg string) *devissuer.Issuer {
	t.Helper()
	var iss *devissuer.Issuer
	mux := http.NewServeMux()
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	iss, err := devissuer.New(srv.URL+"/oidc", devissuer.Options{Audience: "sshca", Algorithm: alg})
	if err != nil {
		t.Fatal(err)
	}
	mux.Handle("/oidc/", http.StripPrefix("/oidc", iss.Handler()))
	return iss
}

func mint(t testing.TB, iss *devissuer.Issuer, claims map[string]any) string {
	t.Helper()
	tok, err := iss.Mint(claims)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestAuthenticate(t *testing.T) {
	ctx := context.Background()
	a := startIssuer(t, "ES256")
	b := startIssuer(t, "RS256")
	v, err := identity.New(ctx, identity.Config{
		Issuers: []identity.IssuerConfig{
			{IssuerURL: a.URL(), Audiences: []string{"sshca"}, AllowedEmailDomains: []string{"example.com"}},
			{IssuerURL: b.URL(), Audiences: []string{"other", "sshca"}, UsernameClaim: "login", GroupsClaim: "roles", Workload: true},
		},
		ReservedPrincipals: []string{"admin"},
	})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().Unix()
	tests := []struct {
		name    string
		token   string
		want    ca.Identity
		wantErr string
	}{
		{name: "preferred_username", token: mint(t, a, map[string]any{"sub": "u1", "preferred_username": "alice", "groups": []string{"ops", "dev"}, "email": "alice@example.com", "email_verified": true, "amr": []string{"pwd", "mfa"}}),
			want: ca.Identity{Issuer: a.URL(), Subject: "u1", Email: "alice@example.com", Username: "alice", Groups: []string{"ops", "dev"}, AMR: []string{"pwd", "mfa"}}},
		{name: "email fallback when verified and allowed", token: mint(t, a, map[string]any{"sub": "u2", "email": "Bob@Example.com", "email_verified": true}),
			want: ca.Identity{Issuer: a.URL(), Subject: "u2", Email: "Bob@Example.com", Username: "bob", Groups: []string{}, AMR: []string{}}},
		{name: "unverified email gives nothing", token: mint(t, a, map[string]any{"sub": "u3", "email": "carol@example.com", "email_verified": false}),
			want: ca.Identity{Issuer: a.URL(), Subject: "u3", Groups: []string{}, AMR: []string{}}},
		{name: "email in another domain gives no username", token: mint(t, a, map[string]any{"sub": "u4", "email": "dave@evil.com", "email_verified": true}),
			want: ca.Identity{Issuer: a.URL(), Subject: "u4", Email: "dave@evil.com", Groups: []string{}, AMR: []string{}}},
		{name: "root is never derived", token: mint(t, a, map[string]any{"sub": "u5", "preferred_username": "root"}),
			want: ca.Identity{Issuer: a.URL(), Subject: "u5", Groups: []string{}, AMR: []string{}}},
		{name: "configured reserved name", token: mint(t, a, map[string]any{"sub": "u6", "email": "admin@example.com", "email_verified": true}),
			want: ca.Identity{Issuer: a.URL(), Subject: "u6", Email: "admin@example.com", Groups: []string{}, AMR: []string{}}},
		{name: "bad username grammar", token: mint(t, a, map[string]any{"sub": "u7", "preferred_username": "Alice Smith"}),
			want: ca.Identity{Issuer: a.URL(), Subject: "u7", Groups: []string{}, AMR: []string{}}},
		{name: "second issuer, audience list, custom claims, group string", token: mint(t, b, map[string]any{"sub": "repo:org/infra", "login": "ci_bot", "roles": "ci"}),
			want: ca.Identity{Issuer: b.URL(), Subject: "repo:org/infra", Username: "ci_bot", Groups: []string{"ci"}, AMR: []string{}, Workload: true}},
		{name: "expired", token: mint(t, a, map[string]any{"sub": "u", "exp": now - 120}), wantErr: "token expired"},
		{name: "not yet valid", token: mint(t, a, map[string]any{"sub": "u", "nbf": now + 600}), wantErr: "nbf"},
		{name: "wrong audience", token: mint(t, a, map[string]any{"sub": "u", "aud": "elsewhere"}), wantErr: "audience"},
		{name: "audience list with ours", token: mint(t, a, map[string]any{"sub": "u8", "preferred_username": "erin", "aud": []string{"x", "sshca"}}),
			want: ca.Identity{Issuer: a.URL(), Subject: "u8", Username: "erin", Groups: []string{}, AMR: []string{}}},
		{name: "unknown issuer", token: mint(t, a, map[string]any{"sub": "u", "iss": "https://evil.example.com"}), wantErr: "not trusted"},
		{name: "issuer A's claim signed by B", token: mint(t, b, map[string]any{"sub": "u", "iss": a.URL()}), wantErr: "signature does not verify"},
		{name: "unsigned", token: unsigned(mint(t, a, map[string]any{"sub": "u"})), wantErr: `token alg "none" is not accepted`},
		{name: "garbage", token: "abc", wantErr: "malformed token"},
		{name: "empty", token: "", wantErr: "missing bearer token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := v.Authenticate(ctx, tt.token)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				if ca.KindOf(err) != ca.KindUnauthenticated {
					t.Errorf("kind = %v, want unauthenticated", ca.KindOf(err))
				}
				if tt.token != "" && strings.Contains(err.Error(), tt.token) {
					t.Error("the error contains the token")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got.Claims = nil
			if !got.Token.SingleUse || got.Token.ID == "" || got.Token.Expiry.IsZero() {
				t.Errorf("token use = %+v, want single use by default", got.Token)
			}
			got.Token = ca.TokenUse{}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("identity (-want +got):\n%s", diff)
			}
		})
	}
}

func unsigned(tok string) string {
	parts := strings.Split(tok, ".")
	return base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none"}`)) + "." + parts[1] + "."
}

// TestKeyRotation: after the issuer rotates, new tokens verify (the JWKS is refetched) and
// tokens signed by the retired key do not.
func TestKeyRotation(t *testing.T) {
	ctx := context.Background()
	a := startIssuer(t, "ES256")
	v, err := identity.New(ctx, identity.Config{Issuers: []identity.IssuerConfig{{IssuerURL: a.URL(), Audiences: []string{"sshca"}}}})
	if err != nil {
		t.Fatal(err)
	}
	old := mint(t, a, map[string]any{"sub": "u", "preferred_username": "alice"})
	if _, err := v.Authenticate(ctx, old); err != nil {
		t.Fatal(err)
	}
	if err := a.Rotate(); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Authenticate(ctx, mint(t, a, map[string]any{"sub": "u", "preferred_username": "alice"})); err != nil {
		t.Fatalf("token signed by the new key: %v", err)
	}
	// go-oidc wakes the request that triggered the refetch a moment before it replaces its
	// cache; the retired key stops verifying once the cache holds the new key set.
	deadline := time.Now().Add(2 * time.Second)
	for {
		if _, err := v.Authenticate(ctx, old); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("token signed by the retired key still verifies 2s after the key set was refetched")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestIssuerDownAtStart: an unreachable issuer does not stop the service; its tokens get 503
// until it is reachable.
func TestIssuerDownAtStart(t *testing.T) {
	mux := http.NewServeMux()
	srv := httptest.NewUnstartedServer(mux)
	addr := srv.Listener.Addr().String()
	srv.Listener.Close() // nothing listens: connections are refused at once
	url := "http://" + addr + "/oidc"
	iss, err := devissuer.New(url, devissuer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	mux.Handle("/oidc/", http.StripPrefix("/oidc", iss.Handler()))
	v, err := identity.New(context.Background(), identity.Config{Issuers: []identity.IssuerConfig{{IssuerURL: url, Audiences: []string{"sshca"}}}})
	if err != nil {
		t.Fatal(err)
	}
	tok := mint(t, iss, map[string]any{"sub": "u"})
	if _, err := v.Authenticate(context.Background(), tok); ca.KindOf(err) != ca.KindUnavailable {
		t.Fatalf("err = %v, want unavailable", err)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("port %s was taken meanwhile: %v", addr, err)
	}
	srv.Listener = l
	srv.Start()
	defer srv.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := v.Authenticate(context.Background(), tok)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("issuer never became usable: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func TestConfigValidate(t *testing.T) {
	errs := identity.Config{Issuers: []identity.IssuerConfig{{IssuerURL: "ftp://x"}, {IssuerURL: "http://idp.example.com", Audiences: []string{"a"}}}}.Validate()
	if len(errs) != 3 {
		t.Fatalf("errors = %v, want 3 (scheme, missing audience, plain http)", errs)
	}
}

func benchmarkVerify(b *testing.B, alg string) {
	ctx := context.Background()
	a := startIssuer(b, alg)
	v, err := identity.New(ctx, identity.Config{Issuers: []identity.IssuerConfig{{IssuerURL: a.URL(), Audiences: []string{"sshca"}}}})
	if err != nil {
		b.Fatal(err)
	}
	tok := mint(b, a, map[string]any{"sub": "u", "preferred_username": "alice", "groups": []string{"ops"}})
	if _, err := v.Authenticate(ctx, tok); err != nil { // fills the JWKS cache
		b.Fatal(err)
	}
	b.ReportAllocs()
	cpu, ops := testenv.CPUPerOp(b), 0
	for b.Loop() {
		if _, err := v.Authenticate(ctx, tok); err != nil {
			b.Fatal(err)
		}
		ops++
	}
	cpu(ops)
}

func BenchmarkVerifyES256(b *testing.B) { benchmarkVerify(b, "ES256") }
func BenchmarkVerifyRS256(b *testing.B) { benchmarkVerify(b, "RS256") }
