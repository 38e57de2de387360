package identity_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/identity"
)

// badToken is a token Authenticate must refuse, and the words its message must contain.
type badToken struct {
	name  string
	token string
	want  []string
	kind  ca.ErrorKind // default KindUnauthenticated
}

// forbidden never appear in a message: Go internals and zero values.
var forbidden = []string{"m=+", "0001-01-01", "strconv.", "json:", "go-jose", "oidc:"}

// badTokens are the refusals, each with the exact words its message must contain. They also
// seed FuzzParseToken's corpus.
func badTokens(t testing.TB, ti, other *testIssuer) []badToken {
	now := time.Now()
	utc := func(secs int64) string { return time.Unix(secs, 0).UTC().Format(time.RFC3339) }
	raw := func(header, payload string) string { return ti.sign(t, []byte(header), []byte(payload)) }
	hdr := fmt.Sprintf(`{"alg":%q,"kid":%q}`, ti.alg, ti.kid)
	good := ti.mint(t, nil)
	segs := strings.Split(good, ".")

	pub, err := x509.MarshalPKIXPublicKey(ti.key.Public())
	if err != nil {
		t.Fatal(err)
	}
	hs256 := func(secret []byte) string {
		input := b64([]byte(`{"alg":"HS256","kid":"`+ti.kid+`","typ":"JWT"}`)) + "." + segs[1]
		m := hmac.New(sha256.New, secret)
		m.Write([]byte(input))
		return input + "." + b64(m.Sum(nil))
	}
	crit := ti.header()
	crit["crit"] = []string{"exp"}
	crit["exp"] = now.Unix() + 600
	unknownKid := ti.header()
	unknownKid["kid"] = "no-such-key"
	big := ti.mint(t, map[string]any{"pad": strings.Repeat("x", identity.MaxTokenBytes)})
	tampered := segs[0] + "." + b64([]byte(strings.Replace(string(mustDecode(t, segs[1])), `"u1"`, `"u2"`, 1))) + "." + segs[2]
	flipped := segs[0] + "." + segs[1][:len(segs[1])-1] + string(b64url[strings.IndexByte(b64url, segs[1][len(segs[1])-1])^1]) + "." + segs[2]
	if len(segs[1])%4 == 0 {
		flipped = segs[0] + "." + segs[1] + "=." + segs[2]
	}

	return []badToken{
		{name: "alg none", token: b64([]byte(`{"alg":"none"}`)) + "." + segs[1] + ".", want: []string{`token alg "none" is not accepted`, "RS256", "EdDSA"}},
		{name: "HS256 with the public key (DER) as secret", token: hs256(pub), want: []string{`token alg "HS256" is not accepted`}},
		{name: "HS256 with the public key (PEM) as secret", token: hs256(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub})), want: []string{`token alg "HS256" is not accepted`}},
		{name: "alg not a string", token: raw(`{"alg":7}`, `{}`), want: []string{`token alg 7 is not accepted`}},
		{name: "no alg", token: raw(`{"kid":"x"}`, `{}`), want: []string{"token header has no alg"}},
		{name: "kid not a string", token: raw(fmt.Sprintf(`{"alg":%q,"kid":1}`, ti.alg), `{}`), want: []string{"token header kid must be a string"}},
		{name: "header not JSON", token: raw(`alg`, `{}`), want: []string{"token header is not a JSON object"}},
		{name: "header null", token: raw(`null`, `{}`), want: []string{"token header is not a JSON object"}},
		{name: "crit header", token: ti.signJSON(t, crit, ti.claims(nil)), want: []string{"token header crit names extensions this service does not support", `["exp"]`}},
		{name: "wrong iss", token: ti.mint(t, map[string]any{"iss": "https://evil.example.com"}), want: []string{`token issuer "https://evil.example.com" is not trusted`}},
		{name: "iss with a trailing slash", token: ti.mint(t, map[string]any{"iss": ti.url + "/"}), want: []string{`token issuer "` + ti.url + `/" differs from the issuer named by the discovery document of ` + ti.url}},
		{name: "_claim_names naming no source", token: ti.mint(t, map[string]any{"_claim_names": map[string]any{"groups": "src1"}}), want: []string{"check _claim_names and _claim_sources"}},
		{name: "_claim_names naming a source of another name", token: ti.mint(t, map[string]any{"_claim_names": map[string]any{"groups": "src1"}, "_claim_sources": map[string]any{"src2": map[string]any{"endpoint": "https://x"}}}), want: []string{"check _claim_names and _claim_sources"}},
		{name: "_claim_names value null", token: ti.mint(t, map[string]any{"_claim_names": map[string]any{"groups": nil}, "_claim_sources": map[string]any{"": map[string]any{}}}), want: []string{"check _claim_names and _claim_sources"}},
		{name: "_claim_names a list", token: ti.mint(t, map[string]any{"_claim_names": []string{"groups"}}), want: []string{"check _claim_names and _claim_sources"}},
		{name: "_claim_sources a string", token: ti.mint(t, map[string]any{"_claim_sources": "x"}), want: []string{"check _claim_names and _claim_sources"}},
		{name: "_claim_sources endpoint a number", token: ti.mint(t, map[string]any{"_claim_names": map[string]any{"groups": "s"}, "_claim_sources": map[string]any{"s": map[string]any{"endpoint": 1}}}), want: []string{"check _claim_names and _claim_sources"}},
		{name: "_claim_sources member a string", token: ti.mint(t, map[string]any{"_claim_sources": map[string]any{"s": "https://x"}}), want: []string{"check _claim_names and _claim_sources"}},
		{name: "iss of another trusted issuer", token: ti.mint(t, map[string]any{"iss": other.url}), want: []string{"signature does not verify", "issuer " + other.url}},
		{name: "no iss", token: ti.mint(t, map[string]any{"iss": absent}), want: []string{"token has no iss claim"}},
		{name: "iss a number", token: ti.mint(t, map[string]any{"iss": 5}), want: []string{"token claim iss must be a non-empty string"}},
		{name: "no sub", token: ti.mint(t, map[string]any{"sub": absent}), want: []string{"token has no sub claim"}},
		{name: "empty sub", token: ti.mint(t, map[string]any{"sub": ""}), want: []string{"token claim sub must be a non-empty string"}},
		{name: "wrong aud", token: ti.mint(t, map[string]any{"aud": "elsewhere"}), want: []string{`token audience "elsewhere" is not accepted`, "client ID"}},
		{name: "no aud", token: ti.mint(t, map[string]any{"aud": absent}), want: []string{"token has no aud claim"}},
		{name: "aud a number", token: ti.mint(t, map[string]any{"aud": 1}), want: []string{"token claim aud must be a string or a list of strings"}},
		{name: "aud list with a number", token: ti.mint(t, map[string]any{"aud": []any{"sshca", 1}}), want: []string{"token claim aud must be a string or a list of strings"}},
		{name: "expired", token: ti.mint(t, map[string]any{"exp": now.Unix() - 120}), want: []string{"token expired at " + utc(now.Unix()-120) + "; sign in again"}},
		{name: "future nbf", token: ti.mint(t, map[string]any{"nbf": now.Unix() + 600}), want: []string{"token is not valid yet: nbf is " + utc(now.Unix()+600)}},
		{name: "no exp", token: ti.mint(t, map[string]any{"exp": absent}), want: []string{"token has no exp claim; the identity provider must set one"}},
		{name: "exp as string", token: ti.mint(t, map[string]any{"exp": fmt.Sprint(now.Unix() + 600)}), want: []string{"token claim exp must be a number (seconds since 1970)"}},
		{name: "exp null", token: ti.mint(t, map[string]any{"exp": nil}), want: []string{"token claim exp must be a number (seconds since 1970)"}},
		{name: "exp 1e400", token: raw(hdr, fmt.Sprintf(`{"iss":%q,"aud":"sshca","sub":"u","exp":1e400}`, ti.url)), want: []string{"token claim exp is out of range"}},
		{name: "exp negative", token: ti.mint(t, map[string]any{"exp": -1}), want: []string{"token claim exp is negative"}},
		{name: "exp 2^62", token: ti.mint(t, map[string]any{"exp": int64(1) << 62}), want: []string{"max_token_lifetime of 24h0m0s"}},
		{name: "exp 48h after iat", token: ti.mint(t, map[string]any{"iat": now.Unix() - 3600, "exp": now.Unix() - 3600 + 48*3600}), want: []string{"token exp is 48h0m0s after its iat, beyond this service's max_token_lifetime of 24h0m0s"}},
		{name: "exp 25h after now without iat", token: ti.mint(t, map[string]any{"iat": absent, "exp": now.Unix() + 25*3600 + 60}), want: []string{"after now, beyond this service's max_token_lifetime of 24h0m0s"}},
		{name: "nbf as string", token: ti.mint(t, map[string]any{"nbf": "now"}), want: []string{"token claim nbf must be a number (seconds since 1970)"}},
		{name: "iat as bool", token: ti.mint(t, map[string]any{"iat": true}), want: []string{"token claim iat must be a number (seconds since 1970)"}},
		{name: "iat in the future", token: ti.mint(t, map[string]any{"iat": now.Unix() + 600}), want: []string{"token claim iat " + utc(now.Unix()+600) + " is in the future"}},
		{name: "auth_time in the future", token: ti.mint(t, map[string]any{"auth_time": now.Unix() + 3600}), want: []string{"token claim auth_time " + utc(now.Unix()+3600) + " is in the future"}},
		{name: "auth_time as string", token: ti.mint(t, map[string]any{"auth_time": fmt.Sprint(now.Unix())}), want: []string{"token claim auth_time must be a number (seconds since 1970)"}},
		{name: "nonce a number", token: ti.mint(t, map[string]any{"nonce": 1}), want: []string{"token claim nonce must be a string"}},
		{name: "unknown kid", token: ti.signJSON(t, unknownKid, ti.claims(nil)), want: []string{"signature does not verify", `kid "no-such-key"`}},
		{name: "payload changed", token: tampered, want: []string{"signature does not verify"}},
		{name: "payload not JSON", token: raw(hdr, `iss`), want: []string{"token payload is not a JSON object of claims"}},
		{name: "payload a list", token: raw(hdr, `[]`), want: []string{"token payload is not a JSON object of claims"}},
		{name: "payload with trailing data", token: raw(hdr, `{"iss":"x"} {}`), want: []string{"token payload has data after its JSON object"}},
		{name: "oversized", token: big, want: []string{"over the 16384-byte (16 KiB) limit"}},
		{name: "2 segments", token: segs[0] + "." + segs[1], want: []string{"3 dot-separated segments", "this one has 2"}},
		{name: "4 segments", token: good + ".", want: []string{"3 dot-separated segments", "this one has 4"}},
		{name: "5 segments (JWE)", token: "a.b.c.d.e", want: []string{"this one has 5"}},
		{name: "malleated payload segment", token: flipped, want: []string{"token is not canonical base64url", "payload segment"}},
		{name: "padded signature segment", token: good + "==", want: []string{"token is not canonical base64url", "signature segment"}},
		{name: "empty header segment", token: "." + segs[1] + "." + segs[2], want: []string{"token header is not a JSON object"}},
	}
}

