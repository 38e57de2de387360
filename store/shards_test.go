package store_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
)

// shardedInventory drives a store of three inventory shards on rdb (a redis-server or a
// Cluster) against everything that must hold with shards: records of many identities land in
// more than one shard and every reader (Get, Live, AllLive, ResolveAlias) sees each of them,
// also through a replica configured with one shard (lowering the number loses nothing); the
// store's layout is raised to 3 by the first record beyond shard 0; a block refuses a record in
// every shard, also a block written by a one-shard replica before any shard was used (copied
// into the new shards) and one it writes after (it reads the count); serials are reserved in
// their shard; the marks of every shard are checked by CheckState and Refused.
func shardedInventory(t *testing.T, rdb redis.UniversalClient) {
	ctx := context.Background()
	keys := store.Keys{}
	exp := time.Now().Add(time.Hour)
	one := store.NewRedis(rdb, store.RedisOptions{})
	// A block written while the store has one shard only: the sharded replica must copy it.
	if err := one.BlockIdentity(ctx, "https://idp|early", exp); err != nil {
		t.Fatal(err)
	}
	if v, _ := rdb.Get(ctx, keys.StoreLayout()).Result(); v != "2" {
		t.Fatalf("a store of one shard is at layout %q, want 2", v)
	}
	three := store.NewRedis(rdb, store.RedisOptions{InventoryShards: 3})
	cert := func(serial uint64, id string) ca.Certificate {
		return ca.Certificate{Serial: serial, KeyID: fmt.Sprintf("%s#%d", id, serial), Kind: ca.UserCert,
			Identity: id, Aliases: []string{"email:" + id[len("https://idp|"):] + "@example.com", "group:all"}, ValidBefore: exp}
	}
	// The rolling upgrade (layout.go): while the store is at layout 2 a replica of layout 2
	// may still run, reading shard 0 alone (and never the layout again): the replica of three
	// shards records in shard 0 and leaves the layout and the count as they are.
	var before []string
	for i := range 8 {
		id := fmt.Sprintf("https://idp|before%d", i)
		if store.ShardOf(three, id) != 0 {
			before = append(before, id)
		}
		c := ca.Certificate{Serial: uint64(50 + i), Identity: id, ValidBefore: exp}
		if err := three.Record(ctx, c); err != nil {
			t.Fatal(err)
		}
		if n, _ := rdb.Exists(ctx, keys.Cert(c.Serial)).Result(); n != 1 {
			t.Errorf("before the migration %s (shard %d) was not recorded where a replica of layout 2 reads", id, store.ShardOf(three, id))
		}
		if n, _ := rdb.Exists(ctx, keys.Identity(id)).Result(); n != 1 {
			t.Errorf("before the migration %s is not indexed where a replica of layout 2 reads", id)
		}
	}
	if len(before) == 0 {
		t.Fatal("no identity of shard 1 or 2 was tried before the migration")
	}
	if v, _ := rdb.Get(ctx, keys.StoreLayout()).Result(); v != "2" {
		t.Errorf("the store's layout is %q before sshca store migrate, want 2", v)
	}
	if n, _ := rdb.Exists(ctx, keys.InventoryShards()).Result(); n != 0 {
		t.Error("the count of shards was raised before sshca store migrate")
	}
	// sshca store migrate, once no replica of layout 2 runs; the replica of three shards
	// learns it at its next admission.
	if m, err := store.NewRedis(rdb, store.RedisOptions{}).Migrate(ctx); err != nil || m != (store.Migration{From: 2, To: store.LayoutVersion}) {
		t.Fatalf("migrate = %+v, %v; want 2 → %d", m, err, store.LayoutVersion)
	}
	if _, err := three.Admit(ctx, ca.AdmissionRequest{CAKey: testenv.PublicKey(t), Identities: []string{"https://idp|x"}, Key: testenv.PublicKey(t)}); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := range 12 {
		id := fmt.Sprintf("https://idp|user%d", i)
		ids = append(ids, id)
		if err := three.Record(ctx, cert(uint64(100+i), id)); err != nil {
			t.Fatalf("record %s: %v", id, err)
		}
	}
	if v, _ := rdb.Get(ctx, keys.StoreLayout()).Result(); v != "3" {
		t.Errorf("the store's layout is %q after records in three shards, want 3", v)
	}
	if v, _ := rdb.Get(ctx, keys.InventoryShards()).Result(); v != "3" {
		t.Errorf("the shard count is %q, want 3", v)
	}
	used := map[int]int{}
	for i := range 12 {
		for s := range 3 {
			if n, _ := rdb.Exists(ctx, keys.ShardCert(s, uint64(100+i))).Result(); n == 1 {
				used[s]++
			}
		}
	}
	if len(used) < 2 {
		t.Fatalf("12 identities' records all in one shard: %v", used)
	}

	for name, r := range map[string]*store.Redis{"three shards": three, "one shard": one} {
		all, err := r.AllLive(ctx, time.Now())
		if err != nil || len(all) != 12+8 {
			t.Errorf("%s: AllLive = %d records, %v; want 20", name, len(all), err)
		}
		for i, id := range ids {
			if c, ok, err := r.Get(ctx, uint64(100+i)); err != nil || !ok || c.Identity != id {
				t.Errorf("%s: Get(%d) = %+v %t %v", name, 100+i, c, ok, err)
			}
			if live, err := r.Live(ctx, id, time.Now()); err != nil || len(live) != 1 {
				t.Errorf("%s: Live(%s) = %d, %v", name, id, len(live), err)
			}
		}
		if got, err := r.ResolveAlias(ctx, "group:all", time.Now()); err != nil || !slices.Equal(got, slices.Sorted(slices.Values(ids))) {
			t.Errorf("%s: ResolveAlias(group:all) = %v, %v", name, got, err)
		}
		if _, ok, err := r.Get(ctx, 99999); err != nil || ok {
			t.Errorf("%s: Get of an unknown serial: %t %v", name, ok, err)
		}
	}

	// Blocks: the early one was copied; one written now by the one-shard replica reads the
	// count and reaches every shard; one written by the sharded replica too.
	if err := one.BlockIdentity(ctx, ids[0], exp); err != nil {
		t.Fatal(err)
	}
	if err := three.BlockIdentity(ctx, "email:user1@example.com", exp); err != nil {
		t.Fatal(err)
	}
	for s := range 3 {
		for _, name := range []string{"https://idp|early", ids[0], "email:user1@example.com"} {
			if _, err := rdb.ZScore(ctx, keys.ShardBlocked(s), name).Result(); err != nil {
				t.Errorf("the block of %s is not in shard %d: %v", name, s, err)
			}
		}
	}
	// The attack: an identity of each shard, blocked, recorded again through either replica.
	blockedInShard := map[int]bool{}
	for i := range 50 {
		id := fmt.Sprintf("https://idp|blocked%d", i)
		if err := one.BlockIdentity(ctx, id, exp); err != nil {
			t.Fatal(err)
		}
		for _, r := range []*store.Redis{three, one} {
			if err := r.Record(ctx, cert(uint64(1000+i), id)); ca.KindOf(err) != ca.KindDenied {
				t.Fatalf("a blocked identity %s was recorded: %v", id, err)
			}
		}
		for s := range 3 {
			if n, _ := rdb.Exists(ctx, keys.ShardIdentity(s, id)).Result(); n == 0 {
				continue
			}
			t.Fatalf("a refused record left an index in shard %d", s)
		}
		blockedInShard[store.ShardOf(three, id)] = true
	}
	for _, id := range []string{"https://idp|early", "https://idp|user1"} {
		if err := three.Record(ctx, cert(2000, id)); ca.KindOf(err) != ca.KindDenied {
			t.Errorf("%s recorded despite its block: %v", id, err)
		}
	}
	if len(blockedInShard) < 2 {
		t.Errorf("the blocked identities were tried in shards %v only", blockedInShard)
	}

	// Serials: reserved once whichever replica of three shards asks, in the serial's shard.
	for serial := uint64(7); serial < 10; serial++ {
		if ok, err := three.ReserveSerial(ctx, serial, exp); err != nil || !ok {
			t.Fatalf("reserve %d: %t %v", serial, ok, err)
		}
		if ok, err := store.NewRedis(rdb, store.RedisOptions{InventoryShards: 3}).ReserveSerial(ctx, serial, exp); err != nil || ok {
			t.Fatalf("serial %d reserved twice: %t %v", serial, ok, err)
		}
		if n, _ := rdb.Exists(ctx, keys.ShardSerial(int(serial%3), serial)).Result(); n != 1 {
			t.Errorf("serial %d not in its shard %d", serial, serial%3)
		}
	}
	adm, err := three.Admit(ctx, ca.AdmissionRequest{CAKey: testenv.PublicKey(t), Identities: []string{ids[2]}, Key: testenv.PublicKey(t),
		Serial: 11, SerialUntil: exp})
	if err != nil || adm.Refusal != "" || !adm.SerialReserved {
		t.Fatalf("admit: %+v %v", adm, err)
	}
	if err := three.CheckState(ctx); err != nil {
		t.Fatalf("state: %v", err)
	}
	// One shard's mark rolled back alone (its master restored from an older copy): found, by
	// the state check and by the admission, which refuses before anything is signed.
	lost := 0
	for s := range used {
		lost = max(lost, s) // a shard beyond 0 that holds records, so its mark was seen
	}
	if err := rdb.Del(ctx, keys.Mark(store.TagInventoryShard(lost))).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := three.Admit(ctx, ca.AdmissionRequest{CAKey: testenv.PublicKey(t), Identities: []string{ids[2]}, Key: testenv.PublicKey(t)}); ca.KindOf(err) != ca.KindUnavailable {
		t.Errorf("admission with shard %d's mark gone: %v, want unavailable", lost, err)
	}
}

