package identity_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/internal/testenv"
)

// TestMalleatedTokensRefused: Authenticate leaves only the signature to go-oidc's key set and
// go-jose, and judges the claims it decoded itself; so every change to a signed token's
// header, payload or signature, and every alg that names another key type or hash than the
// key's, is refused with 401, for each key type. Duplicate members are read as the last one
// everywhere: a payload whose last iss names another trusted issuer is checked with that
// issuer's keys, and a header whose last alg is not accepted is refused.
func TestMalleatedTokensRefused(t *testing.T) {
	ctx := context.Background()
	for _, alg := range []string{"RS256", "ES256", "EdDSA"} {
		t.Run(alg, func(t *testing.T) {
			ti, other := newTestIssuer(t, alg), newTestIssuer(t, "ES256")
			v := verifierFor(t, ti, other)
			tok := ti.mint(t, nil)
			if _, err := v.Authenticate(ctx, tok); err != nil {
				t.Fatalf("the token itself: %v", err)
			}
			segs := strings.Split(tok, ".")
			sig := mustDecode(t, segs[2])
			with := func(h, p string, s []byte) string { return h + "." + p + "." + b64(s) }
			flip := func(b []byte, i int) []byte {
				c := append([]byte(nil), b...)
				c[i] ^= 1
				return c
			}
			header := func(h map[string]any) string {
				b, err := json.Marshal(h)
				if err != nil {
					t.Fatal(err)
				}
				return b64(b)
			}
			claims := ti.claims(nil)
			payload := func(extra map[string]any) string {
				c := map[string]any{}
				for k, v := range claims {
					c[k] = v
				}
				for k, v := range extra {
					c[k] = v
				}
				b, err := json.Marshal(c)
				if err != nil {
					t.Fatal(err)
				}
				return b64(b)
			}
			cases := map[string]string{
				"header typ changed":         with(header(map[string]any{"alg": alg, "kid": ti.kid, "typ": "at+jwt"}), segs[1], sig),
				"header kid dropped":         with(header(map[string]any{"alg": alg, "typ": "JWT"}), segs[1], sig),
				"payload sub changed":        with(segs[0], payload(map[string]any{"sub": "u2"}), sig),
				"payload exp extended":       with(segs[0], payload(map[string]any{"exp": claims["exp"].(int64) + 60}), sig),
				"signature first bit":        with(segs[0], segs[1], flip(sig, 0)),
				"signature last bit":         with(segs[0], segs[1], flip(sig, len(sig)-1)),
				"signature one byte short":   with(segs[0], segs[1], sig[:len(sig)-1]),
				"signature one byte longer":  with(segs[0], segs[1], append(append([]byte(nil), sig...), 0)),
				"signature empty":            segs[0] + "." + segs[1] + ".",
				"signature of another token": with(segs[0], segs[1], mustDecode(t, strings.Split(ti.mint(t, map[string]any{"sub": "u2"}), ".")[2])),
			}
			for _, a := range []string{"RS256", "RS384", "PS256", "ES256", "ES384", "ES512", "EdDSA"} {
				if a != alg {
					cases["alg "+a+" over a "+alg+" signature"] = with(header(map[string]any{"alg": a, "kid": ti.kid}), segs[1], sig)
					// Signed for real by ti's key, with the header's alg naming another algorithm.
					cases["alg "+a+" signed by the "+alg+" key"] = ti.signJSON(t, map[string]any{"alg": a, "kid": ti.kid}, claims)
				}
			}
			hdr := fmt.Sprintf(`{"alg":%q,"kid":%q,`, alg, ti.kid)
			cases["duplicate alg, the last HS256"] = ti.sign(t, []byte(hdr+`"alg":"HS256"}`), mustDecode(t, segs[1]))
			cases["duplicate alg, the last none"] = ti.sign(t, []byte(hdr+`"alg":"none"}`), mustDecode(t, segs[1]))
			p := string(mustDecode(t, segs[1]))
			cases["duplicate iss, the last another trusted issuer"] = ti.sign(t, mustDecode(t, segs[0]), []byte(p[:len(p)-1]+fmt.Sprintf(`,"iss":%q}`, other.url)))
			cases["duplicate aud, the last another audience"] = ti.sign(t, mustDecode(t, segs[0]), []byte(p[:len(p)-1]+`,"aud":"elsewhere"}`))
			for name, tok := range cases {
				t.Run(name, func(t *testing.T) {
					id, err := v.Authenticate(ctx, tok)
					if err == nil {
						t.Fatalf("accepted: %+v", id)
					}
					if ca.KindOf(err) != ca.KindUnauthenticated {
						t.Fatalf("kind = %v, want unauthenticated: %v", ca.KindOf(err), err)
					}
				})
			}
			// The last of duplicate members is the one read, by the check and for the identity.
			dup := ti.sign(t, mustDecode(t, segs[0]), []byte(p[:len(p)-1]+`,"sub":"u9","preferred_username":"bob"}`))
			id, err := v.Authenticate(ctx, dup)
			if err != nil {
				t.Fatalf("duplicate sub: %v", err)
			}
			if id.Subject != "u9" || id.Username != "bob" {
				t.Errorf("duplicate sub and preferred_username: got %q, %q; want the last, u9 and bob", id.Subject, id.Username)
			}
		})
	}
}

