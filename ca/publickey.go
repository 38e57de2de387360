package ca

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"math/big"
	"strconv"
	"strings"
	"sync"

	"filippo.io/edwards25519"
	"golang.org/x/crypto/ssh"
)

// Key types a certificate may be issued for. FIDO (sk-*) keys are accepted; their type reaches
// the policy as request.key_type.
var acceptedKeyTypes = map[string]bool{
	ssh.KeyAlgoED25519:    true,
	ssh.KeyAlgoECDSA256:   true,
	ssh.KeyAlgoECDSA384:   true,
	ssh.KeyAlgoECDSA521:   true,
	ssh.KeyAlgoRSA:        true,
	ssh.KeyAlgoSKED25519:  true,
	ssh.KeyAlgoSKECDSA256: true,
}

// knownKeyTypes are the OpenSSH key type names an error message may quote. Nothing else of a
// submitted public_key is ever echoed: a line that is not a public key may be a private key.
var knownKeyTypes = map[string]bool{
	ssh.KeyAlgoED25519: true, ssh.KeyAlgoECDSA256: true, ssh.KeyAlgoECDSA384: true,
	ssh.KeyAlgoECDSA521: true, ssh.KeyAlgoRSA: true, ssh.KeyAlgoSKED25519: true,
	ssh.KeyAlgoSKECDSA256: true, ssh.KeyAlgoDSA: true, "ssh-xmss@openssh.com": true,
	ssh.CertAlgoED25519v01: true, ssh.CertAlgoECDSA256v01: true, ssh.CertAlgoECDSA384v01: true,
	ssh.CertAlgoECDSA521v01: true, ssh.CertAlgoRSAv01: true, ssh.CertAlgoSKED25519v01: true,
	ssh.CertAlgoSKECDSA256v01: true, ssh.CertAlgoDSAv01: true, "ssh-xmss-cert-v01@openssh.com": true,
}

// KnownKeyType reports whether s is an OpenSSH key or certificate type name, the only part of a
// submitted public key that messages quote.
func KnownKeyType(s string) bool { return knownKeyTypes[s] }

// authorizedKeysOptions are the option names of sshd(8) AUTHORIZED_KEYS FILE FORMAT (OpenSSH
// 9.x), matched without case as sshd does.
var authorizedKeysOptions = []string{
	"agent-forwarding", "cert-authority", "command", "environment", "expiry-time", "from",
	"no-agent-forwarding", "no-port-forwarding", "no-pty", "no-user-rc", "no-x11-forwarding",
	"no-touch-required", "permitlisten", "permitopen", "port-forwarding", "principals", "pty",
	"restrict", "tunnel", "user-rc", "verify-required", "x11-forwarding",
}

// MinRSABits is the smallest RSA key a certificate is issued for.
const MinRSABits = 2048

const (
	sendPubLine = "send the .pub line (e.g. the contents of id_ed25519.pub: \"ssh-ed25519 AAAA... comment\"), never the private key"
	useTypes    = "use ssh-ed25519, ecdsa-sha2-nistp256/384/521, ssh-rsa (>= 2048 bits) or a FIDO key (sk-ssh-ed25519@openssh.com, sk-ecdsa-sha2-nistp256@openssh.com)"
)

