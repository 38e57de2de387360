package ca_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"io"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"

	"filippo.io/edwards25519"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/store"
)

// smallOrderPoints are the canonical encodings of the 8 points of the Ed25519 torsion subgroup
// (orders 1, 2, 4, 4, 8, 8, 8, 8), as listed in curve25519-dalek's EIGHT_TORSION and in
// Chalkias, Garillot, Nikolaenko, "Taming the many EdDSAs" (2020), table 6.
// TestSmallOrderPointsAreTheTorsionSubgroup proves the list is exactly that subgroup.
var smallOrderPoints = []string{
	"0100000000000000000000000000000000000000000000000000000000000000",
	"ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
	"0000000000000000000000000000000000000000000000000000000000000000",
	"0000000000000000000000000000000000000000000000000000000000000080",
	"c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
	"c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
	"26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
	"26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
}

const (
	// identityPoint is the neutral element, y = 1: with S = 0 and R = this encoding, an
	// Ed25519 signature verifies for every message.
	identityPoint = "0100000000000000000000000000000000000000000000000000000000000000"
	// identityNonCanonical is y = p+1, which SetBytes reduces to the identity.
	identityNonCanonical = "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"
	// identityNegZero is y = 1 with the sign bit set: x = 0 cannot be negative.
	identityNegZero = "0100000000000000000000000000000000000000000000000000000000000080"
	// order2NegZero is y = p-1 (order 2, x = 0) with the sign bit set.
	order2NegZero = "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
	// largeNonCanonical is y = p+3: a point of large order (y = 3), non-canonically
	// encoded, so only the canonical-encoding check refuses it.
	largeNonCanonical = "f0ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"
	// undecodable is y = 2, for which (y²-1)/(dy²+1) has no square root.
	undecodable = "0200000000000000000000000000000000000000000000000000000000000000"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func wireLine(typ string, fields ...any) string {
	var b []byte
	b = append(b, ssh.Marshal(struct{ S string }{typ})...)
	for _, f := range fields {
		switch v := f.(type) {
		case string:
			b = append(b, ssh.Marshal(struct{ S string }{v})...)
		case []byte:
			b = append(b, ssh.Marshal(struct{ B []byte }{v})...)
		case ed25519.PublicKey:
			b = append(b, ssh.Marshal(struct{ B []byte }{v})...)
		case *big.Int:
			b = append(b, ssh.Marshal(struct{ I *big.Int }{v})...)
		case rawBytes:
			b = append(b, v...)
		default:
			panic("wireLine: unsupported field")
		}
	}
	return typ + " " + base64.StdEncoding.EncodeToString(b) + " test"
}

type rawBytes []byte

// skEd25519Made is a FIDO Ed25519 public key with application "ssh:".
const skEd25519Made = "sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAIEX/dQ0v4127bEo8eeG1EV0ApO2lWbSnN6RWusn/NjqIAAAABHNzaDo= sk"

func authorizedKey(t testing.TB, k any) string {
	t.Helper()
	pk, err := ssh.NewPublicKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return string(ssh.MarshalAuthorizedKey(pk))
}

func edLine(pub []byte) string { return wireLine(ssh.KeyAlgoED25519, pub) }

func skEdLine(pub []byte, app string) string { return wireLine(ssh.KeyAlgoSKED25519, pub, app) }

func rsaLine(e, n *big.Int) string { return wireLine(ssh.KeyAlgoRSA, e, n) }

// rsaFixtures are made once: prime generation takes most of a second under -race.
var rsaFixtures = sync.OnceValue(func() (f struct {
	key                       *rsa.PrivateKey
	small                     *rsa.PrivateKey
	bigPrime, prime1024, fact *big.Int
}) {
	var err error
	if f.key, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		panic(err)
	}
	if f.small, err = rsa.GenerateKey(rand.Reader, 1024); err != nil {
		panic(err)
	}
	if f.bigPrime, err = rand.Prime(rand.Reader, 2046); err != nil {
		panic(err)
	}
	if f.prime1024, err = rand.Prime(rand.Reader, 1024); err != nil {
		panic(err)
	}
	f.fact = big.NewInt(65521) // the largest prime below 2^16
	return f
})

