package store_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
)

// TestInventoryContract: the inventory (ca.CertStore) on every backend.
func TestInventoryContract(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newStore newStore) {
		testInventory(t, func(t *testing.T, c *clock) inventory { return newStore(t, c) })
	})
}

// inventory is what ca consumes (ca.CertStore), with the readiness check.
type inventory interface {
	ca.CertStore
	AllLive(ctx context.Context, now time.Time) ([]ca.Certificate, error)
	Check(ctx context.Context) error
}

func testInventory(t *testing.T, newStore func(*testing.T, *clock) inventory) {
	ctx := context.Background()
	// Real time, truncated: Redis expiries run on the server's clock.
	t0 := time.Now().UTC().Truncate(time.Second)
	cert := func(serial uint64, identity string, ttl time.Duration) ca.Certificate {
		return ca.Certificate{Serial: serial, KeyID: identity + "#x", Kind: ca.UserCert, Identity: identity,
			Principals: []string{"p"}, KeyFingerprint: "SHA256:k", CAFingerprint: "SHA256:ca",
			ValidAfter: t0.Add(-30 * time.Second), ValidBefore: t0.Add(ttl)}
	}

	t.Run("record and live", func(t *testing.T) {
		c := &clock{t: t0}
		s := newStore(t, c)
		a1, a2, b1 := cert(3, "alice", 10*time.Minute), cert(1, "alice", time.Hour), cert(2, "bob", time.Hour)
		for _, x := range []ca.Certificate{a1, a2, b1} {
			if err := s.Record(ctx, x); err != nil {
				t.Fatal(err)
			}
		}
		got, err := s.Live(ctx, "alice", t0)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]ca.Certificate{a2, a1}, got); diff != "" {
			t.Errorf("live alice (-want +got):\n%s", diff)
		}
		got, _ = s.Live(ctx, "alice", t0.Add(20*time.Minute))
		if diff := cmp.Diff([]ca.Certificate{a2}, got); diff != "" {
			t.Errorf("live alice after a1 expired (-want +got):\n%s", diff)
		}
		if got, _ := s.Live(ctx, "carol", t0); len(got) != 0 {
			t.Errorf("carol has %v", got)
		}
		g, ok, err := s.Get(ctx, 2)
		if err != nil || !ok || !cmp.Equal(g, b1) {
			t.Errorf("Get(2) = %v %v %v", g, ok, err)
		}
		if _, ok, _ := s.Get(ctx, 99); ok {
			t.Error("Get(99) found something")
		}
	})

	t.Run("every live certificate", func(t *testing.T) {
		c := &clock{t: t0}
		s := newStore(t, c)
		if got, err := s.AllLive(ctx, t0); err != nil || len(got) != 0 {
			t.Fatalf("empty store: %v %v", got, err)
		}
		a1, b1, c1 := cert(30, "alice", 10*time.Minute), cert(7, "bob", time.Hour), cert(12, "https://idp|carol", time.Hour)
		for _, x := range []ca.Certificate{a1, b1, c1} {
			if err := s.Record(ctx, x); err != nil {
				t.Fatal(err)
			}
		}
		got, err := s.AllLive(ctx, t0)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]ca.Certificate{b1, c1, a1}, got); diff != "" {
			t.Errorf("every live certificate, by serial (-want +got):\n%s", diff)
		}
		got, _ = s.AllLive(ctx, t0.Add(20*time.Minute))
		if diff := cmp.Diff([]ca.Certificate{b1, c1}, got); diff != "" {
			t.Errorf("after alice's expired (-want +got):\n%s", diff)
		}
		// A blocked identity's refused record is in no index.
		if err := s.(ca.RevocationStore).BlockIdentity(ctx, "dave", t0.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if err := s.Record(ctx, cert(40, "dave", time.Hour)); ca.KindOf(err) != ca.KindDenied {
			t.Fatalf("record of a blocked identity: %v", err)
		}
		if got, _ := s.AllLive(ctx, t0); len(got) != 3 {
			t.Errorf("after a refused record: %v, want the 3 recorded", got)
		}
	})

	t.Run("pages", func(t *testing.T) {
		c := &clock{t: t0}
		s := newStore(t, c)
		// Seven certificates share one ValidBefore (one second: the second they were signed in,
		// at a few thousand a second), their serials chosen so that text and number orders differ.
		var want []ca.Certificate
		for _, sn := range []uint64{30, 100, 9, 25, 10, 2, 11} {
			want = append(want, cert(sn, "alice", time.Hour))
		}
		want = append(want, cert(40, "bob", 30*time.Minute), cert(41, "bob", 30*time.Minute), cert(5, "carol", 2*time.Hour), cert(6, "carol", 3*time.Hour))
		for _, x := range want {
			if err := s.Record(ctx, x); err != nil {
				t.Fatal(err)
			}
		}
		slices.SortFunc(want, func(x, y ca.Certificate) int { return ca.CursorOf(x).Compare(ca.CursorOf(y)) })
		if all, next, err := s.LivePage(ctx, t0, ca.CertCursor{}, 0); err != nil || !next.IsZero() || !cmp.Equal(want, all) {
			t.Fatalf("limit 0: %v %v, want all %d in order and no next:\n%s", next, err, len(want), cmp.Diff(want, all))
		}
		if _, next, _ := s.LivePage(ctx, t0, ca.CertCursor{}, len(want)); !next.IsZero() {
			t.Errorf("a page that holds all: next %v, want none", next)
		}
		// Pages of 3, with a certificate recorded between pages after the position (listed once)
		// and one before it (not listed: it comes before the position).
		var got []ca.Certificate
		var after ca.CertCursor
		later, earlier := cert(50, "dave", 4*time.Hour), cert(51, "dave", time.Minute)
		for pages := 1; ; pages++ {
			page, next, err := s.LivePage(ctx, t0, after, 3)
			if err != nil {
				t.Fatal(err)
			}
			if len(page) > 3 {
				t.Fatalf("page %d holds %d", pages, len(page))
			}
			got = append(got, page...)
			if pages == 2 {
				for _, x := range []ca.Certificate{later, earlier} {
					if err := s.Record(ctx, x); err != nil {
						t.Fatal(err)
					}
				}
			}
			if next.IsZero() {
				break
			}
			if next != ca.CursorOf(page[len(page)-1]) {
				t.Fatalf("page %d: next %v, want its last certificate's position", pages, next)
			}
			after = next
			if pages > 10 {
				t.Fatal("no end")
			}
		}
		if diff := cmp.Diff(append(slices.Clone(want), later), got); diff != "" {
			t.Errorf("paged (-want +got):\n%s", diff)
		}

		// The cursor's certificate expires and is pruned (with everything of its second)
		// before the next page: the listing goes on after it, losing nothing.
		page, next, err := s.LivePage(ctx, t0, ca.CertCursor{}, 3)
		if err != nil || len(page) != 3 || page[0].Serial != 51 || page[2].Serial != 41 {
			t.Fatalf("first page: %v %v %v, want dave's short one and bob's two", page, next, err)
		}
		gone := t0.Add(31 * time.Minute)
		c.Set(gone)
		if err := s.Record(ctx, cert(60, "erin", 5*time.Hour)); err != nil { // prunes up to now
			t.Fatal(err)
		}
		rest, _, err := s.LivePage(ctx, gone, next, 0)
		if err != nil {
			t.Fatal(err)
		}
		var restWant []ca.Certificate
		for _, x := range append(slices.Clone(want[2:]), earlier, later, cert(60, "erin", 5*time.Hour)) {
			if x.ValidBefore.After(gone) {
				restWant = append(restWant, x)
			}
		}
		slices.SortFunc(restWant, func(x, y ca.Certificate) int { return ca.CursorOf(x).Compare(ca.CursorOf(y)) })
		if diff := cmp.Diff(restWant, rest); diff != "" {
			t.Errorf("after the cursor's certificate was pruned (-want +got):\n%s", diff)
		}
	})

	t.Run("expired members are pruned on write", func(t *testing.T) {
		c := &clock{t: t0}
		s := newStore(t, c)
		_ = s.Record(ctx, cert(10, "alice", time.Minute))
		c.Set(t0.Add(2 * time.Minute))
		_ = s.Record(ctx, cert(11, "alice", time.Hour))
		got, _ := s.Live(ctx, "alice", t0) // asked at t0: 10 would still be live, but it was pruned
		if len(got) != 1 || got[0].Serial != 11 {
			t.Errorf("live = %v, want only serial 11", got)
		}
	})

	t.Run("identity aliases", func(t *testing.T) {
		c := &clock{t: t0}
		s := newStore(t, c)
		// Two identities share a username (two issuers); one keeps its index entry beyond its
		// certificate (IndexUntil), the other only as long as its certificate.
		a := cert(10, "https://idp-a|u1", 10*time.Minute)
		a.Aliases, a.IndexUntil = []string{"email:alice@example.com", "username:alice"}, t0.Add(2*time.Hour)
		b := cert(11, "https://idp-b|x9", 5*time.Minute)
		b.Aliases = []string{"username:alice"}
		for _, x := range []ca.Certificate{a, b} {
			if err := s.Record(ctx, x); err != nil {
				t.Fatal(err)
			}
		}
		resolve := func(alias string, at time.Time) []string {
			t.Helper()
			got, err := s.ResolveAlias(ctx, alias, at)
			if err != nil {
				t.Fatal(err)
			}
			return got
		}
		if diff := cmp.Diff([]string{"https://idp-a|u1", "https://idp-b|x9"}, resolve("username:alice", t0)); diff != "" {
			t.Errorf("username:alice (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff([]string{"https://idp-a|u1"}, resolve("email:alice@example.com", t0)); diff != "" {
			t.Errorf("email (-want +got):\n%s", diff)
		}
		// After b's certificate expired its entry is gone; a's lasts until its IndexUntil.
		if diff := cmp.Diff([]string{"https://idp-a|u1"}, resolve("username:alice", t0.Add(time.Hour))); diff != "" {
			t.Errorf("an hour later (-want +got):\n%s", diff)
		}
		if got := resolve("username:alice", t0.Add(3*time.Hour)); len(got) != 0 {
			t.Errorf("after IndexUntil: %v", got)
		}
		if got := resolve("username:bob", t0); len(got) != 0 {
			t.Errorf("unknown alias resolved to %v", got)
		}
		// The record itself carries the aliases, never IndexUntil.
		got, ok, err := s.Get(ctx, 10)
		if err != nil || !ok || len(got.Aliases) != 2 || !got.IndexUntil.IsZero() {
			t.Errorf("record = %+v, %v, %v", got, ok, err)
		}
	})

	t.Run("concurrent records", func(t *testing.T) {
		c := &clock{t: t0}
		s := newStore(t, c)
		var wg sync.WaitGroup
		for i := range 50 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := s.Record(ctx, cert(uint64(100+i), "alice", time.Hour)); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		got, _ := s.Live(ctx, "alice", t0)
		if len(got) != 50 {
			t.Errorf("%d live certs, want 50", len(got))
		}
		if err := s.Check(ctx); err != nil {
			t.Errorf("Check: %v", err)
		}
	})
}

