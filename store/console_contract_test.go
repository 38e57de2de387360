package store_test

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
)

// TestConsoleSessionContract: the console's sessions on every backend: a value comes back as
// stored under its name only, a second put under the name replaces it, it is gone once its end
// has passed on the store's clock (also on miniredis, whose keys do not expire with real
// time), a put with an end already past stores nothing, and delete ends it (a missing name
// is no error).
func TestConsoleSessionContract(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newStore newStore) {
		ctx := context.Background()
		c := &clock{t: time.Now()}
		s := newStore(t, c)
		end := c.Now().Add(time.Hour)
		if err := s.PutConsoleSession(ctx, "a1", []byte("sealed-a"), end); err != nil {
			t.Fatal(err)
		}
		if got, ok, err := s.ConsoleSession(ctx, "a1"); err != nil || !ok || string(got) != "sealed-a" {
			t.Fatalf("get a1 = %q %v %v", got, ok, err)
		}
		if _, ok, err := s.ConsoleSession(ctx, "a2"); err != nil || ok {
			t.Fatalf("get of a name never stored = %v %v", ok, err)
		}
		if err := s.PutConsoleSession(ctx, "a1", []byte("sealed-b"), end); err != nil {
			t.Fatal(err)
		}
		if got, ok, _ := s.ConsoleSession(ctx, "a1"); !ok || string(got) != "sealed-b" {
			t.Fatalf("after a second put: %q %v", got, ok)
		}
		if err := s.PutConsoleSession(ctx, "past", []byte("x"), c.Now().Add(-time.Second)); err != nil {
			t.Fatal(err)
		}
		if _, ok, _ := s.ConsoleSession(ctx, "past"); ok {
			t.Error("a session stored with an end already past is there")
		}
		c.Set(end.Add(-time.Millisecond))
		if _, ok, _ := s.ConsoleSession(ctx, "a1"); !ok {
			t.Error("a1 gone before its end")
		}
		c.Set(end)
		if _, ok, _ := s.ConsoleSession(ctx, "a1"); ok {
			t.Error("a1 still there at its end")
		}
		c.Set(time.Now())
		if err := s.PutConsoleSession(ctx, "b1", []byte("sealed-c"), c.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteConsoleSession(ctx, "b1"); err != nil {
			t.Fatal(err)
		}
		if _, ok, _ := s.ConsoleSession(ctx, "b1"); ok {
			t.Error("b1 still there after delete")
		}
		if err := s.DeleteConsoleSession(ctx, "never"); err != nil {
			t.Errorf("delete of a missing name: %v", err)
		}
	})
}

// TestConsoleLoginContract: the console's login key is created once (32 bytes or more) and the
// same for every later call within its period (each says when it is due: its start plus the
// period); at the period's end the next call rotates (a new current key, the old one as
// previous), the next period's end rotates again (the first key gone), and a store left alone
// for two periods or more keeps no previous key (what it sealed is older than a period); a
// period that is not positive is an error. A finished sign-in is spent once until its end on
// the store's clock (also on miniredis), then may be marked again; an end already past marks
// nothing.
func TestConsoleLoginContract(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newStore newStore) {
		ctx := context.Background()
		start := time.Now().Truncate(time.Millisecond)
		c := &clock{t: start}
		s := newStore(t, c)
		const every = time.Hour
		k1, prev, until, err := s.ConsoleLoginKeys(ctx, every)
		if err != nil || len(k1) < 32 || prev != nil || !until.Equal(start.Add(every)) {
			t.Fatalf("login key %d bytes, previous %q, due %v (want %v), %v", len(k1), prev, until, start.Add(every), err)
		}
		c.Set(start.Add(every - time.Millisecond))
		k2, prev, until2, err := s.ConsoleLoginKeys(ctx, every)
		if err != nil || !bytes.Equal(k1, k2) || prev != nil || !until2.Equal(until) {
			t.Fatalf("a second call within the period gave another key or date (%v)", err)
		}
		c.Set(start.Add(every))
		k3, prev, until3, err := s.ConsoleLoginKeys(ctx, every)
		if err != nil || len(k3) < 32 || bytes.Equal(k3, k1) || !bytes.Equal(prev, k1) || !until3.Equal(start.Add(2*every)) {
			t.Fatalf("at the period's end: current new %v, previous the first %v, due %v (%v)", !bytes.Equal(k3, k1), bytes.Equal(prev, k1), until3, err)
		}
		if k, p, _, _ := s.ConsoleLoginKeys(ctx, every); !bytes.Equal(k, k3) || !bytes.Equal(p, k1) {
			t.Fatal("a call right after the rotation rotated again")
		}
		c.Set(start.Add(2*every + time.Minute))
		k4, prev, _, err := s.ConsoleLoginKeys(ctx, every)
		if err != nil || bytes.Equal(k4, k3) || bytes.Equal(k4, k1) || !bytes.Equal(prev, k3) {
			t.Fatalf("second rotation: current new %v, previous the second %v (%v)", !bytes.Equal(k4, k3), bytes.Equal(prev, k3), err)
		}
		c.Set(start.Add(6 * every))
		k5, prev, _, err := s.ConsoleLoginKeys(ctx, every)
		if err != nil || bytes.Equal(k5, k4) || prev != nil {
			t.Fatalf("after two idle periods: new key %v, previous %q (%v), want none", !bytes.Equal(k5, k4), prev, err)
		}
		if _, _, _, err := s.ConsoleLoginKeys(ctx, 0); err == nil {
			t.Error("a zero period: no error")
		}
		end := c.Now().Add(10 * time.Minute)
		if first, err := s.SpendConsoleLogin(ctx, "l1", end); err != nil || !first {
			t.Fatalf("first spend = %v %v", first, err)
		}
		if first, err := s.SpendConsoleLogin(ctx, "l1", end); err != nil || first {
			t.Fatalf("second spend = %v %v, want refused", first, err)
		}
		if first, _ := s.SpendConsoleLogin(ctx, "l2", end); !first {
			t.Fatal("another sign-in refused")
		}
		c.Set(end.Add(-time.Millisecond))
		if first, _ := s.SpendConsoleLogin(ctx, "l1", end); first {
			t.Fatal("spent again before its end")
		}
		c.Set(end)
		if first, _ := s.SpendConsoleLogin(ctx, "l1", end.Add(time.Minute)); !first {
			t.Fatal("a mark past its end still refuses")
		}
		if first, _ := s.SpendConsoleLogin(ctx, "l3", c.Now().Add(-time.Second)); first {
			t.Fatal("a spend with an end already past was taken")
		}
	})
}