// TestInventoryShards runs shardedInventory on a redis-server.
func TestInventoryShards(t *testing.T) {
	srv := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	shardedInventory(t, rdb)
	shardedTokens(t, rdb)
}

// TestInventoryShardsOnCluster runs shardedInventory on a Redis Cluster of three masters: every
// script and transaction keeps to one slot (CROSSSLOT would fail it), and the shards' tags land
// on more than one master.
func TestInventoryShardsOnCluster(t *testing.T) {
	c := testenv.StartRedisCluster(t, 3)
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs})
	t.Cleanup(func() { cc.Close() })
	ctx := context.Background()
	masters := map[string]bool{}
	for i := range 3 {
		m, err := cc.MasterForKey(ctx, store.Keys{}.Mark(store.TagInventoryShard(i)))
		if err != nil {
			t.Fatal(err)
		}
		masters[m.Options().Addr] = true
	}
	if len(masters) < 2 {
		t.Errorf("the three shards' tags all hash to one master: %v", masters)
	}
	shardedInventory(t, cc)
	shardedTokens(t, cc)
}

// TestShardRaiseRacesBlocks: blocks written by a one-shard replica while a replica of four
// shards makes its first record beyond shard 0 (raising the count and copying the blocks it
// found) are all honoured in every shard: each block either was in shard 0 when the count was
// raised (and is copied) or read the raised count (and was written into every shard). Many
// rounds on a fresh store each, the blocks and the raise started together.
func TestShardRaiseRacesBlocks(t *testing.T) {
	srv := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: 32})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	exp := time.Now().Add(time.Hour)
	const blocks = 24
	for round := range 20 {
		if err := rdb.FlushAll(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		witness := &store.Witness{} // one process's view per round: the store is new each time
		one := store.NewRedis(rdb, store.RedisOptions{Witness: witness})
		four := store.NewRedis(rdb, store.RedisOptions{InventoryShards: 4, Witness: witness})
		if err := one.Record(ctx, ca.Certificate{Serial: 1, Identity: "https://idp|seed", ValidBefore: exp}); err != nil {
			t.Fatal(err)
		}
		if _, err := one.Migrate(ctx); err != nil { // sshca store migrate: the store goes to layout 3
			t.Fatal(err)
		}
		// An identity outside shard 0, so that its record raises the count.
		raiser := ""
		for i := 0; raiser == ""; i++ {
			if id := fmt.Sprintf("https://idp|raiser%d", i); store.ShardOf(four, id) != 0 {
				raiser = id
			}
		}
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range blocks {
			wg.Go(func() {
				<-start
				if err := one.BlockIdentity(ctx, fmt.Sprintf("https://idp|r%d-b%d", round, i), exp); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Go(func() {
			<-start
			if err := four.Record(ctx, ca.Certificate{Serial: 2, Identity: raiser, ValidBefore: exp}); err != nil {
				t.Error(err)
			}
		})
		close(start)
		wg.Wait()
		for i := range blocks {
			id := fmt.Sprintf("https://idp|r%d-b%d", round, i)
			for s := range 4 {
				if _, err := rdb.ZScore(ctx, store.Keys{}.ShardBlocked(s), id).Result(); err != nil {
					t.Fatalf("round %d: the block of %s is missing from shard %d: %v", round, id, s, err)
				}
			}
			if err := four.Record(ctx, ca.Certificate{Serial: uint64(10 + i), Identity: id, ValidBefore: exp}); ca.KindOf(err) != ca.KindDenied {
				t.Fatalf("round %d: %s recorded after its block: %v", round, id, err)
			}
		}
	}
}

// TestRebuildRestoresShards: a store of three inventory shards loses shard 0 (with the count of
// shards) and another shard that holds records, keys, marks and all, as a Cluster master that
// came back empty does. The process that wrote them fails closed. The audit trail still holds
// the records of shard 0's identities (the others' have expired): a rebuild with the
// configured shards restores them into shard 0, and renews the mark of every shard, also of the
// lost one that no restored certificate reaches and whose count is gone (SCAN finds no mark of
// it), so the process that found the loss serves again and reads every certificate.
func TestRebuildRestoresShards(t *testing.T) {
	srv := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Second)
	clock := func() time.Time { return now }
	live := store.NewRedis(rdb, store.RedisOptions{InventoryShards: 3, Now: clock})
	userCA, hostCA := testenv.PublicKey(t), testenv.PublicKey(t)
	restore := &store.Restore{UserCA: userCA, HostCA: hostCA, IdentityBlock: time.Hour}
	lost := 0 // the highest shard beyond 0 that holds records
	restored := 0
	for i := range 12 {
		c := ca.Certificate{Serial: uint64(100 + i), KeyID: fmt.Sprintf("u%d#%d", i, 100+i), Kind: ca.UserCert,
			Identity: fmt.Sprintf("https://idp|u%d", i), Principals: []string{"p"}, ValidBefore: now.Add(time.Hour)}
		if err := live.Record(ctx, c); err != nil {
			t.Fatal(err)
		}
		lost = max(lost, store.ShardOf(live, c.Identity))
		if store.ShardOf(live, c.Identity) != 0 {
			continue
		}
		restored++
		restore.Add(ca.AuditRecord{Time: now.Add(-time.Minute), Action: ca.ActionUser, Outcome: "issued", Identity: c.Identity,
			Serial: c.Serial, KeyID: c.KeyID, ValidBefore: c.ValidBefore, Principals: c.Principals, CAFingerprint: ssh.FingerprintSHA256(userCA)})
	}
	if lost == 0 {
		t.Fatal("no identity outside shard 0")
	}
	if err := live.CheckState(ctx); err != nil {
		t.Fatal(err)
	}
	for _, tag := range []string{store.TagInventoryShard(0), store.TagInventoryShard(lost)} {
		ks, err := rdb.Keys(ctx, "sshca:"+tag+":*").Result()
		if err != nil || len(ks) == 0 {
			t.Fatalf("keys of %s: %v %v", tag, ks, err)
		}
		if err := rdb.Del(ctx, ks...).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := live.CheckState(ctx); !errors.Is(err, store.ErrStateLost) {
		t.Fatalf("two shards lost: %v, want ErrStateLost", err)
	}

	rebuilder := store.NewRedis(rdb, store.RedisOptions{InventoryShards: 3, Now: clock})
	if _, err := restore.Apply(ctx, rebuilder, now); err != nil {
		t.Fatalf("restore: %v", err)
	}
	g, err := rebuilder.NextGeneration(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := rebuilder.SwitchGeneration(ctx, g, userCA, hostCA); err != nil {
		t.Fatal(err)
	}
	if err := live.CheckState(ctx); err != nil {
		t.Fatalf("after the rebuild: %v", err)
	}
	all, err := live.AllLive(ctx, now)
	survived := 0 // in the third shard, neither 0 nor the lost one
	for i := range 12 {
		if s := store.ShardOf(live, fmt.Sprintf("https://idp|u%d", i)); s != 0 && s != lost {
			survived++
		}
	}
	if err != nil || len(all) != restored+survived {
		t.Fatalf("after the rebuild %d live certificates, %v; want the %d restored and the %d kept", len(all), err, restored, survived)
	}
	for _, c := range all {
		want := store.ShardOf(live, c.Identity)
		if n, _ := rdb.Exists(ctx, store.Keys{}.ShardCert(want, c.Serial)).Result(); n != 1 {
			t.Errorf("serial %d restored outside its identity's shard %d", c.Serial, want)
		}
	}
}

// shardedTokens drives the token ledger of a store of three shards on rdb, under a prefix of
// its own: spends spread their marks over more than one shard's tag ({tokens:i}); a token is
// spent once whichever replica (three shards or one) sees it again, through UseToken or Admit;
// a rebuild's refusal, kept once in {tokens}, refuses a token of every shard; and a token
// shard's mark gone alone (its master back empty) fails admission closed.
func shardedTokens(t *testing.T, rdb redis.UniversalClient) {
	ctx := context.Background()
	keys := store.Keys{Prefix: "tok"}
	exp := time.Now().Add(10 * time.Minute)
	three := store.NewRedis(rdb, store.RedisOptions{Prefix: "tok", InventoryShards: 3})
	one := store.NewRedis(rdb, store.RedisOptions{Prefix: "tok"})
	caKey, key := testenv.PublicKey(t), testenv.PublicKey(t)
	for i := range 12 {
		id := fmt.Sprintf("https://idp|jti-%d", i)
		if i%2 == 0 {
			if ok, err := three.UseToken(ctx, id, time.Now(), exp); err != nil || !ok {
				t.Fatalf("spend %s: %t %v", id, ok, err)
			}
		} else {
			adm, err := three.Admit(ctx, ca.AdmissionRequest{CAKey: caKey, Identities: []string{"https://idp|a"}, Key: key,
				Token: ca.TokenUse{ID: id, SingleUse: true, IssuedAt: time.Now(), Expiry: exp}})
			if err != nil || !adm.Fresh {
				t.Fatalf("admit %s: %+v %v", id, adm, err)
			}
		}
		for _, r := range []*store.Redis{three, one} {
			if ok, err := r.UseToken(ctx, id, time.Now(), exp); err != nil || ok {
				t.Fatalf("%s spent twice: %t %v", id, ok, err)
			}
		}
	}
	marked := 0
	lost := 0
	for i := range 3 {
		if n, _ := rdb.Exists(ctx, keys.Mark(store.TagTokensShard(i))).Result(); n == 1 {
			marked++
			lost = i
		}
	}
	if marked < 2 {
		t.Fatalf("12 spends marked %d token shard(s)", marked)
	}
	// The rebuild's refusal: tokens issued before since are refused in every shard.
	since := time.Now()
	if err := one.RefuseTokens(ctx, since, since.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	shards := map[int]bool{}
	for i := range 12 {
		id := fmt.Sprintf("https://idp|old-%d", i)
		shards[store.TokenShardOf(three, id)] = true
		if ok, err := three.UseToken(ctx, id, since.Add(-time.Minute), exp); err != nil || ok {
			t.Fatalf("a token issued before the rebuild was taken (shard %d): %t %v", store.TokenShardOf(three, id), ok, err)
		}
		if ok, err := three.UseToken(ctx, fmt.Sprintf("https://idp|new-%d", i), since.Add(time.Second), exp); err != nil || !ok {
			t.Fatalf("a token issued after the rebuild was refused: %t %v", ok, err)
		}
	}
	if len(shards) < 2 {
		t.Errorf("the refused tokens fell in shards %v only", shards)
	}
	if err := three.CheckState(ctx); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Del(ctx, keys.Mark(store.TagTokensShard(lost))).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := three.Admit(ctx, ca.AdmissionRequest{CAKey: caKey, Identities: []string{"https://idp|a"}, Key: key}); ca.KindOf(err) != ca.KindUnavailable {
		t.Errorf("admission with token shard %d's mark gone: %v, want unavailable", lost, err)
	}
}

// TestRebuildKeepsShardsInUse: the master of shard 0 comes back empty, with the count of
// shards ever used, and `sshca store rebuild` runs with its default of one shard; the CA
// replica of three shards that recorded before keeps running. Then a replica of one shard (a
// rolling change of inventory.shards) must still read the certificates of the shards that
// survived, and its identity blocks must still reach the shards the replica of three records
// in: no certificate of a blocked identity may be recorded. The second case loses the highest
// shard too, so that nothing left in the store says it was ever used.
func TestRebuildKeepsShardsInUse(t *testing.T) {
	srv := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Second)
	clock := func() time.Time { return now }
	for _, alsoHighest := range []bool{false, true} {
		t.Run(fmt.Sprintf("highest shard lost %t", alsoHighest), func(t *testing.T) {
			if err := rdb.FlushAll(ctx).Err(); err != nil {
				t.Fatal(err)
			}
			three := store.NewRedis(rdb, store.RedisOptions{InventoryShards: 3, Now: clock})
			inShard := map[int][]string{}
			for i := 0; len(inShard[0]) == 0 || len(inShard[1]) < 2 || len(inShard[2]) < 2; i++ {
				id := fmt.Sprintf("https://idp|u%d", i)
				s := store.ShardOf(three, id)
				inShard[s] = append(inShard[s], id)
			}
			userCA, hostCA := testenv.PublicKey(t), testenv.PublicKey(t)
			restore := &store.Restore{UserCA: userCA, HostCA: hostCA, IdentityBlock: time.Hour}
			for s := range 3 {
				c := ca.Certificate{Serial: uint64(100 + s), KeyID: fmt.Sprintf("%s#%d", inShard[s][0], 100+s), Kind: ca.UserCert,
					Identity: inShard[s][0], Principals: []string{"p"}, ValidBefore: now.Add(time.Hour)}
				if err := three.Record(ctx, c); err != nil {
					t.Fatal(err)
				}
				restore.Add(ca.AuditRecord{Time: now.Add(-time.Minute), Action: ca.ActionUser, Outcome: "issued", Identity: c.Identity,
					Serial: c.Serial, KeyID: c.KeyID, ValidBefore: c.ValidBefore, Principals: c.Principals, CAFingerprint: ssh.FingerprintSHA256(userCA)})
			}
			lost := []string{store.TagInventoryShard(0)}
			if alsoHighest {
				lost = append(lost, store.TagInventoryShard(2))
			}
			for _, tag := range lost {
				ks, err := rdb.Keys(ctx, "sshca:"+tag+":*").Result()
				if err != nil || len(ks) == 0 {
					t.Fatalf("keys of %s: %v %v", tag, ks, err)
				}
				if err := rdb.Del(ctx, ks...).Err(); err != nil {
					t.Fatal(err)
				}
			}
			if err := three.CheckState(ctx); !errors.Is(err, store.ErrStateLost) {
				t.Fatalf("shard 0 lost: %v, want ErrStateLost", err)
			}
			rebuilder := store.NewRedis(rdb, store.RedisOptions{Now: clock}) // sshca store rebuild's default
			if _, err := restore.Apply(ctx, rebuilder, now); err != nil {
				t.Fatal(err)
			}
			g, err := rebuilder.NextGeneration(ctx, 0)
			if err != nil {
				t.Fatal(err)
			}
			if err := rebuilder.SwitchGeneration(ctx, g, userCA, hostCA); err != nil {
				t.Fatal(err)
			}
			if err := three.CheckState(ctx); err != nil {
				t.Fatalf("after the rebuild: %v", err)
			}
			// Every certificate once: the rebuild restored them all into shard 0, beside the
			// records that survived in their own shards.
			want := []uint64{100, 101, 102}
			for name, r := range map[string]*store.Redis{"one shard": store.NewRedis(rdb, store.RedisOptions{Now: clock}), "three shards": three} {
				all, err := r.AllLive(ctx, now)
				var got []uint64
				for _, c := range all {
					got = append(got, c.Serial)
				}
				if err != nil || !slices.Equal(got, want) {
					t.Errorf("%s: AllLive = %v after the rebuild, %v; want %v", name, got, err, want)
				}
				got = nil
				for cur := (ca.CertCursor{}); ; {
					page, next, err := r.LivePage(ctx, now, cur, 2)
					if err != nil {
						t.Fatal(err)
					}
					for _, c := range page {
						got = append(got, c.Serial)
					}
					if next.IsZero() {
						break
					}
					cur = next
				}
				if !slices.Equal(got, want) {
					t.Errorf("%s: LivePage lists %v after the rebuild; want %v", name, got, want)
				}
				for s := 1; s < 3; s++ {
					if live, err := r.Live(ctx, inShard[s][0], now); err != nil || len(live) != 1 {
						t.Errorf("%s: Live(%s) = %d certificates, %v; want 1", name, inShard[s][0], len(live), err)
					}
				}
			}
			one := store.NewRedis(rdb, store.RedisOptions{Now: clock})
			for s := 1; s < 3; s++ {
				victim := inShard[s][1]
				if err := one.BlockIdentity(ctx, victim, now.Add(time.Hour)); err != nil {
					t.Fatal(err)
				}
				if err := three.Record(ctx, ca.Certificate{Serial: uint64(200 + s), Identity: victim, ValidBefore: now.Add(time.Hour)}); ca.KindOf(err) != ca.KindDenied {
					t.Errorf("%s (shard %d) recorded after a replica of one shard blocked it: %v", victim, s, err)
				}
			}
		})
	}
}

// BenchmarkShards is Record and Admit (a single-use token spent, a serial reserved) on a real
// redis-server with the inventory in 1 and in 3 shards: what the shards cost one server (the
// admission reads two more marks per token and inventory shard beyond the first; a record is
// the same script in another tag). Identities and tokens vary, so records and spends spread
// over the shards.
func BenchmarkShards(b *testing.B) {
	r := testenv.StartRedis(b)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	ctx := context.Background()
	caKey, key := testenv.PublicKey(b), testenv.PublicKey(b)
	exp := time.Now().Add(time.Hour)
	for _, shards := range []int{1, 3} {
		rdb.FlushAll(ctx)
		s := store.NewRedis(rdb, store.RedisOptions{InventoryShards: shards})
		ids := make([]string, 64)
		for i := range ids {
			ids[i] = fmt.Sprintf("https://idp|user%d", i)
		}
		b.Run(fmt.Sprintf("Record/shards=%d", shards), func(b *testing.B) {
			c := ca.Certificate{Principals: []string{"alice"}, ValidBefore: exp}
			var n uint64
			for b.Loop() {
				n++
				c.Serial, c.Identity = n, ids[n%uint64(len(ids))]
				if err := s.Record(ctx, c); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("Admit/shards=%d", shards), func(b *testing.B) {
			var n uint64
			for b.Loop() {
				n++
				adm, err := s.Admit(ctx, ca.AdmissionRequest{CAKey: caKey, Identities: ids[:1], Key: key,
					Token:  ca.TokenUse{ID: fmt.Sprintf("iss|%d-%d", shards, n), SingleUse: true, IssuedAt: time.Now(), Expiry: exp},
					Serial: 1<<40 + n, SerialUntil: exp})
				if err != nil || !adm.Fresh || !adm.SerialReserved || adm.Refusal != "" {
					b.Fatal(adm, err)
				}
			}
		})
	}
}

// TestShardsOnLayout1: a store still at layout 1 (blocks of layout 1 in it, never migrated),
// where replicas of layout 1 may run: a replica of three shards admits (the token spent once)
// and keeps every certificate in shard 0, where those replicas read, checking the blocks of
// layout 1 before signing; after `sshca store migrate` the store is at layout 3 and the same
// replica keeps certificates in their identity's shard from its next admission on.
func TestShardsOnLayout1(t *testing.T) {
	srv := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	exp := time.Now().Add(time.Hour)
	keys := store.Keys{}
	if err := rdb.ZAdd(ctx, keys.LegacyBlocked(), redis.Z{Score: float64(exp.UnixMilli()), Member: "https://idp|old"}).Err(); err != nil {
		t.Fatal(err)
	}
	three := store.NewRedis(rdb, store.RedisOptions{InventoryShards: 3})
	id := ""
	for i := 0; id == ""; i++ {
		if c := fmt.Sprintf("https://idp|u%d", i); store.ShardOf(three, c) != 0 {
			id = c
		}
	}
	q := ca.AdmissionRequest{CAKey: testenv.PublicKey(t), Identities: []string{id}, Key: testenv.PublicKey(t),
		Token: ca.TokenUse{ID: "iss|jti-1", SingleUse: true, IssuedAt: time.Now(), Expiry: exp}}
	if adm, err := three.Admit(ctx, q); err != nil || !adm.Fresh || adm.Refusal != "" {
		t.Fatalf("admission with shards on a store of layout 1: %+v %v", adm, err)
	}
	if adm, err := three.Admit(ctx, ca.AdmissionRequest{CAKey: q.CAKey, Identities: []string{"https://idp|old"}, Key: q.Key}); err != nil || adm.Refusal == "" {
		t.Errorf("a block of layout 1 not refused before signing: %+v %v", adm, err)
	}
	if err := three.Record(ctx, ca.Certificate{Serial: 1, Identity: id, ValidBefore: exp}); err != nil {
		t.Fatal(err)
	}
	if n, _ := rdb.Exists(ctx, keys.Cert(1), keys.Identity(id)).Result(); n != 2 {
		t.Errorf("on a store of layout 1 %s (shard %d) was not recorded in shard 0", id, store.ShardOf(three, id))
	}
	if m, err := store.NewRedis(rdb, store.RedisOptions{}).Migrate(ctx); err != nil || m.To != store.LayoutVersion {
		t.Fatalf("migrate: %+v %v", m, err)
	}
	q.Token.ID = "iss|jti-2"
	if adm, err := three.Admit(ctx, q); err != nil || !adm.Fresh || adm.Refusal != "" {
		t.Fatalf("admission after the migration: %+v %v", adm, err)
	}
	if err := three.Record(ctx, ca.Certificate{Serial: 2, Identity: id, ValidBefore: exp}); err != nil {
		t.Fatal(err)
	}
	if n, _ := rdb.Exists(ctx, keys.ShardCert(store.ShardOf(three, id), 2)).Result(); n != 1 {
		t.Errorf("after the migration %s was not recorded in its shard %d", id, store.ShardOf(three, id))
	}
	if live, err := three.Live(ctx, id, time.Now()); err != nil || len(live) != 2 {
		t.Errorf("Live(%s) = %d certificates, %v; want both", id, len(live), err)
	}
}

// TestShardCountWaitsForReplicas: with RedisOptions.WaitReplicas, the first use of shards waits
// for the replicas to have the raised layout and count (a failover that lost them would let a
// replica of fewer shards write its blocks into fewer shards than this one records in): on a
// server without the replica it waits for, the admission of a replica of three shards is a
// 503 that says so, while issuance with one shard, which waits for nothing, goes on.
func TestShardCountWaitsForReplicas(t *testing.T) {
	srv := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	q := ca.AdmissionRequest{CAKey: testenv.PublicKey(t), Identities: []string{"https://idp|alice"}, Key: testenv.PublicKey(t)}
	o := store.RedisOptions{WaitReplicas: 1, WaitTimeout: 50 * time.Millisecond}
	if _, err := store.NewRedis(rdb, o).Admit(ctx, q); err != nil {
		t.Fatalf("one shard waits for replicas at admission: %v", err)
	}
	o.InventoryShards = 3
	_, err := store.NewRedis(rdb, o).Admit(ctx, q)
	if !errors.Is(err, store.ErrNotReplicated) || ca.KindOf(err) != ca.KindUnavailable {
		t.Fatalf("the shard count raised without its replica: %v, want ErrNotReplicated", err)
	}
}

// TestLoweredShardsWatchMarks: a replica configured with one shard reads the certificates of
// the shards another replica recorded in, so its readiness (CheckState) watches their marks
// too: once it has seen them, a shard rolled back alone fails it, not only the writer.
func TestLoweredShardsWatchMarks(t *testing.T) {
	srv := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	three := store.NewRedis(rdb, store.RedisOptions{InventoryShards: 3})
	one := store.NewRedis(rdb, store.RedisOptions{})
	high := 0
	for i := range 12 {
		id := fmt.Sprintf("https://idp|u%d", i)
		if err := three.Record(ctx, ca.Certificate{Serial: uint64(1 + i), Identity: id, ValidBefore: time.Now().Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		high = max(high, store.ShardOf(three, id))
	}
	if high == 0 {
		t.Fatal("no identity beyond shard 0")
	}
	if err := one.CheckState(ctx); err != nil {
		t.Fatalf("intact: %v", err)
	}
	if err := rdb.Del(ctx, store.Keys{}.Mark(store.TagInventoryShard(high))).Err(); err != nil {
		t.Fatal(err)
	}
	if err := one.CheckState(ctx); !errors.Is(err, store.ErrStateLost) {
		t.Fatalf("shard %d's mark gone: the replica of one shard says %v, want ErrStateLost", high, err)
	}
}

// TestShardCountDrift: two CA replicas of one store configured with 1 and 4 inventory shards
// (a drifted configuration, a half-done rollout) would reserve one serial in two keys, both
// successfully. The store records the number of the first that issues; the other refuses to
// reserve, to admit and to start (CheckShards), with a 503 that names inventory.shards and the
// store's number, and a replica of the store's number gets past. Two replicas starting together
// on a store without a number agree on one of theirs. `sshca store migrate --inventory-shards`
// (SetShards) changes it: then the replica of the old number is the one refused. A malformed
// number refuses too.
func TestShardCountDrift(t *testing.T) {
	srv := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: 16})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	exp := time.Now().Add(time.Hour)
	// Each replica its own process: its own witness.
	replica := func(prefix string, shards int) *store.Redis {
		return store.NewRedis(rdb, store.RedisOptions{Prefix: prefix, InventoryShards: shards, Witness: &store.Witness{}})
	}
	one, four := replica("", 1), replica("", 4)
	const serial = 4*1000 + 3 // in shard 3 of four, shard 0 of one: two keys
	refused := func(what string, err error, configured, stored int) {
		t.Helper()
		var sc *store.ShardCountError
		if !errors.As(err, &sc) || sc.Configured != configured || sc.Store != stored || ca.KindOf(err) != ca.KindUnavailable {
			t.Fatalf("%s by a replica of %d shards on a store of %d: %v; want a ShardCountError (503)", what, configured, stored, err)
		}
		for _, want := range []string{"inventory.shards", fmt.Sprintf("has %d shards", stored), "sshca store migrate --inventory-shards"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s: %q does not say %q", what, err, want)
			}
		}
	}
	if ok, err := one.ReserveSerial(ctx, serial, exp); err != nil || !ok {
		t.Fatalf("first reservation: %t %v", ok, err)
	}
	ok, err := four.ReserveSerial(ctx, serial, exp)
	if ok && err == nil {
		t.Fatalf("serial %d reserved twice: by a replica of one shard and by one of four", serial)
	}
	refused("a reservation", err, 4, 1)
	refused("the start check", four.CheckShards(ctx), 4, 1)
	admit := func(r *store.Redis, s uint64) (ca.Admitted, error) {
		return r.Admit(ctx, ca.AdmissionRequest{CAKey: testenv.PublicKey(t), Identities: []string{"https://idp|u"}, Key: testenv.PublicKey(t),
			Serial: s, SerialUntil: exp})
	}
	_, err = admit(four, serial+4)
	refused("an admission", err, 4, 1)
	_, err = four.Refused(ctx, testenv.PublicKey(t), []string{"https://idp|u"}, testenv.PublicKey(t))
	refused("a refusal check", err, 4, 1)
	// A replica of the store's number gets past, and sees the serial taken.
	if err := replica("", 1).CheckShards(ctx); err != nil {
		t.Fatalf("a replica of the store's number: %v", err)
	}
	if ok, err := replica("", 1).ReserveSerial(ctx, serial, exp); err != nil || ok {
		t.Fatalf("serial %d reserved twice by replicas of one shard: %t %v", serial, ok, err)
	}
	if adm, err := admit(one, serial+4); err != nil || !adm.SerialReserved {
		t.Fatalf("admission by a replica of the store's number: %+v %v", adm, err)
	}

	// sshca store migrate --inventory-shards 4: the replica of one shard is refused now.
	if prev, err := replica("", 0).SetShards(ctx, 4); err != nil || prev != 1 {
		t.Fatalf("set the number: %d %v; want it to replace 1", prev, err)
	}
	refused("an admission after the change", func() error { _, err := admit(one, serial+8); return err }(), 1, 4)
	if adm, err := admit(four, serial+8); err != nil || !adm.SerialReserved {
		t.Fatalf("admission by a replica of the new number: %+v %v", adm, err)
	}
	for _, n := range []int{0, -1, store.MaxInventoryShards + 1} {
		if _, err := four.SetShards(ctx, n); err == nil {
			t.Errorf("SetShards(%d) accepted", n)
		}
	}

	// Two replicas starting together on a store without a number: exactly one passes.
	for round := range 20 {
		prefix := fmt.Sprintf("race%d", round)
		a, b := replica(prefix, 1), replica(prefix, 4)
		var errA, errB error
		var wg sync.WaitGroup
		wg.Go(func() { errA = a.CheckShards(ctx) })
		wg.Go(func() { errB = b.CheckShards(ctx) })
		wg.Wait()
		if (errA == nil) == (errB == nil) {
			t.Fatalf("round %d: replicas of 1 and 4 shards starting together: %v, %v; want exactly one refused", round, errA, errB)
		}
	}
	// A number that is not one is refused, not taken as agreement.
	if err := rdb.Set(ctx, store.Keys{Prefix: "bad"}.ShardsAgreed(), "x", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := admit(replica("bad", 1), 5); err == nil || !strings.Contains(err.Error(), "malformed") {
		t.Errorf("admission on a malformed number of shards: %v", err)
	}
}