// TestRedisCheck: Check fails while redis-server is down and recovers when it is back.
func TestRedisCheck(t *testing.T) {
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	defer rdb.Close()
	s := store.NewRedis(rdb, store.RedisOptions{})
	ctx := context.Background()
	if err := s.Check(ctx); err != nil {
		t.Fatal(err)
	}
	r.Stop()
	if err := s.Check(ctx); err == nil {
		t.Fatal("Check succeeded with redis-server stopped")
	}
	r.Start()
	if err := s.Check(ctx); err != nil {
		t.Fatalf("Check after restart: %v", err)
	}
}

// TestRedisCorruptRecord: bad data in Redis is an error, not a panic.
func TestRedisCorruptRecord(t *testing.T) {
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	s := store.NewRedis(rdb, store.RedisOptions{})
	_ = mr.Set("sshca:{inventory}:cert:9", "{not json")
	if _, _, err := s.Get(context.Background(), 9); err == nil {
		t.Fatal("corrupt record read without error")
	}
}

func BenchmarkRecordRedis(b *testing.B) {
	r := testenv.StartRedis(b)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	s := store.NewRedis(rdb, store.RedisOptions{})
	ctx := context.Background()
	c := ca.Certificate{Identity: "alice", Principals: []string{"alice"}, ValidBefore: time.Now().Add(time.Hour)}
	var n uint64
	for b.Loop() {
		n++
		c.Serial = n
		if err := s.Record(ctx, c); err != nil {
			b.Fatal(err)
		}
	}
}

