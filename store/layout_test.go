package store

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
)

// layout1 is a replica of layout 1 as it wrote and read identity blocks and records, with its
// code as of commit db09bf3 (before layout 2): blocks in {identities}, checked before
// signing only, and records written by MULTI/EXEC without a check. Marks and the witness are
// unchanged since, so it runs its scripts through runMarked as it did.
type layout1 struct{ r *Redis }

var layout1GenerationInit = redis.NewScript(`
local g = redis.call('HMGET', KEYS[1], 'id', 'epoch')
if g[1] then return {g[1], g[2]} end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'epoch', 0)
return {ARGV[1], '0'}
`)

var layout1BlockScript = redis.NewScript(markLua + `
local r = mark(KEYS[2], ARGV[4], ARGV[5], ARGV[6])
if r[1] == 'newer' then return r end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
redis.call('ZADD', KEYS[1], 'GT', ARGV[2], ARGV[3])
return bump(KEYS[2], r)
`)

func (o layout1) init(ctx context.Context) error {
	return layout1GenerationInit.Run(ctx, o.r.rdb, []string{o.r.keys.Generation()}, newGenerationID()).Err()
}

func (o layout1) BlockIdentity(ctx context.Context, identity string, until time.Time) error {
	now := o.r.now().UnixMilli()
	_, err := o.r.runMarked(ctx, "identity block", TagIdentities, layout1BlockScript, []string{o.r.keys.LegacyBlocked(), o.r.keys.Mark(TagIdentities)},
		func(g Generation, exp expectation) []any {
			return append([]any{now, until.UnixMilli(), identity}, markArgs(g, exp)...)
		})
	return err
}

// blocked is layout 1's identity check before signing.
func (o layout1) blocked(ctx context.Context, names ...string) bool {
	scores, err := o.r.rdb.ZMScore(ctx, o.r.keys.LegacyBlocked(), names...).Result()
	if err != nil {
		panic(err)
	}
	for _, s := range scores {
		if s > float64(o.r.now().UnixMilli()) {
			return true
		}
	}
	return false
}

func (o layout1) Record(ctx context.Context, c ca.Certificate) error {
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	now := o.r.now()
	idKey := o.r.keys.Identity(c.Identity)
	_, err = o.r.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, o.r.keys.Cert(c.Serial), b, 0)
		p.PExpireAt(ctx, o.r.keys.Cert(c.Serial), c.ValidBefore)
		p.ZRemRangeByScore(ctx, idKey, "-inf", strconv.FormatInt(now.UnixMilli(), 10))
		p.ZAdd(ctx, idKey, redis.Z{Score: float64(c.ValidBefore.UnixMilli()), Member: strconv.FormatUint(c.Serial, 10)})
		return nil
	})
	return err
}