type keyCase struct {
	name, line string
	wantErr    string // "" when the key must be accepted
}

func publicKeyCases(t testing.TB) []keyCase {
	t.Helper()
	f := rsaFixtures()
	e := big.NewInt(65537)
	signer, edPub := newSSHKey(t)
	edRaw := edPub.(ssh.CryptoPublicKey).CryptoPublicKey().(ed25519.PublicKey)
	cert := &ssh.Certificate{Key: edPub, CertType: ssh.UserCert, ValidPrincipals: []string{"a"}, ValidBefore: ssh.CertTimeInfinity}
	if err := cert.SignCert(rand.Reader, signer); err != nil {
		t.Fatal(err)
	}
	ecKeys := map[string]*ecdsa.PrivateKey{}
	for name, c := range map[string]elliptic.Curve{"p256": elliptic.P256(), "p384": elliptic.P384(), "p521": elliptic.P521()} {
		k, err := ecdsa.GenerateKey(c, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		ecKeys[name] = k
	}
	p256 := ecKeys["p256"]
	onCurve := elliptic.Marshal(elliptic.P256(), p256.X, p256.Y) //nolint:staticcheck // the SSH wire form is this encoding
	offCurve := append([]byte(nil), onCurve...)
	offCurve[len(offCurve)-1] ^= 1
	compressed := elliptic.MarshalCompressed(elliptic.P256(), p256.X, p256.Y)

	_, edPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(edPriv)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8B64 := base64.StdEncoding.EncodeToString(pkcs8) // 64 characters
	pemKey := string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}))
	opensshPEM, err := ssh.MarshalPrivateKey(edPriv, "")
	if err != nil {
		t.Fatal(err)
	}
	edLineOK := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(edPub)))
	edBlob := strings.Fields(edLineOK)[1]

	sq := new(big.Int).Mul(f.prime1024, f.prime1024)
	leadingZero := func() string {
		// The modulus as an mpint with one extra leading zero byte.
		nb := append([]byte{0, 0}, f.key.N.Bytes()...)
		return wireLine(ssh.KeyAlgoRSA, e, rawBytes(ssh.Marshal(struct{ B []byte }{nb})))
	}()
	negN := new(big.Int).Neg(f.key.N)

	cases := []keyCase{
		// Keys that must pass, one per accepted type.
		{"ed25519", edLineOK, ""},
		{"ed25519 with tab and no comment", "ssh-ed25519\t" + edBlob, ""},
		{"ecdsa p256", authorizedKey(t, &p256.PublicKey), ""},
		{"ecdsa p384", authorizedKey(t, &ecKeys["p384"].PublicKey), ""},
		{"ecdsa p521", authorizedKey(t, &ecKeys["p521"].PublicKey), ""},
		{"rsa 2048", authorizedKey(t, &f.key.PublicKey), ""},
		// x/crypto accepts e = 3, and so do we: OpenSSH verifies PKCS#1 v1.5 padding in
		// full, so a small exponent allows no forgery; pinned so a change is deliberate.
		{"rsa e=3 accepted", rsaLine(big.NewInt(3), f.key.N), ""},
		{"sk-ed25519 ssh:", skEd25519Made, ""},
		{"sk-ed25519 ssh:name", skEdLine(edRaw, "ssh:work"), ""},
		{"sk-ed25519 application of 255 bytes", skEdLine(edRaw, "ssh:"+strings.Repeat("a", 251)), ""},
		{"sk-ecdsa ssh:", wireLine(ssh.KeyAlgoSKECDSA256, "nistp256", onCurve, "ssh:"), ""},

		// Ed25519 points anyone can sign for, or encodings that are not the key's.
		{"ed25519 identity point", edLine(unhex(t, identityPoint)), "small order: anyone can sign for it"},
		{"ed25519 identity y=p+1", edLine(unhex(t, identityNonCanonical)), "not canonically encoded"},
		{"ed25519 identity with sign bit", edLine(unhex(t, identityNegZero)), "not canonically encoded"},
		{"ed25519 order 2 with sign bit", edLine(unhex(t, order2NegZero)), "not canonically encoded"},
		{"ed25519 large order y=p+3", edLine(unhex(t, largeNonCanonical)), "not canonically encoded"},
		{"ed25519 undecodable", edLine(unhex(t, undecodable)), "not a point on the curve"},
		{"ed25519 31 bytes", edLine(edRaw[:31]), "not a valid ssh-ed25519 public key"},
		{"sk-ed25519 identity point", skEdLine(unhex(t, identityPoint), "ssh:"), "small order"},
		{"sk-ed25519 y=p+1", skEdLine(unhex(t, identityNonCanonical), "ssh:"), "not canonically encoded"},
		{"sk-ed25519 undecodable", skEdLine(unhex(t, undecodable), "ssh:"), "not a point on the curve"},

		// FIDO applications.
		{"sk-ed25519 empty application", skEdLine(edRaw, ""), "application must start with \"ssh:\""},
		{"sk-ed25519 http application", skEdLine(edRaw, "http://x"), "application must start with \"ssh:\""},
		{"sk-ed25519 application of 256 bytes", skEdLine(edRaw, "ssh:"+strings.Repeat("a", 252)), "at most 255"},
		{"sk-ed25519 non-printable application", skEdLine(edRaw, "ssh:\x01"), "printable"},
		{"sk-ed25519 application with newline", skEdLine(edRaw, "ssh:a\nb"), "printable"},
		{"sk-ecdsa http application", wireLine(ssh.KeyAlgoSKECDSA256, "nistp256", onCurve, "https://example.com"), "application must start"},
		{"sk-ecdsa off curve", wireLine(ssh.KeyAlgoSKECDSA256, "nistp256", offCurve, "ssh:"), "not on the curve"},

		// RSA moduli whose private key anyone can compute.
		{"rsa 1024", authorizedKey(t, &f.small.PublicKey), "RSA key of 1024 bits is too small"},
		{"rsa even modulus", rsaLine(e, new(big.Int).Lsh(f.bigPrime, 8)), "modulus is even"},
		{"rsa factor 65521", rsaLine(e, new(big.Int).Mul(f.fact, f.bigPrime)), "prime factor below 65536"},
		{"rsa factor 3", rsaLine(e, new(big.Int).Mul(big.NewInt(3), f.bigPrime)), "prime factor below 65536"},
		{"rsa perfect square", rsaLine(e, sq), "perfect square"},
		{"rsa negative modulus", rsaLine(e, negN), "not a positive number"},
		{"rsa modulus with leading zeros", leadingZero, "canonical wire encoding"},
		// Exponent checks x/crypto makes; pinned so an upgrade cannot lose them.
		{"rsa e=1", rsaLine(big.NewInt(1), f.key.N), "exponent must be odd and at least 3"},
		{"rsa e=65536 even", rsaLine(big.NewInt(65536), f.key.N), "exponent must be odd"},
		{"rsa e=2", rsaLine(big.NewInt(2), f.key.N), "exponent must be odd"},
		{"rsa e over 24 bits", rsaLine(big.NewInt(1<<24+1), f.key.N), "exponent is over 24 bits"},
		// ECDSA points x/crypto refuses; pinned too.
		{"ecdsa off curve", wireLine(ssh.KeyAlgoECDSA256, "nistp256", offCurve), "ECDSA point is not on the curve"},
		{"ecdsa infinity", wireLine(ssh.KeyAlgoECDSA256, "nistp256", []byte{0}), "ECDSA point is not on the curve"},
		{"ecdsa compressed point", wireLine(ssh.KeyAlgoECDSA256, "nistp256", compressed), "ECDSA point is not on the curve"},
		{"ecdsa curve mismatch", wireLine(ssh.KeyAlgoECDSA256, "nistp384secretcurve", onCurve), "truncated or malformed"},

		// Lines that are not one plain public key.
		{"options from", `from="10.0.0.0/8" ` + edLineOK, "options in front of the key"},
		{"options command", `command="echo hi there" ` + edLineOK, "options in front of the key"},
		{"options cert-authority", "cert-authority " + edLineOK, "options in front of the key"},
		{"options restrict", "restrict,pty " + edLineOK, "options in front of the key"},
		{"options upper case", "NO-PTY " + edLineOK, "options in front of the key"},
		{"pem pkcs8", pemKey, "looks like a private key"},
		{"pem openssh", string(pem.EncodeToMemory(opensshPEM)), "looks like a private key"},
		{"private key words", "my PRIVATE KEY is here", "looks like a private key"},
		{"bare base64 pkcs8 ed25519", pkcs8B64, "no key type in front"},
		{"bare base64 pkcs8 with comment", pkcs8B64 + " me@host", "no key type in front"},
		{"bare public blob", edBlob, "no key type in front"},
		{"unknown type echoing a secret", "x" + pkcs8B64[:40] + "!" + " AAAA", "an unrecognised key type"},
		{"unknown type", "ssh-foo AAAA", "an unrecognised key type"},
		{"certificate", string(ssh.MarshalAuthorizedKey(cert)), "is a certificate (ssh-ed25519-cert-v01@openssh.com)"},
		{"dsa", "ssh-dss AAAAB3NzaC1kc3MAAACBAP== x", "DSA keys are not accepted"},
		{"xmss", "ssh-xmss@openssh.com AAAA", "ssh-xmss@openssh.com keys are not accepted"},
		{"garbage base64", "ssh-ed25519 !!!!", "not base64"},
		{"type missing blob", "ssh-ed25519", "base64 key after \"ssh-ed25519\" is missing"},
		{"type mismatch", "ssh-rsa " + edBlob, "the line says ssh-rsa but the key is ssh-ed25519"},
		{"trailing junk in blob", wireLine(ssh.KeyAlgoED25519, edRaw, "junk"), "extra bytes after the key"},
		{"two lines", edLineOK + "\n" + edLineOK, "exactly one key line"},
		{"comment line first", "# mine\n" + edLineOK, "exactly one key line"},
		{"empty", "  ", "required"},
	}
	for _, p := range smallOrderPoints {
		cases = append(cases, keyCase{"ed25519 small order " + p[:8] + "..." + p[62:], edLine(unhex(t, p)), "small order: anyone can sign for it"})
		cases = append(cases, keyCase{"sk-ed25519 small order " + p[:8] + "..." + p[62:], skEdLine(unhex(t, p), "ssh:"), "small order: anyone can sign for it"})
	}
	return cases
}

