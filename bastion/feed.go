package bastion

import (
	"context"
	"log/slog"
	"strings"
	"sync/atomic"
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

// perScopeBlock is how long a round of per-scope reads blocks in all on Redis Cluster: the
// delay a change may wait for its scope's turn (as revocation.Follower).
const perScopeBlock = 100 * time.Millisecond

// feedReader reads every followed scope's changes: in one blocking read, or, where the
// scopes' streams sit in different Redis Cluster slots and one XREAD over them fails with
// CROSSSLOT, in short reads of one scope at a time (as revocation.Follower, the server's long
// poll, does). Either way the reads hold one connection, whatever the number of scopes.
type feedReader struct {
	feed Feed
	log  *slog.Logger
	// perScope is set at the first CROSSSLOT and kept: the slots do not move back together.
	// Atomic: a read abandoned for a new CA set may still run beside its successor.
	perScope atomic.Bool
}

// read returns the changes after pos (fingerprint → position, not empty) within about
// feedBlock.
func (f *feedReader) read(ctx context.Context, pos map[string]string) (map[string][]revocation.Change, error) {
	if !f.perScope.Load() || len(pos) == 1 {
		changes, err := f.feed.Follow(ctx, pos, feedBlock)
		if err == nil || len(pos) == 1 || !strings.Contains(err.Error(), "CROSSSLOT") {
			return changes, err
		}
		f.log.Info("the revocation feeds are in different cluster slots: following them one at a time", "scopes", len(pos))
		f.perScope.Store(true)
	}
	block := min(feedBlock, max(perScopeBlock/time.Duration(len(pos)), 10*time.Millisecond))
	out := map[string][]revocation.Change{}
	for fp, p := range pos {
		cs, err := f.feed.Follow(ctx, map[string]string{fp: p}, block)
		if err != nil {
			return nil, err
		}
		if len(cs[fp]) > 0 {
			out[fp] = cs[fp]
		}
	}
	return out, nil
}
