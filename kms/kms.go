// Package kms opens SSH CA keys held in a key management system by URI, through
// go.step.sm/crypto/kms, and hands them out as ssh.Signer. Shipped backends: softkms (PEM
// files) and pkcs11 (HSMs; tested with SoftHSM2). Key material never leaves the KMS; errors
// never carry a URI's secrets: every URI is printed through Redact, and the backends' own errors
// are scrubbed of the URIs they embed.
package kms

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	stepkms "go.step.sm/crypto/kms"
	"go.step.sm/crypto/kms/apiv1"
	_ "go.step.sm/crypto/kms/pkcs11" // PKCS#11 (needs cgo)
	_ "go.step.sm/crypto/kms/softkms"
	"go.step.sm/crypto/pemutil"
	"golang.org/x/crypto/ssh"
)

// KeyRef names a CA key: the KMS that holds it and the key within it.
type KeyRef struct {
	KMS string // e.g. "softkms:" or "pkcs11:module-path=...;token=ssh-ca?pin-source=/etc/sshca/pin"
	Key string // e.g. "softkms:path=/var/lib/sshca/user_ca.pem" or "pkcs11:id=7331;object=ssh-user-ca"
}

func (r KeyRef) String() string { return Redact(r.Key) + " in " + Redact(r.KMS) }

// KeyType is the algorithm of a CA key.
type KeyType string

const (
	Ed25519   KeyType = "ed25519"
	ECDSAP256 KeyType = "ecdsa-p256"
	ECDSAP384 KeyType = "ecdsa-p384"
	RSA3072   KeyType = "rsa-3072"
	RSA4096   KeyType = "rsa-4096"
)

// MinRSABits is the smallest RSA CA key accepted.
const MinRSABits = 3072

// Key is an open CA key.
type Key struct {
	signer ssh.Signer
	km     apiv1.KeyManager
}

// Signer is the key as an ssh.Signer; RSA keys sign with rsa-sha2-512.
func (k *Key) Signer() ssh.Signer { return k.signer }

// Close releases the KMS session.
func (k *Key) Close() error {
	if k.km == nil {
		return nil
	}
	return k.km.Close()
}

// Check proves the key still signs (an HSM session can die); used for readiness.
func (k *Key) Check(context.Context) error {
	if _, err := k.signer.Sign(rand.Reader, []byte("sshca readiness probe")); err != nil {
		return fmt.Errorf("kms: key does not sign: %w", err)
	}
	return nil
}

// Open opens an existing key.
func Open(ctx context.Context, ref KeyRef) (*Key, error) {
	km, err := openKMS(ctx, ref)
	if err != nil {
		return nil, err
	}
	s, err := km.CreateSigner(&apiv1.CreateSignerRequest{SigningKey: ref.Key, PublicKey: ref.Key})
	if err != nil {
		km.Close()
		return nil, fmt.Errorf("kms: open %s: %w", ref, scrub(err, ref.KMS, ref.Key))
	}
	return newKey(km, s, ref)
}

// Create creates a new key of type typ in the KMS and opens it. softkms writes the private key
// to the file named by the key URI, mode 0600 (directory 0700), and refuses to overwrite one.
func Create(ctx context.Context, ref KeyRef, typ KeyType) (*Key, error) {
	alg, bits, err := typ.algorithm()
	if err != nil {
		return nil, err
	}
	if isSoftKMS(ref.KMS) {
		return createSoft(ctx, ref, typ)
	}
	if typ == Ed25519 && strings.HasPrefix(ref.KMS, "pkcs11:") {
		return nil, errors.New("kms: pkcs11 does not support Ed25519 keys in go.step.sm/crypto; use ecdsa-p256, ecdsa-p384 or rsa-3072")
	}
	km, err := openKMS(ctx, ref)
	if err != nil {
		return nil, err
	}
	resp, err := km.CreateKey(&apiv1.CreateKeyRequest{Name: ref.Key, SignatureAlgorithm: alg, Bits: bits})
	if err != nil {
		km.Close()
		return nil, fmt.Errorf("kms: create %s key %s: %w", typ, ref, scrub(err, ref.KMS, ref.Key))
	}
	s, err := km.CreateSigner(&resp.CreateSignerRequest)
	if err != nil {
		km.Close()
		return nil, fmt.Errorf("kms: open created key %s: %w", ref, scrub(err, ref.KMS, ref.Key))
	}
	return newKey(km, s, ref)
}

