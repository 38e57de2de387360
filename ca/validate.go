package ca

import (
	"crypto/rsa"
	"fmt"
	"regexp"
	"strings"
	"time"

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

// MinRSABits is the smallest RSA key a certificate is issued for.
const MinRSABits = 2048

// ParsePublicKey parses an authorized_keys line and checks that it is a plain public key of an
// accepted type and size. Errors are KindInvalid and say what was wrong.
func ParsePublicKey(line string) (ssh.PublicKey, error) {
	line = strings.TrimSpace(line)
	if line == "" {
		return nil, Invalid("public_key is required")
	}
	typ, _, _ := strings.Cut(line, " ")
	if strings.Contains(typ, "-cert-v01@openssh.com") {
		return nil, Invalid("public_key is a certificate (%s); send the plain public key", typ)
	}
	if typ == ssh.KeyAlgoDSA {
		return nil, Invalid("public_key: DSA keys are not accepted; use ed25519, ecdsa or rsa >= %d", MinRSABits)
	}
	key, _, _, rest, err := ssh.ParseAuthorizedKey([]byte(line))
	if err != nil {
		if !acceptedKeyTypes[typ] {
			return nil, Invalid("public_key: unsupported key type %q; use ssh-ed25519, ecdsa-sha2-nistp256/384/521, ssh-rsa (>= %d bits) or a FIDO key", truncate(typ, 64), MinRSABits)
		}
		return nil, Invalid("public_key: not a valid %s public key in authorized_keys format", typ)
	}
	if len(strings.TrimSpace(string(rest))) > 0 {
		return nil, Invalid("public_key: exactly one key expected")
	}
	if _, ok := key.(*ssh.Certificate); ok {
		return nil, Invalid("public_key is a certificate; send the plain public key")
	}
	if !acceptedKeyTypes[key.Type()] {
		return nil, Invalid("public_key: unsupported key type %q", key.Type())
	}
	if key.Type() == ssh.KeyAlgoRSA {
		ck, ok := key.(ssh.CryptoPublicKey)
		if !ok {
			return nil, Invalid("public_key: unreadable RSA key")
		}
		if pk, ok := ck.CryptoPublicKey().(*rsa.PublicKey); !ok || pk.N.BitLen() < MinRSABits {
			bits := 0
			if ok {
				bits = pk.N.BitLen()
			}
			return nil, Invalid("public_key: RSA key of %d bits is too small; at least %d bits", bits, MinRSABits)
		}
	}
	return key, nil
}

// ParseTTL parses a Go duration string. Empty means "the policy's default" (zero).
func ParseTTL(s string, max time.Duration) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, Invalid("ttl %q is not a duration such as \"90s\", \"5m\" or \"1h\"", truncate(s, 32))
	}
	if d <= 0 {
		return 0, Invalid("ttl must be positive, got %q", s)
	}
	if max > 0 && d > max {
		return 0, Invalid("ttl %s exceeds the service maximum of %s", d, max)
	}
	return d, nil
}

var (
	userPrincipalRE = regexp.MustCompile(`^[a-z_][a-z0-9._-]{0,31}$`)
	hostPrincipalRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9.:-]{0,252})$`)
)

// ValidUserPrincipal reports whether p is a well-formed user principal: a Unix user name.
func ValidUserPrincipal(p string) bool { return userPrincipalRE.MatchString(p) }

// ValidHostPrincipal reports whether p is a well-formed host name or IP address, lower case,
// without wildcards.
func ValidHostPrincipal(p string) bool {
	return hostPrincipalRE.MatchString(p) && !strings.Contains(p, "..")
}

func validatePrincipals(kind CertKind, ps []string, max int) error {
	what := "principal"
	valid := ValidUserPrincipal
	if kind == HostCert {
		what, valid = "hostname", ValidHostPrincipal
	}
	if max > 0 && len(ps) > max {
		return Invalid("%d %ss requested; at most %d", len(ps), what, max)
	}
	seen := make(map[string]bool, len(ps))
	for _, p := range ps {
		if !valid(p) {
			if kind == HostCert {
				return Invalid("hostname %q is not a lower-case host name or IP address", truncate(p, 64))
			}
			return Invalid("principal %q must match ^[a-z_][a-z0-9._-]{0,31}$", truncate(p, 64))
		}
		if seen[p] {
			return Invalid("%s %q appears twice", what, p)
		}
		seen[p] = true
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return fmt.Sprintf("%s...", s[:n])
}