func mustDecode(t testing.TB, s string) []byte {
	t.Helper()
	b, err := strictDecode(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestBadTokenMessages: every refusal is a 401 whose message names the claim and the fix,
// without Go internals, zero times or the token.
func TestBadTokenMessages(t *testing.T) {
	ctx := context.Background()
	for _, alg := range []string{"ES256", "RS256", "EdDSA"} {
		ti, other := newTestIssuer(t, alg), newTestIssuer(t, "ES256")
		v, err := identity.New(ctx, identity.Config{Issuers: []identity.IssuerConfig{
			{IssuerURL: ti.url, Audiences: []string{"sshca"}}, {IssuerURL: other.url, Audiences: []string{"sshca"}}}})
		if err != nil {
			t.Fatal(err)
		}
		for _, tt := range badTokens(t, ti, other) {
			t.Run(alg+"/"+tt.name, func(t *testing.T) {
				_, err := v.Authenticate(ctx, tt.token)
				if err == nil {
					t.Fatal("accepted")
				}
				msg := err.Error()
				kind := tt.kind
				if kind == ca.KindInternal {
					kind = ca.KindUnauthenticated
				}
				if ca.KindOf(err) != kind {
					t.Errorf("kind = %v, want %v: %s", ca.KindOf(err), kind, msg)
				}
				for _, w := range tt.want {
					if !strings.Contains(msg, w) {
						t.Errorf("message %q\ndoes not contain %q", msg, w)
					}
				}
				for _, f := range forbidden {
					if strings.Contains(msg, f) {
						t.Errorf("message %q contains %q", msg, f)
					}
				}
				if len(tt.token) > 20 && strings.Contains(msg, tt.token[len(tt.token)-20:]) {
					t.Errorf("message %q contains the token", msg)
				}
			})
		}
	}
}

// TestTokensThatPass: the input just inside each check gets through.
func TestTokensThatPass(t *testing.T) {
	ctx := context.Background()
	ti := newTestIssuer(t, "ES256")
	v := ti.verifier(t)
	now := time.Now().Unix()
	tests := []struct {
		name  string
		token string
		check func(ca.Identity) error
	}{
		{name: "defaults", token: ti.mint(t, nil)},
		{name: "nbf within the clock skew", token: ti.mint(t, map[string]any{"nbf": now + 20})},
		{name: "iat within the clock skew", token: ti.mint(t, map[string]any{"iat": now + 20})},
		{name: "auth_time within the clock skew", token: ti.mint(t, map[string]any{"auth_time": now + 20}),
			check: func(id ca.Identity) error { return want(id.AuthTime == now+20, "auth_time %d", id.AuthTime) }},
		{name: "exp exactly max_token_lifetime after iat", token: ti.mint(t, map[string]any{"iat": now - 60, "exp": now - 60 + 24*3600})},
		{name: "exp 23h after now without iat", token: ti.mint(t, map[string]any{"iat": absent, "exp": now + 23*3600})},
		{name: "fractional NumericDates", token: ti.mint(t, map[string]any{"iat": float64(now) + 0.5, "nbf": float64(now) - 0.25, "exp": float64(now) + 600.75})},
		{name: "no nbf, iat or auth_time", token: ti.mint(t, map[string]any{"nbf": absent, "iat": absent})},
		{name: "aud list with ours", token: ti.mint(t, map[string]any{"aud": []string{"x", "sshca"}})},
		{name: "no kid: every key is tried", token: ti.signJSON(t, map[string]any{"alg": "ES256"}, ti.claims(nil))},
		{name: "extra header fields", token: ti.signJSON(t, map[string]any{"alg": "ES256", "kid": ti.kid, "typ": "JWT", "x-extra": 1}, ti.claims(nil))},
		{name: "jti a number (replay keyed on the content)", token: ti.mint(t, map[string]any{"jti": 7}),
			check: func(id ca.Identity) error {
				return want(strings.Contains(id.Token.ID, "|sha256:"), "replay ID %q", id.Token.ID)
			}},
		{name: "claims with large and fractional numbers", token: ti.mint(t, map[string]any{"n": json.Number("1e400"), "f": 0.5}),
			check: func(id ca.Identity) error {
				return want(id.Claims["n"] == json.Number("1e400") && id.Claims["f"] == json.Number("0.5"), "claims %v", id.Claims)
			}},
		{name: "email_verified the string true", token: ti.mint(t, map[string]any{"email": "a@example.com", "email_verified": "true"}),
			check: func(id ca.Identity) error { return want(id.Email == "a@example.com", "email %q", id.Email) }},
		{name: "distributed claims that hold together", token: ti.mint(t, map[string]any{"_claim_names": map[string]any{"groups": "s", "roles": "s"},
			"_claim_sources": map[string]any{"s": map[string]any{"endpoint": "https://x", "access_token": "t"}, "unused": nil}})},
		{name: "_claim_names and _claim_sources null", token: ti.mint(t, map[string]any{"_claim_names": nil, "_claim_sources": nil})},
		{name: "token just under the size limit", token: sized(t, ti, identity.MaxTokenBytes)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := v.Authenticate(ctx, tt.token)
			if err != nil {
				t.Fatal(err)
			}
			if tt.check != nil {
				if err := tt.check(id); err != nil {
					t.Error(err)
				}
			}
		})
	}
}

func want(ok bool, format string, args ...any) error {
	if ok {
		return nil
	}
	return fmt.Errorf("got "+format, args...)
}

// sized mints a token of n bytes, or as close under n as base64 allows.
func sized(t testing.TB, ti *testIssuer, n int) string {
	t.Helper()
	best := ""
	for pad := n * 3 / 4; pad > 0; pad-- {
		tok := ti.mint(t, map[string]any{"pad": strings.Repeat("x", pad)})
		if len(tok) <= n {
			if len(tok) > n-4 {
				return tok
			}
			best = tok
			break
		}
	}
	t.Fatalf("no token within 4 bytes under %d (best %d)", n, len(best))
	return ""
}

// TestEmailVerified: the boolean, or exactly the strings "true"/"false".
func TestEmailVerified(t *testing.T) {
	ctx := context.Background()
	ti := newTestIssuer(t, "EdDSA")
	v := ti.verifier(t)
	for _, tt := range []struct {
		value any
		want  bool
	}{{true, true}, {"true", true}, {false, false}, {"false", false}, {"True", false}, {"TRUE", false}, {"yes", false}, {"1", false}, {1, false}, {nil, false}, {absent, false}} {
		id, err := v.Authenticate(ctx, ti.mint(t, map[string]any{"email": "bob@example.com", "email_verified": tt.value}))
		if err != nil {
			t.Fatal(err)
		}
		if got := id.Email != ""; got != tt.want {
			t.Errorf("email_verified %#v: verified = %v, want %v", tt.value, got, tt.want)
		}
	}
}

// captured is a slog handler that keeps the messages of records.
type captured struct {
	mu   sync.Mutex
	msgs []string
}

func (c *captured) Enabled(context.Context, slog.Level) bool { return true }
func (c *captured) Handle(_ context.Context, r slog.Record) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.msgs = append(c.msgs, r.Level.String()+" "+r.Message)
	return nil
}
func (c *captured) WithAttrs([]slog.Attr) slog.Handler { return c }
func (c *captured) WithGroup(string) slog.Handler      { return c }