func TestParsePublicKey(t *testing.T) {
	for _, tt := range publicKeyCases(t) {
		t.Run(tt.name, func(t *testing.T) {
			key, err := ca.ParsePublicKey(tt.line)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				if err := ca.CheckPublicKey(key); err != nil {
					t.Fatalf("CheckPublicKey refuses what ParsePublicKey accepted: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || ca.KindOf(err) != ca.KindInvalid {
				t.Fatalf("error = %v, want invalid containing %q", err, tt.wantErr)
			}
			if !strings.HasPrefix(err.Error(), "public_key") {
				t.Errorf("error %q does not name the field public_key", err)
			}
			if leak := echoed(tt.line, err.Error(), 8, nil); leak != "" {
				t.Errorf("error %q echoes %q of the input", err, leak)
			}
		})
	}
}

// echoed returns a substring of input, n bytes long, that msg contains, or "". Key type names
// are cut out of input first (messages may name them), and substrings that occur in vocabulary
// (the fixed text of the messages) do not count.
func echoed(input, msg string, n int, vocabulary []string) string {
	names := []string{
		"ssh-ed25519-cert-v01@openssh.com", "ssh-rsa-cert-v01@openssh.com", "ssh-dss-cert-v01@openssh.com",
		"ecdsa-sha2-nistp256-cert-v01@openssh.com", "ecdsa-sha2-nistp384-cert-v01@openssh.com",
		"ecdsa-sha2-nistp521-cert-v01@openssh.com", "sk-ssh-ed25519-cert-v01@openssh.com",
		"sk-ecdsa-sha2-nistp256-cert-v01@openssh.com", "ssh-xmss-cert-v01@openssh.com",
		"sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com", "ssh-xmss@openssh.com",
		"ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
		"ssh-ed25519", "ssh-rsa", "ssh-dss",
	}
	for _, name := range names {
		if !ca.KnownKeyType(name) {
			panic("echoed: " + name + " is not a known key type")
		}
		input = strings.ReplaceAll(input, name, "\x00")
		// A type name the message quotes is not an echo, nor is any piece of one (the input
		// "sk-ssh-ed25519@openssh.com 519@openssh.com " met the quoted name's tail).
		msg = strings.ReplaceAll(msg, name, "\x00")
	}
next:
	for i := 0; i+n <= len(input); i++ {
		w := input[i : i+n]
		if strings.IndexByte(w, 0) >= 0 || !strings.Contains(msg, w) {
			continue
		}
		for _, v := range vocabulary {
			if strings.Contains(v, w) {
				continue next
			}
		}
		return w
	}
	return ""
}

// TestSmallOrderPointsAreTheTorsionSubgroup: the 8 encodings decode, are canonical, are
// distinct and are all killed by the cofactor, so they are exactly the 8-torsion subgroup.
func TestSmallOrderPointsAreTheTorsionSubgroup(t *testing.T) {
	seen := map[string]bool{}
	for _, h := range smallOrderPoints {
		p, err := new(edwards25519.Point).SetBytes(unhex(t, h))
		if err != nil {
			t.Fatalf("%s does not decode: %v", h, err)
		}
		if got := hex.EncodeToString(p.Bytes()); got != h {
			t.Fatalf("%s re-encodes as %s", h, got)
		}
		if new(edwards25519.Point).MultByCofactor(p).Equal(edwards25519.NewIdentityPoint()) != 1 {
			t.Fatalf("%s is not of small order", h)
		}
		seen[h] = true
	}
	if len(seen) != 8 {
		t.Fatalf("%d distinct points, want 8", len(seen))
	}
}

// ed25519Verdict checks ParsePublicKey on one 32-byte point against the reference: decode
// with SetBytes, re-encode and compare, multiply by the cofactor.
func ed25519Verdict(t *testing.T, b []byte) {
	t.Helper()
	_, err := ca.ParsePublicKey(edLine(b))
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	p, derr := new(edwards25519.Point).SetBytes(b)
	switch {
	case derr != nil:
		if err == nil {
			t.Fatalf("%x does not decode but is accepted", b)
		}
	case hex.EncodeToString(p.Bytes()) != hex.EncodeToString(b):
		if !strings.Contains(msg, "not canonically encoded") {
			t.Fatalf("%x is not canonical (re-encodes as %x); ParsePublicKey: %v", b, p.Bytes(), err)
		}
	case new(edwards25519.Point).MultByCofactor(p).Equal(edwards25519.NewIdentityPoint()) == 1:
		if !strings.Contains(msg, "small order") {
			t.Fatalf("%x is of small order; ParsePublicKey: %v", b, err)
		}
	default:
		if err != nil {
			t.Fatalf("%x is a canonical point of large order; ParsePublicKey: %v", b, err)
		}
	}
}

// ed25519EdgeEncodings are every encoding with y >= p, y in {0, 1, p-1} and the small-order
// points, each with and without the sign bit.
func ed25519EdgeEncodings(t testing.TB) [][]byte {
	var out [][]byte
	add := func(b []byte) {
		for _, sign := range []byte{0, 0x80} {
			c := append([]byte(nil), b...)
			c[31] = c[31]&0x7f | sign
			out = append(out, c)
		}
	}
	for k := 0; k < 19; k++ { // y = p+k, little-endian: (0xed+k) ff..ff 7f
		b := make([]byte, 32)
		for i := range b {
			b[i] = 0xff
		}
		b[0], b[31] = byte(0xed+k), 0x7f
		add(b)
	}
	for _, h := range append([]string{undecodable, "0300000000000000000000000000000000000000000000000000000000000000"}, smallOrderPoints...) {
		add(unhex(t, h))
	}
	return out
}

// TestCanonicalEd25519MatchesReencoding: the byte-level canonical check (no field inversion)
// agrees with decoding and re-encoding on every edge encoding and on random ones.
func TestCanonicalEd25519MatchesReencoding(t *testing.T) {
	for _, b := range ed25519EdgeEncodings(t) {
		ed25519Verdict(t, b)
	}
	b := make([]byte, 32)
	for range 3000 {
		_, _ = rand.Read(b)
		ed25519Verdict(t, b)
	}
}

// FuzzEd25519Point: for any 32 bytes, ParsePublicKey decides as the reference does.
func FuzzEd25519Point(f *testing.F) {
	for _, b := range ed25519EdgeEncodings(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) != 32 {
			return
		}
		ed25519Verdict(t, b)
	})
}