// TestRollingUpgradeLayout1To2: a store written by replicas of layout 1, then replicas of both
// layouts side by side, then `sshca store migrate`. Every block written by either kind is
// honoured by both before signing; blocks written by a replica of layout 2 are also checked
// by Record in its script; records of either kind are read by the other; the migration copies
// the blocks still in force, after which Record refuses them too and the legacy set is neither
// written nor read and expires; it runs again without changing anything. On redis-server and
// miniredis.
func TestRollingUpgradeLayout1To2(t *testing.T) {
	backends := map[string]func(t *testing.T) redis.UniversalClient{
		"redis-server": func(t *testing.T) redis.UniversalClient {
			return redis.NewClient(&redis.Options{Addr: testenv.StartRedis(t).Addr})
		},
		"miniredis": func(t *testing.T) redis.UniversalClient {
			return redis.NewClient(&redis.Options{Addr: miniredis.RunT(t).Addr()})
		},
	}
	for name, open := range backends {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			rdb := open(t)
			t.Cleanup(func() { rdb.Close() })
			now := time.Now().Truncate(time.Millisecond)
			until := now.Add(time.Hour)
			keys := Keys{}
			cert := func(serial uint64, id string) ca.Certificate {
				return ca.Certificate{Serial: serial, KeyID: id + "#" + strconv.FormatUint(serial, 10), Kind: ca.UserCert, Identity: id,
					Principals: []string{"p"}, ValidAfter: now, ValidBefore: now.Add(30 * time.Minute)}
			}
			must := func(err error) {
				t.Helper()
				if err != nil {
					t.Fatal(err)
				}
			}

			// A store of layout 1: its generation, a block, a record.
			old := layout1{NewRedis(rdb, RedisOptions{})}
			must(old.init(ctx))
			must(old.BlockIdentity(ctx, "https://idp|old-blocked", until))
			must(old.BlockIdentity(ctx, "https://idp|ended", now.Add(-time.Minute))) // not copied
			must(old.Record(ctx, cert(1, "https://idp|alice")))

			// A replica of layout 2 joins: the store still says layout 1.
			nu := NewRedis(rdb, RedisOptions{})
			if why, err := nu.Refused(ctx, testenv.PublicKey(t), []string{"https://idp|old-blocked"}, testenv.PublicKey(t)); err != nil || !strings.Contains(why, "were revoked") {
				t.Fatalf("layout 2 before signing, block of layout 1: %q, %v; want refused", why, err)
			}
			if live, err := nu.Live(ctx, "https://idp|alice", now); err != nil || len(live) != 1 {
				t.Fatalf("layout 2 reads layout 1's records: %+v, %v", live, err)
			}
			must(nu.BlockIdentity(ctx, "https://idp|new-blocked", until))
			if !old.blocked(ctx, "https://idp|new-blocked") {
				t.Fatal("a replica of layout 1 does not see a block written by layout 2 while the store is at layout 1")
			}
			if err := nu.Record(ctx, cert(2, "https://idp|new-blocked")); ca.KindOf(err) != ca.KindDenied {
				t.Fatalf("layout 2 recorded a certificate of an identity it blocked: %v", err)
			}
			must(old.Record(ctx, cert(3, "https://idp|bob")))
			must(nu.Record(ctx, cert(4, "https://idp|bob")))
			if live, err := nu.Live(ctx, "https://idp|bob", now); err != nil || len(live) != 2 {
				t.Fatalf("bob's records from both layouts: %+v, %v", live, err)
			}
			if n, _ := rdb.Exists(ctx, keys.StoreLayout()).Result(); n != 0 {
				t.Fatal("a replica of layout 2 claimed the store's layout while replicas of layout 1 may run")
			}

			// Every replica is of layout 2: migrate.
			m, err := nu.Migrate(ctx)
			if err != nil || m != (Migration{From: 1, To: LayoutVersion, Blocks: 2}) {
				t.Fatalf("migrate = %+v, %v; want 1 → %d with the 2 blocks in force", m, err, LayoutVersion)
			}
			if v, _ := rdb.Get(ctx, keys.StoreLayout()).Result(); v != strconv.Itoa(LayoutVersion) {
				t.Fatalf("store layout %q after the migration", v)
			}
			if ttl, _ := rdb.PTTL(ctx, keys.LegacyBlocked()).Result(); ttl <= 0 || ttl > time.Hour+time.Second {
				t.Errorf("the legacy blocks expire in %s, want with the last block (about 1h)", ttl)
			}
			fresh := NewRedis(rdb, RedisOptions{}) // a replica started after the migration
			for _, r := range []*Redis{nu, fresh} {
				if err := r.Record(ctx, cert(5, "https://idp|old-blocked")); ca.KindOf(err) != ca.KindDenied {
					t.Errorf("after the migration Record takes a block of layout 1: %v", err)
				}
				if err := r.Record(ctx, cert(6, "https://idp|ended")); err != nil {
					t.Errorf("a block that had ended came back: %v", err)
				}
			}
			must(fresh.BlockIdentity(ctx, "https://idp|after", until))
			if why, err := fresh.Refused(ctx, testenv.PublicKey(t), []string{"https://idp|after"}, testenv.PublicKey(t)); err != nil || why == "" {
				t.Errorf("a block written after the migration is not refused before signing: %q, %v", why, err)
			}
			if old.blocked(ctx, "https://idp|after") {
				t.Error("after the migration a block was still written where layout 1 reads")
			}
			if !fresh.migrated.Load() {
				t.Error("a replica that read the migrated layout keeps reading the legacy blocks")
			}
			// Again: nothing to do.
			if m, err := fresh.Migrate(ctx); err != nil || m != (Migration{From: LayoutVersion, To: LayoutVersion}) {
				t.Errorf("second migrate = %+v, %v", m, err)
			}
			if err := fresh.CheckState(ctx); err != nil {
				t.Errorf("state after the migration: %v", err)
			}

			// A store of a later layout than this code: refused, not written to.
			must(rdb.Set(ctx, keys.StoreLayout(), LayoutVersion+1, 0).Err())
			older := NewRedis(rdb, RedisOptions{})
			if _, err := older.Refused(ctx, testenv.PublicKey(t), []string{"https://idp|x"}, testenv.PublicKey(t)); !errors.Is(err, errNewerLayout) || ca.KindOf(err) != ca.KindUnavailable {
				t.Errorf("a replica older than the store issues: %v", err)
			}
			if _, err := older.Migrate(ctx); !errors.Is(err, errNewerLayout) {
				t.Errorf("migrate on a newer store: %v", err)
			}
		})
	}
}

