package store

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/ca"
)

// Inventory shards (RedisOptions.InventoryShards, layout 3): on a Redis Cluster one hash tag
// is one slot on one master, so an inventory under one tag takes every certificate's writes on
// one master however many the Cluster has. With N shards a certificate's record, its
// identity's index, its aliases' entries for it and its live-set entry go to the shard of its
// identity (TagInventoryShard(shardOf(identity))): one slot, so Record stays one script that
// checks the blocks and writes. The rest follows from three rules:
//
//   - Every identity block is in every shard in use: shard 0 first, by a script that reads the
//     count of shards ever used (Keys.InventoryShards) in the same step, then the other shards
//     up to that count. A process that first records beyond shard 0 (in a generation: a
//     rebuild may follow the loss of the count or of a shard's blocks) raises the count and reads
//     shard 0's blocks in one script, then copies them into its shards before it records
//     there: a block written before that script is copied, one written after it reads the
//     raised count and is written into every shard. With RedisOptions.WaitReplicas the raise
//     and the copies wait for the replicas, as a block does. Blocks are only ever lengthened, so the
//     copies and the writers never undo each other.
//   - Readers (Get by serial, Live, AllLive, ResolveAlias) walk every shard ever recorded in,
//     the count or the configured number, whichever is higher, in one pipeline (split per
//     master and sent in parallel by go-redis on a Cluster): lowering the configured number,
//     or a replica configured with fewer, loses nothing.
//   - A serial is reserved in the shard of the serial (serial mod the configured number),
//     the same key for every replica with that number. Replicas configured with different
//     numbers (a drifted configuration, a half-done rollout) would reserve one serial in
//     different keys, both successfully, so the store records the number (Keys.ShardsAgreed:
//     the first replica that issues writes its own, `sshca store migrate --inventory-shards`
//     changes it) and a replica configured otherwise refuses to start (CheckShards), fails
//     its readiness, and refuses every admission and reservation (ShardCountError, a 503),
//     reading the number in the admission's own round trip. A change of the number leaves
//     the reservations made before it in the old number's keys: a serial drawn again among
//     those (64 random bits; about 3·10⁻⁸ for a million live certificates) is not caught
//     until they expire with their certificates (SetShards).
//
// Certificates issued under an access request go to their identity's shard too: the request
// stays in shard 0's tag, and RecordUnderRequest records the certificate (one script in the
// identity's slot) before it appends the serial to the request (one transaction in shard 0's).
// Replicas before stop 17 recorded them in shard 0, in the request's transaction; readers walk
// every shard, so they find those there. Every certificate stays in shard 0 while the store is
// below layout 3 (recordShard, layout.go): replicas of layout 2 read shard 0 alone.

// MaxInventoryShards bounds RedisOptions.InventoryShards: every reader reads every shard, and
// a block is written into each.
const MaxInventoryShards = 64

// shardState is the first use of shards beyond the first in a generation: ready holds the
// generation in which the store's layout and the count of shards were raised and the blocks
// copied (ensureShards). A rebuild's new generation makes it start again: the store may have
// lost the count and the blocks of shards since (a master that came back empty, a rebuild run
// with fewer shards), and a replica of fewer shards would then write its blocks into fewer
// shards than this one records in.
type shardState struct {
	mu    sync.Mutex // held while the first use is under way, so records wait for it
	ready atomic.Pointer[Generation]
}

// shardOf is the inventory shard of a canonical identity: FNV-1a (32 bits) of its name mod the
// configured shards. Stable across processes and releases: it decides where an identity's
// records are, and Record must find its identity's blocks in the same shard.
func (r *Redis) shardOf(identity string) int {
	if r.invShards <= 1 {
		return 0
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(identity))
	return int(h.Sum32() % uint32(r.invShards))
}

// serialKey is the reservation key of a serial (Keys.ShardSerial in the serial's shard).
func (r *Redis) serialKey(serial uint64) string {
	return r.keys.ShardSerial(int(serial%uint64(r.invShards)), serial)
}

// raiseShardsScript raises the count of shards ever used (KEYS[1], absent: 1) to ARGV[1] and
// answers shard 0's blocks in force at ARGV[2] (unix ms) with their ends (KEYS[2], ZRANGEBYSCORE
// WITHSCORES: member, score pairs), in one step: see the rules at the top of this file.
var raiseShardsScript = redis.NewScript(`
local c = tonumber(redis.call('GET', KEYS[1]) or '1')
if tonumber(ARGV[1]) > c then redis.call('SET', KEYS[1], ARGV[1]) end
return redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[2], '+inf', 'WITHSCORES')
`)

