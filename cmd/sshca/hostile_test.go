package main

import (
	"context"
	"crypto/dsa"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/kms"
)

// hostileIdP is an OIDC issuer whose ES256 key the test holds, so that it can sign whatever
// a hostile or broken identity provider would: any header (crit, an unknown kid, HS256 keyed
// with the public key), any claims, and re-encodings of its own tokens.
type hostileIdP struct {
	url    string
	key    *ecdsa.PrivateKey
	kid    string
	pubPEM []byte // what an HS256 forgery keys its MAC with
}

const hostileAudience = "sshca"

func startHostileIdP(t *testing.T) *hostileIdP {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	p := &hostileIdP{key: key, pubPEM: pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})}
	// A kid whose header encodes with unused bits in its last base64url character, so that the
	// header segment can be malleated too.
	for i := 1; ; i++ {
		p.kid = "key-" + strings.Repeat("k", i)
		if len(b64url(mustJSON(t, p.header())))%4 != 0 {
			break
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.url = "http://" + l.Addr().String() + "/oidc"
	jwks := mustJSON(t, jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: p.kid, Algorithm: "ES256", Use: "sig"}}})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /oidc/.well-known/openid-configuration", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(mustJSON(t, map[string]any{
			"issuer": p.url, "jwks_uri": p.url + "/jwks", "authorization_endpoint": p.url + "/authorize",
			"token_endpoint": p.url + "/token", "response_types_supported": []string{"id_token"},
			"subject_types_supported": []string{"public"}, "id_token_signing_alg_values_supported": []string{"ES256"},
		}))
	})
	mux.HandleFunc("GET /oidc/jwks", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(jwks)
	})
	srv := httptest.NewUnstartedServer(mux)
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	return p
}

func (p *hostileIdP) header() map[string]any {
	return map[string]any{"alg": "ES256", "kid": p.kid, "typ": "JWT"}
}

// omit removes a default claim or header parameter.
const omit = "\x00omit"

// claims are the defaults of a fresh, valid ID token for sub, with over applied.
func (p *hostileIdP) claims(over map[string]any) map[string]any {
	now := time.Now().Unix()
	jti := make([]byte, 12)
	rand.Read(jti)
	c := map[string]any{"iss": p.url, "aud": hostileAudience, "sub": "u-alice", "preferred_username": "alice",
		"iat": now, "nbf": now, "exp": now + 300, "jti": hex.EncodeToString(jti)}
	for k, v := range over {
		if v == omit {
			delete(c, k)
			continue
		}
		c[k] = v
	}
	return c
}

// token signs a valid token carrying over.
func (p *hostileIdP) token(t *testing.T, over map[string]any) string {
	return p.sign(t, p.header(), p.claims(over))
}

// sign encodes and signs header and claims as the header's alg says (ES256 with the issuer's
// key, HS256 with the issuer's public key as the MAC key, none without a signature).
func (p *hostileIdP) sign(t *testing.T, header, claims map[string]any) string {
	t.Helper()
	in := b64url(mustJSON(t, header)) + "." + b64url(mustJSON(t, claims))
	var sig []byte
	switch header["alg"] {
	case "ES256":
		sum := sha256.Sum256([]byte(in))
		r, s, err := ecdsa.Sign(rand.Reader, p.key, sum[:])
		if err != nil {
			t.Fatal(err)
		}
		sig = append(r.FillBytes(make([]byte, 32)), s.FillBytes(make([]byte, 32))...)
	case "HS256":
		m := hmac.New(sha256.New, p.pubPEM)
		m.Write([]byte(in))
		sig = m.Sum(nil)
	}
	return in + "." + b64url(sig)
}

// highS is the token with its ES256 signature's twin (r, n-s), which verifies just as well.
func highS(t *testing.T, token string) string {
	t.Helper()
	parts := strings.Split(token, ".")
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || len(sig) != 64 {
		t.Fatalf("not an ES256 signature: %v", err)
	}
	s := new(big.Int).SetBytes(sig[32:])
	s.Sub(elliptic.P256().Params().N, s)
	copy(sig[32:], s.FillBytes(make([]byte, 32)))
	return parts[0] + "." + parts[1] + "." + b64url(sig)
}

// flipUnused changes the unused low bits of segment i's last character: the decoded bytes
// stay the same, the text does not.
func flipUnused(t *testing.T, token string, i int) string {
	t.Helper()
	parts := strings.Split(token, ".")
	seg := parts[i]
	if len(seg)%4 == 0 || len(seg)%4 == 1 {
		t.Fatalf("segment %d (%d characters) has no unused bits", i, len(seg))
	}
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	v := strings.IndexByte(alphabet, seg[len(seg)-1])
	parts[i] = seg[:len(seg)-1] + string(alphabet[v^1])
	return strings.Join(parts, ".")
}

// malleable is a valid token whose payload segment has unused bits too.
func (p *hostileIdP) malleable(t *testing.T, over map[string]any) string {
	for pad := ""; ; pad += "x" {
		c := p.claims(over)
		c["pad"] = pad
		if tok := p.sign(t, p.header(), c); len(strings.Split(tok, ".")[1])%4 >= 2 {
			return tok
		}
	}
}