// TestEmptyStoreStartsAtCurrentLayout: a replica that creates an empty store's generation
// sets its layout (2 with one inventory shard, which replicas of layout 2 may still use; 3
// with several, which no replica of layout 2 has seen), so it never writes the legacy blocks;
// one that finds data of layout 1 (here a block) without a generation record leaves the
// layout at 1.
func TestEmptyStoreStartsAtCurrentLayout(t *testing.T) {
	ctx := context.Background()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	keys := Keys{}
	r := NewRedis(rdb, RedisOptions{})
	if err := r.BlockIdentity(ctx, "https://idp|a", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if v, _ := rdb.Get(ctx, keys.StoreLayout()).Result(); v != strconv.Itoa(unshardedLayout) {
		t.Errorf("an empty store's layout = %q, want %d (raised to %d by sshca store migrate)", v, unshardedLayout, LayoutVersion)
	}
	if n, _ := rdb.Exists(ctx, keys.LegacyBlocked()).Result(); n != 0 {
		t.Error("a store at the current layout got legacy blocks")
	}
	mr.FlushAll()
	three := NewRedis(rdb, RedisOptions{InventoryShards: 3})
	if err := three.BlockIdentity(ctx, "https://idp|a", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if v, _ := rdb.Get(ctx, keys.StoreLayout()).Result(); v != strconv.Itoa(LayoutVersion) {
		t.Errorf("an empty store created by a replica of three inventory shards is at layout %q, want %d", v, LayoutVersion)
	}

	mr.FlushAll()
	rdb.ZAdd(ctx, keys.LegacyBlocked(), redis.Z{Score: float64(time.Now().Add(time.Hour).UnixMilli()), Member: "https://idp|b"})
	r = NewRedis(rdb, RedisOptions{})
	if err := r.BlockIdentity(ctx, "https://idp|a", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if n, _ := rdb.Exists(ctx, keys.StoreLayout()).Result(); n != 0 {
		t.Error("a store with blocks of layout 1 was declared at the current layout")
	}
	if n, _ := rdb.ZCard(ctx, keys.LegacyBlocked()).Result(); n != 2 {
		t.Errorf("legacy blocks = %d, want the new one written there too", n)
	}
}

// TestCheckStateReadsAuditStripes: the readiness check of the store's state reads the mark of
// every audit stripe that issuance checks (RedisOptions.AuditStripes), not only those its
// witness saw: a stripe's tag back from another generation (on a Cluster, a master restored
// alone) makes a replica configured with it not ready before its first certificate is refused.
// A replica with fewer stripes does not read it (the control: the mark is what fails).
func TestCheckStateReadsAuditStripes(t *testing.T) {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: testenv.StartRedis(t).Addr})
	defer rdb.Close()
	if err := NewRedis(rdb, RedisOptions{AuditStripes: 3}).CheckState(ctx); err != nil {
		t.Fatalf("a new store: %v", err)
	}
	keys := Keys{}
	rdb.HSet(ctx, keys.Mark(TagAuditStripe(2)), "id", "0123456789abcdef", "epoch", 0, "n", 7)
	if err := NewRedis(rdb, RedisOptions{AuditStripes: 3}).CheckState(ctx); !errors.Is(err, ErrStateLost) || !strings.Contains(err.Error(), "{audit:2}") {
		t.Errorf("stripe 2's mark of another generation: %v; want ErrStateLost naming {audit:2}", err)
	}
	if err := NewRedis(rdb, RedisOptions{AuditStripes: 2}).CheckState(ctx); err != nil {
		t.Errorf("a replica with 2 stripes: %v; want ready", err)
	}
}