// TestRefusedUsernameExplained: a refused username does not stop the sign-in; a debug line
// says which claim was read and why it gave no principal.
func TestRefusedUsernameExplained(t *testing.T) {
	ctx := context.Background()
	ti := newTestIssuer(t, "ES256")
	h := &captured{}
	v, err := identity.New(ctx, identity.Config{Issuers: []identity.IssuerConfig{{IssuerURL: ti.url, Audiences: []string{"sshca"}, AllowedEmailDomains: []string{"example.com"}}}},
		identity.WithLogger(slog.New(h)))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		claims map[string]any
		want   string
	}{
		{map[string]any{"preferred_username": "Admin"},
			`DEBUG claim preferred_username "Admin" is not a usable user name (must match ^[a-z_][a-z0-9._-]{0,31}$); no verified email claim; no username principal derived`},
		{map[string]any{"preferred_username": "root"},
			`DEBUG claim preferred_username "root" is a reserved name (granted only by the policy); no verified email claim; no username principal derived`},
		{map[string]any{"preferred_username": absent, "email": "carol@example.com", "email_verified": "no"},
			`DEBUG no claim preferred_username; claim email is not verified (email_verified "no"); no username principal derived`},
		{map[string]any{"preferred_username": 5, "email": "carol@evil.com", "email_verified": true},
			`DEBUG claim preferred_username is not a string; email domain "evil.com" is not in allowed_email_domains; no username principal derived`},
		{map[string]any{"preferred_username": absent, "email": "Carol.Smith+x@example.com", "email_verified": true},
			`DEBUG no claim preferred_username; email local part "carol.smith+x" is reserved or not a usable user name (must match ^[a-z_][a-z0-9._-]{0,31}$); no username principal derived`},
	}
	for _, tt := range tests {
		h.mu.Lock()
		h.msgs = nil
		h.mu.Unlock()
		id, err := v.Authenticate(ctx, ti.mint(t, tt.claims))
		if err != nil {
			t.Fatalf("%v: the sign-in must work: %v", tt.claims, err)
		}
		if id.Username != "" {
			t.Errorf("%v: username %q", tt.claims, id.Username)
		}
		h.mu.Lock()
		got := strings.Join(h.msgs, "\n")
		h.mu.Unlock()
		if !strings.Contains(got, tt.want) {
			t.Errorf("log:\n%s\nwant the line\n%s", got, tt.want)
		}
	}
	// A usable username logs nothing.
	h.msgs = nil
	if id, err := v.Authenticate(ctx, ti.mint(t, nil)); err != nil || id.Username != "alice" || len(h.msgs) != 0 {
		t.Errorf("alice: %v %q, log %v", err, id.Username, h.msgs)
	}
}