// ParsePublicKey parses one authorized_keys line, "<type> <base64 blob> [comment]" (sshd(8)
// AUTHORIZED_KEYS FILE FORMAT, without options), and checks that it is a plain public key of an
// accepted type and size for which nobody can sign without the private key (see
// CheckPublicKey). The returned key marshals to exactly the submitted blob.
//
// Errors are KindInvalid and name the problem. They quote nothing of the line but a key type
// name from the fixed list (KnownKeyType): what was pasted may be a private key.
func ParsePublicKey(line string) (ssh.PublicKey, error) {
	line = strings.TrimSpace(line)
	if line == "" {
		return nil, Invalid("public_key is required; " + sendPubLine)
	}
	// A private key pasted by mistake is refused before anything else looks at it, with a
	// message that quotes none of it.
	if strings.Contains(line, "-----BEGIN") || strings.Contains(line, "PRIVATE KEY") || strings.HasPrefix(line, "PuTTY-User-Key-File") {
		return nil, Invalid("public_key looks like a private key or a PEM block; " + sendPubLine)
	}
	if strings.ContainsAny(line, "\r\n") {
		return nil, Invalid("public_key: exactly one key line expected; " + sendPubLine)
	}
	fields := strings.Fields(line)
	typ := fields[0]
	if !knownKeyTypes[typ] {
		if hasOptions(fields) {
			return nil, Invalid("public_key has authorized_keys options in front of the key; they would be dropped, not enforced: send only \"<type> <base64> [comment]\"; the policy decides source-address and force-command")
		}
		if looksLikeBase64(typ) {
			return nil, Invalid("public_key has no key type in front of the base64 blob; " + sendPubLine)
		}
		return nil, Invalid("public_key: unsupported key type: an unrecognised key type; " + useTypes)
	}
	if strings.Contains(typ, "-cert-v01@") {
		return nil, Invalid("public_key is a certificate (%s); send the plain public key", typ)
	}
	if typ == ssh.KeyAlgoDSA {
		return nil, Invalid("public_key: DSA keys are not accepted; " + useTypes)
	}
	if !acceptedKeyTypes[typ] {
		return nil, Invalid("public_key: %s keys are not accepted; %s", typ, useTypes)
	}
	if len(fields) < 2 {
		return nil, Invalid("public_key: the base64 key after %q is missing; %s", typ, sendPubLine)
	}
	blob, err := base64.StdEncoding.DecodeString(fields[1])
	if err != nil {
		return nil, Invalid("public_key: not a valid %s public key: the key after the type is not base64; %s", typ, sendPubLine)
	}
	key, err := ssh.ParsePublicKey(blob)
	if err != nil {
		return nil, Invalid("public_key: not a valid %s public key: %s", typ, parseProblem(err))
	}
	if key.Type() != typ {
		// key.Type() comes from a parsed key, so it is one of x/crypto's type names.
		return nil, Invalid("public_key: the line says %s but the key is %s; send the .pub line unchanged", typ, key.Type())
	}
	// x/crypto accepts RSA integers with extra leading zeros and re-encodes them minimally, so
	// the certificate would name another blob than the one submitted. The other types keep
	// their bytes as sent (FuzzParsePublicKey checks that), and skip the re-encoding.
	if typ == ssh.KeyAlgoRSA && !bytes.Equal(key.Marshal(), blob) {
		return nil, Invalid("public_key: the %s key is not in canonical wire encoding", typ)
	}
	if problem := weakKey(key); problem != "" {
		return nil, Invalid("public_key: %s", problem)
	}
	return key, nil
}

// CheckPublicKey refuses a key of a type a certificate is not issued for, an RSA key under
// MinRSABits, and every key for which a signature can be made without the private key or whose
// private key anyone can compute:
//   - Ed25519 (also FIDO): a point that does not decode, a non-canonical encoding (y >= p, or
//     x = 0 with the sign bit set; RFC 8032 5.1.3), or a point of small order (one of the 8
//     points of the torsion subgroup, for which one constant signature verifies every message);
//   - RSA: a modulus that is not positive, is even, has a prime factor below 2^16, or is a
//     perfect square; x/crypto already refuses an exponent that is even, below 3 or over 2^24;
//   - ECDSA: x/crypto already refuses a point off the curve or at infinity;
//   - FIDO: an application that does not start with "ssh:" or is over 255 printable bytes.
//
// The error is KindInvalid with a message about public_key; it quotes only type names.
func CheckPublicKey(key ssh.PublicKey) error {
	if key == nil {
		return Invalid("public_key is required")
	}
	if _, ok := key.(*ssh.Certificate); ok {
		return Invalid("public_key is a certificate; send the plain public key")
	}
	if problem := weakKey(key); problem != "" {
		return Invalid("public_key: %s", problem)
	}
	return nil
}

// weakKey says what makes key unfit for a certificate, or "" when it is fit.
func weakKey(key ssh.PublicKey) string {
	typ := key.Type()
	if !acceptedKeyTypes[typ] {
		if knownKeyTypes[typ] {
			return typ + " keys are not accepted; " + useTypes
		}
		return "unsupported key type: an unrecognised key type; " + useTypes
	}
	ck, ok := key.(ssh.CryptoPublicKey)
	if !ok {
		return "unreadable " + typ + " key"
	}
	switch pk := ck.CryptoPublicKey().(type) {
	case ed25519.PublicKey:
		if p := weakEd25519(pk); p != "" {
			return p
		}
	case *rsa.PublicKey:
		if p := weakRSA(pk); p != "" {
			return p
		}
	case *ecdsa.PublicKey:
		// x/crypto/ssh decodes with elliptic.Unmarshal, which refuses points off the curve and
		// the point at infinity; TestParsePublicKeyLibraryChecks pins that.
	default:
		return "unreadable " + typ + " key"
	}
	if typ == ssh.KeyAlgoSKED25519 || typ == ssh.KeyAlgoSKECDSA256 {
		if p := badApplication(key); p != "" {
			return p
		}
	}
	return ""
}

