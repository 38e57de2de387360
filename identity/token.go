package identity

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/sshca/sshca/ca"
)

// MaxTokenBytes is the largest bearer token read at all (16 KiB). An ID token is a few KiB; a
// larger one is refused before it is decoded.
const MaxTokenBytes = 16 << 10

// supportedAlgs are the JWS "alg" values (RFC 7518 section 3.1, RFC 8037 for EdDSA) a token may
// be signed with. Symmetric (HS*) and "none" are absent on purpose: an ID token verified with
// an issuer's public keys must be signed with the matching private key.
var supportedAlgs = []string{"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA"}

// strictB64 decodes a JWS segment (RFC 7515 section 2: base64url without padding). Strict
// refuses non-zero unused bits in the last character; the re-encoding in canonicalSegment also
// refuses the line breaks the decoder skips.
var strictB64 = base64.RawURLEncoding.Strict()

// parsedToken is a compact JWS (RFC 7515 section 7.1) whose three segments are canonical
// base64url, whose header names a supported alg and no crit, and whose payload is a JSON object
// of claims with the types OIDC Core section 2 gives them. Nothing in it is verified yet.
type parsedToken struct {
	header  []byte          // decoded protected header (JSON)
	payload []byte          // decoded payload (JSON)
	alg     string          // one of supportedAlgs
	kid     json.RawMessage // a JSON string, or nil
	tokenClaims
}

// tokenClaims are the claims of a token's payload. Numbers in claims are json.Number, as the
// payload wrote them (the policy sees them unchanged).
type tokenClaims struct {
	claims map[string]any
	iss    string
	sub    string
	aud    []string
	// exp, nbf, iat and auth_time: NumericDate values (RFC 7519 section 2), seconds since
	// 1970 UTC; set is false when the claim is absent.
	exp, nbf, iat, authTime numericDate
}

// numericDate is a NumericDate claim: seconds since 1970-01-01T00:00:00Z, possibly fractional.
type numericDate struct {
	set  bool
	secs float64
}

// maxDate is 9999-12-31T23:59:59Z: later dates are shown as a number of seconds.
const maxDate = 253402300799

func (d numericDate) time() time.Time {
	s := math.Min(d.secs, maxDate)
	return time.Unix(int64(s), 0).UTC()
}

// String is the date in RFC 3339 UTC, or the number of seconds when beyond year 9999.
func (d numericDate) String() string {
	if d.secs > maxDate {
		return strconv.FormatFloat(d.secs, 'g', -1, 64) + " (seconds since 1970)"
	}
	return d.time().Format(time.RFC3339)
}

func unauthenticated(format string, args ...any) error {
	return ca.Unauthenticated(fmt.Sprintf(format, args...), nil)
}

// parseToken checks the form of a compact JWS ID token before anything verifies it: at most
// MaxTokenBytes, three canonical base64url segments, a JSON object header with a supported alg
// and no crit, and a payload of claims (parseClaims). Every refusal is a ca.Unauthenticated
// error whose message names what is wrong and how to get it right.
func parseToken(token string) (*parsedToken, error) {
	if len(token) > MaxTokenBytes {
		return nil, unauthenticated("token is %d bytes, over the %d-byte (16 KiB) limit: send only the ID token as \"Authorization: Bearer <ID token>\"", len(token), MaxTokenBytes)
	}
	if n := strings.Count(token, ".") + 1; n != 3 {
		return nil, unauthenticated("malformed token: a JWT has 3 dot-separated segments (header.payload.signature), this one has %d; send the ID token, not an access token or an encrypted token", n)
	}
	hseg, rest, _ := strings.Cut(token, ".")
	pseg, sseg, _ := strings.Cut(rest, ".")
	notCanonical := func(segment string) error {
		return unauthenticated("token is not canonical base64url: its %s segment must be unpadded base64url (A-Z a-z 0-9 - _) with zero unused bits and no line breaks (RFC 7515 section 2)", segment)
	}
	t := &parsedToken{}
	// One allocation holds the decoded header and payload, which live as long as the token.
	buf := make([]byte, strictB64.DecodedLen(len(hseg))+strictB64.DecodedLen(len(pseg)))
	var ok bool
	if t.header, ok = canonicalSegment(hseg, buf); !ok {
		return nil, notCanonical("header")
	}
	t.header = t.header[:len(t.header):len(t.header)]
	if t.payload, ok = canonicalSegment(pseg, buf[len(t.header):]); !ok {
		return nil, notCanonical("payload")
	}
	var sig [512]byte // RSA-4096 and smaller signatures are decoded here, then dropped
	if !canonicalSignature(sseg, &sig) {
		return nil, notCanonical("signature")
	}
	if err := t.parseHeader(); err != nil {
		return nil, err
	}
	if err := t.tokenClaims.parse(t.payload); err != nil {
		return nil, err
	}
	return t, nil
}