func b64url(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// ed25519Line is an authorized_keys line for raw Ed25519 point bytes (any 32 bytes).
func ed25519Line(point []byte) string {
	blob := ssh.Marshal(struct {
		Name string
		Key  []byte
	}{ssh.KeyAlgoED25519, point})
	return ssh.KeyAlgoED25519 + " " + base64.StdEncoding.EncodeToString(blob) + " hostile"
}

func authorizedLine(t *testing.T, pub any) string {
	t.Helper()
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
}

// rsaLine is an authorized_keys line for an RSA modulus chosen by the caller.
func rsaLine(n *big.Int) string {
	blob := ssh.Marshal(struct {
		Name string
		E    *big.Int
		N    *big.Int
	}{ssh.KeyAlgoRSA, big.NewInt(65537), n})
	return ssh.KeyAlgoRSA + " " + base64.StdEncoding.EncodeToString(blob) + " hostile"
}

// hostileServer is `sshca serve` with production wiring: the hostile issuer, redis-server with
// a password, the user CA key in SoftHSM behind a KMS URI carrying its PIN as pin-value. The
// password and the PIN are planted secrets; every log line is captured.
type hostileServer struct {
	base  string
	logs  *logCapture
	pin   string
	redis string // the Redis password
}

func startHostileServe(t *testing.T, idp *hostileIdP) *hostileServer {
	t.Helper()
	h := &hostileServer{logs: &logCapture{}, pin: plantedSecret(t), redis: plantedSecret(t)}
	r := testenv.StartRedis(t)
	admin := redis.NewClient(&redis.Options{Addr: r.Addr})
	if err := admin.ConfigSet(context.Background(), "requirepass", h.redis).Err(); err != nil {
		t.Fatal(err)
	}
	admin.Close()
	cfg := serveConfig(t, r.Addr, identity.IssuerConfig{IssuerURL: idp.url, Audiences: []string{hostileAudience}, AllowedEmailDomains: []string{"example.com"}})
	cfg.Redis.Password = h.redis

	testenv.SoftHSMToken(t, "hostile-conf") // points SOFTHSM2_CONF at a fresh token directory
	testenv.Run(t, testenv.Need(t, "softhsm2-util"), "--init-token", "--free", "--label", "hostile-ca", "--so-pin", "5678", "--pin", h.pin)
	cfg.UserCA = KeyConfig{KMS: "pkcs11:module-path=" + testenv.SoftHSMModule + ";token=hostile-ca?pin-value=" + h.pin,
		Key: "pkcs11:id=7351;object=hostile-user-ca"}
	k, err := kms.Create(context.Background(), kms.KeyRef{KMS: cfg.UserCA.KMS, Key: cfg.UserCA.Key}, kms.ECDSAP256)
	if err != nil {
		t.Fatalf("create the user CA key in SoftHSM: %v", err)
	}
	k.Close()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("config: %v", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	errc := make(chan error, 1)
	go func() { errc <- serve(ctx, cfg, h.logs.logger(), ready) }()
	select {
	case addr := <-ready:
		h.base = "http://" + addr
	case err := <-errc:
		cancel()
		t.Fatalf("serve: %v", err)
	case <-time.After(60 * time.Second):
		cancel()
		t.Fatal("serve did not start within 60s")
	}
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			noSecret(t, "serve error", err.Error(), h.pin, h.redis)
		}
	})
	return h
}

// hostileCall sends body as is; hdr replaces the default headers (a JSON Content-Type and the
// bearer token) for each key it names, and may carry several values.
func hostileCall(t *testing.T, method, url, token string, hdr http.Header, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v (a panic closes the connection)", method, url, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out
}

type hostileCase struct {
	name  string
	kind  string // "user" or "host"
	token string
	body  any // a string is sent as is, anything else as JSON
	hdr   http.Header
	code  int
	words []string // each must appear in the error and its reasons
	// check, for a 200, looks further at the certificate and the answer.
	check func(t *testing.T, c *ssh.Certificate, answer certAnswer)
}

type certAnswer struct {
	Certificate string   `json:"certificate"`
	Serial      string   `json:"serial"`
	KeyID       string   `json:"key_id"`
	Principals  []string `json:"principals"`
}

