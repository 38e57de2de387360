package store

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisOptions configure a Redis store.
type RedisOptions struct {
	Prefix string           // default "sshca"
	Now    func() time.Time // default time.Now
	// Witness holds the newest generation mark seen, outside Redis (mark.go); default a new
	// one. Stores of one process that share a Redis may share it.
	Witness *Witness
	// WaitReplicas is how many replicas must confirm a write that must not be lost
	// (revocations, identity blocks, lifts, the keyring) before it is acknowledged: the
	// replicas that Sentinel (or a Cluster) may promote. 0 waits for none (a single server).
	// See replication.go.
	WaitReplicas int
	// WaitTimeout bounds each WAIT (default DefaultWaitTimeout, and never more than half of
	// what the request's deadline leaves).
	WaitTimeout time.Duration
	// AuditStripes is the number of audit chain stripes this process appends to
	// (audit.Options.Stripes; 0 or 1: the one chain, {audit}). Refused checks the mark of
	// each, not only stripe 0's: an append may move to any of them, and on a Redis Cluster
	// each may sit on another master and be rolled back alone. One more read in the same
	// round trip per stripe beyond the first.
	AuditStripes int
	// InventoryShards is the number of inventory shards this process records in (0 or 1: the
	// one inventory, {inventory}, as before shards): a certificate goes to the shard of its
	// identity (a hash of its canonical name mod this number, shards.go), so on a Redis
	// Cluster the inventory's writes spread over as many slots. Readers walk every shard ever
	// recorded in (Keys.InventoryShards), whatever this says; Refused checks the mark of each
	// configured shard (one more read in its round trip per shard beyond the first). The token
	// ledger's mark is sharded the same way ({tokens:i}, by the token's hash): each spend bumps
	// its shard's mark, and reads the rebuild's refusal in {tokens} beside it.
	//
	// Every CA replica of a store must be configured with the same number (Keys.ShardsAgreed,
	// recorded by the first one that issues): Admit, Refused and ReserveSerial of a replica
	// configured otherwise fail with a ShardCountError (503), and so does CheckShards, its
	// start and readiness check. Tools that only read or rebuild (NewRedis with the default)
	// are not held to it.
	InventoryShards int
}

// Redis keeps sshca's shared state in Redis, every role in its own file, every key named in
// keys.go. Sorted-set members never expire by themselves, so writers prune them by score and
// readers filter by score, which also keeps the store right on servers whose keys do not
// expire with real time (miniredis in `sshca dev`).
type Redis struct {
	rdb     redis.UniversalClient
	keys    Keys
	now     func() time.Time
	witness *Witness
	// migrated is set once the store was seen at layout 2 (unshardedLayout) or later (layout.go): from then
	// on the blocks of layout 1 are neither written nor read. current is set once it was seen
	// at LayoutVersion: a store's layout only goes up, so it need not be read again.
	migrated atomic.Bool
	current  atomic.Bool
	// layoutRead is set once the layout was read at all: until the store is at LayoutVersion
	// (current) Record keeps certificates in shard 0 (recordShard, shards.go).
	layoutRead atomic.Bool
	// waitReplicas and waitTimeout are RedisOptions.WaitReplicas and WaitTimeout.
	waitReplicas int
	waitTimeout  time.Duration
	// marks are the names of the marked tags' marks (Keys.Mark), built once: issuance names
	// seven marks per certificate, each a string concatenation otherwise. Read-only after
	// NewRedis.
	marks map[string]string
	// markReads are the arguments of HMGET id epoch n on those marks, built once and shared
	// by every read (readMark): go-redis only reads a command's arguments.
	markReads map[string][]any
	// fixed are the names of the untagged-by-argument keys issuance touches on every
	// certificate, built once.
	fixed struct{ blocked, live, tokensRefused, revokedKeys, shardsAgreed string }
	// getAgreed are the arguments of GET Keys.ShardsAgreed, built once and shared by every
	// admission (readAgreed), as markReads are.
	getAgreed []any
	// caMembers are the revocation members that would ban each CA key issuance asked about,
	// by fingerprint (caMember).
	caMembers sync.Map
	// invShards is RedisOptions.InventoryShards, at least 1; shardBlocked, shardLive and
	// shardTags are each shard's Keys.ShardBlocked, Keys.ShardLiveCerts and tag, built once.
	invShards    int
	shardBlocked []string
	shardLive    []string
	shardTags    []string
	// tokenTags are the token ledger's shard tags (TagTokensShard), as many as invShards.
	tokenTags []string
	// shards guards the first use of shards beyond the first (ensureShards).
	shards shardState
	// genArgs is the generation last passed to a marked write, boxed (MarkedWrite.Args).
	genArgs atomic.Pointer[boxedGeneration]
	// auditStripeTags are the tags of the audit stripes beyond the first
	// (RedisOptions.AuditStripes), whose marks Refused checks beside {audit}'s.
	auditStripeTags []string
}