// canonicalSegment decodes seg into dst (or a new slice when dst is too small) and reports
// whether seg is the one encoding of the bytes. The strict decoder refuses every character
// outside the alphabet, '=' and non-zero unused bits in the last character; the only text it
// skips is a line break (\r, \n), which makes seg longer than the encoding of what it
// decoded. So a strict decode whose encoded length is len(seg) is the encoding itself, and
// nothing is encoded again to compare (FuzzCanonicalSegment checks the two agree).
func canonicalSegment(seg string, dst []byte) ([]byte, bool) {
	if n := strictB64.DecodedLen(len(seg)); n > len(dst) {
		dst = make([]byte, n)
	}
	n, err := strictB64.Decode(dst, []byte(seg))
	if err != nil || strictB64.EncodedLen(n) != len(seg) {
		return nil, false
	}
	return dst[:n], true
}

// canonicalSignature is canonicalSegment for the signature, whose bytes are not kept.
func canonicalSignature(seg string, buf *[512]byte) bool {
	_, ok := canonicalSegment(seg, buf[:])
	return ok
}

// jwsHeader holds the header parameters Authenticate reads (RFC 7515 section 4.1). Field names
// match case-insensitively: a header that spells one of them in other case is read as having it
// (refused, or the same as go-jose reads it), never as lacking it.
type jwsHeader struct {
	Alg  json.RawMessage `json:"alg"`
	Kid  json.RawMessage `json:"kid"`
	Crit json.RawMessage `json:"crit"`
}

func (t *parsedToken) parseHeader() error {
	var h jwsHeader
	if err := json.Unmarshal(t.header, &h); err != nil || !isObject(t.header) {
		return unauthenticated("token header is not a JSON object (RFC 7515 section 4)")
	}
	if h.Alg == nil {
		return unauthenticated("token header has no alg; it must name one of %s", strings.Join(supportedAlgs, ", "))
	}
	if t.alg = supportedAlg(h.Alg); t.alg == "" {
		return unauthenticated("token alg %s is not accepted: ID tokens must be signed with one of %s", truncate(string(h.Alg), 40), strings.Join(supportedAlgs, ", "))
	}
	if h.Crit != nil {
		return unauthenticated("token header crit names extensions this service does not support (%s); the identity provider must not mark header parameters critical", truncate(string(h.Crit), 100))
	}
	if h.Kid != nil {
		if h.Kid[0] != '"' {
			return unauthenticated("token header kid must be a string (RFC 7515 section 4.1.4)")
		}
		t.kid = h.Kid
	}
	return nil
}

// supportedAlg returns the supported alg that the JSON value raw names, or "". A name written
// with escapes ("ES\u0032\u0035\u0036") is not recognised: refused, not misread.
func supportedAlg(raw []byte) string {
	if len(raw) < 2 || raw[0] != '"' || raw[len(raw)-1] != '"' {
		return ""
	}
	for _, a := range supportedAlgs {
		if string(raw[1:len(raw)-1]) == a {
			return a
		}
	}
	return ""
}

// kidString is the header's kid, for messages ("" without one).
func (t *parsedToken) kidString() string {
	var kid string
	_ = json.Unmarshal(t.kid, &kid)
	return kid
}

// isObject reports whether valid JSON text b is an object.
func isObject(b []byte) bool {
	b = bytes.TrimLeft(b, " \t\r\n")
	return len(b) > 0 && b[0] == '{'
}

