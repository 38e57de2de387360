package audit_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
)

// stripeStream is the stream of stripe i as store/keys.go names it, spelled out here so that
// a change of the layout shows in this test.
func stripeStream(i int) string {
	if i == 0 {
		return "sshca:{audit}:log"
	}
	return fmt.Sprintf("sshca:{audit:%d}:log", i)
}

// verifyAll verifies with a reader configured with one stripe (as `sshca audit verify` without
// configuration) and returns the entries by stripe.
func verifyAll(t *testing.T, rdb *redis.Client, key []byte) (audit.Report, map[int][]audit.Entry) {
	t.Helper()
	by := map[int][]audit.Entry{}
	rep, err := audit.New(rdb, audit.Options{Key: key}).Verify(context.Background(), func(e audit.Entry) { by[e.Stripe] = append(by[e.Stripe], e) })
	if err != nil {
		t.Fatalf("verify: %+v: %v", rep, err)
	}
	return rep, by
}

// TestStripes: against a real redis-server, a Log with several stripes appends to its home
// stripe, under that stripe's own hash tag; it raises the stripe count before its first
// append, so a reader configured with fewer stripes (or none) still walks every one; a batch
// that loses the race for a stripe's head moves to the next stripe rather than retrying, and
// replicas that all start on one stripe end up each on its own, none failing for contention.
func TestStripes(t *testing.T) {
	r := testenv.StartRedis(t)
	ctx := context.Background()
	key := []byte("0123456789abcdef0123456789abcdef")
	fresh := func(t *testing.T) *redis.Client {
		rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
		rdb.FlushAll(ctx)
		t.Cleanup(func() { rdb.FlushAll(ctx); rdb.Close() })
		return rdb
	}

	t.Run("home stripe and its keys", func(t *testing.T) {
		rdb := fresh(t)
		st := store.NewRedis(rdb, store.RedisOptions{AuditStripes: 4}) // as serve's
		l := audit.New(rdb, audit.Options{Key: key, Stripes: 4, Home: new(2), Marks: st})
		for i := range 3 {
			if err := l.Append(ctx, record(i)); err != nil {
				t.Fatal(err)
			}
		}
		if n, _ := rdb.XLen(ctx, stripeStream(2)).Result(); n != 3 {
			t.Errorf("stripe 2's stream holds %d entries, want the 3 appended", n)
		}
		// Stripe 0 holds only the striped mark, appended before the first append beyond it.
		if n, _ := rdb.XLen(ctx, stripeStream(0)).Result(); n != 1 {
			t.Errorf("stripe 0 holds %d entries, want the striped mark alone", n)
		}
		for _, k := range []string{"sshca:{audit:1}:head", "sshca:{audit:3}:head"} {
			if n, _ := rdb.Exists(ctx, k).Result(); n != 0 {
				t.Errorf("%s exists: a stripe other than the home one was written", k)
			}
		}
		if v, _ := rdb.Get(ctx, "sshca:{audit}:stripes").Result(); v != "4" {
			t.Errorf("stripe count %q, want 4", v)
		}
		// The mark of the stripe's own tag is what its appends bump.
		if n, _ := rdb.HGet(ctx, "sshca:{audit:2}:mark", "n").Int(); n != 3 {
			t.Errorf("{audit:2}'s mark at %d, want 3 (one per append)", n)
		}
		if err := st.CheckState(ctx); err != nil {
			t.Errorf("store state: %v", err)
		}
		rep, by := verifyAll(t, rdb, key)
		if rep.Records != 3 || len(by[2]) != 3 || len(rep.Stripes) != 4 {
			t.Fatalf("verify: %+v, by stripe %v; want 3 records in stripe 2 of 4", rep, by)
		}
		for i, e := range by[2] {
			if e.Seq != uint64(i+1) || e.Record.Identity != record(i).Identity {
				t.Errorf("entry %d: seq %d %s", i, e.Seq, e.Record.Identity)
			}
		}
		if sr := rep.Stripes[2]; sr.Records != 3 || sr.HeadSeq != 3 || sr.Head != by[2][2].MAC {
			t.Errorf("stripe 2's report %+v", sr)
		}
	})

	t.Run("one stripe keeps today's keys", func(t *testing.T) {
		rdb := fresh(t)
		for _, n := range []int{0, 1} {
			if err := audit.New(rdb, audit.Options{Key: key, Stripes: n, Home: new(3)}).Append(ctx, record(n)); err != nil {
				t.Fatal(err)
			}
		}
		if keys, _ := rdb.Keys(ctx, "*").Result(); len(keys) != 2 {
			t.Errorf("keys %v, want only sshca:{audit}:log and :head", keys)
		}
		if n, _ := rdb.XLen(ctx, stripeStream(0)).Result(); n != 2 {
			t.Errorf("{audit}'s stream holds %d entries, want 2", n)
		}
	})

	t.Run("a batch that loses the race moves to the next stripe", func(t *testing.T) {
		rdb := fresh(t)
		a := audit.New(rdb, audit.Options{Key: key, Stripes: 3, Home: new(0)})
		b := audit.New(rdb, audit.Options{Key: key, Stripes: 3, Home: new(0)})
		if err := a.Append(ctx, record(1)); err != nil {
			t.Fatal(err)
		}
		// b saw stripe 0 empty: its first try there loses, and the record goes to stripe 1.
		if err := b.Append(ctx, record(2)); err != nil {
			t.Fatal(err)
		}
		// b stays on stripe 1, a on stripe 0.
		if err := b.Append(ctx, record(3)); err != nil {
			t.Fatal(err)
		}
		if err := a.Append(ctx, record(4)); err != nil {
			t.Fatal(err)
		}
		_, by := verifyAll(t, rdb, key)
		ids := func(es []audit.Entry) (out []string) {
			for _, e := range es {
				out = append(out, e.Record.Identity)
			}
			return out
		}
		want0 := []string{record(1).Identity, record(4).Identity}
		want1 := []string{record(2).Identity, record(3).Identity}
		if fmt.Sprint(ids(by[0])) != fmt.Sprint(want0) || fmt.Sprint(ids(by[1])) != fmt.Sprint(want1) || len(by[2]) != 0 {
			t.Errorf("stripes hold %v / %v / %v; want %v / %v / none", ids(by[0]), ids(by[1]), ids(by[2]), want0, want1)
		}
	})

	t.Run("replicas starting on one stripe spread, none fails", func(t *testing.T) {
		rdb := fresh(t)
		const replicas, callers, each = 4, 8, 40
		var wg sync.WaitGroup
		errs := make(chan error, replicas*callers)
		for rep := range replicas {
			c := redis.NewClient(&redis.Options{Addr: r.Addr})
			t.Cleanup(func() { c.Close() })
			l := audit.New(c, audit.Options{Key: key, Stripes: replicas, Home: new(0)})
			for cl := range callers {
				wg.Go(func() {
					for i := range each {
						if err := l.Append(ctx, record(rep*100000+cl*1000+i)); err != nil {
							errs <- err
							return
						}
					}
				})
			}
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		seen := map[string]int{}
		rep, err := audit.New(rdb, audit.Options{Key: key}).Verify(ctx, func(e audit.Entry) { seen[e.Record.Identity]++ })
		if err != nil || rep.Records != replicas*callers*each || len(seen) != replicas*callers*each {
			t.Fatalf("verify: %d records, %d distinct, %v; want %d once each", rep.Records, len(seen), err, replicas*callers*each)
		}
		used := 0
		for _, sr := range rep.Stripes {
			if sr.Records > 0 {
				used++
			}
		}
		if used < 2 {
			t.Errorf("only %d stripe(s) used by %d replicas that collided on stripe 0: %+v", used, replicas, rep.Stripes)
		}
		t.Logf("by stripe: %+v", rep.Stripes)
	})

	t.Run("lowering the configured stripes loses nothing", func(t *testing.T) {
		rdb := fresh(t)
		if err := audit.New(rdb, audit.Options{Key: key, Stripes: 4, Home: new(3)}).Append(ctx, record(1)); err != nil {
			t.Fatal(err)
		}
		if err := audit.New(rdb, audit.Options{Key: key, Stripes: 2, Home: new(1)}).Append(ctx, record(2)); err != nil {
			t.Fatal(err)
		}
		if v, _ := rdb.Get(ctx, "sshca:{audit}:stripes").Result(); v != "4" {
			t.Errorf("stripe count %q after a Log of 2 appended, want 4 (only raised)", v)
		}
		rep, by := verifyAll(t, rdb, key)
		if rep.Records != 2 || len(by[3]) != 1 || len(by[1]) != 1 {
			t.Errorf("verify with one stripe configured: %+v, by stripe %v; want stripes 1 and 3", rep, by)
		}
	})

	t.Run("a break in one stripe names it", func(t *testing.T) {
		rdb := fresh(t)
		for i, home := range []int{0, 1, 2} {
			if err := audit.New(rdb, audit.Options{Key: key, Stripes: 3, Home: new(home)}).Append(ctx, record(i)); err != nil {
				t.Fatal(err)
			}
		}
		msgs, err := rdb.XRange(ctx, stripeStream(2), "-", "+").Result()
		if err != nil || len(msgs) != 1 {
			t.Fatal(msgs, err)
		}
		// The record rewritten in place (the stream rebuilt with it), its links kept.
		v := msgs[0].Values
		v["rec"] = strings.Replace(field(msgs[0], "rec"), "issued", "denied", 1)
		rdb.Del(ctx, stripeStream(2))
		if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: stripeStream(2), ID: msgs[0].ID, Values: v}).Err(); err != nil {
			t.Fatal(err)
		}
		_, err = audit.New(rdb, audit.Options{Key: key}).Verify(ctx, nil)
		if err == nil || !strings.Contains(err.Error(), "stripe 2") {
			t.Errorf("verify after a record was rewritten in stripe 2: %v; want an error naming stripe 2", err)
		}
	})

	t.Run("a malformed stripe count is refused", func(t *testing.T) {
		rdb := fresh(t)
		for _, v := range []string{"0", "x", "100000", "-1"} {
			rdb.Set(ctx, "sshca:{audit}:stripes", v, 0)
			_, err := audit.New(rdb, audit.Options{Key: key}).Verify(ctx, nil)
			if err == nil || !strings.Contains(err.Error(), "stripe count") {
				t.Errorf("count %q: %v; want an error naming the stripe count", v, err)
			}
		}
	})
}
