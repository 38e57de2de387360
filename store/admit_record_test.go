package store_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
)

// admitRecordsInShards: Admit's record lands in the shard of its identity (three inventory
// shards, identities spread over them) and in the same round trip as the rest of the admission,
// also when the server forgot the scripts (SCRIPT FLUSH: the record is run again by its body,
// once); Unrecord withdraws each from its shard.
func admitRecordsInShards(t *testing.T, rdb redis.UniversalClient, flush func() error) {
	ctx := context.Background()
	now := time.Now()
	s := store.NewRedis(rdb, store.RedisOptions{InventoryShards: 3})
	caKey := testenv.PublicKey(t)
	shards := map[int]bool{}
	var recs []ca.Certificate
	for i := range 8 {
		id := fmt.Sprintf("https://idp|user%d", i)
		shards[store.ShardOf(s, id)] = true
		rec := ca.Certificate{Serial: uint64(100 + i), KeyID: fmt.Sprintf("%s#%d", id, 100+i), Kind: ca.UserCert, Identity: id,
			Principals: []string{"u"}, CAFingerprint: ssh.FingerprintSHA256(caKey), ValidBefore: now.Add(10 * time.Minute).Truncate(time.Second).UTC()}
		if i%3 == 0 {
			if err := flush(); err != nil {
				t.Fatal(err)
			}
		}
		got, err := s.Admit(ctx, ca.AdmissionRequest{CAKey: caKey, Identities: []string{id}, Key: testenv.PublicKey(t),
			Token:  ca.TokenUse{SingleUse: true, ID: fmt.Sprintf("iss|%d", i), IssuedAt: now, Expiry: now.Add(time.Minute)},
			Serial: rec.Serial, SerialUntil: now.Add(time.Hour), Record: &rec})
		if err != nil || !got.Recorded || !got.Fresh || !got.SerialReserved || got.Refusal != "" {
			t.Fatalf("admission of %s = %+v %v, want admitted and recorded", id, got, err)
		}
		if c, ok, err := s.Get(ctx, rec.Serial); err != nil || !ok || c.Identity != id {
			t.Fatalf("Get(%d) = %+v %v %v, want %s's record", rec.Serial, c, ok, err, id)
		}
		recs = append(recs, rec)
	}
	if len(shards) < 2 {
		t.Fatalf("the identities all fall in shard %v: the test shows nothing", shards)
	}
	if all, err := s.AllLive(ctx, now); err != nil || len(all) != len(recs) {
		t.Fatalf("%d live certificates (%v), want %d", len(all), err, len(recs))
	}
	for _, rec := range recs {
		if err := s.Unrecord(ctx, rec); err != nil {
			t.Fatal(err)
		}
	}
	if all, err := s.AllLive(ctx, now); err != nil || len(all) != 0 {
		t.Fatalf("%d live certificates after Unrecord (%v), want none", len(all), err)
	}
}

// TestAdmissionRecordsInShards runs admitRecordsInShards on a redis-server.
func TestAdmissionRecordsInShards(t *testing.T) {
	srv := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	admitRecordsInShards(t, rdb, func() error { return rdb.ScriptFlush(context.Background()).Err() })
}

// TestAdmissionRecordsOnCluster runs admitRecordsInShards on a Redis Cluster of three masters:
// the admission's pipeline touches the refusal's, the token's, the serial's and the record's
// slots, each sent to its master, and no script crosses slots.
func TestAdmissionRecordsOnCluster(t *testing.T) {
	c := testenv.StartRedisCluster(t, 3)
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs})
	t.Cleanup(func() { cc.Close() })
	admitRecordsInShards(t, cc, func() error {
		return cc.ForEachMaster(context.Background(), func(ctx context.Context, m *redis.Client) error { return m.ScriptFlush(ctx).Err() })
	})
}

// TestUnrecordAcrossLayoutRaise: a replica with inventory shards that admits while the store is
// still at layout 2 records in shard 0 (recordShard); when the store is raised to the current
// layout (sshca store migrate) before the withdrawal, Unrecord still finds the record there and
// withdraws it, instead of looking in the identity's shard alone and leaving, silently, a record
// of a certificate never signed.
func TestUnrecordAcrossLayoutRaise(t *testing.T) {
	ctx := context.Background()
	srv := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	now := time.Now()
	// A replica of one shard creates the store at layout 2.
	if err := store.NewRedis(rdb, store.RedisOptions{}).BlockIdentity(ctx, "https://idp|nobody", now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	s := store.NewRedis(rdb, store.RedisOptions{InventoryShards: 3})
	id := ""
	for i := 0; id == ""; i++ {
		if n := fmt.Sprintf("https://idp|user%d", i); store.ShardOf(s, n) != 0 {
			id = n
		}
	}
	caKey := testenv.PublicKey(t)
	rec := ca.Certificate{Serial: 4242, KeyID: id + "#4242", Kind: ca.UserCert, Identity: id, Principals: []string{"u"},
		CAFingerprint: ssh.FingerprintSHA256(caKey), ValidBefore: now.Add(10 * time.Minute).Truncate(time.Second).UTC()}
	got, err := s.Admit(ctx, ca.AdmissionRequest{CAKey: caKey, Identities: []string{id}, Key: testenv.PublicKey(t),
		Serial: rec.Serial, SerialUntil: now.Add(time.Hour), Record: &rec})
	if err != nil || !got.Recorded {
		t.Fatalf("admission = %+v %v, want recorded", got, err)
	}
	keys := store.Keys{}
	if n, err := rdb.Exists(ctx, keys.ShardCert(0, rec.Serial)).Result(); err != nil || n != 1 {
		t.Fatalf("the record is not in shard 0 at layout 2 (%d, %v): the test shows nothing", n, err)
	}
	if _, err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Unrecord(ctx, rec); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if n, err := rdb.Exists(ctx, keys.ShardCert(i, rec.Serial)).Result(); err != nil || n != 0 {
			t.Errorf("serial %d still recorded in shard %d after Unrecord (%v)", rec.Serial, i, err)
		}
	}
	if all, err := s.AllLive(ctx, now); err != nil || len(all) != 0 {
		t.Errorf("%d live certificates after Unrecord (%v), want none", len(all), err)
	}
}
