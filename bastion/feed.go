package bastion

import (
	"context"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/revocation"
)

// Feed is the revocation state a bastion follows with read-only credentials: the CA keys to
// trust, the CA keys whose revocation scopes to follow, a scope's snapshot with the feed
// position it corresponds to, and the changes after a position in order. A change whose
// version is more than one past the state's tells that changes were missed (the position was
// trimmed away): the agent then reloads the snapshot rather than skip anything. cmd/sshca
// wires the Redis implementation (store.Redis); tests use store.Memory.
type Feed interface {
	// TrustedCAs lists the user CA keys sshd should trust now.
	TrustedCAs(ctx context.Context) ([]ssh.PublicKey, error)
	// CAs lists the CA keys that have revocation scopes, in a stable order.
	CAs(ctx context.Context) ([]ssh.PublicKey, error)
	// Snapshot returns the scope of the CA key with fingerprint fp and its feed position
	// ("0-0" when the feed is empty).
	Snapshot(ctx context.Context, fp string) (ca.RevocationState, string, error)
	// Changes blocks up to block for changes after position after, and returns them in order.
	Changes(ctx context.Context, fp, after string, block time.Duration) ([]revocation.Change, error)
}
