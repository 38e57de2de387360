package identity_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/signer"
	"github.com/sshca/sshca/store"
)

const b64url = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

// variant is another encoding of a token: a different text for the same signed content.
type variant struct {
	name string
	tok  string
	// bits: the variant only sets unused bits of a segment's last character, so go-jose's
	// lenient decoder reads the same bytes, and the signature verifies.
	bits bool
}

// encodings returns every other text of tok that a lenient base64url decoder reads as the same
// bytes or nearly: for each segment, each non-zero pattern of the unused low bits of its last
// character (4 bits when the segment's length mod 4 is 2, 2 bits when it is 3), '=' padding, a
// line break, and the standard alphabet's '+' and '/' for '-' and '_'.
func encodings(tok string) []variant {
	segs := strings.Split(tok, ".")
	names := []string{"header", "payload", "signature"}
	var out []variant
	with := func(i int, seg string) string {
		s := append([]string(nil), segs...)
		s[i] = seg
		return strings.Join(s, ".")
	}
	for i, seg := range segs {
		last := strings.IndexByte(b64url, seg[len(seg)-1])
		var mask int
		switch len(seg) % 4 {
		case 2:
			mask = 0xf
		case 3:
			mask = 0x3
		}
		for x := 1; x <= mask; x++ {
			out = append(out, variant{name: fmt.Sprintf("%s unused bits %04b", names[i], x),
				tok: with(i, seg[:len(seg)-1]+string(b64url[last|x])), bits: true})
		}
		if pad := (4 - len(seg)%4) % 4; pad > 0 {
			out = append(out, variant{name: names[i] + " padded", tok: with(i, seg+strings.Repeat("=", pad))})
		}
		out = append(out, variant{name: names[i] + " with one =", tok: with(i, seg+"=")})
		out = append(out, variant{name: names[i] + " with a line break", tok: with(i, seg[:len(seg)/2]+"\n"+seg[len(seg)/2:])})
		if std := strings.NewReplacer("-", "+", "_", "/").Replace(seg); std != seg {
			out = append(out, variant{name: names[i] + " in the standard alphabet", tok: with(i, std)})
		}
	}
	return out
}

// joseAccepts reports whether go-jose, on its own, parses tok and verifies its signature.
func joseAccepts(ti *testIssuer, tok string) bool {
	jws, err := jose.ParseSigned(tok, []jose.SignatureAlgorithm{jose.SignatureAlgorithm(ti.alg)})
	if err != nil {
		return false
	}
	_, err = jws.Verify(ti.key.Public())
	return err == nil
}

// highS returns the ES256 token with the other valid form of its signature, (r, n - s).
func highS(t *testing.T, tok string) string {
	t.Helper()
	segs := strings.Split(tok, ".")
	sig, err := strictDecode(segs[2])
	if err != nil || len(sig) != 64 {
		t.Fatalf("ES256 signature: %v (%d bytes)", err, len(sig))
	}
	s := new(big.Int).SetBytes(sig[32:])
	twin := make([]byte, 64)
	copy(twin, sig[:32])
	new(big.Int).Sub(elliptic.P256().Params().N, s).FillBytes(twin[32:])
	return segs[0] + "." + segs[1] + "." + b64(twin)
}

// TestTokenEncodingsRefused: for RS256, ES256 and EdDSA tokens with and without jti, every
// other encoding of the token is refused with 401 before anything else, including those that
// go-jose alone would verify; the token itself gets through.
func TestTokenEncodingsRefused(t *testing.T) {
	ctx := context.Background()
	for _, alg := range []string{"RS256", "ES256", "EdDSA"} {
		ti := newTestIssuer(t, alg)
		v := ti.verifier(t)
		for _, jti := range []any{"j-" + alg, absent} {
			t.Run(fmt.Sprintf("%s jti=%v", alg, jti != absent), func(t *testing.T) {
				tok := ti.mint(t, map[string]any{"jti": jti})
				if _, err := v.Authenticate(ctx, tok); err != nil {
					t.Fatalf("the token itself: %v", err)
				}
				vs := encodings(tok)
				var bitVariants int
				for _, vr := range vs {
					if vr.bits {
						bitVariants++
						// The threat is real: go-jose verifies these.
						if !joseAccepts(ti, vr.tok) {
							t.Errorf("%s: go-jose refuses it; the test no longer shows the malleability", vr.name)
						}
					}
					_, err := v.Authenticate(ctx, vr.tok)
					if ca.KindOf(err) != ca.KindUnauthenticated || !strings.Contains(err.Error(), "token is not canonical base64url") {
						t.Errorf("%s: err = %v, want 401 token is not canonical base64url", vr.name, err)
					}
				}
				if bitVariants == 0 {
					t.Error("no segment has unused bits: the test checks nothing")
				}
			})
		}
	}
}

// TestHighSTwinSameReplayID: the ES256 signature (r, n - s) verifies too (Go's ECDSA and
// go-jose accept high s), and it is canonical base64url; Authenticate accepts it as the same
// token: the same replay ID, with or without jti.
func TestHighSTwinSameReplayID(t *testing.T) {
	ctx := context.Background()
	ti := newTestIssuer(t, "ES256")
	v := ti.verifier(t)
	for _, jti := range []any{"j1", absent} {
		tok := ti.mint(t, map[string]any{"jti": jti})
		twin := highS(t, tok)
		segs := strings.Split(twin, ".")
		sig, _ := strictDecode(segs[2])
		sum := sha256.Sum256([]byte(segs[0] + "." + segs[1]))
		r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
		if !ecdsa.Verify(ti.key.Public().(*ecdsa.PublicKey), sum[:], r, s) {
			t.Fatal("the high-s twin does not verify with crypto/ecdsa")
		}
		if !joseAccepts(ti, twin) {
			t.Fatal("go-jose refuses the high-s twin")
		}
		a, err := v.Authenticate(ctx, tok)
		if err != nil {
			t.Fatal(err)
		}
		b, err := v.Authenticate(ctx, twin)
		if err != nil {
			t.Fatalf("twin: %v", err)
		}
		if a.Token.ID != b.Token.ID || a.Token.ID == "" {
			t.Errorf("jti=%v: replay IDs %q and %q, want the same", jti != absent, a.Token.ID, b.Token.ID)
		}
	}
}

