package store_test

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
)

// TestRequestCertsInShards: a certificate issued under an access request is kept in its
// identity's inventory shard, as every other certificate (before stop 17 it stayed in shard 0,
// beside the request, a hot slot on Cluster), on a redis-server.
func TestRequestCertsInShards(t *testing.T) {
	srv := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	requestCertsInShards(t, rdb)
}

// TestRequestCertsInShardsOnCluster is TestRequestCertsInShards on a Redis Cluster of three
// masters: each step keeps to one slot (CROSSSLOT would fail it), and the certificates of
// requests land on more than one master.
func TestRequestCertsInShardsOnCluster(t *testing.T) {
	c := testenv.StartRedisCluster(t, 3)
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs})
	t.Cleanup(func() { cc.Close() })
	masters := requestCertsInShards(t, cc)
	if len(masters) < 2 {
		t.Errorf("the certificates of requests were all kept on one master: %v", masters)
	}
}

// requestCertsInShards drives a store of three inventory shards: for identities of every shard,
// a certificate recorded under an approved request is in its identity's shard (record,
// identity index, live index) and nowhere else, its serial in the request, and every reader
// finds it (Get, which revoking a request uses; Live; LivePage; LivePageOf; AllLive), also
// through a replica configured with one shard. The attacks: a blocked identity's certificate
// under its approved request, and one under a request cancelled meanwhile (check refuses after
// the record was written) leave no record in any shard and the request as it was. It answers
// the masters (Cluster) or servers the certificates' records were on.
func requestCertsInShards(t *testing.T, rdb redis.UniversalClient) map[string]bool {
	ctx := context.Background()
	keys := store.Keys{}
	now := time.Now().UTC().Truncate(time.Second)
	exp := now.Add(time.Hour)
	three := store.NewRedis(rdb, store.RedisOptions{InventoryShards: 3})
	one := store.NewRedis(rdb, store.RedisOptions{})
	request := func(i int, who ca.Identity) ca.AccessRequest {
		r := ca.AccessRequest{ID: fmt.Sprintf("req_bbbbbbbbbbbbb%03d", i), Requester: who, Principals: []string{"root"},
			TTLSeconds: 3600, Reason: "OPS-2", CreatedAt: now, PendingUntil: now.Add(time.Hour), ApprovalsRequired: 1,
			Status: ca.RequestApproved, DecidedAt: now, NotAfter: exp}
		if err := three.CreateRequest(ctx, r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	usable := func(r ca.AccessRequest) error {
		if r.StateAt(time.Now()) != ca.RequestApproved {
			return ca.Denied("access request " + r.ID + " is " + string(r.StateAt(time.Now())))
		}
		return nil
	}
	cert := func(serial uint64, r ca.AccessRequest) ca.Certificate {
		return ca.Certificate{Serial: serial, KeyID: r.Requester.Name() + "#" + strconv.FormatUint(serial, 10), Kind: ca.UserCert,
			Identity: r.Requester.Name(), Principals: []string{"root"}, ValidAfter: now, ValidBefore: exp,
			AccessRequest: r.ID, Aliases: []string{"group:ops"}}
	}
	// Nothing of a certificate in any shard.
	nowhere := func(what string, c ca.Certificate) {
		t.Helper()
		for s := range 3 {
			n, _ := rdb.Exists(ctx, keys.ShardCert(s, c.Serial), keys.ShardIdentity(s, c.Identity)).Result()
			_, err := rdb.ZScore(ctx, keys.ShardLiveCerts(s), strconv.FormatUint(c.Serial, 10)).Result()
			if n != 0 || err != redis.Nil {
				t.Errorf("%s: shard %d keeps %d of its keys, live index: %v", what, s, n, err)
			}
		}
	}

	byShard := map[int]int{}
	masters := map[string]bool{}
	var certs []ca.Certificate
	for i := 0; len(certs) < 9 && i < 100; i++ {
		who := ca.Identity{Issuer: "https://idp.example", Subject: fmt.Sprintf("u%d", i)}
		shard := store.ShardOf(three, who.Name())
		if byShard[shard] == 3 {
			continue
		}
		byShard[shard]++
		r := request(i, who)
		c := cert(uint64(100+i), r)
		if err := three.RecordUnderRequest(ctx, c, r.ID, usable); err != nil {
			t.Fatalf("record under %s: %v", r.ID, err)
		}
		certs = append(certs, c)
		member := strconv.FormatUint(c.Serial, 10)
		for s := range 3 {
			n, _ := rdb.Exists(ctx, keys.ShardCert(s, c.Serial)).Result()
			_, idErr := rdb.ZScore(ctx, keys.ShardIdentity(s, c.Identity), member).Result()
			_, liveErr := rdb.ZScore(ctx, keys.ShardLiveCerts(s), member).Result()
			switch in := n == 1 || idErr == nil || liveErr == nil; {
			case s == shard && (n != 1 || idErr != nil || liveErr != nil):
				t.Errorf("serial %d of %s is not (wholly) in its identity's shard %d: record %d, identity index %v, live index %v",
					c.Serial, c.Identity, shard, n, idErr, liveErr)
			case s != shard && in:
				t.Errorf("serial %d of %s (shard %d) is also in shard %d", c.Serial, c.Identity, shard, s)
			}
		}
		if cc, ok := rdb.(*redis.ClusterClient); ok {
			m, err := cc.MasterForKey(ctx, keys.ShardCert(shard, c.Serial))
			if err != nil {
				t.Fatal(err)
			}
			masters[m.Options().Addr] = true
		}
		got, ok, err := three.GetRequest(ctx, r.ID)
		if err != nil || !ok || !slices.Equal(got.Serials, []uint64{c.Serial}) {
			t.Errorf("request %s after the record: %v %v %v", r.ID, got.Serials, ok, err)
		}
	}
	if len(byShard) != 3 {
		t.Fatalf("identities tried in shards %v only", byShard)
	}
	for name, s := range map[string]*store.Redis{"three shards": three, "one shard": one} {
		all, err := s.AllLive(ctx, time.Now())
		if err != nil || len(all) != len(certs) {
			t.Errorf("%s: AllLive = %d, %v; want %d", name, len(all), err, len(certs))
		}
		page, _, err := s.LivePage(ctx, time.Now(), ca.CertCursor{}, 0)
		if err != nil || len(page) != len(certs) {
			t.Errorf("%s: LivePage = %d, %v; want %d", name, len(page), err, len(certs))
		}
		for _, c := range certs {
			if got, ok, err := s.Get(ctx, c.Serial); err != nil || !ok || got.AccessRequest != c.AccessRequest {
				t.Errorf("%s: Get(%d) = %+v %t %v", name, c.Serial, got, ok, err)
			}
			if live, err := s.Live(ctx, c.Identity, time.Now()); err != nil || len(live) != 1 {
				t.Errorf("%s: Live(%s) = %d, %v", name, c.Identity, len(live), err)
			}
			if live, _, err := s.LivePageOf(ctx, c.Identity, time.Now(), ca.CertCursor{}, 10); err != nil || len(live) != 1 {
				t.Errorf("%s: LivePageOf(%s) = %d, %v", name, c.Identity, len(live), err)
			}
		}
	}

	// A blocked identity under its approved request: refused by the record's script.
	for i := 200; i < 203; i++ {
		who := ca.Identity{Issuer: "https://idp.example", Subject: fmt.Sprintf("blocked%d", i)}
		r := request(i, who)
		if err := one.BlockIdentity(ctx, who.Name(), exp); err != nil {
			t.Fatal(err)
		}
		c := cert(uint64(i), r)
		if err := three.RecordUnderRequest(ctx, c, r.ID, usable); ca.KindOf(err) != ca.KindDenied {
			t.Fatalf("blocked %s recorded under its request: %v", who.Name(), err)
		}
		nowhere("blocked", c)
		if got, _, _ := three.GetRequest(ctx, r.ID); len(got.Serials) != 0 {
			t.Errorf("the blocked identity's request lists %v", got.Serials)
		}
	}
	// A request cancelled meanwhile: check refuses after the record was written, which is
	// taken back.
	for i := 300; i < 306; i++ {
		r := request(i, ca.Identity{Issuer: "https://idp.example", Subject: fmt.Sprintf("late%d", i)})
		if _, err := three.UpdateRequest(ctx, r.ID, func(r *ca.AccessRequest) error {
			r.Status, r.DecidedAt = ca.RequestCancelled, time.Now()
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		c := cert(uint64(i), r)
		if err := three.RecordUnderRequest(ctx, c, r.ID, usable); ca.KindOf(err) != ca.KindDenied {
			t.Fatalf("recorded under a cancelled request: %v", err)
		}
		nowhere("under a cancelled request", c)
		if got, _, _ := three.GetRequest(ctx, r.ID); len(got.Serials) != 0 {
			t.Errorf("the cancelled request lists %v", got.Serials)
		}
	}
	// The race that revoking a request runs: a certificate recorded while the request is
	// cancelled is either among the serials the cancel answers (which ca revokes) or refused
	// and taken back, never handed out unrevoked.
	for i := 500; i < 540; i++ {
		r := request(i, ca.Identity{Issuer: "https://idp.example", Subject: fmt.Sprintf("race%d", i)})
		c := cert(uint64(i), r)
		recorded := make(chan error, 1)
		go func() { recorded <- three.RecordUnderRequest(ctx, c, r.ID, usable) }()
		ended, err := three.UpdateRequest(ctx, r.ID, func(r *ca.AccessRequest) error {
			r.Status, r.DecidedAt = ca.RequestRevoked, time.Now()
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		switch err := <-recorded; {
		case err == nil && !slices.Contains(ended.Serials, c.Serial):
			t.Fatalf("serial %d recorded under %s but not among the serials its revocation read %v", c.Serial, r.ID, ended.Serials)
		case err != nil && ca.KindOf(err) != ca.KindDenied:
			t.Fatalf("record under %s: %v", r.ID, err)
		case err != nil:
			nowhere("refused by a revocation meanwhile", c)
		}
	}
	// An unknown request: nothing recorded either.
	c := cert(400, ca.AccessRequest{ID: "req_nonenonenonenone", Requester: ca.Identity{Issuer: "https://idp.example", Subject: "x"}})
	if err := three.RecordUnderRequest(ctx, c, c.AccessRequest, usable); ca.KindOf(err) != ca.KindNotFound {
		t.Errorf("recorded under an unknown request: %v", err)
	}
	nowhere("under an unknown request", c)
	// The requests listed a page at a time (the order's check and the page in one pipeline,
	// one slot): each once.
	all, err := three.ListRequests(ctx)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	var after ca.RequestCursor
	for pages := 0; ; pages++ {
		page, next, err := three.RequestsPage(ctx, after, 7)
		if err != nil || pages > 20 {
			t.Fatalf("requests page %d: %v", pages, err)
		}
		for _, r := range page {
			seen[r.ID]++
		}
		if next.IsZero() {
			break
		}
		after = next
	}
	for _, r := range all {
		if seen[r.ID] != 1 {
			t.Errorf("request %s listed %d times", r.ID, seen[r.ID])
		}
	}
	if len(seen) != len(all) {
		t.Errorf("%d requests listed, %d kept", len(seen), len(all))
	}
	if err := three.CheckState(ctx); err != nil {
		t.Errorf("state: %v", err)
	}
	return masters
}
