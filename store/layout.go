package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/ca"
)

// The store's layout version, and the migration a rolling upgrade goes through.
//
// Keys.StoreLayout holds the oldest layout version whose replicas may still write to the
// store: missing means 1 (a store written by replicas of layout 1, which never write it). A
// rolling upgrade from layout 1 to 2 goes:
//
//  1. Replicas of layout 2 replace those of layout 1 one by one. While the store says 1, a
//     replica of layout 2 writes each identity block both where layout 2 keeps it (Keys.Blocked,
//     checked by Record in the same script) and where layout 1 does (Keys.LegacyBlocked), and
//     reads both before signing; so a block written by either kind of replica is honoured by
//     both. Blocks written by a replica of layout 1 are checked before signing only, as layout
//     1 always did: the guarantee of layout 2 (no certificate recorded after a block) holds for
//     blocks written by replicas of layout 2.
//  2. Once no replica of layout 1 runs, `sshca store migrate` (Migrate) copies the blocks still
//     in force from Keys.LegacyBlocked to Keys.Blocked and sets the store's layout to 2. From
//     then on replicas read and write Keys.Blocked only; the legacy set expires with its last
//     block. A replica of layout 1 started after that would not see new blocks: do not
//     downgrade below the store's layout.
//
// A rolling upgrade from layout 2 to 3 (audit stripes, inventory shards) goes the same way:
//
//  1. Replicas of layout 3 replace those of layout 2. While the store says 2, a replica of
//     layout 3 configured with audit stripes appends to stripe 0 alone (the one chain that
//     layout 2 reads), looking at the layout again every few seconds (audit.Options.Stripes);
//     one configured with inventory shards keeps every certificate in shard 0 (where layout 2
//     reads and checks blocks), reading the layout at each admission (Refused). A replica of
//     layout 2 that has seen the store at 2 never reads the layout again, so raising it while
//     one runs would not stop it: it would go on listing and revoking from shard 0 alone.
//  2. Once no replica of layout 2 runs, `sshca store migrate` sets the store's layout to 3,
//     and the replicas start striping at their next look. Replicas and tools of layout 2 then
//     refuse the store (issuance 503 "upgrade sshca"; audit verify, archive, report and store
//     rebuild of this layout and later refuse a store newer than they are, ReadLayout) instead
//     of reading stripe 0 alone and calling it the whole log.
//
// A store striped by replicas of layout 2 that already had stripes (before layout 3 existed)
// stays at 2 until migrated, so run `sshca store migrate` once they are all upgraded.
//
// A store that a replica creates (no generation record, no marks, no legacy blocks: an empty
// store) starts at layout 2, or at 3 when that replica is configured with audit stripes or
// inventory shards (Redis.generation). A store whose layout is newer than this
// code's (LayoutVersion) is refused: issuance answers that sshca must be upgraded.

// errNewerLayout is the answer of a replica older than the store it is given: a ca.Error of
// KindUnavailable (a 503), so ca passes it through with its message.
var errNewerLayout = &ca.Error{Kind: ca.KindUnavailable, Msg: "the store's layout is newer than this sshca's: upgrade sshca"}

// parseLayout reads the answer of GET Keys.StoreLayout (missing: 1), refusing a layout newer
// than LayoutVersion with errNewerLayout.
func parseLayout(keys Keys, v string, err error) (int, error) {
	if errors.Is(err, redis.Nil) {
		return 1, nil
	}
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("malformed store layout %q in %s", v, keys.StoreLayout())
	}
	if n > LayoutVersion {
		return n, fmt.Errorf("%w (store %d, sshca %d)", errNewerLayout, n, LayoutVersion)
	}
	return n, nil
}

// observeLayout is parseLayout, remembering what the layout read says for good: the store's
// layout only goes up.
func (r *Redis) observeLayout(v string, err error) (int, error) {
	n, err := parseLayout(r.keys, v, err)
	if err != nil {
		return n, err
	}
	if n >= unshardedLayout {
		r.migrated.Store(true)
	}
	if n == LayoutVersion {
		r.current.Store(true)
	}
	r.layoutRead.Store(true)
	return n, nil
}

// storeLayout returns the oldest layout whose replicas may still write to the store.
func (r *Redis) storeLayout(ctx context.Context) (int, error) {
	if r.current.Load() {
		return LayoutVersion, nil
	}
	return r.observeLayout(r.rdb.Get(ctx, r.keys.StoreLayout()).Result())
}