// TestHostileInput sends hostile and broken requests through `sshca serve` (production wiring,
// redis-server, SoftHSM, a real OIDC issuer over HTTP): each gets exactly its status and a
// message naming the problem; no answer is a 500 and nothing panics; every certificate issued
// is no wider than asked (principals among those requested, or those granted when none were
// asked for; lifetime at most the TTL asked, else the policy's default), and signed by the
// published CA key. Planted secrets (a private key pasted as public_key, the tokens, the KMS
// PIN, the Redis password) appear in no answer and no log line.
//
// Authentication comes before input validation: without a valid token, a request whose key or
// TTL is bad is 401 and says nothing about them; only the HTTP envelope (Content-Type, size,
// JSON shape, duplicate keys, the Authorization header) is checked before.
func TestHostileInput(t *testing.T) {
	idp := startHostileIdP(t)
	srv := startHostileServe(t, idp)
	base := srv.base

	userCA := fetchCAKey(t, base, "user.pub")
	userKey := newEd25519Line(t)
	hostKey := newEd25519Line(t)
	tok := func(over map[string]any) string { return idp.token(t, over) }
	alice := func() string { return tok(nil) }
	ci := func() string {
		return tok(map[string]any{"sub": "ci-job", "preferred_username": "ci", "groups": []string{"ci"}})
	}
	user := func(kv ...any) map[string]any {
		m := map[string]any{"public_key": userKey}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1]
		}
		return m
	}
	host := func(names ...string) map[string]any {
		return map[string]any{"public_key": hostKey, "hostnames": names}
	}
	now := time.Now().Unix()

	// Planted: an Ed25519 private key as base64 PKCS#8 (64 characters, no PEM lines) and as
	// PEM; its seed must appear nowhere either.
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	pkcs8, _ := x509.MarshalPKCS8PrivateKey(priv)
	pastedPKCS8 := base64.StdEncoding.EncodeToString(pkcs8)
	pastedPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}))
	pemBody := strings.Split(strings.TrimSpace(pastedPEM), "\n")[1]
	seed := base64.StdEncoding.EncodeToString(priv.Seed())

	// Keys.
	identityPoint := make([]byte, 32)
	identityPoint[0] = 1
	pPlus1 := make([]byte, 32) // y = p+1 = 2^255-18, little-endian: the identity, non-canonical
	pPlus1[0] = 0xee
	for i := 1; i < 31; i++ {
		pPlus1[i] = 0xff
	}
	pPlus1[31] = 0x7f
	minusOne := slices.Clone(pPlus1) // y = p-1 = -1: the point of order 2
	minusOne[0] = 0xec
	zeroPoint := make([]byte, 32) // y = 0: a point of order 4
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	skBadApp := ssh.Marshal(struct {
		Name, Key, App string
	}{ssh.KeyAlgoSKED25519, string(edPub), "https://evil.example.com"})
	skBadAppLine := ssh.KeyAlgoSKED25519 + " " + base64.StdEncoding.EncodeToString(skBadApp) + " fido"
	skGood := ssh.Marshal(struct {
		Name, Key, App string
	}{ssh.KeyAlgoSKED25519, string(edPub), "ssh:"})
	skGoodLine := ssh.KeyAlgoSKED25519 + " " + base64.StdEncoding.EncodeToString(skGood) + " fido"
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	evenN := new(big.Int).SetBit(rsaKey.N, 0, 0)
	factorN := new(big.Int).Sub(rsaKey.N, new(big.Int).Mod(rsaKey.N, big.NewInt(65521))) // divisible by 65521
	if factorN.Bit(0) == 0 {
		factorN.Sub(factorN, big.NewInt(65521))
	}
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	var dsaKey dsa.PrivateKey
	if err := dsa.GenerateParameters(&dsaKey.Parameters, rand.Reader, dsa.L1024N160); err != nil {
		t.Fatal(err)
	}
	if err := dsa.GenerateKey(&dsaKey, rand.Reader); err != nil {
		t.Fatal(err)
	}
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecSigner, _ := ssh.NewSignerFromKey(ecKey)
	selfCert := &ssh.Certificate{Key: ecSigner.PublicKey(), CertType: ssh.UserCert, ValidPrincipals: []string{"alice"}, ValidBefore: ssh.CertTimeInfinity}
	if err := selfCert.SignCert(rand.Reader, ecSigner); err != nil {
		t.Fatal(err)
	}
	certLine := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(selfCert)))

	// Tokens.
	spent := alice() // used for a certificate below, then replayed in re-encodings
	spentNoJTI := tok(map[string]any{"jti": omit, "sub": "u-nojti"})
	malleable := idp.malleable(t, nil)
	for i := range 3 {
		if n := len(strings.Split(malleable, ".")[i]) % 4; n < 2 {
			t.Fatalf("segment %d of the malleable token has no unused bits", i)
		}
	}
	hs256 := idp.sign(t, map[string]any{"alg": "HS256", "typ": "JWT", "kid": idp.kid}, idp.claims(nil))
	algNone := idp.sign(t, map[string]any{"alg": "none", "typ": "JWT"}, idp.claims(nil))
	unknownKid := idp.sign(t, map[string]any{"alg": "ES256", "typ": "JWT", "kid": "not-a-key-of-the-issuer"}, idp.claims(nil))
	critHdr := idp.sign(t, map[string]any{"alg": "ES256", "typ": "JWT", "kid": idp.kid, "crit": []string{"exp-x"}, "exp-x": 1}, idp.claims(nil))
	oversized := tok(map[string]any{"pad": strings.Repeat("A", 17<<10)})
	padded := func(tk string, i int) string {
		parts := strings.Split(tk, ".")
		parts[i] += strings.Repeat("=", (4-len(parts[i])%4)%4)
		return strings.Join(parts, ".")
	}

	// Identities for the claims cases.
	longSub := strings.Repeat("s", 11000)
	subNewline := "u-eve\nAccepted publickey for root from 10.0.0.1 port 22 ssh2"

	noNewline := func(t *testing.T, c *ssh.Certificate, a certAnswer) {
		if strings.ContainsAny(c.KeyId, "\r\n") || !strings.Contains(c.KeyId, "%0A") {
			t.Errorf("key ID %q: the newline must be escaped as %%0A", c.KeyId)
		}
	}
	idPartAtMost128 := func(t *testing.T, c *ssh.Certificate, a certAnswer) {
		name, _, _ := strings.Cut(c.KeyId, "#")
		if len(name) > 128 {
			t.Errorf("key ID identity part is %d bytes, over 128: %q", len(name), name)
		}
		if n := len(a.Certificate); n > 2048 {
			t.Errorf("certificate line is %d bytes, want under 2 KB", n)
		}
	}
	keyIDStarts := func(prefix string) func(*testing.T, *ssh.Certificate, certAnswer) {
		return func(t *testing.T, c *ssh.Certificate, _ certAnswer) {
			if !strings.HasPrefix(c.KeyId, prefix) {
				t.Errorf("key ID %q does not start with %q", c.KeyId, prefix)
			}
		}
	}
	ttlIs := func(want time.Duration) func(*testing.T, *ssh.Certificate, certAnswer) {
		return func(t *testing.T, c *ssh.Certificate, _ certAnswer) {
			if got := time.Until(time.Unix(int64(c.ValidBefore), 0)); got > want+5*time.Second || got < want-30*time.Second {
				t.Errorf("certificate lives %s more, want about %s", got.Round(time.Second), want)
			}
		}
	}
	j := func(s string) http.Header { return http.Header{"Content-Type": {s}} }

	tests := []hostileCase{
		// Controls: the request every case below varies.
		{name: "control user", kind: "user", token: spent, body: user("principals", []string{"alice"}, "ttl", "5m"), code: 200},
		{name: "control host", kind: "host", token: ci(), body: host("web1.dev.internal"), code: 200},
		{name: "control user, principals from the policy", kind: "user", token: alice(), body: user(), code: 200,
			check: func(t *testing.T, c *ssh.Certificate, _ certAnswer) {
				if !slices.Equal(c.ValidPrincipals, []string{"alice"}) {
					t.Errorf("principals %q, want the granted [alice]", c.ValidPrincipals)
				}
			}},

		// Tokens.
		{name: "no token", kind: "user", body: user(), code: 401, words: []string{"missing bearer token"}},
		{name: "alg none", kind: "user", token: algNone, body: user(), code: 401, words: []string{`alg "none"`, "not accepted", "ES256"}},
		{name: "HS256 keyed with the issuer's public key", kind: "user", token: hs256, body: user(), code: 401, words: []string{`alg "HS256"`, "not accepted"}},
		{name: "wrong iss", kind: "user", token: tok(map[string]any{"iss": "https://evil.example.com"}), body: user(), code: 401, words: []string{"issuer", "not trusted"}},
		{name: "wrong aud", kind: "user", token: tok(map[string]any{"aud": "someone-else"}), body: user(), code: 401, words: []string{"audience", "someone-else"}},
		{name: "no aud", kind: "user", token: tok(map[string]any{"aud": omit}), body: user(), code: 401, words: []string{"no aud"}},
		{name: "expired", kind: "user", token: tok(map[string]any{"iat": now - 3600, "nbf": now - 3600, "exp": now - 600}), body: user(), code: 401, words: []string{"expired", "sign in again"}},
		{name: "future nbf", kind: "user", token: tok(map[string]any{"nbf": now + 3600, "exp": now + 7200}), body: user(), code: 401, words: []string{"not valid yet", "nbf"}},
		{name: "future iat", kind: "user", token: tok(map[string]any{"iat": now + 3600, "nbf": omit, "exp": now + 7200}), body: user(), code: 401, words: []string{"iat", "in the future"}},
		{name: "no exp", kind: "user", token: tok(map[string]any{"exp": omit}), body: user(), code: 401, words: []string{"no exp claim"}},
		{name: "exp null", kind: "user", token: tok(map[string]any{"exp": nil}), body: user(), code: 401, words: []string{"exp"}},
		{name: "unknown kid", kind: "user", token: unknownKid, body: user(), code: 401, words: []string{"signature does not verify", "not-a-key-of-the-issuer"}},
		{name: "signature of another token", kind: "user", token: strings.Join(append(strings.Split(alice(), ".")[:2], strings.Split(ci(), ".")[2]), "."), body: user(), code: 401, words: []string{"signature does not verify"}},
		{name: "oversized token (> 16 KiB)", kind: "user", token: oversized, body: user(), code: 401, words: []string{"16 KiB"}},
		{name: "crit header", kind: "user", token: critHdr, body: user(), code: 401, words: []string{"crit", "exp-x"}},
		{name: "garbage token", kind: "user", token: "not.a.jwt", body: user(), code: 401, words: []string{"base64url"}},
		{name: "two segments", kind: "user", token: "eyJhbGciOiJFUzI1NiJ9.e30", body: user(), code: 401, words: []string{"3 dot-separated segments"}},
		{name: "unused bits of the header", kind: "user", token: flipUnused(t, malleable, 0), body: user(), code: 401, words: []string{"not canonical base64url", "header"}},
		{name: "unused bits of the payload", kind: "user", token: flipUnused(t, malleable, 1), body: user(), code: 401, words: []string{"not canonical base64url", "payload"}},
		{name: "unused bits of the signature", kind: "user", token: flipUnused(t, malleable, 2), body: user(), code: 401, words: []string{"not canonical base64url", "signature"}},
		{name: "= padding on the signature", kind: "user", token: padded(malleable, 2), body: user(), code: 401, words: []string{"not canonical base64url"}},
		{name: "= padding on the header", kind: "user", token: padded(malleable, 0), body: user(), code: 401, words: []string{"not canonical base64url"}},
		{name: "token is spent by its first certificate", kind: "user", token: spent, body: user(), code: 401, words: []string{"token already used"}},
		{name: "high-s twin of a spent token", kind: "user", token: highS(t, spent), body: user(), code: 401, words: []string{"token already used"}},
		{name: "without jti: first certificate", kind: "user", token: spentNoJTI, body: user("principals", []string{"alice"}), code: 200},
		{name: "without jti: high-s twin", kind: "user", token: highS(t, spentNoJTI), body: user(), code: 401, words: []string{"token already used"}},
		{name: "without jti: replayed", kind: "user", token: spentNoJTI, body: user(), code: 401, words: []string{"token already used"}},
		{name: "malleable token itself is good", kind: "user", token: malleable, body: user("principals", []string{"alice"}), code: 200},

		// Authentication comes first: a bad token with a bad request says only that the token is bad.
		{name: "order: no token, bad key", kind: "user", body: user("public_key", "ssh-ed25519 AAAA"), code: 401, words: []string{"missing bearer token"}},
		{name: "order: garbage token, bad key", kind: "user", token: "x.y.z", body: user("public_key", "ssh-ed25519 AAAA"), code: 401, words: []string{"token"}},
		{name: "order: expired token, even RSA modulus", kind: "user", token: tok(map[string]any{"exp": now - 600, "iat": now - 900, "nbf": now - 900}), body: user("public_key", rsaLine(evenN)), code: 401, words: []string{"expired"}},
		{name: "order: forged token, bad ttl", kind: "user", token: algNone, body: user("ttl", "1ns"), code: 401, words: []string{`alg "none"`}},
		{name: "order: forged token, private key pasted", kind: "user", token: hs256, body: user("public_key", pastedPEM), code: 401, words: []string{`alg "HS256"`}},
		// The envelope is checked before.
		{name: "order: envelope before the token", kind: "user", token: "x.y.z", body: `[]`, code: 400, words: []string{"JSON object"}},

		// Keys (valid token: the key checks run).
		{name: "ed25519 identity point", kind: "user", token: alice(), body: user("public_key", ed25519Line(identityPoint)), code: 400, words: []string{"Ed25519 point", "small order"}},
		{name: "ed25519 identity, y = p+1", kind: "user", token: alice(), body: user("public_key", ed25519Line(pPlus1)), code: 400, words: []string{"Ed25519 point", "not canonically encoded"}},
		{name: "ed25519 order-2 point", kind: "user", token: alice(), body: user("public_key", ed25519Line(minusOne)), code: 400, words: []string{"small order"}},
		{name: "ed25519 order-4 point (all zero)", kind: "user", token: alice(), body: user("public_key", ed25519Line(zeroPoint)), code: 400, words: []string{"small order"}},
		{name: "ed25519 31 bytes", kind: "user", token: alice(), body: user("public_key", ed25519Line(edPub[:31])), code: 400, words: []string{"not a valid ssh-ed25519"}},
		{name: "sk-ed25519 application not ssh:", kind: "user", token: alice(), body: user("public_key", skBadAppLine), code: 400, words: []string{"application", "ssh:"}},
		{name: "sk-ed25519 good application", kind: "user", token: alice(), body: user("public_key", skGoodLine, "principals", []string{"alice"}), code: 200},
		{name: "rsa even modulus", kind: "user", token: alice(), body: user("public_key", rsaLine(evenN)), code: 400, words: []string{"RSA modulus is even"}},
		{name: "rsa modulus with factor 65521", kind: "user", token: alice(), body: user("public_key", rsaLine(factorN)), code: 400, words: []string{"prime factor below 65536"}},
		{name: "rsa 1024", kind: "user", token: alice(), body: user("public_key", authorizedLine(t, &rsa1024.PublicKey)), code: 400, words: []string{"too small"}},
		{name: "rsa 2048 good", kind: "user", token: alice(), body: user("public_key", authorizedLine(t, &rsaKey.PublicKey), "principals", []string{"alice"}), code: 200},
		{name: "dsa", kind: "user", token: alice(), body: user("public_key", authorizedLine(t, &dsaKey.PublicKey)), code: 400, words: []string{"DSA"}},
		{name: "certificate instead of key", kind: "user", token: alice(), body: user("public_key", certLine), code: 400, words: []string{"is a certificate", "plain public key"}},
		{name: "options in front", kind: "user", token: alice(), body: user("public_key", `from="10.0.0.1",no-pty `+userKey), code: 400, words: []string{"options", "dropped"}},
		{name: "command option in front", kind: "user", token: alice(), body: user("public_key", `command="/bin/true" `+userKey), code: 400, words: []string{"options"}},
		{name: "PEM private key", kind: "user", token: alice(), body: user("public_key", pastedPEM), code: 400, words: []string{"private key", ".pub"}},
		{name: "bare base64 PKCS#8 private key", kind: "user", token: alice(), body: user("public_key", pastedPKCS8), code: 400, words: []string{"public_key", ".pub"}},
		{name: "type and PKCS#8 blob", kind: "user", token: alice(), body: user("public_key", "ssh-ed25519 "+pastedPKCS8), code: 400, words: []string{"not a valid ssh-ed25519"}},
		{name: "unknown type", kind: "user", token: alice(), body: user("public_key", "ssh-quantum AAAA x"), code: 400, words: []string{"unsupported key type"}},
		{name: "two key lines", kind: "user", token: alice(), body: user("public_key", userKey+"\n"+hostKey), code: 400, words: []string{"one key line"}},
		{name: "empty public key", kind: "user", token: alice(), body: user("public_key", ""), code: 400, words: []string{"public_key is required"}},
		{name: "host: ed25519 identity point", kind: "host", token: ci(), body: map[string]any{"public_key": ed25519Line(identityPoint), "hostnames": []string{"web1.dev.internal"}}, code: 400, words: []string{"small order"}},

		// Principals.
		{name: "principal *", kind: "user", token: alice(), body: user("principals", []string{"*"}), code: 400, words: []string{"must match"}},
		{name: "principal upper case", kind: "user", token: alice(), body: user("principals", []string{"Alice"}), code: 400, words: []string{"must match"}},
		{name: "principal with comma", kind: "user", token: alice(), body: user("principals", []string{"alice,root"}), code: 400, words: []string{"must match"}},
		{name: "principal empty string", kind: "user", token: alice(), body: user("principals", []string{""}), code: 400, words: []string{"principal"}},
		{name: "principal not granted", kind: "user", token: alice(), body: user("principals", []string{"bob"}), code: 403, words: []string{"bob"}},
		{name: "root without a group", kind: "user", token: alice(), body: user("principals", []string{"root"}), code: 403, words: []string{"root"}},
		{name: "narrowed to what was asked", kind: "user", token: tok(map[string]any{"groups": []string{"admins"}}), body: user("principals", []string{"admin"}), code: 200,
			check: func(t *testing.T, c *ssh.Certificate, _ certAnswer) {
				if !slices.Equal(c.ValidPrincipals, []string{"admin"}) {
					t.Errorf("principals %q, want only the asked [admin] of the granted alice and admin", c.ValidPrincipals)
				}
			}},
		{name: "one asked principal not granted", kind: "user", token: alice(), body: user("principals", []string{"alice", "bob"}), code: 403, words: []string{"bob"}},
		{name: "33 principals", kind: "user", token: alice(), body: user("principals", manyPrincipals(33)), code: 400, words: []string{"principals"}},

		// Host names.
		{name: "host 127.1", kind: "host", token: ci(), body: host("127.1"), code: 400, words: []string{"127.1", "not a host name"}},
		{name: "host 0x7f.1", kind: "host", token: ci(), body: host("0x7f.1"), code: 400, words: []string{"0x7f.1", "not a host name"}},
		{name: "host with a port", kind: "host", token: ci(), body: host("web1:22.dev.internal"), code: 400, words: []string{"web1:22.dev.internal", "not a host name"}},
		{name: "host ::1 reaches the policy", kind: "host", token: ci(), body: host("::1"), code: 403, words: []string{"::1"}},
		{name: "host non-canonical IPv6", kind: "host", token: ci(), body: host("0:0::1"), code: 400, words: []string{"not a host name"}},
		{name: "host IPv6 with zone", kind: "host", token: ci(), body: host("fe80::1%eth0"), code: 400, words: []string{"not a host name"}},
		{name: "host 127.0.0.1 granted", kind: "host", token: ci(), body: host("127.0.0.1"), code: 200},
		{name: "host *", kind: "host", token: ci(), body: host("*"), code: 400, words: []string{"not a host name"}},
		{name: "host wildcard label", kind: "host", token: ci(), body: host("*.dev.internal"), code: 400, words: []string{"not a host name"}},
		{name: "host upper case", kind: "host", token: ci(), body: host("WEB1.dev.internal"), code: 400, words: []string{"WEB1.dev.internal"}},
		{name: "host 64-character label", kind: "host", token: ci(), body: host(strings.Repeat("a", 64) + ".dev.internal"), code: 400, words: []string{"not a host name"}},
		{name: "host 63-character label", kind: "host", token: ci(), body: host(strings.Repeat("a", 63) + ".dev.internal"), code: 200},
		{name: "host trailing dot", kind: "host", token: ci(), body: host("web1.dev.internal."), code: 400, words: []string{"not a host name"}},
		{name: "host leading hyphen", kind: "host", token: ci(), body: host("-web1.dev.internal"), code: 400, words: []string{"not a host name"}},
		{name: "host suffix trick", kind: "host", token: ci(), body: host("a.dev.internal.evil.com"), code: 403, words: []string{"a.dev.internal.evil.com"}},
		{name: "host outside patterns", kind: "host", token: ci(), body: host("db.prod.internal"), code: 403, words: []string{"db.prod.internal"}},
		{name: "host without names", kind: "host", token: ci(), body: map[string]any{"public_key": hostKey}, code: 400, words: []string{"host name is required"}},
		{name: "principals on a host request", kind: "host", token: ci(), body: map[string]any{"public_key": hostKey, "principals": []string{"root"}}, code: 400, words: []string{"hostnames"}},
		{name: "hostnames on a user request", kind: "user", token: alice(), body: user("hostnames", []string{"web1.dev.internal"}), code: 400, words: []string{"host certificates"}},
		{name: "user token for a host certificate", kind: "host", token: alice(), body: host("web1.dev.internal"), code: 403, words: []string{}},

		// TTL.
		{name: "ttl 1ns", kind: "user", token: alice(), body: user("ttl", "1ns"), code: 400, words: []string{"at least 1m"}},
		{name: "ttl 59s", kind: "user", token: alice(), body: user("ttl", "59s"), code: 400, words: []string{"at least 1m"}},
		{name: "ttl 59.999s", kind: "user", token: alice(), body: user("ttl", "59.999s"), code: 400, words: []string{"at least 1m"}},
		{name: "ttl 60s", kind: "user", token: alice(), body: user("ttl", "60s", "principals", []string{"alice"}), code: 200, check: ttlIs(time.Minute)},
		{name: "ttl 1.5m", kind: "user", token: alice(), body: user("ttl", "1.5m", "principals", []string{"alice"}), code: 200, check: ttlIs(90 * time.Second)},
		{name: "ttl 60.9s truncated", kind: "user", token: alice(), body: user("ttl", "60.9s", "principals", []string{"alice"}), code: 200, check: ttlIs(time.Minute)},
		{name: "ttl negative", kind: "user", token: alice(), body: user("ttl", "-5m"), code: 400, words: []string{"positive"}},
		{name: "ttl over the hard cap", kind: "user", token: alice(), body: user("ttl", "25h"), code: 400, words: []string{"service maximum"}},
		{name: "ttl huge", kind: "user", token: alice(), body: user("ttl", "9999999999h"), code: 400, words: []string{"ttl"}},
		{name: "ttl as a number", kind: "user", token: alice(), body: user("ttl", 300), code: 400, words: []string{"ttl"}},
		{name: "ttl over the policy", kind: "user", token: alice(), body: user("ttl", "2h"), code: 403, words: []string{}},

		// Bodies.
		{name: "body []", kind: "user", token: alice(), body: `[]`, code: 400, words: []string{"JSON object", "array"}},
		{name: "body null", kind: "user", token: alice(), body: `null`, code: 400, words: []string{"JSON object"}},
		{name: "body a string", kind: "user", token: alice(), body: `"ssh-ed25519 AAAA"`, code: 400, words: []string{"JSON object"}},
		{name: "body nested 9 deep", kind: "user", token: alice(), body: `{"principals":[[[[[[[[["a"]]]]]]]]]}`, code: 400, words: []string{"nested deeper"}},
		{name: "body nested 10000 deep", kind: "user", token: alice(), body: `{"principals":` + strings.Repeat("[", 10000) + strings.Repeat("]", 10000) + `}`, code: 400, words: []string{"nested deeper"}},
		{name: "duplicate key", kind: "user", token: alice(), body: `{"public_key":"x","public_key":"` + userKey + `"}`, code: 400, words: []string{"public_key", "twice"}},
		{name: "case-variant duplicate key", kind: "user", token: alice(), body: `{"public_key":"` + userKey + `","PUBLIC_KEY":"x"}`, code: 400, words: []string{"twice"}},
		{name: "case-variant key alone", kind: "user", token: alice(), body: `{"Public_Key":"` + userKey + `"}`, code: 400, words: []string{"Public_Key"}},
		{name: "duplicate key in a nested object", kind: "user", token: alice(), body: `{"public_key":"` + userKey + `","principals":[{"a":1,"a":2}]}`, code: 400, words: []string{"twice"}},
		{name: "unknown field", kind: "user", token: alice(), body: user("admin", true), code: 400, words: []string{`unknown field "admin"`}},
		{name: "text/plain Content-Type", kind: "user", token: alice(), body: string(mustJSON(t, user())), hdr: j("text/plain"), code: 400, words: []string{"Content-Type", "application/json"}},
		{name: "form Content-Type", kind: "user", token: alice(), body: string(mustJSON(t, user())), hdr: j("application/x-www-form-urlencoded"), code: 400, words: []string{"Content-Type"}},
		{name: "no Content-Type", kind: "user", token: alice(), body: string(mustJSON(t, user())), hdr: http.Header{"Content-Type": nil}, code: 400, words: []string{"Content-Type is missing"}},
		{name: "two Content-Types", kind: "user", token: alice(), body: string(mustJSON(t, user())), hdr: http.Header{"Content-Type": {"application/json", "text/plain"}}, code: 400, words: []string{"Content-Type"}},
		{name: "two Authorization headers", kind: "user", body: string(mustJSON(t, user())), hdr: http.Header{"Authorization": {"Bearer " + alice(), "Bearer " + alice()}}, code: 400, words: []string{"Authorization"}},
		{name: "Authorization not Bearer", kind: "user", body: string(mustJSON(t, user())), hdr: http.Header{"Authorization": {"Basic YWxpY2U6c2VjcmV0"}}, code: 401, words: []string{"Bearer"}},
		{name: "empty body", kind: "user", token: alice(), body: "", code: 400, words: []string{"empty"}},
		{name: "malformed JSON", kind: "user", token: alice(), body: "{public_key:", code: 400, words: []string{"malformed JSON"}},
		{name: "two objects", kind: "user", token: alice(), body: `{"public_key":"x"} {}`, code: 400, words: []string{"after the JSON object"}},
		{name: "body over 64 KiB", kind: "user", token: alice(), body: `{"public_key":"` + strings.Repeat("A", 70<<10) + `"}`, code: 413, words: []string{"64 KiB"}},
		{name: "reason over 1024 bytes", kind: "user", token: alice(), body: user("reason", strings.Repeat("r", 1025)), code: 400, words: []string{"reason"}},

		// Claims.
		{name: `email_verified "true"`, kind: "user", token: tok(map[string]any{"email": "alice@example.com", "email_verified": "true"}), body: user("principals", []string{"alice"}), code: 200,
			check: keyIDStarts("alice@example.com~")},
		{name: `email_verified "false"`, kind: "user", token: tok(map[string]any{"email": "alice@example.com", "email_verified": "false"}), body: user("principals", []string{"alice"}), code: 200,
			check: keyIDStarts("alice~")},
		{name: "exp as a string", kind: "user", token: tok(map[string]any{"exp": fmt.Sprint(now + 300)}), body: user(), code: 401, words: []string{"exp", "must be a number"}},
		{name: "nbf as a string", kind: "user", token: tok(map[string]any{"nbf": fmt.Sprint(now)}), body: user(), code: 401, words: []string{"nbf", "must be a number"}},
		{name: "auth_time in the future", kind: "user", token: tok(map[string]any{"auth_time": now + 3600}), body: user(), code: 401, words: []string{"auth_time", "in the future"}},
		{name: "auth_time as a string", kind: "user", token: tok(map[string]any{"auth_time": "yesterday"}), body: user(), code: 401, words: []string{"auth_time", "must be a number"}},
		{name: "exp 2^62", kind: "user", token: tok(map[string]any{"exp": int64(1) << 62}), body: user(), code: 401, words: []string{"max_token_lifetime"}},
		{name: "exp 25h after iat", kind: "user", token: tok(map[string]any{"exp": now + 25*3600}), body: user(), code: 401, words: []string{"max_token_lifetime"}},
		{name: "sub missing", kind: "user", token: tok(map[string]any{"sub": omit}), body: user(), code: 401, words: []string{"sub"}},
		{name: "sub a number", kind: "user", token: tok(map[string]any{"sub": 42}), body: user(), code: 401, words: []string{"sub"}},
		// Without username or e-mail, the subject is the key ID's display name.
		{name: "sub with a newline", kind: "user", token: tok(map[string]any{"sub": subNewline, "preferred_username": omit, "groups": []string{"admins"}}), body: user("principals", []string{"admin"}), code: 200, check: noNewline},
		// A 20,000-character sub makes a token over the 16 KiB limit; the longest that fits
		// still gives a key ID of at most 128 bytes and a small certificate.
		{name: "20,000-character sub", kind: "user", token: tok(map[string]any{"sub": strings.Repeat("s", 20000), "preferred_username": omit, "groups": []string{"admins"}}), body: user("principals", []string{"admin"}), code: 401, words: []string{"16 KiB"}},
		{name: "11,000-character sub", kind: "user", token: tok(map[string]any{"sub": longSub, "preferred_username": omit, "groups": []string{"admins"}}), body: user("principals", []string{"admin"}), code: 200, check: idPartAtMost128},
		{name: "11,000-character e-mail", kind: "user", token: tok(map[string]any{"email": strings.Repeat("e", 11000) + "@example.com", "email_verified": true, "groups": []string{"admins"}}), body: user("principals", []string{"admin"}), code: 200, check: idPartAtMost128},
		{name: "preferred_username admin, no groups", kind: "user", token: tok(map[string]any{"sub": "u-mallory", "preferred_username": "admin"}), body: user("principals", []string{"admin"}), code: 403, words: []string{"admin"}},
		{name: "preferred_username root", kind: "user", token: tok(map[string]any{"sub": "u-mallory", "preferred_username": "root"}), body: user("principals", []string{"root"}), code: 403, words: []string{"root"}},
		{name: "preferred_username admin gets no admin principal", kind: "user", token: tok(map[string]any{"sub": "u-mallory2", "preferred_username": "admin"}), body: user(), code: 403, words: []string{}},
		{name: "groups as an object", kind: "user", token: tok(map[string]any{"groups": map[string]any{"admins": true}}), body: user("principals", []string{"admin"}), code: 403, words: []string{}},
	}

	var secrets []string // every token sent, and the planted secrets
	for _, tt := range tests {
		if len(tt.token) > 40 {
			secrets = append(secrets, tt.token)
		}
		if a := tt.hdr.Values("Authorization"); len(a) > 0 {
			for _, v := range a {
				secrets = append(secrets, strings.TrimPrefix(v, "Bearer "))
			}
		}
	}
	secrets = append(secrets, pastedPKCS8, pemBody, seed, srv.pin, srv.redis)

	if len(tests) < 80 {
		t.Errorf("only %d cases", len(tests))
	}
	bodies := map[string]string{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body, ok := tt.body.(string)
			if !ok {
				body = string(mustJSON(t, tt.body))
			}
			code, out := hostileCall(t, http.MethodPost, base+"/v1/certs/"+tt.kind, tt.token, tt.hdr, body)
			bodies[tt.name] = string(out)
			t.Logf("%d %.300s", code, out)
			if code != tt.code {
				t.Fatalf("status = %d, want %d; body %s", code, tt.code, out)
			}
			if code == 200 {
				checkNoWider(t, tt, out, userCA)
				return
			}
			var e struct {
				Error   string   `json:"error"`
				Reasons []string `json:"reasons"`
			}
			if err := json.Unmarshal(out, &e); err != nil || e.Error == "" {
				t.Fatalf("error body %q is not {\"error\": ...}: %v", out, err)
			}
			all := e.Error + " " + strings.Join(e.Reasons, " ")
			for _, w := range tt.words {
				if !strings.Contains(all, w) {
					t.Errorf("message %q does not mention %q", all, w)
				}
			}
			if code == 403 && len(e.Reasons) == 0 {
				t.Errorf("403 without reasons: %s", out)
			}
			for _, bad := range []string{"m=+", "0001-01-01", "strconv.", "json: cannot", "services.", "go-jose", "oidc:"} {
				if strings.Contains(all, bad) {
					t.Errorf("message %q shows Go internals (%q)", all, bad)
				}
			}
		})
	}

	t.Run("revocation by identity covers every name", func(t *testing.T) {
		revokeByIdentity(t, base, idp, userKey)
	})

	logs := srv.logs.String()
	if !strings.Contains(logs, "level=") {
		t.Fatal("nothing was logged: the capture is broken")
	}
	if strings.Contains(logs, "panic") {
		t.Errorf("the server log shows a panic:\n%s", logs)
	}
	for name, b := range bodies {
		noSecret(t, fmt.Sprintf("answer to %q", name), b, secrets...)
	}
	for _, line := range strings.Split(logs, "\n") {
		noSecret(t, "log line", line, secrets...)
		if strings.HasPrefix(strings.TrimSpace(line), "Accepted") {
			t.Errorf("the log holds a forged line: %q", line)
		}
	}
}

