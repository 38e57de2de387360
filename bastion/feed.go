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
// position it corresponds to, and the changes after given positions of many scopes in one
// read. A change whose version is more than one past the state's tells that changes were
// missed (the position was trimmed away): the agent then reloads the snapshot rather than skip
// anything. cmd/sshca wires the Redis implementation (store.Redis); tests use store.Memory.
type Feed interface {
	// TrustedCAs lists the user CA keys sshd should trust now.
	TrustedCAs(ctx context.Context) ([]ssh.PublicKey, error)
	// CAs lists the CA keys that have revocation scopes, in a stable order.
	CAs(ctx context.Context) ([]ssh.PublicKey, error)
	// Snapshot returns the scope of the CA key with fingerprint fp and its feed position
	// ("0-0" when the feed is empty).
	Snapshot(ctx context.Context, fp string) (ca.RevocationState, string, error)
	// Follow blocks up to block (0: until ctx ends; negative: not at all) for changes after
	// the positions (CA fingerprint → feed position), and returns them by fingerprint, each
	// scope's in order; an error when after is empty. On Redis it is one XREAD over every
	// scope's stream, so the agent holds one connection however many CA keys were ever made.
	Follow(ctx context.Context, after map[string]string, block time.Duration) (map[string][]revocation.Change, error)
}

// feedBlock bounds one blocking read of the feed: how long a scope added meanwhile (a new CA
// key) waits to be read, and how long a reconnect may leave the previous read behind. Status
// LastSync moves at least this often while the source answers.
const feedBlock = 5 * time.Second