// weakEd25519 checks that the point is canonically encoded, decodes it once (SetBytes: one
// square root, the only costly step), and checks that it is not of small order. Ed25519
// verification (RFC 8032, Go's crypto/ed25519, OpenSSH's supercop ref10) accepts R = the
// identity and S = 0 for every message under a small-order key.
func weakEd25519(pk ed25519.PublicKey) string {
	if len(pk) != ed25519.PublicKeySize {
		return "Ed25519 key is not 32 bytes"
	}
	if !canonicalEd25519(pk) {
		return "Ed25519 point is not canonically encoded: send the key as ssh-keygen made it"
	}
	p, err := new(edwards25519.Point).SetBytes(pk)
	if err != nil {
		return "Ed25519 key is not a point on the curve"
	}
	if p.MultByCofactor(p).Equal(edwards25519.NewIdentityPoint()) == 1 {
		return "Ed25519 point is of small order: anyone can sign for it"
	}
	return ""
}

// canonicalEd25519 reports whether b is the one encoding RFC 8032 5.1.2 gives its point,
// without decoding it. SetBytes also accepts the two other forms: y >= p = 2^255-19 (the 19
// values p..2^255-1), and x = 0 (y = 1 or y = p-1) with the sign bit set. Re-encoding the
// decoded point would find the same, at the cost of a field inversion;
// TestCanonicalEd25519MatchesReencoding checks that the two agree.
func canonicalEd25519(b []byte) bool {
	sign := b[31] >> 7
	top := b[31] & 0x7f
	middleAllFF := true
	for _, c := range b[1:31] {
		if c != 0xff {
			middleAllFF = false
			break
		}
	}
	if top == 0x7f && middleAllFF && b[0] >= 0xed {
		return false // y >= p
	}
	if sign == 1 {
		if top == 0x7f && middleAllFF && b[0] == 0xec {
			return false // y = p-1, x = 0
		}
		if top == 0 && b[0] == 1 && allZero(b[1:31]) {
			return false // y = 1, x = 0
		}
	}
	return true
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// smallPrimesProduct is the product of all primes below 2^16 (6542 primes, about 94,000 bits),
// built on first use: one gcd with it finds any small factor of a modulus.
var smallPrimesProduct = sync.OnceValue(func() *big.Int {
	const limit = 1 << 16
	composite := make([]bool, limit)
	// Multiply in a balanced tree so the build costs O(M(n) log n), not O(n^2).
	var primes []*big.Int
	for i := 2; i < limit; i++ {
		if composite[i] {
			continue
		}
		primes = append(primes, big.NewInt(int64(i)))
		for j := i * i; j < limit; j += i {
			composite[j] = true
		}
	}
	for len(primes) > 1 {
		next := primes[:0:0]
		for i := 0; i+1 < len(primes); i += 2 {
			next = append(next, new(big.Int).Mul(primes[i], primes[i+1]))
		}
		if len(primes)%2 == 1 {
			next = append(next, primes[len(primes)-1])
		}
		primes = next
	}
	return primes[0]
})

// weakRSA refuses moduli whose private key anyone can compute cheaply. It costs one gcd with
// smallPrimesProduct (a 94,000-bit remainder, then a gcd of modulus size) and, rarely, a square
// root. A prime modulus is not detected: a primality test would cost milliseconds per request.
func weakRSA(pk *rsa.PublicKey) string {
	n := pk.N
	if n == nil || n.Sign() <= 0 {
		return "RSA modulus is not a positive number"
	}
	if bits := n.BitLen(); bits < MinRSABits {
		return "RSA key of " + strconv.Itoa(bits) + " bits is too small; at least " + strconv.Itoa(MinRSABits) + " bits"
	}
	if n.Bit(0) == 0 {
		return "RSA modulus is even: anyone can compute the private key"
	}
	sum := sha256.Sum256(n.Bytes())
	if rsaScreened.has(sum) {
		return ""
	}
	if new(big.Int).GCD(nil, nil, n, smallPrimesProduct()).Cmp(bigOne) != 0 {
		return "RSA modulus has a prime factor below 65536: anyone can compute the private key"
	}
	if maybeSquare(n) {
		if r := new(big.Int).Sqrt(n); new(big.Int).Mul(r, r).Cmp(n) == 0 {
			return "RSA modulus is a perfect square: anyone can compute the private key"
		}
	}
	rsaScreened.add(sum)
	return ""
}

// rsaScreened remembers the moduli that passed the factor screens. The gcd against the product
// of the primes below 2^16 divides a 94,000-bit number by the modulus: about 100 µs for 2048
// bits, 700 µs for 16384, as much as the rest of a certificate. People send the same key again
// and again (every login), so a modulus is screened once per process, at most
// screenedMax at a time (the set is emptied when full: bounded memory, no eviction order to keep).
var rsaScreened = &screenedSet{seen: map[[32]byte]struct{}{}}

const screenedMax = 8192

type screenedSet struct {
	mu   sync.Mutex
	seen map[[32]byte]struct{}
}

func (s *screenedSet) has(k [32]byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.seen[k]
	return ok
}

func (s *screenedSet) add(k [32]byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.seen) >= screenedMax {
		clear(s.seen)
	}
	s.seen[k] = struct{}{}
}

