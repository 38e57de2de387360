package ca

import (
	"context"
	"time"

	"golang.org/x/crypto/ssh"
)

// EntryKind is what a revocation entry names.
type EntryKind string

const (
	// RevokedSerial is a certificate serial, within one CA key's scope.
	RevokedSerial EntryKind = "serial"
	// RevokedKeyID is a certificate key ID, within one CA key's scope.
	RevokedKeyID EntryKind = "key_id"
	// RevokedKey is a public key (base64 of its wire form): every certificate for it, any CA.
	RevokedKey EntryKind = "key"
)

// RevocationEntry is one revoked thing. It may be forgotten after Expiry: a certificate it
// names has expired by then anyway. A zero Expiry means "until lifted": a banned public key or
// a compromised CA key stays revoked (in every KRL, refused at signing time) until an
// administrator lifts it (Authority.Unrevoke), however far the clock moves.
type RevocationEntry struct {
	Kind   EntryKind `json:"kind"`
	Value  string    `json:"value"`
	Expiry time.Time `json:"expires"`
}

// RevocationState is what one CA key's scope holds at a version: every unexpired entry.
// Changed is when its newest change was made (the store's clock, to the millisecond; zero when
// the scope never changed or its feed was emptied): a KRL built from states carries the newest
// of their Changed as its generation date, so the same state gives the same bytes wherever it
// is built (the server's GET /v1/krl, a bastion following Redis).
type RevocationState struct {
	CA      ssh.PublicKey
	Version uint64
	Entries []RevocationEntry
	Changed time.Time
}

// RevocationStore keeps, per CA key, what is revoked. Every change bumps the scope's version
// (monotonic) so consumers can order states; Revoke is idempotent (re-revoking changes
// nothing and returns the current version).
type RevocationStore interface {
	Revoke(ctx context.Context, caKey ssh.PublicKey, entries []RevocationEntry) (version uint64, err error)
	State(ctx context.Context, caKey ssh.PublicKey) (RevocationState, error)
	// BlockIdentity refuses new certificates to identity until until.
	BlockIdentity(ctx context.Context, identity string, until time.Time) error
	// Refused reports why a request for key by the identity named by identities (its canonical
	// name, then its aliases) must be refused at signing time ("" when it need not be): a
	// revoked key, or a block on any of the names.
	Refused(ctx context.Context, caKey ssh.PublicKey, identities []string, key ssh.PublicKey) (string, error)
	// LiftKey removes every revocation of the public key key: its entry in every CA key's
	// scope (each change bumps that scope's version and goes to its feed, so bastions rebuild
	// their KRL) and from the keys refused at signing time. It answers the new versions of the
	// scopes it changed, by CA fingerprint (none when the key was not revoked).
	LiftKey(ctx context.Context, key ssh.PublicKey) (versions map[string]uint64, err error)
	RevocationPager
}
