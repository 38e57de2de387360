package identity_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/identity"
)

// TestForgedTokensBoundKeyFetches: tokens that name a trusted issuer but that no key of its
// verifies (an unknown kid, made up by anyone, no secret needed) make go-oidc fetch the
// issuer's jwks_uri again, and Authenticate tries twice: unbounded, 50 of them cost the
// identity provider 100 fetches. The fetches are limited (at most 10, then one every 6 s of
// the Verifier's clock); every forged token is still refused with 401, not 503; and a key
// the issuer rotates in during the flood verifies once the interval has passed.
func TestForgedTokensBoundKeyFetches(t *testing.T) {
	first := newTestIssuer(t, "ES256")
	rotated := newTestIssuer(t, "ES256")
	var serving atomic.Pointer[testIssuer]
	serving.Store(first)
	var fetches atomic.Int64
	mux := http.NewServeMux()
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]any{"issuer": srv.URL, "jwks_uri": srv.URL + "/jwks"})
	})
	mux.HandleFunc("GET /jwks", func(w http.ResponseWriter, _ *http.Request) {
		fetches.Add(1)
		ti := serving.Load()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: ti.key.Public(), KeyID: ti.kid, Algorithm: "ES256", Use: "sig"}}})
	})
	first.url, rotated.url = srv.URL, srv.URL // both sign as srv's issuer
	var skew atomic.Int64
	clock := func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	v := first.verifier(t, identity.WithClock(clock))
	ctx := context.Background()
	if _, err := v.Authenticate(ctx, first.mint(t, nil)); err != nil {
		t.Fatal(err)
	}
	forger := newTestIssuer(t, "ES256")
	forger.url = srv.URL
	before := fetches.Load()
	for i := range 50 {
		tok := forger.signJSON(t, map[string]any{"alg": "ES256", "kid": "made-up"}, forger.claims(nil))
		_, err := v.Authenticate(ctx, tok)
		if ca.KindOf(err) != ca.KindUnauthenticated {
			t.Fatalf("forged token %d: %v, want 401", i, err)
		}
	}
	if n := fetches.Load() - before; n > 10 {
		t.Errorf("50 forged tokens made %d key set fetches, want at most 10", n)
	}
	// The issuer rotates during the flood: its old key's tokens still verify from the cache.
	if _, err := v.Authenticate(ctx, first.mint(t, map[string]any{"sub": "u2"})); err != nil {
		t.Fatalf("token of the cached key during the flood: %v", err)
	}
	serving.Store(rotated)
	skew.Add(int64(6 * time.Second))
	if _, err := v.Authenticate(ctx, rotated.mint(t, nil)); err != nil {
		t.Fatalf("token of a key rotated in, one interval later: %v", err)
	}
}

// TestNilHTTPClient: WithHTTPClient(nil) means the default client; the key set, whose client
// is a copy of the Verifier's with its fetches limited, still fetches and verifies.
func TestNilHTTPClient(t *testing.T) {
	ti := newTestIssuer(t, "ES256")
	v := ti.verifier(t, identity.WithHTTPClient(nil))
	if _, err := v.Authenticate(context.Background(), ti.mint(t, nil)); err != nil {
		t.Fatal(err)
	}
}

// TestKeyOfAnotherIssuerRefused: a token is checked with the keys of the issuer its iss names,
// and only those: signed by another trusted issuer's key, it is refused whatever its header
// says (that key's kid, no kid), and so is that issuer's own token once its iss is made to
// name the first. The control: each issuer's own token passes.
func TestKeyOfAnotherIssuerRefused(t *testing.T) {
	a, b := newTestIssuer(t, "ES256"), newTestIssuer(t, "ES256")
	v := verifierFor(t, a, b)
	ctx := context.Background()
	for name, ti := range map[string]*testIssuer{"a": a, "b": b} {
		if _, err := v.Authenticate(ctx, ti.mint(t, nil)); err != nil {
			t.Fatalf("issuer %s's own token: %v", name, err)
		}
	}
	claimsA := a.claims(nil)
	for name, tok := range map[string]string{
		"iss a, b's kid, b's key": b.signJSON(t, map[string]any{"alg": "ES256", "kid": b.kid}, claimsA),
		"iss a, no kid, b's key":  b.signJSON(t, map[string]any{"alg": "ES256"}, claimsA),
		"iss a, a's kid, b's key": b.signJSON(t, map[string]any{"alg": "ES256", "kid": a.kid}, claimsA),
	} {
		_, err := v.Authenticate(ctx, tok)
		if ca.KindOf(err) != ca.KindUnauthenticated {
			t.Errorf("%s: %v, want 401", name, err)
		}
	}
}