// TestReplayID: issuer + jti when jti is a non-empty string; otherwise the SHA-256 of the
// decoded header, a NUL and the decoded payload, whatever the signature.
func TestReplayID(t *testing.T) {
	ctx := context.Background()
	for _, alg := range []string{"RS256", "ES256", "EdDSA"} {
		ti := newTestIssuer(t, alg)
		v := ti.verifier(t)
		id := func(tok string) string {
			t.Helper()
			got, err := v.Authenticate(ctx, tok)
			if err != nil {
				t.Fatalf("%s: %v", alg, err)
			}
			if !got.Token.SingleUse || got.Token.Expiry.IsZero() {
				t.Errorf("%s: token use %+v", alg, got.Token)
			}
			return got.Token.ID
		}
		if got, want := id(ti.mint(t, map[string]any{"jti": "abc"})), ti.url+"|jti:abc"; got != want {
			t.Errorf("%s: with jti: %q, want %q", alg, got, want)
		}
		for _, jti := range []any{absent, "", 42} {
			h := []byte(`{"alg":"` + alg + `","kid":"` + ti.kid + `"}`)
			p := []byte(fmt.Sprintf(`{"iss":%q,"aud":"sshca","sub":"u1","exp":%d,"jti":%s}`, ti.url, time.Now().Unix()+600, quoteAny(jti)))
			if jti == absent {
				p = []byte(fmt.Sprintf(`{"iss":%q,"aud":"sshca","sub":"u1","exp":%d}`, ti.url, time.Now().Unix()+600))
			}
			sum := sha256.Sum256(append(append(append([]byte{}, h...), 0), p...))
			want := ti.url + "|sha256:" + hex.EncodeToString(sum[:])
			// Two signatures of the same header and payload (ES256 signs with a random k).
			first, second := id(ti.sign(t, h, p)), id(ti.sign(t, h, p))
			if first != want || second != want {
				t.Errorf("%s jti %v: %q and %q, want %q", alg, jti, first, second, want)
			}
		}
		if a, b := id(ti.mint(t, map[string]any{"jti": absent, "sub": "a"})), id(ti.mint(t, map[string]any{"jti": absent, "sub": "b"})); a == b {
			t.Errorf("%s: two tokens share the replay ID %q", alg, a)
		}
	}
}

func quoteAny(v any) string {
	if s, ok := v.(string); ok {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprint(v)
}

type grantAlice struct{}

func (grantAlice) Decide(context.Context, ca.PolicyInput) (ca.Decision, error) {
	return ca.Decision{Allow: true, Principals: []string{"alice"}, TTL: 5 * time.Minute,
		Extensions: map[string]string{"permit-pty": ""}}, nil
}

// TestReplayThroughAuthority: through ca.Authority with the real Verifier, the real signer and
// the in-memory token ledger, a token gives one certificate; then the token again, its high-s
// twin (ES256) and every other encoding get 401.
func TestReplayThroughAuthority(t *testing.T) {
	ctx := context.Background()
	_, caPriv, _ := ed25519.GenerateKey(nil)
	caKey, err := ssh.NewSignerFromSigner(caPriv)
	if err != nil {
		t.Fatal(err)
	}
	userPub, _, _ := ed25519.GenerateKey(nil)
	userKey, err := ssh.NewPublicKey(userPub)
	if err != nil {
		t.Fatal(err)
	}
	for _, alg := range []string{"RS256", "ES256", "EdDSA"} {
		ti := newTestIssuer(t, alg)
		v := ti.verifier(t)
		for _, jti := range []any{"j-" + alg, absent} {
			t.Run(fmt.Sprintf("%s jti=%v", alg, jti != absent), func(t *testing.T) {
				mem := store.NewMemory(nil)
				sgn := signer.New(caKey, mem, signer.Options{})
				a, err := ca.New(ca.Config{Authenticator: v, Policy: grantAlice{}, UserSigner: sgn, HostSigner: sgn,
					Store: mem, Revocations: mem, Tokens: mem})
				if err != nil {
					t.Fatal(err)
				}
				req := ca.Request{Kind: ca.UserCert, PublicKey: userKey, Principals: []string{"alice"}}
				tok := ti.mint(t, map[string]any{"jti": jti})
				if _, err := a.Issue(ctx, tok, req); err != nil {
					t.Fatalf("first certificate: %v", err)
				}
				again := []variant{{name: "the token again", tok: tok}}
				if alg == "ES256" {
					again = append(again, variant{name: "high-s twin", tok: highS(t, tok)})
				}
				for _, vr := range again {
					_, err := a.Issue(ctx, vr.tok, req)
					if ca.KindOf(err) != ca.KindUnauthenticated || !strings.Contains(err.Error(), "token already used") {
						t.Errorf("%s: err = %v, want 401 token already used", vr.name, err)
					}
				}
				for _, vr := range encodings(tok) {
					_, err := a.Issue(ctx, vr.tok, req)
					if ca.KindOf(err) != ca.KindUnauthenticated {
						t.Errorf("%s: err = %v, want 401", vr.name, err)
					}
				}
			})
		}
	}
}
