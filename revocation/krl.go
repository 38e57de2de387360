package revocation

import (
	"fmt"
	"strconv"
	"time"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/krl"
)

// GenerationShift places the store's generation in a version: a scope's version, and so a
// KRL's, is generation<<GenerationShift | counter. A store rebuilt after losing its state
// raises its generation, so every version it publishes is above every version the lost store
// published, and a bastion that "never installs an older version" installs them; a store
// rolled back without a rebuild publishes versions below the ones bastions hold, which they
// refuse (and report).
const GenerationShift = 48

const counterMask = 1<<GenerationShift - 1

// ComposeVersion is the version of a counter in a generation.
func ComposeVersion(generation uint16, counter uint64) uint64 {
	return uint64(generation)<<GenerationShift | counter&counterMask
}

// SplitVersion is ComposeVersion's inverse.
func SplitVersion(v uint64) (generation uint16, counter uint64) {
	return uint16(v >> GenerationShift), v & counterMask
}

// Version is the version of the KRL built from states: the newest of the states'
// generations in the high 16 bits (GenerationShift), the sum of their counters below (masked
// to 48 bits). Each counter only grows within a generation and scopes are never dropped, so
// the sum orders KRLs built from the same CA keys, and a newer generation (a rebuilt store)
// orders above every version of an older one. It is the version BuildKRL writes into the KRL,
// and what /v1/krl sends as X-KRL-Version and in its ETag, so a bastion compares the same
// number wherever it reads it.
func Version(states ...ca.RevocationState) uint64 {
	var gen uint16
	var sum uint64
	for _, st := range states {
		g, n := SplitVersion(st.Version)
		gen = max(gen, g)
		sum += n
	}
	return ComposeVersion(gen, sum)
}

// BuildKRL turns revocation states into one OpenSSH KRL for sshd's RevokedKeys, at version
// Version(states...).
//
// Its generation date is the newest of the states' Changed (to the second; 0 when none
// changed), never a clock: the same states give the same bytes wherever they are built, the
// server's GET /v1/krl and a bastion following the store alike, and a KRL says when what it
// holds was last changed rather than when it happened to be encoded. Entries that expired
// since are dropped by the caller (LiveEntries), which changes the content but not the date.
func BuildKRL(states ...ca.RevocationState) (*krl.KRL, error) {
	k := &krl.KRL{Comment: "sshca", Version: Version(states...)}
	var newest time.Time
	// A key is listed once however many scopes revoke it (a compromised CA key is banned in
	// its own scope and in the active key's: keyring.Manager.Compromised).
	keys := map[string]bool{}
	for _, st := range states {
		if st.Changed.After(newest) {
			newest = st.Changed
		}
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
				if blob := string(key.Marshal()); !keys[blob] {
					keys[blob] = true
					k.RevokeKey(key)
				}
			default:
				return nil, fmt.Errorf("revocation: krl: unknown entry kind %q", e.Kind)
			}
		}
	}
	if !newest.IsZero() {
		k.GeneratedDate = newest.UTC().Truncate(time.Second)
	}
	return k, nil
}

// EncodeKRL is BuildKRL followed by the binary encoding.
func EncodeKRL(states ...ca.RevocationState) ([]byte, error) {
	k, err := BuildKRL(states...)
	if err != nil {
		return nil, err
	}
	return k.MarshalBinary()
}