// OpenOrCreate opens the key, creating it first when it does not exist. It is meant for
// softkms in development, where the CA keys must survive restarts.
func OpenOrCreate(ctx context.Context, ref KeyRef, typ KeyType) (*Key, error) {
	if p := softPath(ref.Key); isSoftKMS(ref.KMS) && p != "" {
		if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
			return Create(ctx, ref, typ)
		}
	}
	return Open(ctx, ref)
}

func createSoft(_ context.Context, ref KeyRef, typ KeyType) (*Key, error) {
	path := softPath(ref.Key)
	if path == "" {
		return nil, fmt.Errorf("kms: softkms key URI %q has no path (softkms:path=/file.pem)", Redact(ref.Key))
	}
	if _, err := os.Stat(path); err == nil {
		return nil, fmt.Errorf("kms: create %s: %s already exists", typ, path)
	}
	var priv crypto.Signer
	var err error
	switch typ {
	case Ed25519:
		_, priv, err = ed25519.GenerateKey(rand.Reader)
	case ECDSAP256:
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case ECDSAP384:
		priv, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case RSA3072:
		priv, err = rsa.GenerateKey(rand.Reader, 3072)
	case RSA4096:
		priv, err = rsa.GenerateKey(rand.Reader, 4096)
	}
	if err != nil {
		return nil, fmt.Errorf("kms: generate %s: %w", typ, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("kms: %w", err)
	}
	if _, err := pemutil.Serialize(priv, pemutil.ToFile(path, 0o600)); err != nil {
		return nil, fmt.Errorf("kms: write %s: %w", path, err)
	}
	return Open(context.Background(), ref)
}

func openKMS(ctx context.Context, ref KeyRef) (apiv1.KeyManager, error) {
	if ref.KMS == "" || ref.Key == "" {
		return nil, errors.New("kms: both a KMS URI and a key URI are required")
	}
	typ, _, _ := strings.Cut(ref.KMS, ":")
	km, err := stepkms.New(ctx, apiv1.Options{Type: apiv1.Type(typ), URI: ref.KMS})
	if err != nil {
		return nil, fmt.Errorf("kms: open %s: %w", Redact(ref.KMS), scrub(err, ref.KMS, ref.Key))
	}
	return km, nil
}

func newKey(km apiv1.KeyManager, s crypto.Signer, ref KeyRef) (*Key, error) {
	switch pub := s.Public().(type) {
	case *rsa.PublicKey:
		if pub.N.BitLen() < MinRSABits {
			km.Close()
			return nil, fmt.Errorf("kms: %s is a %d-bit RSA key; CA keys need at least %d bits", ref, pub.N.BitLen(), MinRSABits)
		}
	case *ecdsa.PublicKey:
		if pub.Curve != elliptic.P256() && pub.Curve != elliptic.P384() && pub.Curve != elliptic.P521() {
			km.Close()
			return nil, fmt.Errorf("kms: %s: unsupported curve", ref)
		}
	case ed25519.PublicKey:
	default:
		km.Close()
		return nil, fmt.Errorf("kms: %s: unsupported key type %T", ref, pub)
	}
	sig, err := ssh.NewSignerFromSigner(s)
	if err != nil {
		km.Close()
		return nil, fmt.Errorf("kms: %s: %w", ref, err)
	}
	if sig.PublicKey().Type() == ssh.KeyAlgoRSA {
		// NewSignerFromSigner would sign with rsa-sha2-256; CA signatures use rsa-sha2-512.
		sig, err = ssh.NewSignerWithAlgorithms(sig.(ssh.AlgorithmSigner), []string{ssh.KeyAlgoRSASHA512})
		if err != nil {
			km.Close()
			return nil, fmt.Errorf("kms: %s: %w", ref, err)
		}
	}
	return &Key{signer: sig, km: km}, nil
}

func (t KeyType) algorithm() (apiv1.SignatureAlgorithm, int, error) {
	switch t {
	case Ed25519:
		return apiv1.PureEd25519, 0, nil
	case ECDSAP256:
		return apiv1.ECDSAWithSHA256, 0, nil
	case ECDSAP384:
		return apiv1.ECDSAWithSHA384, 0, nil
	case RSA3072:
		return apiv1.SHA512WithRSA, 3072, nil
	case RSA4096:
		return apiv1.SHA512WithRSA, 4096, nil
	}
	return 0, 0, fmt.Errorf("kms: unknown key type %q; use ed25519, ecdsa-p256, ecdsa-p384, rsa-3072 or rsa-4096", t)
}

// ParseKeyType parses a key type name.
func ParseKeyType(s string) (KeyType, error) {
	t := KeyType(s)
	if _, _, err := t.algorithm(); err != nil {
		return "", err
	}
	return t, nil
}

func isSoftKMS(uri string) bool { return uri == "" || strings.HasPrefix(uri, "softkms:") }

func softPath(keyURI string) string {
	rest, ok := strings.CutPrefix(keyURI, "softkms:")
	if !ok {
		return keyURI
	}
	for _, part := range strings.Split(rest, ";") {
		if p, ok := strings.CutPrefix(part, "path="); ok {
			return p
		}
	}
	return ""
}

// Redact returns uri with the value of every secret attribute replaced by REDACTED, in the
// path (";"-separated) and in the query ("&"-separated) alike: pin-value, and any attribute
// whose name contains "pin", "secret", "password", "passwd" or "token" (names compared without
// case and after percent-decoding). Two attributes keep their value because they name where a
// thing is, not a secret: "token" (the PKCS#11 token label) and "pin-source" (the file holding
// the PIN). It is the one way a KMS or key URI is printed or put into an error.
func Redact(uri string) string {
	out, rest := "", uri
	if scheme, r, ok := strings.Cut(uri, ":"); ok {
		out, rest = scheme+":", r
	}
	path, query, hasQuery := strings.Cut(rest, "?")
	out += redactAttrs(path, ";")
	if hasQuery {
		out += "?" + redactAttrs(query, "&")
	}
	return out
}

func redactAttrs(s, sep string) string {
	parts := strings.Split(s, sep)
	for i, p := range parts {
		name, _, ok := strings.Cut(p, "=")
		if ok && secretAttr(name) {
			parts[i] = name + "=REDACTED"
		}
	}
	return strings.Join(parts, sep)
}

// secretAttr says whether a URI attribute of that name holds a secret.
func secretAttr(name string) bool {
	if n, err := url.PathUnescape(name); err == nil {
		name = n
	}
	name = strings.ToLower(strings.TrimSpace(name))
	if name == "token" || name == "pin-source" {
		return false
	}
	for _, w := range []string{"pin", "secret", "password", "passwd", "token"} {
		if strings.Contains(name, w) {
			return true
		}
	}
	return false
}

// secretValues lists the values of the secret attributes of the URIs, in every form an error
// may print them: as written, percent-decoded, and Go-quoted (%q) of either.
func secretValues(uris ...string) []string {
	var out []string
	for _, uri := range uris {
		rest := uri
		if _, r, ok := strings.Cut(uri, ":"); ok {
			rest = r
		}
		for _, p := range strings.FieldsFunc(rest, func(r rune) bool { return r == ';' || r == '?' || r == '&' }) {
			name, v, ok := strings.Cut(p, "=")
			if !ok || v == "" || !secretAttr(name) {
				continue
			}
			forms := []string{v}
			if d, err := url.PathUnescape(v); err == nil && d != v {
				forms = append(forms, d)
			}
			if d, err := url.QueryUnescape(v); err == nil && d != v {
				forms = append(forms, d)
			}
			for _, f := range forms {
				out = append(out, f)
				if q := strconv.Quote(f); q[1:len(q)-1] != f {
					out = append(out, q[1:len(q)-1])
				}
			}
		}
	}
	// Longest first, so that a secret containing another is replaced whole.
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

// scrub returns err with every URI of uris and every secret value in them replaced by their
// redacted forms. go.step.sm/crypto prints the URIs it was given into its errors ("key with uri
// %s not found", "error parsing %s"); the original error is not kept (no Unwrap), so no caller
// can reach the raw text by unwrapping and logging it.
func scrub(err error, uris ...string) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	for _, u := range uris {
		if u != "" {
			msg = strings.ReplaceAll(msg, u, Redact(u))
		}
	}
	for _, v := range secretValues(uris...) {
		msg = strings.ReplaceAll(msg, v, "REDACTED")
	}
	return errors.New(msg)
}
