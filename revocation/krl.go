package revocation

import (
	"fmt"
	"strconv"
	"time"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/krl"
)

// BuildKRL turns revocation states into one OpenSSH KRL for sshd's RevokedKeys. Its version
// is the sum of the states' versions: each only grows, so the sum orders KRLs built from the
// same CA keys. The generation date is generated.
func BuildKRL(generated time.Time, states ...ca.RevocationState) (*krl.KRL, error) {
	k := &krl.KRL{GeneratedDate: generated.UTC().Truncate(time.Second), Comment: "sshca"}
	for _, st := range states {
		k.Version += st.Version
		for _, e := range st.Entries {
			switch e.Kind {
			case ca.RevokedSerial:
				n, err := strconv.ParseUint(e.Value, 10, 64)
				if err != nil || n == 0 || st.CA == nil {
					return nil, fmt.Errorf("revocation: krl: bad serial entry %q", e.Value)
				}
				k.RevokeSerials(st.CA, n)
			case ca.RevokedKeyID:
				if st.CA == nil {
					return nil, fmt.Errorf("revocation: krl: key ID entry without a CA")
				}
				k.RevokeKeyIDs(st.CA, e.Value)
			case ca.RevokedKey:
				key, err := ParseKeyEntry(e.Value)
				if err != nil {
					return nil, err
				}
				k.RevokeKey(key)
			default:
				return nil, fmt.Errorf("revocation: krl: unknown entry kind %q", e.Kind)
			}
		}
	}
	return k, nil
}

// EncodeKRL is BuildKRL followed by the binary encoding.
func EncodeKRL(generated time.Time, states ...ca.RevocationState) ([]byte, error) {
	k, err := BuildKRL(generated, states...)
	if err != nil {
		return nil, err
	}
	return k.MarshalBinary()
}