// checkNoWider parses the certificate of a 200 and checks it is no wider than asked: a user or
// host certificate as the endpoint says, for the key sent, signed by the published user CA
// (user certificates), principals among those requested (or the granted username when none
// were), and a lifetime at most the TTL asked, else the policy's default.
func checkNoWider(t *testing.T, tt hostileCase, out []byte, userCA ssh.PublicKey) {
	t.Helper()
	var a certAnswer
	if err := json.Unmarshal(out, &a); err != nil {
		t.Fatalf("answer: %v", err)
	}
	k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(a.Certificate))
	if err != nil {
		t.Fatalf("certificate does not parse: %v", err)
	}
	c, ok := k.(*ssh.Certificate)
	if !ok {
		t.Fatalf("not a certificate: %s", a.Certificate)
	}
	body := tt.body.(map[string]any)
	sent, _, _, _, err := ssh.ParseAuthorizedKey([]byte(body["public_key"].(string)))
	if err != nil || string(c.Key.Marshal()) != string(sent.Marshal()) {
		t.Errorf("certificate for another key than the one sent")
	}
	wantType, maxTTL := uint32(ssh.UserCert), 10*time.Minute // the shipped policy's defaults
	asked, _ := body["principals"].([]string)
	if tt.kind == "host" {
		wantType, maxTTL = ssh.HostCert, time.Hour
		asked, _ = body["hostnames"].([]string)
	} else if !bytesEqual(c.SignatureKey.Marshal(), userCA.Marshal()) {
		t.Errorf("user certificate not signed by the published user CA key")
	}
	if c.CertType != wantType {
		t.Errorf("certificate type %d, want %d", c.CertType, wantType)
	}
	if s, ok := body["ttl"].(string); ok {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("ttl %q: %v", s, err)
		}
		maxTTL = d
	}
	if got := time.Until(time.Unix(int64(c.ValidBefore), 0)); got > maxTTL+5*time.Second {
		t.Errorf("certificate lives %s more, more than the %s asked", got, maxTTL)
	}
	if len(c.ValidPrincipals) == 0 {
		t.Errorf("certificate without principals: valid for everyone")
	}
	for _, p := range c.ValidPrincipals {
		if len(asked) > 0 && !slices.Contains(asked, p) {
			t.Errorf("principal %q was not asked for (asked %q)", p, asked)
		}
		if len(asked) == 0 && p != "alice" {
			t.Errorf("principal %q granted though none was asked for", p)
		}
	}
	if !slices.Equal(c.ValidPrincipals, a.Principals) || !strings.HasSuffix(c.KeyId, "#"+a.Serial) || a.KeyID != c.KeyId {
		t.Errorf("answer %+v does not describe the certificate (key ID %q)", a, c.KeyId)
	}
	if len(c.KeyId) > 0 && strings.ContainsAny(c.KeyId, " \t\r\n") {
		t.Errorf("key ID %q holds spaces or line breaks", c.KeyId)
	}
	if tt.check != nil {
		tt.check(t, c, a)
	}
}