// TestMaxTokenLifetime: the configured limit, and a negative one refused by Validate.
func TestMaxTokenLifetime(t *testing.T) {
	ctx := context.Background()
	ti := newTestIssuer(t, "RS256")
	v, err := identity.New(ctx, identity.Config{MaxTokenLifetime: time.Hour, Issuers: []identity.IssuerConfig{{IssuerURL: ti.url, Audiences: []string{"sshca"}}}})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().Unix()
	if _, err := v.Authenticate(ctx, ti.mint(t, map[string]any{"iat": now, "exp": now + 3600})); err != nil {
		t.Errorf("exactly 1h: %v", err)
	}
	_, err = v.Authenticate(ctx, ti.mint(t, map[string]any{"iat": now, "exp": now + 3601}))
	if ca.KindOf(err) != ca.KindUnauthenticated || !strings.Contains(err.Error(), "max_token_lifetime of 1h0m0s") {
		t.Errorf("1h1s: %v", err)
	}
	errs := identity.Config{MaxTokenLifetime: -time.Hour, Issuers: []identity.IssuerConfig{{IssuerURL: ti.url, Audiences: []string{"sshca"}}}}.Validate()
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "max_token_lifetime") {
		t.Errorf("Validate = %v, want one max_token_lifetime error", errs)
	}
}
