// Package revocation is what a revocation means, apart from where it is kept: which entries
// are valid, how a public key is named in one, the change a scope's feed carries, and how
// revocation states become one OpenSSH KRL. The state itself lives in store/; bastions and
// the server share this package to build the KRL the same way.
package revocation

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
)

// Change is one change of a CA key's revocation scope, as its feed carries it: the scope's
// version after the change, and the entries it added. ID is the change's position in the
// feed (opaque; a consumer passes it back to read what follows).
type Change struct {
	ID      string
	Version uint64
	Entries []ca.RevocationEntry
}

// KeyEntry names a public key for a RevokedKey entry.
func KeyEntry(k ssh.PublicKey) string { return base64.StdEncoding.EncodeToString(k.Marshal()) }

// ParseKeyEntry is the public key a RevokedKey entry names.
func ParseKeyEntry(v string) (ssh.PublicKey, error) {
	b, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		return nil, fmt.Errorf("revocation: key entry is not base64: %w", err)
	}
	k, err := ssh.ParsePublicKey(b)
	if err != nil {
		return nil, fmt.Errorf("revocation: key entry: %w", err)
	}
	return k, nil
}

// ValidEntry checks that an entry can be kept and put into a KRL: a serial is a non-zero
// decimal, a key ID is not empty, a key entry is a public key.
func ValidEntry(e ca.RevocationEntry) error {
	switch e.Kind {
	case ca.RevokedSerial:
		if n, err := strconv.ParseUint(e.Value, 10, 64); err != nil || n == 0 {
			return fmt.Errorf("revocation: serial %q is not a non-zero decimal", e.Value)
		}
	case ca.RevokedKeyID:
		if e.Value == "" {
			return errors.New("revocation: empty key ID")
		}
	case ca.RevokedKey:
		if _, err := ParseKeyEntry(e.Value); err != nil {
			return err
		}
	default:
		return fmt.Errorf("revocation: unknown entry kind %q", e.Kind)
	}
	return nil
}