func bytesEqual(a, b []byte) bool { return string(a) == string(b) }

// revokeByIdentity: alice's certificate issued under her subject alone (e-mail not verified)
// and the one issued with her verified e-mail are both revoked by revoking the e-mail; a new
// certificate for the same subject is then refused, and so is one for the e-mail.
func revokeByIdentity(t *testing.T, base string, idp *hostileIdP, key string) {
	issueSerial := func(over map[string]any) string {
		t.Helper()
		code, out := hostileCall(t, http.MethodPost, base+"/v1/certs/user", idp.token(t, over), nil, string(mustJSON(t, map[string]any{"public_key": key})))
		if code != 200 {
			t.Fatalf("issue: %d %s", code, out)
		}
		var a certAnswer
		if err := json.Unmarshal(out, &a); err != nil {
			t.Fatal(err)
		}
		return a.Serial
	}
	unverified := map[string]any{"sub": "u-carol", "preferred_username": omit, "email": "carol@example.com", "email_verified": false, "groups": []string{"admins"}}
	verified := map[string]any{"sub": "u-carol", "preferred_username": "carol", "email": "carol@example.com", "email_verified": true}
	s1 := issueSerial(unverified)
	s2 := issueSerial(verified)
	admin := idp.token(t, map[string]any{"sub": "u-root-admin", "preferred_username": "rootadmin", "groups": []string{"sshca-admins"}})
	code, out := hostileCall(t, http.MethodPost, base+"/v1/revocations", admin, nil,
		string(mustJSON(t, map[string]any{"identity": "carol@example.com", "reason": "left the company"})))
	if code != 200 {
		t.Fatalf("revoke carol@example.com: %d %s", code, out)
	}
	var r struct {
		Revoked []struct{ Kind, Value string } `json:"revoked"`
		Matches []string                       `json:"matches"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatal(err)
	}
	revoked := map[string]bool{}
	for _, e := range r.Revoked {
		revoked[e.Value] = true
	}
	for _, s := range []string{s1, s2} {
		if !revoked[s] {
			// An entry may name the certificate by key ID; look it up in the revocation list.
			code, list := hostileCall(t, http.MethodGet, base+"/v1/revocations", idp.token(t, map[string]any{"sub": "u-root-admin", "preferred_username": "rootadmin", "groups": []string{"sshca-admins"}}), nil, "")
			if code != 200 || !strings.Contains(string(list), `"`+s+`"`) {
				t.Errorf("serial %s of carol is not revoked: revoke answer %s; list %d %s", s, out, code, list)
			}
		}
	}
	if len(r.Matches) != 1 {
		t.Errorf("matches %q, want carol's one identity", r.Matches)
	}
	for _, over := range []map[string]any{unverified, verified} {
		code, out := hostileCall(t, http.MethodPost, base+"/v1/certs/user", idp.token(t, over), nil, string(mustJSON(t, map[string]any{"public_key": key})))
		if code != 403 || !strings.Contains(string(out), "revoked") {
			t.Errorf("new certificate for revoked carol: %d %s, want 403 revoked", code, out)
		}
	}
}

func manyPrincipals(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("user%d", i)
	}
	return out
}

func newEd25519Line(t *testing.T) string {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return authorizedLine(t, pub)
}

// fetchCAKey reads the first key of /v1/ca/<name>.
func fetchCAKey(t *testing.T, base, name string) ssh.PublicKey {
	t.Helper()
	code, out := call(t, http.MethodGet, base+"/v1/ca/"+name, "", nil)
	if code != 200 {
		t.Fatalf("GET /v1/ca/%s: %d %s", name, code, out)
	}
	k, _, _, _, err := ssh.ParseAuthorizedKey(out)
	if err != nil {
		t.Fatalf("GET /v1/ca/%s: %v", name, err)
	}
	return k
}