func (s *screenedSet) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.seen)
}

var bigOne = big.NewInt(1)

// maybeSquare is false for most non-squares: a square is a quadratic residue modulo 64, 63, 65
// and 11, which about 1 number in 140 is by chance.
func maybeSquare(n *big.Int) bool {
	residue := func(m int64) int64 { return new(big.Int).Mod(n, big.NewInt(m)).Int64() }
	isQR := func(r, m int64) bool {
		for x := int64(0); x < m; x++ {
			if x*x%m == r {
				return true
			}
		}
		return false
	}
	for _, m := range []int64{64, 63, 65, 11} {
		if !isQR(residue(m), m) {
			return false
		}
	}
	return true
}

// badApplication checks the FIDO application string (PROTOCOL.u2f: "ssh:" and at most 255
// bytes; OpenSSH's ssh-keygen makes no other). x/crypto keeps it unexported, so it is read from
// the wire form: string type, [string curve,] string key, string application.
func badApplication(key ssh.PublicKey) string {
	var app string
	switch key.Type() {
	case ssh.KeyAlgoSKED25519:
		var w struct {
			Name, Key, Application string
		}
		if err := ssh.Unmarshal(key.Marshal(), &w); err != nil {
			return "unreadable FIDO key"
		}
		app = w.Application
	case ssh.KeyAlgoSKECDSA256:
		var w struct {
			Name, Curve, Key, Application string
		}
		if err := ssh.Unmarshal(key.Marshal(), &w); err != nil {
			return "unreadable FIDO key"
		}
		app = w.Application
	}
	const problem = "FIDO key application must start with \"ssh:\" and be at most 255 printable ASCII bytes; make the key with ssh-keygen -t ed25519-sk or ecdsa-sk"
	if !strings.HasPrefix(app, "ssh:") || len(app) > 255 {
		return problem
	}
	for i := 0; i < len(app); i++ {
		if app[i] < 0x20 || app[i] > 0x7e {
			return problem
		}
	}
	return ""
}

// parseProblem names what x/crypto refused without quoting its message, some of which carry
// input (an unknown curve name).
func parseProblem(err error) string {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "invalid curve point"):
		return "the ECDSA point is not on the curve"
	case strings.Contains(msg, "incorrect exponent"):
		return "the RSA public exponent must be odd and at least 3"
	case strings.Contains(msg, "exponent too large"):
		return "the RSA public exponent is over 24 bits"
	case strings.Contains(msg, "modulus too large"):
		return "the RSA modulus is over 16384 bits"
	case strings.Contains(msg, "trailing junk"):
		return "extra bytes after the key"
	default:
		return "the key blob is truncated or malformed"
	}
}

// hasOptions reports whether an authorized_keys line starts with options (sshd(8)): its first
// field begins with an option name, or a key type name follows later in the line.
func hasOptions(fields []string) bool {
	first := strings.ToLower(fields[0])
	name, _, _ := strings.Cut(first, ",")
	name, _, _ = strings.Cut(name, "=")
	for _, o := range authorizedKeysOptions {
		if name == o {
			return true
		}
	}
	for _, f := range fields[1:] {
		if knownKeyTypes[f] {
			return true
		}
	}
	return false
}

// looksLikeBase64 reports whether s is a long run of base64 characters: a key blob (public or
// private) pasted without its type.
func looksLikeBase64(s string) bool {
	if len(s) < 16 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '+' || c == '/' || c == '=' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}