// recordShard is the shard Record writes c's identity's certificates in: shardOf, once the
// store is at LayoutVersion. Before that (layout.go) shard 0, where replicas of layout 2 read
// and write: a store whose layout this process never read is read once here (Refused reads it
// at every admission until it is 3).
func (r *Redis) recordShard(ctx context.Context, identity string) (int, error) {
	shard := r.shardOf(identity)
	if shard == 0 || r.current.Load() {
		return shard, nil
	}
	if !r.layoutRead.Load() {
		// The generation first: on an empty store it writes the layout it starts at.
		if _, err := r.generation(ctx); err != nil && !errors.Is(err, ErrStateLost) {
			return 0, err
		}
		if _, err := r.observeLayout(r.rdb.Get(ctx, r.keys.StoreLayout()).Result()); err != nil {
			return 0, err
		}
	}
	if !r.current.Load() {
		return 0, nil
	}
	return shard, nil
}

// ensureShards prepares the first record beyond shard 0 (the store at LayoutVersion): it
// raises the count of shards to the configured number reading shard 0's blocks in the same
// script, and copies those blocks into shards 1 and up. Done once per process and generation g
// (the one the record is written in); records wait for it.
func (r *Redis) ensureShards(ctx context.Context, g Generation) error {
	if r.invShards <= 1 {
		return nil
	}
	if p := r.shards.ready.Load(); p != nil && *p == g {
		return nil
	}
	r.shards.mu.Lock()
	defer r.shards.mu.Unlock()
	if p := r.shards.ready.Load(); p != nil && *p == g {
		return nil
	}
	blocks, err := r.runRaise(ctx, "raise of the inventory shard count", TagInventory, raiseShardsScript,
		[]string{r.keys.InventoryShards(), r.shardBlocked[0]}, r.invShards, r.now().UnixMilli())
	if err != nil {
		return fmt.Errorf("store: inventory shards: raise the count: %w", err)
	}
	var pairs []any
	for i := 0; i+1 < len(blocks); i += 2 {
		pairs = append(pairs, blocks[i+1], blocks[i])
	}
	if len(pairs) > 0 {
		for i := 1; i < r.invShards; i++ {
			if err := r.block(ctx, r.shardTags[i], r.shardBlocked[i], pairs); err != nil {
				return fmt.Errorf("store: inventory shards: copy the identity blocks into shard %d: %w", i, err)
			}
		}
	}
	ready := g // a copy: taking g's address would move every caller's g to the heap, the early returns too
	r.shards.ready.Store(&ready)
	return nil
}

// runRaise runs a raising script (the shard count) and answers its reply;
// with RedisOptions.WaitReplicas it waits for the replicas as a block does (runWaited): a
// failover that lost the raised count would let a replica of fewer shards write its blocks
// into fewer shards than this one records in, so issuance with shards does not start on a
// count the replicas do not have.
func (r *Redis) runRaise(ctx context.Context, op, tag string, s *redis.Script, keys []string, args ...any) ([]any, error) {
	if r.waitReplicas > 0 {
		return r.runWaited(ctx, op, tag, s, keys, args)
	}
	return s.Run(ctx, r.rdb, keys, args...).Slice()
}

// parseShards reads the answer of GET Keys.InventoryShards: absent is one shard.
func parseShards(v string, err error) (int, error) {
	if errors.Is(err, redis.Nil) {
		return 1, nil
	}
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("malformed inventory shard count %q", v)
	}
	return n, nil
}

// inShards runs queue for every shard ever recorded in: the configured ones with the count in
// one pipeline, then, when the count is higher (the configured number was lowered, or another
// replica has more), the rest in a second. It answers how many shards were read. Each queued
// command's own error is the caller's to read; a failed read of the count fails it.
func (r *Redis) inShards(ctx context.Context, queue func(p redis.Pipeliner, shard int)) (int, error) {
	var cnt *redis.StringCmd
	_, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		cnt = p.Get(ctx, r.keys.InventoryShards())
		for i := range r.invShards {
			queue(p, i)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return 0, err
	}
	n, err := parseShards(cnt.Result())
	if err != nil {
		return 0, err
	}
	if n <= r.invShards {
		return r.invShards, nil
	}
	_, err = r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := r.invShards; i < n; i++ {
			queue(p, i)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return 0, err
	}
	return n, nil
}

// shardOfMark is the inventory shard (1 and up) whose mark key is k (Keys.Mark of
// TagInventoryShard), as SCAN lists it.
func (r *Redis) shardOfMark(k string) (int, bool) {
	rest, ok := strings.CutPrefix(k, r.keys.p()+":{inventory:")
	if !ok {
		return 0, false
	}
	n, ok := strings.CutSuffix(rest, "}:mark")
	if !ok {
		return 0, false
	}
	i, err := strconv.Atoi(n)
	if err != nil || i < 1 || i >= MaxInventoryShards || k != r.keys.Mark(TagInventoryShard(i)) {
		return 0, false
	}
	return i, true
}