// parseClaims decodes a token payload: one JSON object (RFC 7519 section 7.2) whose iss, sub
// and aud are present with their types, whose exp is present, and whose exp, nbf, iat and
// auth_time are numbers when present (OIDC Core section 2). It judges no value (time, issuer,
// audience); Authenticate does, once the signature is verified.
func parseClaims(payload []byte) (*tokenClaims, error) {
	c := &tokenClaims{}
	if err := c.parse(payload); err != nil {
		return nil, err
	}
	return c, nil
}

// parse is parseClaims into c.
func (c *tokenClaims) parse(payload []byte) error {
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.UseNumber()
	// Into an interface, not a map: encoding/json then builds the map without reflection, and
	// without two allocations per claim (a new element, then the boxed value).
	var v any
	if err := dec.Decode(&v); err != nil {
		return unauthenticated("token payload is not a JSON object of claims (RFC 7519 section 7.2)")
	}
	m, ok := v.(map[string]any)
	if !ok {
		return unauthenticated("token payload is not a JSON object of claims (RFC 7519 section 7.2)")
	}
	if _, err := dec.Token(); err != io.EOF {
		return unauthenticated("token payload has data after its JSON object of claims (RFC 7519 section 7.2)")
	}
	c.claims = m
	var err error
	if c.iss, err = requiredString(m, "iss", "the identity provider's issuer URL"); err != nil {
		return err
	}
	if c.sub, err = requiredString(m, "sub", "the identity provider's identifier of the user or workload"); err != nil {
		return err
	}
	switch a := m["aud"].(type) {
	case nil:
		if _, ok := m["aud"]; !ok {
			return unauthenticated("token has no aud claim; the identity provider must name this service's client ID in aud")
		}
		return unauthenticated("token claim aud must be a string or a list of strings (RFC 7519 section 4.1.3)")
	case string:
		c.aud = []string{a}
	case []any:
		c.aud = make([]string, 0, len(a))
		for _, e := range a {
			s, ok := e.(string)
			if !ok {
				return unauthenticated("token claim aud must be a string or a list of strings (RFC 7519 section 4.1.3)")
			}
			c.aud = append(c.aud, s)
		}
	default:
		return unauthenticated("token claim aud must be a string or a list of strings (RFC 7519 section 4.1.3)")
	}
	// Strings in OIDC Core section 2; go-oidc's ID token verifier, which Authenticate used
	// before, refused other types, and so do we.
	for _, name := range []string{"nonce", "at_hash"} {
		if v, ok := m[name]; ok {
			if _, ok := v.(string); !ok {
				return unauthenticated("token claim %s must be a string (OIDC Core section 2)", name)
			}
		}
	}
	for _, d := range []struct {
		name string
		to   *numericDate
	}{{"exp", &c.exp}, {"nbf", &c.nbf}, {"iat", &c.iat}, {"auth_time", &c.authTime}} {
		if *d.to, err = dateClaim(m, d.name); err != nil {
			return err
		}
	}
	if !c.exp.set {
		return unauthenticated("token has no exp claim; the identity provider must set one")
	}
	if !claimSourcesHold(m["_claim_names"], m["_claim_sources"]) {
		return unauthenticated("token claims are not those of an OIDC ID token: check _claim_names and _claim_sources (OIDC Core section 5.6.2)")
	}
	return nil
}

// claimSourcesHold reports whether the aggregated and distributed claims markers (OIDC Core
// section 5.6.2) hold together, as go-oidc's ID token verifier requires: _claim_names absent,
// null or an object whose every value is a non-empty string naming a member of
// _claim_sources; _claim_sources absent, null or an object whose members are null or objects
// whose endpoint and access_token are strings when present. sshca reads no claim from those
// sources: the check only refuses a token whose markers contradict each other.
func claimSourcesHold(names, sources any) bool {
	var srcs map[string]any
	switch s := sources.(type) {
	case nil:
	case map[string]any:
		for _, src := range s {
			switch o := src.(type) {
			case nil:
			case map[string]any:
				for _, f := range []string{"endpoint", "access_token"} {
					switch o[f].(type) {
					case nil, string:
					default:
						return false
					}
				}
			default:
				return false
			}
		}
		srcs = s
	default:
		return false
	}
	switch n := names.(type) {
	case nil:
		return true
	case map[string]any:
		for _, src := range n {
			name, ok := src.(string)
			if !ok || name == "" {
				return false
			}
			if _, ok := srcs[name]; !ok {
				return false
			}
		}
		return true
	}
	return false
}

