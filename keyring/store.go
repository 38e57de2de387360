package keyring

import (
	"context"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
)

// Document is the keyring document shared by all replicas. UpdateKeyring applies fn to the
// current keyring and stores the result with the version bumped, atomically (fn may run again
// when another writer got there first); an error from fn aborts and changes nothing.
type Document interface {
	Keyring(ctx context.Context) (ca.Keyring, error)
	UpdateKeyring(ctx context.Context, fn func(*ca.Keyring) error) (ca.Keyring, error)
}

// TrustRegistry is what bastions trust: RegisterCA publishes a user CA key (and has its
// revocation scope followed), UnregisterCA withdraws one by its authorized_keys line (its
// scope stays followed, so nothing it revoked comes back).
type TrustRegistry interface {
	RegisterCA(ctx context.Context, caKey ssh.PublicKey) error
	UnregisterCA(ctx context.Context, caLine string) error
	// RegisterHostCA records a host CA key as such, so that its scope (host revocations) is
	// never followed for the user KRL.
	RegisterHostCA(ctx context.Context, caKey ssh.PublicKey) error
}

// ManagerStore is what the Manager changes: the keyring document, the trust registry, and
// the revocation scope of the active user CA key, where a compromised key is revoked.
type ManagerStore interface {
	Document
	TrustRegistry
	Revoke(ctx context.Context, caKey ssh.PublicKey, entries []ca.RevocationEntry) (version uint64, err error)
}
