package identity

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sshca/sshca/ca"
)

// claimSeeds are the payloads of the cases of TestBadTokenMessages and TestTokensThatPass
// (messages_test.go), with a fixed issuer and times around fuzzNow.
var claimSeeds = []string{
	`{"iss":"https://idp.example.com","aud":"sshca","sub":"u1","iat":1764000000,"nbf":1764000000,"exp":1764000600,"preferred_username":"alice","jti":"j1"}`,
	`{"iss":"https://idp.example.com","aud":["x","sshca"],"sub":"u1","exp":1764000600,"email":"Bob@Example.com","email_verified":"true","groups":["ops","dev"],"amr":["pwd","mfa"],"acr":"phr","auth_time":1763999000}`,
	`{"iss":"https://idp.example.com","aud":"sshca","sub":"u1","exp":1764000600,"preferred_username":"Admin","email":"carol@evil.com","email_verified":true,"groups":"ci"}`,
	`{"iss":"https://idp.example.com","aud":"sshca","sub":"u1","exp":1764000600,"preferred_username":"root","email":"admin@example.com","email_verified":"True"}`,
	`{"iss":"https://idp.example.com","aud":"sshca","sub":"u1","exp":1764000600,"preferred_username":5,"groups":[1,"a",null,{}],"amr":"pwd"}`,
	`{"iss":"https://idp.example.com","aud":"sshca","sub":"u1","exp":"1764000600"}`,
	`{"iss":"https://idp.example.com","aud":"sshca","sub":"u1","exp":null}`,
	`{"iss":"https://idp.example.com","aud":"sshca","sub":"u1","exp":1e400}`,
	`{"iss":"https://idp.example.com","aud":"sshca","sub":"u1","exp":-1}`,
	`{"iss":"https://idp.example.com","aud":"sshca","sub":"u1","exp":4611686018427387904}`,
	`{"iss":"https://idp.example.com","aud":"sshca","sub":"u1","iat":1763996400,"exp":1764169200}`,
	`{"iss":"https://idp.example.com","aud":"sshca","sub":"u1","exp":1764000600,"nbf":"now","iat":true}`,
	`{"iss":"https://idp.example.com","aud":"sshca","sub":"u1","exp":1764000600,"nbf":1764000600,"iat":1764000600,"auth_time":1764003600}`,
	`{"iss":"https://idp.example.com","aud":"sshca","sub":"u1","exp":1764000600,"auth_time":"1764000000"}`,
	`{"iss":"https://idp.example.com","aud":"sshca","sub":"u1","exp":1764000600.75,"iat":1764000000.5,"nbf":1763999999.75}`,
	`{"iss":"https://idp.example.com","aud":"sshca","sub":"u1","exp":1764000600,"nonce":1}`,
	`{"iss":"https://idp.example.com","aud":1,"sub":"u1","exp":1764000600}`,
	`{"iss":"https://idp.example.com","sub":"","exp":1764000600}`,
	`{"iss":"https://idp.example.com","aud":"sshca","sub":"u1","exp":1764000600,"_claim_names":{"groups":"s"},"_claim_sources":{"s":{"endpoint":"https://x"}}}`,
	`{"iss":"https://idp.example.com","aud":"sshca","sub":"u1","exp":1764000600,"_claim_names":{"groups":"t"},"_claim_sources":{"s":null}}`,
	`{"iss":5}`,
	`{"iss":"x"} {}`,
	`[]`,
	`null`,
	``,
}

const fuzzNow = 1764000000

