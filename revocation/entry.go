// Package revocation is what a revocation means, apart from where it is kept: which entries
// are valid, how a public key is named in one, the change a scope's feed carries, and how
// revocation states become one OpenSSH KRL. The state itself lives in store/; bastions and
// the server share this package to build the KRL the same way.
package revocation

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
)

// Change is one change of a CA key's revocation scope, as its feed carries it: the scope's
// version after the change, and the entries it set. Each entry is its member's new state: an
// entry added or lasting longer, or an entry lifted, which carries Lifted as its Expiry (a
// time long past). A consumer applies changes in order, the last word on a member winning,
// and keeps what is Live (LiveEntries). ID is the change's position in the feed (opaque; a
// consumer passes it back to read what follows). At is when the change was made (the store's
// clock, to the millisecond): a state's Changed after applying it.
type Change struct {
	ID      string
	Version uint64
	Entries []ca.RevocationEntry
	At      time.Time
}

// KeyEntry names a public key for a RevokedKey entry.
func KeyEntry(k ssh.PublicKey) string { return base64.StdEncoding.EncodeToString(k.Marshal()) }

// CompromiseScopes are the revocation scopes a compromised CA key's permanent ban goes into,
// with the active key of the same kind (user scopes feed the user KRL; host scopes, whose keys
// must be registered as such first, store.Redis.RegisterHostCA, feed the host KRL), in this
// order: the compromised key's own, which every follower (a replica's long poll of GET
// /v1/krl, a Redis-mode bastion agent) already follows, so the ban wakes them at once; then
// the active key's, which outlives the compromised key's in every KRL, though a follower may
// only start following it after its blocking read ends (a key generated seconds before). One
// scope when both are the same key. keyring.Manager.Compromised writes the ban there and store
// rebuild writes it back there.
func CompromiseScopes(compromised, active ssh.PublicKey) []ssh.PublicKey {
	if bytes.Equal(compromised.Marshal(), active.Marshal()) {
		return []ssh.PublicKey{compromised}
	}
	return []ssh.PublicKey{compromised, active}
}

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

// Lifted is the Expiry a feed gives an entry an administrator lifted (the Unix epoch: long
// past, so never Live, and distinct from the zero Expiry of a permanent entry).
var Lifted = time.UnixMilli(0).UTC()

// Permanent reports whether an entry lasts until an administrator lifts it (a banned public
// key, a compromised CA key): its Expiry is zero. Stores keep it with the score +inf, so
// pruning up to any time never drops it.
func Permanent(e ca.RevocationEntry) bool { return e.Expiry.IsZero() }

// Live reports whether an entry is in force at now: permanent, or expiring after now.
func Live(e ca.RevocationEntry, now time.Time) bool { return Permanent(e) || e.Expiry.After(now) }

// LiveEntries is what a sequence of entries (a snapshot's, then its changes' in feed order)
// leaves in force at now: per member (kind and value) the last entry wins, so a lift undoes
// the revocation before it, and only Live ones are kept, in the order of their last words.
func LiveEntries(entries []ca.RevocationEntry, now time.Time) []ca.RevocationEntry {
	type member struct {
		kind  ca.EntryKind
		value string
	}
	last := make(map[member]int, len(entries))
	for i, e := range entries {
		last[member{e.Kind, e.Value}] = i
	}
	out := make([]ca.RevocationEntry, 0, len(last))
	for i, e := range entries {
		if j := last[member{e.Kind, e.Value}]; j == i && Live(e, now) {
			out = append(out, e)
		}
	}
	return out
}

// ValidEntry checks that an entry can be kept and put into a KRL: a serial is a non-zero
// decimal, a key ID is not empty, a key entry is a public key. Only a key entry may be
// permanent (a zero Expiry): a serial or key ID lasts until its certificate expires.
func ValidEntry(e ca.RevocationEntry) error {
	if Permanent(e) && e.Kind != ca.RevokedKey {
		return fmt.Errorf("revocation: a %s entry needs an expiry (only a key entry is permanent)", e.Kind)
	}
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