func requiredString(m map[string]any, name, what string) (string, error) {
	v, ok := m[name]
	if !ok {
		return "", unauthenticated("token has no %s claim; it must carry %s (OIDC Core section 2)", name, what)
	}
	s, ok := v.(string)
	if !ok || s == "" {
		return "", unauthenticated("token claim %s must be a non-empty string: %s (OIDC Core section 2)", name, what)
	}
	return s, nil
}

// dateClaim reads a NumericDate claim (RFC 7519 section 2): a JSON number of seconds since
// 1970, not negative, within float64.
func dateClaim(m map[string]any, name string) (numericDate, error) {
	v, ok := m[name]
	if !ok {
		return numericDate{}, nil
	}
	n, ok := v.(json.Number)
	if !ok {
		return numericDate{}, unauthenticated("token claim %s must be a number (seconds since 1970)", name)
	}
	f, err := n.Float64()
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return numericDate{}, unauthenticated("token claim %s is out of range: it must be a number of seconds since 1970", name)
	}
	if f < 0 {
		return numericDate{}, unauthenticated("token claim %s is negative: it must be a number of seconds since 1970", name)
	}
	return numericDate{set: true, secs: f}, nil
}

// checkTimes judges the token's dates at now (OIDC Core section 3.1.3.7, RFC 7519 section 4.1):
// exp not passed; nbf, iat and auth_time not after now beyond Leeway; and exp at most
// maxLifetime after iat (after now without iat), which also bounds how long the token ledger
// keeps the token's record.
func (c *tokenClaims) checkTimes(now time.Time, maxLifetime time.Duration) error {
	n := float64(now.Unix())
	skew := Leeway.Seconds()
	if c.exp.secs <= n {
		return unauthenticated("token expired at %s; sign in again", c.exp)
	}
	if c.nbf.set && c.nbf.secs > n+skew {
		return unauthenticated("token is not valid yet: nbf is %s, more than %s after this service's clock (%s); sign in again, and check the identity provider's clock",
			c.nbf, Leeway, now.UTC().Format(time.RFC3339))
	}
	if c.iat.set && c.iat.secs > n+skew {
		return unauthenticated("token claim iat %s is in the future, more than %s after this service's clock (%s); check the identity provider's clock",
			c.iat, Leeway, now.UTC().Format(time.RFC3339))
	}
	if c.authTime.set && c.authTime.secs > n+skew {
		return unauthenticated("token claim auth_time %s is in the future, more than %s after this service's clock (%s); check the identity provider's clock",
			c.authTime, Leeway, now.UTC().Format(time.RFC3339))
	}
	from, what := n, "now"
	if c.iat.set {
		from, what = c.iat.secs, "its iat"
	}
	if life := c.exp.secs - from; life > maxLifetime.Seconds() {
		return unauthenticated("token exp is %s after %s, beyond this service's max_token_lifetime of %s; the identity provider must issue shorter-lived ID tokens",
			lifetime(life), what, maxLifetime)
	}
	return nil
}

func lifetime(secs float64) string {
	if secs < 1e9 {
		return time.Duration(secs * float64(time.Second)).Truncate(time.Second).String()
	}
	return strconv.FormatFloat(secs/(365.25*24*3600), 'g', 3, 64) + " years"
}

// replayKey names the token in the token ledger, under its issuer: its jti (RFC 7519 section
// 4.1.7) when that is a non-empty string, else the SHA-256 of the decoded header, a NUL and the
// decoded payload. Never the signature: an ECDSA signature has a second valid form (s and
// n - s), so a key over it would let one token give two certificates.
func (t *parsedToken) replayKey() string {
	if jti, _ := t.claims["jti"].(string); jti != "" {
		return t.iss + "|jti:" + jti
	}
	h := sha256.New()
	h.Write(t.header)
	h.Write([]byte{0})
	h.Write(t.payload)
	return t.iss + "|sha256:" + hex.EncodeToString(h.Sum(nil))
}

// quoteJSON shows a header or claim value the way the token wrote it.
func quoteJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return "?"
	}
	return string(b)
}