// TestEd25519ConstantSignatureVerifies is why the identity point is refused: one signature
// (R = identity, S = 0) verifies for any message under Go's verifier too.
func TestEd25519ConstantSignatureVerifies(t *testing.T) {
	sig := append(unhex(t, identityPoint), make([]byte, 32)...)
	for _, msg := range []string{"", "renew me", "any message at all"} {
		if !ed25519.Verify(unhex(t, identityPoint), []byte(msg), sig) {
			t.Fatalf("constant signature does not verify for %q: the premise of the check is wrong", msg)
		}
	}
}

// TestRevokeWeakKey: revocation by public key accepts every key x/crypto parses, weak ones
// included, so that certificates already issued for them can be revoked.
func TestRevokeWeakKey(t *testing.T) {
	now := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	caKey, _ := newSSHKey(t)
	for _, h := range []string{identityPoint, identityNonCanonical, smallOrderPoints[4]} {
		// The parse the revocation endpoint (services) uses for public_key.
		weak, _, _, _, err := ssh.ParseAuthorizedKey([]byte(edLine(unhex(t, h))))
		if err != nil {
			t.Fatalf("%s: the revocation parse refuses a weak key: %v", h, err)
		}
		revs := store.NewMemory(clock)
		sgn := fakeSigner{key: caKey, now: clock}
		a, err := ca.New(ca.Config{Authenticator: fakeAuth{ca.Identity{Issuer: "https://idp", Subject: "a1", Email: "admin@example.com"}},
			Policy: &fakePolicy{dec: ca.Decision{Allow: true}}, UserSigner: sgn, HostSigner: sgn,
			Store: &fakeStore{}, Revocations: revs, Audit: &fakeAudit{}, Now: clock})
		if err != nil {
			t.Fatal(err)
		}
		res, err := a.Revoke(context.Background(), "good", ca.RevokeRequest{PublicKey: weak, Reason: "weak key"})
		if err != nil {
			t.Fatalf("%s: Revoke: %v", h, err)
		}
		if len(res.Revoked) != 2 || res.Revoked[0].Kind != ca.RevokedKey {
			t.Fatalf("%s: revoked %+v, want the key under both CAs", h, res.Revoked)
		}
		why, err := revs.Refused(context.Background(), caKey.PublicKey(), []string{"someone"}, weak)
		if err != nil || why == "" {
			t.Fatalf("%s: revoked weak key not refused: %q, %v", h, why, err)
		}
		st, err := revs.State(context.Background(), caKey.PublicKey())
		if err != nil || len(st.Entries) == 0 || st.Entries[0].Value != base64.StdEncoding.EncodeToString(weak.Marshal()) {
			t.Fatalf("%s: state %+v, %v", h, st, err)
		}
	}
}