// TestConsoleLoginKeysReplicasAgree: replicas (each its own client) asking for the login keys
// at once, on a real redis-server, just after the period ended: all get the same new current
// key and the same previous one, and the store rotated once.
func TestConsoleLoginKeysReplicasAgree(t *testing.T) {
	srv := testenv.StartRedis(t)
	ctx := context.Background()
	start := time.Now()
	c := &clock{t: start}
	const replicas, every = 8, time.Minute
	stores := make([]*store.Redis, replicas)
	for i := range stores {
		rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
		t.Cleanup(func() { rdb.Close() })
		stores[i] = store.NewRedis(rdb, store.RedisOptions{Now: c.Now})
	}
	first, _, _, err := stores[0].ConsoleLoginKeys(ctx, every)
	if err != nil {
		t.Fatal(err)
	}
	for round := 1; round <= 3; round++ {
		c.Set(start.Add(time.Duration(round) * every))
		type keys struct{ cur, prev string }
		got := make([]keys, replicas)
		var wg sync.WaitGroup
		begin := make(chan struct{})
		for i, s := range stores {
			wg.Go(func() {
				<-begin
				cur, prev, _, err := s.ConsoleLoginKeys(ctx, every)
				if err != nil {
					t.Error(err)
				}
				got[i] = keys{string(cur), string(prev)}
			})
		}
		close(begin)
		wg.Wait()
		for i, k := range got {
			if k != got[0] {
				t.Fatalf("round %d: replica %d has other keys than replica 0", round, i)
			}
		}
		if got[0].prev != string(first) || got[0].cur == string(first) {
			t.Fatalf("round %d: previous is not the key before the rotation, or current did not change", round)
		}
		first = []byte(got[0].cur)
	}
}

// TestConsoleLoginKeysTakeTheEarlierKey: a store where replicas of stop 15 made their single
// login key (Keys.ConsoleLoginKey) starts its rotation from it, so sign-ins sealed by either
// kind of replica open on both during an upgrade; the earlier key is left as it was.
func TestConsoleLoginKeysTakeTheEarlierKey(t *testing.T) {
	srv := testenv.StartRedis(t)
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	old := "an-earlier-login-key-of-52-characters-aaaaaaaaaaaaaa"
	if err := rdb.Set(ctx, store.Keys{}.ConsoleLoginKey(), old, 0).Err(); err != nil {
		t.Fatal(err)
	}
	cur, prev, _, err := store.NewRedis(rdb, store.RedisOptions{}).ConsoleLoginKeys(ctx, time.Hour)
	if err != nil || string(cur) != old || prev != nil {
		t.Fatalf("current %q previous %q (%v), want the earlier key and none", cur, prev, err)
	}
	if got, _ := rdb.Get(ctx, store.Keys{}.ConsoleLoginKey()).Result(); got != old {
		t.Errorf("the earlier key is now %q", got)
	}
}
