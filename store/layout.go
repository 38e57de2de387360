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
// A store that a replica of layout 2 or later creates (no generation record, no marks, no
// legacy blocks: an empty store) starts at layout 2 (Redis.generation). Layout 3 adds keys
// only (inventory shards): a store goes to 3 when a replica first records beyond the first
// shard (ensureShards, shards.go), which it refuses on a store still at layout 1; nothing is
// migrated, and Migrate still moves a store of layout 1 to 2. A store whose layout is newer
// than this code's (LayoutVersion) is refused: issuance answers that sshca must be upgraded.

// errNewerLayout is the answer of a replica older than the store it is given: a ca.Error of
// KindUnavailable (a 503), so ca passes it through with its message.
var errNewerLayout = &ca.Error{Kind: ca.KindUnavailable, Msg: "the store's layout is newer than this sshca's: upgrade sshca"}

// observeLayout reads the answer of GET Keys.StoreLayout, and remembers once the store is at
// layout 2 or later: a store's layout only goes up, and from 2 on nothing this code does depends on it.
func (r *Redis) observeLayout(v string, err error) (int, error) {
	if errors.Is(err, redis.Nil) {
		return 1, nil
	}
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("malformed store layout %q in %s", v, r.keys.StoreLayout())
	}
	if n > LayoutVersion {
		return n, fmt.Errorf("%w (store %d, sshca %d)", errNewerLayout, n, LayoutVersion)
	}
	if n >= unshardedLayout {
		r.migrated.Store(true)
	}
	return n, nil
}

// storeLayout returns the oldest layout whose replicas may still write to the store.
func (r *Redis) storeLayout(ctx context.Context) (int, error) {
	if r.migrated.Load() {
		return LayoutVersion, nil
	}
	return r.observeLayout(r.rdb.Get(ctx, r.keys.StoreLayout()).Result())
}

// Migration says what Migrate did: the store's layout before and after, and how many identity
// blocks still in force it copied to where layout 2 keeps them.
type Migration struct {
	From, To int
	Blocks   int
}

// Migrate moves the store to LayoutVersion: it copies the identity blocks still in force from
// Keys.LegacyBlocked to Keys.Blocked (each keeps its end; a longer block already there stays),
// sets Keys.StoreLayout, and lets the legacy set expire with its last block. Run it once no
// replica older than LayoutVersion writes to the store: a block such a replica writes after
// the copy is not seen by the others. It is idempotent; on a store already at LayoutVersion
// it changes nothing.
func (r *Redis) Migrate(ctx context.Context) (Migration, error) {
	from, err := r.observeLayout(r.rdb.Get(ctx, r.keys.StoreLayout()).Result())
	if err != nil {
		return Migration{}, fmt.Errorf("store: migrate: %w", err)
	}
	if from >= unshardedLayout {
		return Migration{From: from, To: from}, nil
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
	if err := r.rdb.Set(ctx, r.keys.StoreLayout(), unshardedLayout, 0).Err(); err != nil {
		return Migration{}, fmt.Errorf("store: migrate: set the layout: %w", err)
	}
	r.migrated.Store(true)
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
	return Migration{From: from, To: unshardedLayout, Blocks: len(live)}, nil
}