// FuzzClaimsToIdentity: any payload either is refused with a 401 whose message has no Go
// internals, or maps to an identity whose username is a usable principal and whose email is
// there only when verified. Nothing panics.
func FuzzClaimsToIdentity(f *testing.F) {
	for _, s := range claimSeeds {
		f.Add([]byte(s))
	}
	v := &Verifier{reserved: map[string]bool{"root": true, "admin": true}, maxLifetime: DefaultMaxTokenLifetime,
		log: slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	is := &issuer{cfg: IssuerConfig{UsernameClaim: "preferred_username", GroupsClaim: "groups"}, domains: map[string]bool{"example.com": true}}
	now := time.Unix(fuzzNow, 0)
	f.Fuzz(func(t *testing.T, payload []byte) {
		c, err := parseClaims(payload)
		if err != nil {
			checkRefusal(t, err)
			return
		}
		// parseClaims decodes into an interface for speed: the claims are those a decode into
		// a map gives.
		dec := json.NewDecoder(bytes.NewReader(payload))
		dec.UseNumber()
		var ref map[string]any
		if err := dec.Decode(&ref); err != nil || !reflect.DeepEqual(ref, c.claims) {
			t.Errorf("claims %#v, a decode into a map gives %#v (%v)", c.claims, ref, err)
		}
		if err := c.checkTimes(now, v.maxLifetime); err != nil {
			checkRefusal(t, err)
		}
		_, _ = c.exp.String(), c.nbf.String()
		id := v.identity(context.Background(), is, c)
		if id.Issuer == "" || id.Subject == "" || id.Groups == nil || id.AMR == nil {
			t.Errorf("identity %+v: empty issuer or subject, or nil lists", id)
		}
		if id.Username != "" && (!ca.ValidUserPrincipal(id.Username) || v.reserved[id.Username]) {
			t.Errorf("username %q derived", id.Username)
		}
		if ev := c.claims["email_verified"]; id.Email != "" && ev != true && ev != "true" {
			t.Errorf("email %q with email_verified %#v", id.Email, ev)
		}
	})
}

// FuzzParseToken: a token is refused with a 401 whose message has no Go internals, or is the
// one canonical encoding of its header and payload. Nothing panics.
func FuzzParseToken(f *testing.F) {
	enc := base64.RawURLEncoding.EncodeToString
	for _, s := range claimSeeds {
		f.Add(enc([]byte(`{"alg":"ES256","kid":"k1"}`)) + "." + enc([]byte(s)) + "." + enc(make([]byte, 64)))
	}
	for _, h := range []string{`{"alg":"none"}`, `{"alg":"HS256"}`, `{"alg":"RS256","crit":["b64"],"b64":false}`, `{"alg":7}`, `{"kid":1,"alg":"EdDSA"}`, `null`} {
		f.Add(enc([]byte(h)) + "." + enc([]byte(claimSeeds[0])) + ".")
	}
	f.Add("a.b")
	f.Add("a.b.c.d")
	f.Add("eyJhbGciOiJFUzI1NiJ9.e30=.AA")
	f.Fuzz(func(t *testing.T, token string) {
		p, err := parseToken(token)
		if err != nil {
			checkRefusal(t, err)
			return
		}
		segs := strings.Split(token, ".")
		if enc(p.header) != segs[0] || enc(p.payload) != segs[1] {
			t.Errorf("accepted a non-canonical encoding: %q", token)
		}
		if id := p.replayKey(); !strings.HasPrefix(id, p.iss+"|") {
			t.Errorf("replay key %q", id)
		}
	})
}

func checkRefusal(t *testing.T, err error) {
	t.Helper()
	if ca.KindOf(err) != ca.KindUnauthenticated {
		t.Errorf("kind %v: %v", ca.KindOf(err), err)
	}
	for _, bad := range []string{"m=+", "0001-01-01", "strconv.", "json:", "go-jose", "oidc:", "invalid character"} {
		if strings.Contains(err.Error(), bad) {
			t.Errorf("message %q contains %q", err, bad)
		}
	}
}

// FuzzCanonicalSegment: canonicalSegment accepts a segment exactly when encoding its bytes
// again gives the segment back, and then returns those bytes.
func FuzzCanonicalSegment(f *testing.F) {
	for _, s := range []string{"", "A", "AA", "AB", "AAA", "AAE", "AAB", "AAAA", "e30", "e30=", "e3\n0", "e3\r0", "\ne30",
		"e30\n", "_-8", "/+8", "AA==", "A===", "eyJhbGciOiJFUzI1NiJ9", "eyJhbGciOiJFUzI1NiJ9\r\n", "ey Jh", "AAAAAAA"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, seg string) {
		b, ok := canonicalSegment(seg, nil)
		ref, err := base64.RawURLEncoding.Strict().DecodeString(seg)
		want := err == nil && base64.RawURLEncoding.EncodeToString(ref) == seg
		if ok != want {
			t.Fatalf("canonicalSegment(%q) = %v, re-encoding says %v", seg, ok, want)
		}
		if ok && string(b) != string(ref) {
			t.Fatalf("canonicalSegment(%q) = %x, want %x", seg, b, ref)
		}
	})
}