// constantSigner "signs" for a small-order Ed25519 key without any private key: R = the
// identity point, S = 0 verifies for every message.
type constantSigner struct{ pub ssh.PublicKey }

func (s constantSigner) PublicKey() ssh.PublicKey { return s.pub }

func (s constantSigner) Sign(io.Reader, []byte) (*ssh.Signature, error) {
	blob, _ := hex.DecodeString(identityPoint + strings.Repeat("00", 32))
	return &ssh.Signature{Format: ssh.KeyAlgoED25519, Blob: blob}, nil
}

func identityKey(t testing.TB) ssh.PublicKey {
	t.Helper()
	k, err := ssh.ParsePublicKey(ssh.Marshal(struct {
		Name string
		Key  []byte
	}{ssh.KeyAlgoED25519, unhex(t, identityPoint)}))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// onceLedger is a single-use token ledger in memory.
type onceLedger struct {
	mu   sync.Mutex
	used map[string]bool
}

func (l *onceLedger) UseToken(_ context.Context, id string, _, _ time.Time) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.used[id] {
		return false, nil
	}
	if l.used == nil {
		l.used = map[string]bool{}
	}
	l.used[id] = true
	return true, nil
}

// TestRenewWeakKey: a host certificate issued for the identity point before keys were checked
// does not renew itself with the constant signature; the same renewal with a real key does.
func TestRenewWeakKey(t *testing.T) {
	now := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	caKey, _ := newSSHKey(t)
	realKey, _ := newSSHKey(t)
	for _, tt := range []struct {
		name    string
		signer  ssh.Signer
		wantErr string
	}{
		{"real key renews", realKey, ""},
		{"identity point refused", constantSigner{identityKey(t)}, "renewal token rejected: the certificate's key is unfit (Ed25519 point is of small order: anyone can sign for it)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			sgn := fakeSigner{key: caKey, now: clock}
			a, err := ca.New(ca.Config{Authenticator: fakeAuth{}, Policy: &fakePolicy{dec: ca.Decision{Allow: true, Principals: []string{"web1.example.com"}, TTL: time.Hour}},
				UserSigner: sgn, HostSigner: sgn, Store: &fakeStore{}, Revocations: store.NewMemory(clock), Audit: &fakeAudit{}, Tokens: &onceLedger{}, Now: clock})
			if err != nil {
				t.Fatal(err)
			}
			// Signed directly, as a CA without the check would have.
			cert := &ssh.Certificate{Key: tt.signer.PublicKey(), Serial: 7, CertType: ssh.HostCert, KeyId: "ci-job#7",
				ValidPrincipals: []string{"web1.example.com"},
				ValidAfter:      uint64(now.Add(-time.Minute).Unix()), ValidBefore: uint64(now.Add(time.Hour).Unix())}
			if err := cert.SignCert(rand.Reader, caKey); err != nil {
				t.Fatal(err)
			}
			tok, err := ca.SignRenewToken(tt.signer, cert, now, "jti-1")
			if err != nil {
				t.Fatal(err)
			}
			got, err := a.Renew(context.Background(), tok)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Renew: %v", err)
				}
				if string(got.Cert.Key.Marshal()) != string(cert.Key.Marshal()) {
					t.Fatalf("renewed for another key")
				}
				return
			}
			if err == nil || ca.KindOf(err) != ca.KindUnauthenticated || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Renew: %v (kind %v), want unauthenticated %q", err, ca.KindOf(err), tt.wantErr)
			}
		})
	}
}