// readMark queues HMGET id epoch n of tag's mark on p (parseMark reads its answer).
func (r *Redis) readMark(ctx context.Context, p redis.Pipeliner, tag string) *redis.SliceCmd {
	args, ok := r.markReads[tag]
	if !ok {
		return p.HMGet(ctx, r.keys.Mark(tag), "id", "epoch", "n")
	}
	cmd := redis.NewSliceCmd(ctx, args...)
	_ = p.Process(ctx, cmd)
	return cmd
}

// readAgreed queues GET Keys.ShardsAgreed on p (parseAgreed reads its answer).
func (r *Redis) readAgreed(ctx context.Context, p redis.Pipeliner) *redis.StringCmd {
	cmd := redis.NewStringCmd(ctx, r.getAgreed...)
	_ = p.Process(ctx, cmd)
	return cmd
}

// mark is Keys.Mark(tag), from the names built once for the marked tags.
func (r *Redis) mark(tag string) string {
	if k, ok := r.marks[tag]; ok {
		return k
	}
	return r.keys.Mark(tag)
}

// NewRedis returns a store on rdb.
func NewRedis(rdb redis.UniversalClient, o RedisOptions) *Redis {
	r := &Redis{rdb: rdb, keys: Keys{Prefix: o.Prefix}, now: o.Now, witness: o.Witness,
		waitReplicas: o.WaitReplicas, waitTimeout: o.WaitTimeout}
	if r.waitTimeout <= 0 {
		r.waitTimeout = DefaultWaitTimeout
	}
	if r.witness == nil {
		r.witness = &Witness{}
	}
	if r.waitReplicas > 0 {
		r.witness.mu.Lock()
		r.witness.replicated = true
		r.witness.mu.Unlock()
	}
	if r.keys.Prefix == "" {
		r.keys.Prefix = DefaultPrefix
	}
	if r.now == nil {
		r.now = time.Now
	}
	r.fixed.blocked, r.fixed.live = r.keys.Blocked(), r.keys.LiveCerts()
	r.fixed.tokensRefused, r.fixed.revokedKeys = r.keys.TokensRefused(), r.keys.RevokedKeys()
	r.fixed.shardsAgreed = r.keys.ShardsAgreed()
	r.getAgreed = []any{"get", r.fixed.shardsAgreed}
	r.marks = make(map[string]string, len(MarkedTags))
	r.markReads = make(map[string][]any, len(MarkedTags))
	for i := 1; i < o.AuditStripes; i++ {
		r.auditStripeTags = append(r.auditStripeTags, TagAuditStripe(i))
	}
	r.invShards = max(o.InventoryShards, 1)
	for i := range r.invShards {
		r.shardBlocked = append(r.shardBlocked, r.keys.ShardBlocked(i))
		r.shardLive = append(r.shardLive, r.keys.ShardLiveCerts(i))
		r.shardTags = append(r.shardTags, TagInventoryShard(i))
		r.tokenTags = append(r.tokenTags, TagTokensShard(i))
	}
	for _, tag := range slices.Concat(MarkedTags, r.auditStripeTags, r.shardTags[1:], r.tokenTags[1:]) {
		k := r.keys.Mark(tag)
		r.marks[tag] = k
		r.markReads[tag] = []any{"hmget", k, "id", "epoch", "n"}
	}
	return r
}

// Check pings Redis.
func (r *Redis) Check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := r.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("store: redis: %w", err)
	}
	return nil
}