// TestRedisLiveIndexPruned: the global index of live certificates (Keys.LiveCerts) loses its
// expired members at the next Record, on a real redis-server, through both writers (Record
// and RecordUnderRequest), so it holds about as many members as there are live certificates.
func TestRedisLiveIndexPruned(t *testing.T) {
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	t0 := time.Now().UTC().Truncate(time.Second)
	c := &clock{t: t0}
	s := store.NewRedis(rdb, store.RedisOptions{Now: c.Now})
	ctx := context.Background()
	cert := func(serial uint64, ttl time.Duration) ca.Certificate {
		return ca.Certificate{Serial: serial, KeyID: "alice#x", Kind: ca.UserCert, Identity: "alice", Principals: []string{"p"},
			ValidAfter: t0.Add(-30 * time.Second), ValidBefore: t0.Add(ttl)}
	}
	for i := range uint64(20) {
		if err := s.Record(ctx, cert(100+i, time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	key := store.Keys{}.LiveCerts()
	if n := rdb.ZCard(ctx, key).Val(); n != 20 {
		t.Fatalf("index holds %d members, want 20", n)
	}
	c.Set(t0.Add(2 * time.Minute))
	if err := s.Record(ctx, cert(200, time.Hour)); err != nil {
		t.Fatal(err)
	}
	if got := rdb.ZRange(ctx, key, 0, -1).Val(); len(got) != 1 || got[0] != "200" {
		t.Errorf("index after the others expired: %v, want [200]", got)
	}
	// The writer of certificates issued under an access request prunes it too.
	req := ca.AccessRequest{ID: "req_prunedprunedprun", Requester: ca.Identity{Issuer: "https://idp", Subject: "alice"},
		Principals: []string{"root"}, Status: ca.RequestApproved, CreatedAt: t0, PendingUntil: t0.Add(time.Hour), NotAfter: t0.Add(4 * time.Hour)}
	if err := s.CreateRequest(ctx, req); err != nil {
		t.Fatal(err)
	}
	c.Set(t0.Add(2 * time.Hour))
	late := cert(300, 3*time.Hour)
	if err := s.RecordUnderRequest(ctx, late, req.ID, func(ca.AccessRequest) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if got := rdb.ZRange(ctx, key, 0, -1).Val(); len(got) != 1 || got[0] != "300" {
		t.Errorf("index after a record under a request: %v, want [300]", got)
	}
}

// TestLivePageCursorMemberGone: when the cursor's serial has left the index while others of its
// ValidBefore are still there (removed by hand here; pruning takes a whole second at once), the
// next page starts after its position by score and then by the serial's text, as the index
// orders them, on redis-server and on miniredis: none of the others is skipped or repeated.
func TestLivePageCursorMemberGone(t *testing.T) {
	r := testenv.StartRedis(t)
	for _, backend := range []string{"redis-server", "miniredis"} {
		t.Run(backend, func(t *testing.T) {
			addr := r.Addr
			if backend == "miniredis" {
				addr = miniredis.RunT(t).Addr()
			}
			rdb := redis.NewClient(&redis.Options{Addr: addr})
			defer rdb.Close()
			defer rdb.FlushAll(context.Background())
			ctx := context.Background()
			t0 := time.Now().UTC().Truncate(time.Second)
			s := store.NewRedis(rdb, store.RedisOptions{Now: func() time.Time { return t0 }})
			// By text: 1, 10, 100, 11, 2, 25, 3, 9.
			for _, sn := range []uint64{9, 10, 100, 11, 2, 25, 3, 1} {
				c := ca.Certificate{Serial: sn, KeyID: "a#x", Kind: ca.UserCert, Identity: "alice", Principals: []string{"p"},
					ValidAfter: t0, ValidBefore: t0.Add(time.Hour)}
				if err := s.Record(ctx, c); err != nil {
					t.Fatal(err)
				}
			}
			page, next, err := s.LivePage(ctx, t0, ca.CertCursor{}, 3)
			if err != nil || len(page) != 3 || next.Serial != 100 {
				t.Fatalf("first page: %v next %+v %v", page, next, err)
			}
			for _, gone := range []string{"100", "10"} {
				if err := rdb.ZRem(ctx, store.Keys{}.LiveCerts(), gone).Err(); err != nil {
					t.Fatal(err)
				}
			}
			rest, next, err := s.LivePage(ctx, t0, next, 0)
			if err != nil || !next.IsZero() {
				t.Fatalf("rest: %v %+v", err, next)
			}
			var got []uint64
			for _, c := range rest {
				got = append(got, c.Serial)
			}
			if want := []uint64{11, 2, 25, 3, 9}; !slices.Equal(got, want) {
				t.Errorf("after a cursor whose serial left the index: %v, want %v", got, want)
			}
		})
	}
}

// TestLivePageShards: with the inventory spread over shards (InventoryShards), a page is the
// merge of every shard's index in cursor order: pages of 1, 4 and 7 over 60 certificates of 12
// identities (so of every shard) and 5 seconds of expiry list each once, in order, as
// AllLive's set, on redis-server and miniredis.
func TestLivePageShards(t *testing.T) {
	r := testenv.StartRedis(t)
	for _, backend := range []string{"redis-server", "miniredis"} {
		t.Run(backend, func(t *testing.T) {
			addr := r.Addr
			if backend == "miniredis" {
				addr = miniredis.RunT(t).Addr()
			}
			rdb := redis.NewClient(&redis.Options{Addr: addr})
			defer rdb.Close()
			defer rdb.FlushAll(context.Background())
			ctx := context.Background()
			t0 := time.Now().UTC().Truncate(time.Second)
			s := store.NewRedis(rdb, store.RedisOptions{Now: func() time.Time { return t0 }, InventoryShards: 3})
			var want []ca.Certificate
			for i := range 60 {
				c := ca.Certificate{Serial: uint64(1 + i*37%101), KeyID: "x#1", Kind: ca.UserCert, Identity: fmt.Sprintf("https://idp|u%d", i%12),
					Principals: []string{"p"}, ValidAfter: t0, ValidBefore: t0.Add(time.Hour + time.Duration(i%5)*time.Second)}
				if err := s.Record(ctx, c); err != nil {
					t.Fatal(err)
				}
				want = append(want, c)
			}
			slices.SortFunc(want, func(x, y ca.Certificate) int { return ca.CursorOf(x).Compare(ca.CursorOf(y)) })
			all, err := s.AllLive(ctx, t0)
			if err != nil || len(all) != len(want) {
				t.Fatalf("AllLive: %d %v, want %d", len(all), err, len(want))
			}
			for _, limit := range []int{1, 4, 7} {
				var got []ca.Certificate
				var after ca.CertCursor
				for pages := 0; ; pages++ {
					page, next, err := s.LivePage(ctx, t0, after, limit)
					if err != nil || len(page) > limit || pages > len(want) {
						t.Fatalf("limit %d, page %d: %d %v", limit, pages, len(page), err)
					}
					got = append(got, page...)
					if next.IsZero() {
						break
					}
					after = next
				}
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("limit %d (-want +got):\n%s", limit, diff)
				}
			}
			// One identity's pages, from its own index: its certificates each once, in order.
			for _, id := range []string{"https://idp|u3", "https://idp|u7", "https://idp|nobody"} {
				mine := slices.DeleteFunc(slices.Clone(want), func(c ca.Certificate) bool { return c.Identity != id })
				for _, limit := range []int{1, 2} {
					var got []ca.Certificate
					var after ca.CertCursor
					for pages := 0; ; pages++ {
						page, next, err := s.LivePageOf(ctx, id, t0, after, limit)
						if err != nil || len(page) > limit || pages > len(want) {
							t.Fatalf("%s limit %d, page %d: %d %v", id, limit, pages, len(page), err)
						}
						got = append(got, page...)
						if next.IsZero() {
							break
						}
						after = next
					}
					if diff := cmp.Diff(mine, got, cmpopts.EquateEmpty()); diff != "" {
						t.Errorf("%s limit %d (-want +got):\n%s", id, limit, diff)
					}
				}
			}
		})
	}
}
