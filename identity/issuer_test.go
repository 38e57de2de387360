package identity_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/sshca/sshca/identity"
)

// testIssuer is an OIDC issuer for tests that signs whatever header and payload a test gives
// it, with RS256, ES256 or EdDSA: discovery and a JWKS on a loopback httptest server.
type testIssuer struct {
	url string
	alg string
	kid string
	key crypto.Signer
}

// absent, as a claim value, removes the claim from the default claims.
var absent = struct{ absent bool }{true}

func newTestIssuer(t testing.TB, alg string) *testIssuer {
	t.Helper()
	ti := &testIssuer{alg: alg}
	var err error
	switch alg {
	case "RS256":
		ti.key, err = rsa.GenerateKey(rand.Reader, 2048)
	case "ES256":
		ti.key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "EdDSA":
		_, ti.key, err = ed25519.GenerateKey(rand.Reader)
	default:
		t.Fatalf("testIssuer: algorithm %q: use RS256, ES256 or EdDSA", alg)
	}
	if err != nil {
		t.Fatal(err)
	}
	var kid [8]byte
	_, _ = rand.Read(kid[:])
	ti.kid = hex.EncodeToString(kid[:])
	mux := http.NewServeMux()
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	ti.url = srv.URL
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]any{"issuer": ti.url, "jwks_uri": ti.url + "/jwks",
			"id_token_signing_alg_values_supported": []string{alg}})
	})
	mux.HandleFunc("GET /jwks", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: ti.key.Public(), KeyID: ti.kid, Algorithm: alg, Use: "sig"}}})
	})
	return ti
}

// verifier is a Verifier that trusts ti for audience "sshca".
func (ti *testIssuer) verifier(t testing.TB, opts ...identity.Option) *identity.Verifier {
	t.Helper()
	v, err := identity.New(context.Background(), identity.Config{Issuers: []identity.IssuerConfig{{IssuerURL: ti.url, Audiences: []string{"sshca"}}}}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// claims are the defaults (iss, aud, sub, iat, nbf, exp now + 10m, preferred_username) with
// extra laid over them; an extra value of absent removes the claim.
func (ti *testIssuer) claims(extra map[string]any) map[string]any {
	now := time.Now().Unix()
	c := map[string]any{"iss": ti.url, "aud": "sshca", "sub": "u1", "iat": now, "nbf": now, "exp": now + 600, "preferred_username": "alice"}
	for k, v := range extra {
		if v == absent {
			delete(c, k)
		} else {
			c[k] = v
		}
	}
	return c
}

func (ti *testIssuer) header() map[string]any {
	return map[string]any{"alg": ti.alg, "kid": ti.kid, "typ": "JWT"}
}

// mint signs the default claims with extra laid over them.
func (ti *testIssuer) mint(t testing.TB, extra map[string]any) string {
	t.Helper()
	return ti.signJSON(t, ti.header(), ti.claims(extra))
}

func (ti *testIssuer) signJSON(t testing.TB, header, claims map[string]any) string {
	t.Helper()
	h, err := json.Marshal(header)
	if err != nil {
		t.Fatal(err)
	}
	p, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	return ti.sign(t, h, p)
}

// sign returns the compact JWS of header and payload, signed with the issuer's key.
func (ti *testIssuer) sign(t testing.TB, header, payload []byte) string {
	t.Helper()
	input := b64(header) + "." + b64(payload)
	sig, err := ti.signature([]byte(input))
	if err != nil {
		t.Fatal(err)
	}
	return input + "." + b64(sig)
}

func (ti *testIssuer) signature(input []byte) ([]byte, error) {
	sum := sha256.Sum256(input)
	switch k := ti.key.(type) {
	case *rsa.PrivateKey:
		return rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, sum[:])
	case *ecdsa.PrivateKey:
		r, s, err := ecdsa.Sign(rand.Reader, k, sum[:])
		if err != nil {
			return nil, err
		}
		// JWS form (RFC 7518 section 3.4): r and s, 32 bytes each, big-endian.
		out := make([]byte, 64)
		r.FillBytes(out[:32])
		s.FillBytes(out[32:])
		return out, nil
	default:
		return ed25519.Sign(ti.key.(ed25519.PrivateKey), input), nil
	}
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func strictDecode(s string) ([]byte, error) { return base64.RawURLEncoding.Strict().DecodeString(s) }