// ShardCountError is the refusal of a CA replica whose configured number of inventory shards
// (RedisOptions.InventoryShards, inventory.shards) is not the store's (Keys.ShardsAgreed).
// Redis returns it inside a ca.Error of KindUnavailable (a 503, and /readyz not ready).
type ShardCountError struct {
	Configured int    // this replica's number, at least 1
	Store      int    // the store's
	Key        string // where the store keeps it
}

func (e *ShardCountError) Error() string {
	return fmt.Sprintf("inventory.shards is %d in this replica's configuration, but the store's inventory has %d shards (%s): "+
		"replicas with different numbers reserve one serial in different keys, so it could be issued twice; "+
		"set inventory.shards: %d, or change the store's number with sshca store migrate --inventory-shards %d and restart every CA replica with it",
		e.Configured, e.Store, e.Key, e.Store, e.Configured)
}

// shardCountError is the ca.Error of a replica configured with n shards on a store of store.
func (r *Redis) shardCountError(store int) error {
	return &ca.Error{Kind: ca.KindUnavailable, Msg: "this CA replica's number of inventory shards is not the store's",
		Err: &ShardCountError{Configured: r.invShards, Store: store, Key: r.fixed.shardsAgreed}}
}

// parseAgreed reads the answer of GET Keys.ShardsAgreed: 0 when absent.
func parseAgreed(v string, err error) (int, error) {
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > MaxInventoryShards {
		return 0, fmt.Errorf("malformed number of inventory shards %q", v)
	}
	return n, nil
}

// agreeShards holds this replica to the store's number of shards n as read (0: absent). An
// absent number is recorded as this replica's (SET NX GET, so that two replicas starting
// together on a store without one agree on the first's); the answer is nil when the store's
// number, found or recorded, is the configured one, else a ShardCountError.
func (r *Redis) agreeShards(ctx context.Context, n int) error {
	if n == 0 {
		prev, err := r.rdb.SetArgs(ctx, r.fixed.shardsAgreed, r.invShards, redis.SetArgs{Mode: "NX", Get: true}).Result()
		if errors.Is(err, redis.Nil) {
			return nil // recorded
		}
		if err != nil {
			return fmt.Errorf("store: inventory shards: record the number: %w", err)
		}
		if n, err = parseAgreed(prev, nil); err != nil || n == 0 {
			return fmt.Errorf("store: inventory shards: %s: %w", r.fixed.shardsAgreed, err)
		}
	}
	if n != r.invShards {
		return r.shardCountError(n)
	}
	return nil
}

// CheckShards is the start and readiness check of the number of inventory shards: nil when
// the store's (Keys.ShardsAgreed) is the configured one, recording it when the store has none;
// a ca.Error of KindUnavailable wrapping a ShardCountError when it is another; the error of
// Redis when it cannot be read.
func (r *Redis) CheckShards(ctx context.Context) error {
	n, err := r.Shards(ctx)
	if err != nil {
		return err
	}
	return r.agreeShards(ctx, n)
}

// Shards returns the store's number of inventory shards (Keys.ShardsAgreed), 0 when none is
// recorded yet.
func (r *Redis) Shards(ctx context.Context) (int, error) {
	n, err := parseAgreed(r.rdb.Get(ctx, r.fixed.shardsAgreed).Result())
	if err != nil {
		return 0, fmt.Errorf("store: inventory shards: %w", err)
	}
	return n, nil
}

// SetShards sets the store's number of inventory shards to n (1 to MaxInventoryShards) and
// returns the one it replaced (0: none): `sshca store migrate --inventory-shards N`, the one
// way to change it. CA replicas configured with another number then refuse every admission
// and fail their readiness until restarted with n; readers walk every shard ever used
// (Keys.InventoryShards), so lowering it loses no record. The reservations of serials made
// under the old number stay in its keys until they expire with their certificates (at most
// the longest TTL): until then a serial reserved under one number is not seen by a reservation
// under the other, and its uniqueness rests on its 64 random bits.
func (r *Redis) SetShards(ctx context.Context, n int) (int, error) {
	if n < 1 || n > MaxInventoryShards {
		return 0, fmt.Errorf("store: inventory shards: %d: want 1 to %d", n, MaxInventoryShards)
	}
	prev, err := r.rdb.SetArgs(ctx, r.fixed.shardsAgreed, n, redis.SetArgs{Get: true}).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return 0, fmt.Errorf("store: inventory shards: set the number: %w", err)
	}
	old, _ := parseAgreed(prev, err)
	return old, nil
}
