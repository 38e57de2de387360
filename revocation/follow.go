package revocation

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jonboulle/clockwork"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
)

// FollowFeed is the change feed a Follower reads (store.Redis and store.Memory implement it):
// the CA keys whose scopes the user KRL covers, a scope's snapshot with its feed position, and
// the changes after given positions of many scopes in one call.
type FollowFeed interface {
	// CAs lists the CA keys that have revocation scopes, in a stable order.
	CAs(ctx context.Context) ([]ssh.PublicKey, error)
	// Snapshot returns the scope of the CA key with fingerprint fp and its feed position.
	Snapshot(ctx context.Context, fp string) (ca.RevocationState, string, error)
	// Follow blocks up to block for changes after the positions (fingerprint → position) and
	// returns them by fingerprint.
	Follow(ctx context.Context, after map[string]string, block time.Duration) (map[string][]Change, error)
}

// Follower follows every revocation scope's feed in one loop (one blocking read at a time,
// whatever the number of scopes or of waiters), and tells waiters that the state changed by
// closing the channel Changed returned them. A CA replica runs one, for the long poll of
// GET /v1/krl: the waiting agents of a replica cost it nothing in the store until a change
// arrives, by whichever replica it was made.
//
// States reads the scopes the way a bastion following the store does (CAs, then each scope's
// snapshot), so the server's KRL and a Redis-following bastion's are built from the same
// states, and BuildKRL makes them the same bytes.
type Follower struct {
	feed FollowFeed
	log  *slog.Logger
	// Block is how long one read waits for changes (default 5s): it bounds how long a new
	// scope (a CA key generated on another replica) takes to be followed, and how long Run
	// takes to notice that ctx ended.
	Block time.Duration
	// Clock drives Run's waits: the look for a first scope every Block and the backoff after
	// a failed read (default the real clock; tests advance a clockwork.FakeClock). A read's
	// own Block is waited by the store (XREAD BLOCK), on its clock.
	Clock clockwork.Clock

	// scopes reads every scope at once, or one at a time on Redis Cluster.
	scopes ScopeReader

	mu      sync.Mutex
	changed chan struct{}
}

// NewFollower returns a follower of feed; Run makes it follow.
func NewFollower(feed FollowFeed, log *slog.Logger) *Follower {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Follower{feed: feed, log: log, Block: 5 * time.Second, Clock: clockwork.NewRealClock(), changed: make(chan struct{})}
}

// Changed returns a channel closed at the next change after the call: a change of a scope, a
// new scope, or the follower reconnecting after a failure (it may have missed changes).
func (f *Follower) Changed() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changed
}

func (f *Follower) wake() {
	f.mu.Lock()
	defer f.mu.Unlock()
	close(f.changed)
	f.changed = make(chan struct{})
}

// States reads every scope's state now, each with its CA key, in the order CAs lists them. A
// store that cannot answer is ca.Unavailable.
func (f *Follower) States(ctx context.Context) ([]ca.RevocationState, error) {
	keys, err := f.feed.CAs(ctx)
	if err != nil {
		return nil, unavailable(err)
	}
	out := make([]ca.RevocationState, 0, len(keys))
	for _, k := range keys {
		st, _, err := f.feed.Snapshot(ctx, ssh.FingerprintSHA256(k))
		if err != nil {
			return nil, unavailable(err)
		}
		if st.CA == nil {
			st.CA = k
		}
		out = append(out, st)
	}
	return out, nil
}

func unavailable(err error) error {
	var e *ca.Error
	if errors.As(err, &e) {
		return err
	}
	return ca.Unavailable("revocation store unavailable", err)
}

// Run follows until ctx ends. It never gives up: a failed read is logged, waiters are woken
// once it reads again (what it missed meanwhile is in the state they read), and it retries with
// backoff up to 5 s.
func (f *Follower) Run(ctx context.Context) {
	pos := map[string]string{} // by fingerprint
	backoff := 100 * time.Millisecond
	failed := false
	for ctx.Err() == nil {
		grew, err := f.track(ctx, pos)
		if err == nil && len(pos) == 0 {
			// Nothing to follow yet (a store before its first CA key): look again later.
			select {
			case <-ctx.Done():
			case <-f.Clock.After(f.Block):
			}
			continue
		}
		var changes map[string][]Change
		if err == nil {
			changes, err = f.read(ctx, pos)
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if !failed {
				f.log.Warn("revocation feed lost; long polls of /v1/krl wait until it is back", "err", err, "retry_in", backoff)
			}
			failed = true
			select {
			case <-ctx.Done():
				return
			case <-f.Clock.After(backoff):
			}
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		for fp, cs := range changes {
			if n := len(cs); n > 0 {
				pos[fp] = cs[n-1].ID
			}
		}
		if len(changes) > 0 || grew || failed {
			f.wake()
		}
		if failed {
			f.log.Info("revocation feed back")
		}
		failed, backoff = false, 100*time.Millisecond
	}
}

// read is one read of the feed (ScopeReader.Read): the cost depends on the number of CA keys,
// never on the number of waiting agents.
func (f *Follower) read(ctx context.Context, pos map[string]string) (map[string][]Change, error) {
	return f.scopes.Read(ctx, f.feed, f.log, pos, f.Block)
}

// ScopeReader reads the changes of every followed scope: in one blocking XREAD, or, where the
// scopes' streams sit in different Redis Cluster slots and that read fails with CROSSSLOT, in
// short reads of one scope at a time from then on (the slots do not move back together).
// Either way the reads hold one connection, whatever the number of scopes. The server's
// Follower and the bastion agent both read through it. Safe for concurrent use.
type ScopeReader struct {
	perScope atomic.Bool
}

// Read returns the changes after pos (fingerprint → stream position, not empty), blocking up
// to block (one scope at a time: about perScopeBlock per round).
func (r *ScopeReader) Read(ctx context.Context, feed FollowFeed, log *slog.Logger, pos map[string]string, block time.Duration) (map[string][]Change, error) {
	if !r.perScope.Load() || len(pos) == 1 {
		changes, err := feed.Follow(ctx, pos, block)
		if err == nil || len(pos) == 1 || !strings.Contains(err.Error(), "CROSSSLOT") {
			return changes, err
		}
		log.Info("the revocation feeds are in different cluster slots: following them one at a time", "scopes", len(pos))
		r.perScope.Store(true)
	}
	each := min(block, max(perScopeBlock/time.Duration(len(pos)), 10*time.Millisecond))
	out := map[string][]Change{}
	for fp, p := range pos {
		cs, err := feed.Follow(ctx, map[string]string{fp: p}, each)
		if err != nil {
			return nil, err
		}
		if len(cs[fp]) > 0 {
			out[fp] = cs[fp]
		}
	}
	return out, nil
}

// perScopeBlock is how long a round of per-scope reads blocks in all: the delay a change may
// wait for its scope's turn on Redis Cluster.
const perScopeBlock = 100 * time.Millisecond

// track adds the scopes not followed yet, at their current positions; grew says whether there
// were any after the first call (a new scope changes the KRL).
func (f *Follower) track(ctx context.Context, pos map[string]string) (grew bool, err error) {
	keys, err := f.feed.CAs(ctx)
	if err != nil {
		return false, err
	}
	first := len(pos) == 0
	for _, k := range keys {
		fp := ssh.FingerprintSHA256(k)
		if _, ok := pos[fp]; ok {
			continue
		}
		_, p, err := f.feed.Snapshot(ctx, fp)
		if err != nil {
			return false, err
		}
		pos[fp] = p
		grew = !first
	}
	return grew, nil
}