// Layout returns the oldest layout whose replicas may still write to the store (Keys.
// StoreLayout), as a replica's first write finds it: an empty store is first given its
// generation record, at layout 2, or 3 when this replica stripes (generation). The audit Log asks it before it appends
// beyond stripe 0 (LayoutStripes). A layout newer than LayoutVersion is an error (a 503 that
// says to upgrade sshca); so is a store that lost its state (ErrStateLost).
func (r *Redis) Layout(ctx context.Context) (int, error) {
	if _, err := r.generation(ctx); err != nil {
		return 0, fmt.Errorf("store: layout: %w", err)
	}
	n, err := r.storeLayout(ctx)
	if err != nil {
		return 0, fmt.Errorf("store: layout: %w", err)
	}
	return n, nil
}

// ReadLayout returns the store's layout (Keys.StoreLayout; missing: 1) without writing
// anything, for tools that read what replicas wrote (audit verify, archive, report, store
// rebuild): a store of a layout newer than LayoutVersion is an error that says to upgrade
// sshca, since such a tool would read it as its own layout and miss what it does not know of
// (layout 3: every audit stripe beyond stripe 0).
func ReadLayout(ctx context.Context, rdb redis.UniversalClient, keys Keys) (int, error) {
	v, err := rdb.Get(ctx, keys.StoreLayout()).Result()
	n, err := parseLayout(keys, v, err)
	if err != nil {
		return n, fmt.Errorf("store: layout: %w", err)
	}
	return n, nil
}

// Migration says what Migrate did: the store's layout before and after, and how many identity
// blocks still in force it copied to where layout 2 keeps them (from layout 1 only).
type Migration struct {
	From, To int
	Blocks   int
}

// Migrate moves the store to LayoutVersion. From layout 1 it copies the identity blocks still
// in force from Keys.LegacyBlocked to Keys.Blocked (each keeps its end; a longer block already
// there stays) and lets the legacy set expire with its last block; from layout 2 there is
// nothing to copy: layout 3 only lets the audit Logs stripe (LayoutStripes), which they do at
// their next look at the layout. Run it once no replica older than LayoutVersion writes to the
// store: a block such a replica writes after the copy is not seen by the others, and once the
// store is at 3 such a replica (or tool) refuses it. It is idempotent; on a store already at
// LayoutVersion it changes nothing.
func (r *Redis) Migrate(ctx context.Context) (Migration, error) {
	from, err := r.observeLayout(r.rdb.Get(ctx, r.keys.StoreLayout()).Result())
	if err != nil {
		return Migration{}, fmt.Errorf("store: migrate: %w", err)
	}
	if from >= LayoutVersion {
		return Migration{From: from, To: from}, nil
	}
	if from >= unshardedLayout {
		if err := r.rdb.Set(ctx, r.keys.StoreLayout(), LayoutVersion, 0).Err(); err != nil {
			return Migration{}, fmt.Errorf("store: migrate: set the layout: %w", err)
		}
		r.migrated.Store(true)
		r.current.Store(true)
		return Migration{From: from, To: LayoutVersion}, nil
	}
	now := r.now().UnixMilli()
	live, err := r.rdb.ZRangeByScoreWithScores(ctx, r.keys.LegacyBlocked(), &redis.ZRangeBy{
		Min: "(" + strconv.FormatInt(now, 10), Max: "+inf"}).Result()
	if err != nil {
		return Migration{}, fmt.Errorf("store: migrate: read the blocks of layout %d: %w", from, err)
	}
	var pairs []any
	var last float64
	for _, z := range live {
		name, _ := z.Member.(string)
		pairs = append(pairs, int64(z.Score), name)
		last = max(last, z.Score)
	}
	if len(pairs) > 0 {
		if err := r.blockAll(ctx, pairs); err != nil {
			return Migration{}, fmt.Errorf("store: migrate: copy the blocks: %w", err)
		}
	}
	if err := r.rdb.Set(ctx, r.keys.StoreLayout(), LayoutVersion, 0).Err(); err != nil {
		return Migration{}, fmt.Errorf("store: migrate: set the layout: %w", err)
	}
	r.migrated.Store(true)
	r.current.Store(true)
	// The legacy set is no longer read; it goes with its last block (at once when none is in
	// force). Its mark stays: witnesses that saw it compare it still.
	if len(live) > 0 {
		err = r.rdb.PExpireAt(ctx, r.keys.LegacyBlocked(), time.UnixMilli(int64(last))).Err()
	} else {
		err = r.rdb.Del(ctx, r.keys.LegacyBlocked()).Err()
	}
	if err != nil {
		return Migration{}, fmt.Errorf("store: migrate: expire the blocks of layout %d: %w", from, err)
	}
	return Migration{From: from, To: LayoutVersion, Blocks: len(live)}, nil
}