// verifierFor trusts each of the issuers for audience "sshca".
func verifierFor(t testing.TB, issuers ...*testIssuer) *identity.Verifier {
	t.Helper()
	var cfg identity.Config
	for _, ti := range issuers {
		cfg.Issuers = append(cfg.Issuers, identity.IssuerConfig{IssuerURL: ti.url, Audiences: []string{"sshca"}})
	}
	v, err := identity.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// benchmarkSignature is the cryptographic floor of the token check: what any verifier of the
// token must do, hash the signing input and check the signature with the issuer's public key
// (RFC 7518 section 3.3 for RS256, 3.4 for ES256), nothing else. BenchmarkVerify* minus this is
// what Authenticate spends outside the signature check.
func benchmarkSignature(b *testing.B, alg string) {
	ti := newTestIssuer(b, alg)
	tok := ti.mint(b, map[string]any{"groups": []string{"ops"}})
	dot := strings.LastIndexByte(tok, '.')
	input, sig := tok[:dot], mustDecode(b, tok[dot+1:])
	b.ReportAllocs()
	cpu, ops := testenv.CPUPerOp(b), 0
	for b.Loop() {
		ops++
		sum := sha256.Sum256([]byte(input))
		var ok bool
		switch k := ti.key.Public().(type) {
		case *rsa.PublicKey:
			ok = rsa.VerifyPKCS1v15(k, crypto.SHA256, sum[:], sig) == nil
		case *ecdsa.PublicKey:
			ok = ecdsa.Verify(k, sum[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:]))
		}
		if !ok {
			b.Fatal("signature does not verify")
		}
	}
	cpu(ops)
}

func BenchmarkSignatureES256(b *testing.B) { benchmarkSignature(b, "ES256") }
func BenchmarkSignatureRS256(b *testing.B) { benchmarkSignature(b, "RS256") }

// TestKeySetUnreachable: an issuer whose discovery works but whose jwks_uri fails gets 503
// naming the key set, with none of go-oidc's text in the caller's message; once its key set
// is back, the same token passes.
func TestKeySetUnreachable(t *testing.T) {
	ti := newTestIssuer(t, "ES256")
	keys := ti.url + "/jwks"
	var down atomic.Bool
	down.Store(true)
	mux := http.NewServeMux()
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]any{"issuer": srv.URL, "jwks_uri": srv.URL + "/jwks"})
	})
	mux.HandleFunc("GET /jwks", func(w http.ResponseWriter, r *http.Request) {
		if down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		http.Redirect(w, r, keys, http.StatusFound)
	})
	ti.url = srv.URL // ti's tokens now name srv as their issuer; srv serves ti's keys
	v := ti.verifier(t)
	tok := ti.mint(t, nil)
	_, err := v.Authenticate(context.Background(), tok)
	if ca.KindOf(err) != ca.KindUnavailable || !strings.Contains(err.Error(), "its key set (jwks_uri) is unreachable") {
		t.Fatalf("err = %v, want 503 naming the key set", err)
	}
	var ce *ca.Error
	if !errors.As(err, &ce) {
		t.Fatalf("err %T is not a *ca.Error", err)
	}
	for _, f := range forbidden { // the caller's message; the cause is for the log
		if strings.Contains(ce.Msg, f) {
			t.Errorf("message %q contains %q", ce.Msg, f)
		}
	}
	down.Store(false)
	if _, err := v.Authenticate(context.Background(), tok); err != nil {
		t.Fatalf("key set back: %v", err)
	}
}