// FuzzParsePublicKey: no input panics; an accepted key re-marshals to the submitted blob and
// passes CheckPublicKey; an error never quotes 16 bytes of the input other than a key type name.
func FuzzParsePublicKey(f *testing.F) {
	cases := publicKeyCases(f)
	var vocabulary []string
	for _, c := range cases {
		f.Add(c.line)
		if _, err := ca.ParsePublicKey(c.line); err != nil {
			vocabulary = append(vocabulary, err.Error())
		}
	}
	f.Fuzz(func(t *testing.T, line string) {
		key, err := ca.ParsePublicKey(line)
		if err != nil {
			if ca.KindOf(err) != ca.KindInvalid {
				t.Fatalf("error of kind %v: %v", ca.KindOf(err), err)
			}
			if leak := echoed(line, err.Error(), 16, vocabulary); leak != "" {
				t.Fatalf("error %q echoes %q of the input", err, leak)
			}
			return
		}
		fields := strings.Fields(line)
		blob, berr := base64.StdEncoding.DecodeString(fields[1])
		if berr != nil || string(blob) != string(key.Marshal()) {
			t.Fatalf("accepted key does not re-marshal to the submitted blob")
		}
		if err := ca.CheckPublicKey(key); err != nil {
			t.Fatalf("CheckPublicKey refuses an accepted key: %v", err)
		}
	})
}
