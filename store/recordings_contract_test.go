package store_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
)

// forEachRecordingBackend runs a contract against every recording store: memory, a real
// redis-server and miniredis.
func forEachRecordingBackend(t *testing.T, contract func(t *testing.T, st ca.RecordingStore, c *clock)) {
	t.Run("memory", func(t *testing.T) {
		c := &clock{t: time.Now()}
		contract(t, store.NewMemoryRecordings(c.Now), c)
	})
	t.Run("redis-server", func(t *testing.T) {
		r := testenv.StartRedis(t)
		rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
		t.Cleanup(func() { rdb.Close() })
		c := &clock{t: time.Now()}
		contract(t, store.NewRecordings(rdb, "", c.Now), c)
	})
	t.Run("miniredis", func(t *testing.T) {
		mr := miniredis.RunT(t)
		rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
		t.Cleanup(func() { rdb.Close() })
		c := &clock{t: time.Now()}
		contract(t, store.NewRecordings(rdb, "", c.Now), c)
	})
}

// TestRecordingsContract: a session's record and lines are written only when the received
// count is still the one the writer read (a new session only when none exists); the last line
// can be replaced; lines come back in order; the host's total counts appended lines; the list
// is by start, from since; a proof is spent once.
func TestRecordingsContract(t *testing.T) {
	forEachRecordingBackend(t, func(t *testing.T, st ca.RecordingStore, c *clock) {
		ctx := context.Background()
		t0 := time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)
		mk := func(id string, start time.Time, received int64) ca.SessionRecording {
			return ca.SessionRecording{ID: id, Host: "b1", Header: ca.RecordingHeader{Version: 1, ID: id, Start: start, User: "root"},
				Received: received, Started: start, Updated: start}
		}
		if _, found, err := st.SessionRecording(ctx, "a"); found || err != nil {
			t.Fatalf("empty store: %v %v", found, err)
		}
		a := mk("a", t0, 2)
		if ok, err := st.AppendRecording(ctx, a, 0, false, [][]byte{[]byte("h"), []byte("l1")}); !ok || err != nil {
			t.Fatalf("new session: %v %v", ok, err)
		}
		if ok, err := st.AppendRecording(ctx, a, 0, false, [][]byte{[]byte("x")}); ok || err != nil {
			t.Fatalf("a second new session under the same ID: %v %v", ok, err)
		}
		a3 := mk("a", t0, 3)
		if ok, err := st.AppendRecording(ctx, a3, 1, false, [][]byte{[]byte("x")}); ok || err != nil {
			t.Fatalf("stale received count: %v %v", ok, err)
		}
		if ok, err := st.AppendRecording(ctx, a3, 2, false, [][]byte{[]byte("cut1")}); !ok || err != nil {
			t.Fatalf("append: %v %v", ok, err)
		}
		a5 := mk("a", t0, 5)
		a5.Cut = &ca.RecordingCut{Cap: "session", Chunks: 2, Bytes: 10}
		if ok, err := st.AppendRecording(ctx, a5, 3, true, [][]byte{[]byte("cut2"), []byte("end")}); !ok || err != nil {
			t.Fatalf("replace last: %v %v", ok, err)
		}
		lines, err := st.RecordingLines(ctx, "a")
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]string{"h", "l1", "cut2", "end"}, strs(lines)); diff != "" {
			t.Fatalf("lines (-want +got):\n%s", diff)
		}
		got, found, err := st.SessionRecording(ctx, "a")
		if err != nil || !found {
			t.Fatal(found, err)
		}
		if diff := cmp.Diff(a5, got); diff != "" {
			t.Fatalf("record (-want +got):\n%s", diff)
		}
		if n, err := st.HostRecordingBytes(ctx, "b1"); err != nil || n != int64(len("h")+len("l1")+len("cut1")+len("end")) {
			t.Fatalf("host total %d %v", n, err)
		}
		b := mk("b", t0.Add(time.Hour), 1)
		if ok, err := st.AppendRecording(ctx, b, 0, false, [][]byte{[]byte("h")}); !ok || err != nil {
			t.Fatal(ok, err)
		}
		for _, tt := range []struct {
			since time.Time
			want  []string
		}{{time.Time{}, []string{"a", "b"}}, {t0, []string{"a", "b"}}, {t0.Add(time.Minute), []string{"b"}}, {t0.Add(2 * time.Hour), nil}} {
			recs, next, err := st.SessionRecordings(ctx, tt.since, ca.RecordingCursor{}, 0)
			if err != nil || !next.IsZero() {
				t.Fatal(next, err)
			}
			var ids []string
			for _, r := range recs {
				ids = append(ids, r.ID)
			}
			if diff := cmp.Diff(tt.want, ids); diff != "" {
				t.Errorf("since %v (-want +got):\n%s", tt.since, diff)
			}
		}
		// Pages of one and of two, with sessions sharing a start (ordered by ID as text) and one
		// started after the position recorded between pages: each listed once, in order.
		for _, id := range []string{"d", "c10", "c9"} {
			if ok, err := st.AppendRecording(ctx, mk(id, t0.Add(30*time.Minute), 1), 0, false, [][]byte{[]byte("h")}); !ok || err != nil {
				t.Fatal(ok, err)
			}
		}
		// Pages of one first: their run records "e", which the pages of two then list too (a map
		// here ran them in random order and failed when two came first).
		want := []string{"a", "c10", "c9", "d", "b", "e"}
		for _, limit := range []int{1, 2} {
			var ids []string
			var after ca.RecordingCursor
			for pages := 0; ; pages++ {
				recs, next, err := st.SessionRecordings(ctx, t0, after, limit)
				if err != nil || len(recs) > limit || pages > 10 {
					t.Fatalf("limit %d page %d: %v %v", limit, pages, recs, err)
				}
				for _, r := range recs {
					ids = append(ids, r.ID)
				}
				if pages == 1 && limit == 1 {
					if ok, err := st.AppendRecording(ctx, mk("e", t0.Add(90*time.Minute), 1), 0, false, [][]byte{[]byte("h")}); !ok || err != nil {
						t.Fatal(ok, err)
					}
				}
				if next.IsZero() {
					break
				}
				after = next
			}
			if diff := cmp.Diff(want, ids); diff != "" {
				t.Errorf("pages of %d (-want +got):\n%s", limit, diff)
			}
		}
		for i, want := range []bool{true, false} {
			if ok, err := st.UseRecordProof(ctx, "record|j1", c.Now().Add(time.Minute)); ok != want || err != nil {
				t.Fatalf("use %d: %v %v", i, ok, err)
			}
		}
		if ok, _ := st.UseRecordProof(ctx, "record|j2", c.Now().Add(time.Minute)); !ok {
			t.Fatal(fmt.Sprint("another proof refused"))
		}
	})
}

func strs(bs [][]byte) []string {
	out := []string{}
	for _, b := range bs {
		out = append(out, string(b))
	}
	return out
}

// TestRecordingsACLOnRedis: a real redis-server run with the shipped recordings ACL
// (deploy/redis/recordings.acl as its aclfile): the CA's user keeps, reads and prunes (recordings.retention) recordings there,
// and is refused any other key of sshca's (a revocation scope, the inventory).
func TestRecordingsACLOnRedis(t *testing.T) {
	acl, err := filepath.Abs(filepath.Join("..", "deploy", "redis", "recordings.acl"))
	if err != nil {
		t.Fatal(err)
	}
	conf := testenv.WriteFile(t, "recordings.conf", "save \"\"\nappendonly no\naclfile "+acl+"\n")
	r := testenv.StartRedisConfig(t, conf)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr, Username: "sshca", Password: "CHANGE-ME-recordings"})
	defer rdb.Close()
	ctx := context.Background()
	c := &clock{t: time.Now()}
	st := store.NewRecordings(rdb, "", c.Now).WithRetention(24 * time.Hour)
	rec := ca.SessionRecording{ID: "s1", Host: "b1", Received: 1}
	if ok, err := st.AppendRecording(ctx, rec, 0, false, [][]byte{[]byte("h")}); !ok || err != nil {
		t.Fatalf("append as the recordings user: %v %v", ok, err)
	}
	if ok, err := st.UseRecordProof(ctx, "record|j", time.Now().Add(time.Minute)); !ok || err != nil {
		t.Fatalf("spend a proof: %v %v", ok, err)
	}
	if recs, _, err := st.SessionRecordings(ctx, time.Time{}, ca.RecordingCursor{}, 10); err != nil || len(recs) != 1 {
		t.Fatalf("list: %v %v", recs, err)
	}
	// The retention's expiry and prune run as that user too.
	c.Set(c.Now().Add(25 * time.Hour))
	if n, err := st.PruneRecordings(ctx); n != 1 || err != nil {
		t.Fatalf("prune as the recordings user: %d %v", n, err)
	}
	keys := store.Keys{}
	for _, k := range []string{keys.LiveCerts(), keys.ScopeEntries("SHA256:x")} {
		if err := rdb.ZAdd(ctx, k, redis.Z{Score: 1, Member: "x"}).Err(); err == nil || !strings.Contains(err.Error(), "NOPERM") {
			t.Errorf("write to %s as the recordings user: %v, want NOPERM", k, err)
		}
	}
}

// retentionStore is a recording store with a retention and its prune.
type retentionStore interface {
	ca.RecordingStore
	PruneRecordings(ctx context.Context) (int, error)
}

// TestRecordingsRetention: with a retention of 90 days, on every backend and the store's
// clock, a session goes (record, lines, index entry, its bytes off its host's total) 90 days
// after the last batch received of it, not before; a batch moves that on; the append of a new
// session prunes (no sweep needed); the same store without a retention keeps everything.
func TestRecordingsRetention(t *testing.T) {
	const day = 24 * time.Hour
	retention := 90 * day
	run := func(t *testing.T, st retentionStore, c *clock) {
		ctx := context.Background()
		t0 := c.Now()
		mk := func(id, host string, received int64) ca.SessionRecording {
			return ca.SessionRecording{ID: id, Host: host, Header: ca.RecordingHeader{Version: 1, ID: id, Start: t0, User: "root"},
				Received: received, Started: t0, Updated: c.Now()}
		}
		add := func(id, host string, prev, received int64, lines ...string) {
			t.Helper()
			var ls [][]byte
			for _, l := range lines {
				ls = append(ls, []byte(l))
			}
			if ok, err := st.AppendRecording(ctx, mk(id, host, received), prev, false, ls); !ok || err != nil {
				t.Fatalf("append %s: %v %v", id, ok, err)
			}
		}
		has := func(id string) bool {
			t.Helper()
			_, found, err := st.SessionRecording(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			lines, _ := st.RecordingLines(ctx, id)
			all, _, _ := st.SessionRecordings(ctx, time.Time{}, ca.RecordingCursor{}, 0)
			listed := false
			for _, r := range all {
				listed = listed || r.ID == id
			}
			if found != (len(lines) > 0) || found != listed {
				t.Fatalf("%s: record %v, %d lines, listed %v: partly gone", id, found, len(lines), listed)
			}
			return found
		}
		hostBytes := func(h string) int64 {
			n, err := st.HostRecordingBytes(ctx, h)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
		add("old", "b1", 0, 2, "hdr", "0123456789")  // 13 bytes
		add("long", "b1", 0, 2, "hdr", "abcdefghij") // 13 bytes
		c.Set(t0.Add(45 * day))
		add("long", "b1", 2, 3, "end")    // its last batch: goes at day 135
		add("late", "b2", 0, 2, "h", "x") // goes at day 135
		if got := hostBytes("b1"); got != 29 {
			t.Fatalf("b1 total %d, want 29", got)
		}
		c.Set(t0.Add(retention - time.Millisecond))
		add("n1", "b3", 0, 1, "h") // a new session: prunes, nothing is due yet
		if !has("old") || !has("long") {
			t.Fatal("a session went before its retention")
		}
		c.Set(t0.Add(retention + time.Minute))
		add("n2", "b3", 0, 1, "h") // a new session's append prunes
		if has("old") || !has("long") || !has("late") {
			t.Fatalf("at day 90: old %v long %v late %v; want only old gone", has("old"), has("long"), has("late"))
		}
		if got := hostBytes("b1"); got != 16 {
			t.Fatalf("b1 total %d after old went, want 16 (long's)", got)
		}
		c.Set(t0.Add(45*day + retention + time.Minute))
		if n, err := st.PruneRecordings(ctx); err != nil || n != 2 {
			t.Fatalf("prune at day 135 took %d (%v), want 2 (long, late)", n, err)
		}
		if has("long") || has("late") || !has("n1") || !has("n2") {
			t.Fatal("at day 135 long and late should be gone, n1 and n2 (day 90) kept")
		}
		c.Set(t0.Add(2*retention + time.Minute))
		if n, err := st.PruneRecordings(ctx); err != nil || n != 2 {
			t.Fatalf("prune at day 180 took %d (%v), want 2 (n1, n2)", n, err)
		}
		for _, h := range []string{"b1", "b2", "b3"} {
			if got := hostBytes(h); got != 0 {
				t.Errorf("%s total %d after all its sessions went", h, got)
			}
		}
		if n, _ := st.PruneRecordings(ctx); n != 0 {
			t.Errorf("a second prune took %d", n)
		}
	}
	t.Run("memory", func(t *testing.T) {
		c := &clock{t: time.Now()}
		run(t, store.NewMemoryRecordings(c.Now).WithRetention(retention), c)
	})
	t.Run("redis-server", func(t *testing.T) {
		r := testenv.StartRedis(t)
		rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
		t.Cleanup(func() { rdb.Close() })
		c := &clock{t: time.Now()}
		run(t, store.NewRecordings(rdb, "", c.Now).WithRetention(retention), c)
		// Nothing of the sessions is left: no index, expiry, sizes or host total.
		if keys, _ := rdb.Keys(context.Background(), "*").Result(); len(keys) != 0 {
			t.Errorf("keys left after every session went: %v", keys)
		}
	})
	t.Run("miniredis", func(t *testing.T) {
		mr := miniredis.RunT(t)
		rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
		t.Cleanup(func() { rdb.Close() })
		c := &clock{t: time.Now()}
		run(t, store.NewRecordings(rdb, "", c.Now).WithRetention(retention), c)
	})
	t.Run("no retention", func(t *testing.T) {
		r := testenv.StartRedis(t)
		rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
		t.Cleanup(func() { rdb.Close() })
		c := &clock{t: time.Now()}
		st := store.NewRecordings(rdb, "", c.Now)
		ctx := context.Background()
		rec := ca.SessionRecording{ID: "s", Host: "b1", Header: ca.RecordingHeader{Version: 1, ID: "s", Start: c.Now()}, Received: 1}
		if ok, err := st.AppendRecording(ctx, rec, 0, false, [][]byte{[]byte("h")}); !ok || err != nil {
			t.Fatal(ok, err)
		}
		c.Set(c.Now().Add(10 * 365 * 24 * time.Hour))
		if n, err := st.PruneRecordings(ctx); n != 0 || err != nil {
			t.Fatalf("prune without a retention took %d (%v)", n, err)
		}
		if ttl := rdb.PTTL(ctx, store.Keys{}.RecordingSession("s")).Val(); ttl != -1 {
			t.Fatalf("without a retention the record expires (PTTL %v)", ttl)
		}
	})
}

// TestRecordingKeysExpireOnRedis: on a real redis-server the record and lines of a session
// carry the expiry itself (PEXPIREAT retention after the last batch, on the store's clock),
// so they go even if no prune ever runs; each batch moves it on.
func TestRecordingKeysExpireOnRedis(t *testing.T) {
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	c := &clock{t: time.Now().Truncate(time.Millisecond)}
	st := store.NewRecordings(rdb, "", c.Now).WithRetention(time.Hour)
	rec := ca.SessionRecording{ID: "s", Host: "b1", Header: ca.RecordingHeader{Version: 1, ID: "s", Start: c.Now()}, Received: 2}
	if ok, err := st.AppendRecording(ctx, rec, 0, false, [][]byte{[]byte("h"), []byte("l")}); !ok || err != nil {
		t.Fatal(ok, err)
	}
	k := store.Keys{}
	check := func(want time.Time) {
		t.Helper()
		for _, key := range []string{k.RecordingSession("s"), k.RecordingLines("s")} {
			if got := rdb.PExpireTime(ctx, key).Val(); got != time.Duration(want.UnixMilli())*time.Millisecond {
				t.Errorf("%s expires at %v ms, want %d", key, got.Milliseconds(), want.UnixMilli())
			}
		}
	}
	check(c.Now().Add(time.Hour))
	c.Set(c.Now().Add(20 * time.Minute))
	rec.Received = 3
	if ok, err := st.AppendRecording(ctx, rec, 2, false, [][]byte{[]byte("end")}); !ok || err != nil {
		t.Fatal(ok, err)
	}
	check(c.Now().Add(time.Hour))
}

// TestRecordingsPruneBatches: on a real redis-server, a new session's append prunes at most
// 100 expired sessions (its answer waits for four round trips, not for every session that
// expired at once), the next append prunes the next 100 at once (the batch was full), and
// PruneRecordings takes the rest.
func TestRecordingsPruneBatches(t *testing.T) {
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	c := &clock{t: time.Now()}
	st := store.NewRecordings(rdb, "", c.Now).WithRetention(24 * time.Hour)
	add := func(id string) {
		t.Helper()
		rec := ca.SessionRecording{ID: id, Host: "b1", Header: ca.RecordingHeader{Version: 1, ID: id, Start: c.Now()}, Received: 1}
		if ok, err := st.AppendRecording(ctx, rec, 0, false, [][]byte{[]byte("h")}); !ok || err != nil {
			t.Fatal(ok, err)
		}
	}
	for i := range 250 {
		add(fmt.Sprintf("old%03d", i))
	}
	indexed := func() int64 { return rdb.ZCard(ctx, store.Keys{}.RecordingIndex()).Val() }
	c.Set(c.Now().Add(25 * time.Hour))
	add("new1")
	if got := indexed(); got != 151 {
		t.Fatalf("after one append %d indexed, want 151 (100 of 250 pruned, new1 added)", got)
	}
	add("new2")
	if got := indexed(); got != 52 {
		t.Fatalf("after a second append %d indexed, want 52 (the next 100 pruned at once)", got)
	}
	if n, err := st.PruneRecordings(ctx); n != 50 || err != nil {
		t.Fatalf("PruneRecordings took %d (%v), want the last 50", n, err)
	}
	if got, _ := st.HostRecordingBytes(ctx, "b1"); got != 2 {
		t.Fatalf("b1 total %d, want 2 (new1 and new2)", got)
	}
}

// afterScript runs fn once, right after the first script (EVALSHA or EVAL) sent once done is
// false has answered: another replica's step landing between two round trips of this one.
type afterScript struct {
	fn   func()
	done bool
}

func (h *afterScript) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *afterScript) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (h *afterScript) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if !h.done && (cmd.Name() == "evalsha" || cmd.Name() == "eval") {
			h.done = true
			h.fn()
		}
		return err
	}
}

// TestRecordingsPruneRacesAppend: on a real redis-server, a session's batch arrives just as
// its retention ends (a session idle for as long as the retention; replicas' clocks a second
// apart), and another replica's prune runs after the append's script extended the session's
// keys but before the append moved the session on in the expiry index. The batch the CA
// acknowledged stays kept, listed, and counted in its host's total; before, the prune deleted
// the session it had just extended, and the host's total kept the new bytes for ever.
func TestRecordingsPruneRacesAppend(t *testing.T) {
	r := testenv.StartRedis(t)
	ctx := context.Background()
	start := time.Now().Truncate(time.Millisecond)
	cA, cB := &clock{t: start}, &clock{t: start}
	rdbB := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { rdbB.Close() })
	b := store.NewRecordings(rdbB, "", cB.Now).WithRetention(24 * time.Hour)
	rdbA := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { rdbA.Close() })
	pruned := -1
	hook := &afterScript{done: true, fn: func() {
		var err error
		if pruned, err = b.PruneRecordings(ctx); err != nil {
			t.Error(err)
		}
	}}
	rdbA.AddHook(hook)
	a := store.NewRecordings(rdbA, "", cA.Now).WithRetention(24 * time.Hour)

	rec := ca.SessionRecording{ID: "s", Host: "b1", Header: ca.RecordingHeader{Version: 1, ID: "s", Start: start}, Received: 2}
	if ok, err := a.AppendRecording(ctx, rec, 0, false, [][]byte{[]byte("hdr"), []byte("one")}); !ok || err != nil {
		t.Fatal(ok, err)
	}
	cA.Set(start.Add(24*time.Hour - time.Millisecond))
	cB.Set(start.Add(24*time.Hour + time.Second))
	hook.done = false
	rec.Received = 3
	if ok, err := a.AppendRecording(ctx, rec, 2, false, [][]byte{[]byte("two")}); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if !hook.done || pruned < 0 {
		t.Fatal("the prune did not run between the append's script and its expiry index")
	}
	lines, err := a.RecordingLines(ctx, "s")
	if err != nil || len(lines) != 3 {
		t.Errorf("after the acknowledged append the session keeps %d lines (%v), want 3", len(lines), err)
	}
	list, _, err := a.SessionRecordings(ctx, time.Time{}, ca.RecordingCursor{}, 0)
	if err != nil || len(list) != 1 {
		t.Errorf("listed %d sessions (%v), want the one just appended to", len(list), err)
	}
	if n, err := a.HostRecordingBytes(ctx, "b1"); n != int64(len("hdronetwo")) || err != nil {
		t.Errorf("host total %d (%v), want %d", n, err, len("hdronetwo"))
	}
	// An append that failed after its script leaves the old score: the prune keeps the session
	// and moves its score on to the record's expiry, so later batches are not filled with it.
	k := store.Keys{}
	extended := float64(start.Add(48*time.Hour - time.Millisecond).UnixMilli())
	rdbB.ZAdd(ctx, k.RecordingExpiry(), redis.Z{Score: float64(start.Add(24 * time.Hour).UnixMilli()), Member: "s"})
	if n, err := b.PruneRecordings(ctx); n != 0 || err != nil {
		t.Errorf("prune of a session extended took %d (%v), want 0", n, err)
	}
	if got := rdbB.ZScore(ctx, k.RecordingExpiry(), "s").Val(); got != extended {
		t.Errorf("expiry index score %v after the prune, want the record's %v", got, extended)
	}
	// Once its retention has passed from its last batch, it goes, and its bytes with it.
	cB.Set(start.Add(48*time.Hour + time.Second))
	if n, err := b.PruneRecordings(ctx); n != 1 || err != nil {
		t.Errorf("prune after the new retention took %d (%v), want 1", n, err)
	}
	if n, err := b.HostRecordingBytes(ctx, "b1"); n != 0 || err != nil {
		t.Errorf("host total after the prune %d (%v), want 0", n, err)
	}
}

// TestPageAfterAbsentMember: a page after a position whose member is not in the index among
// members of its own score (another shard's certificate, or one pruned) starts at the first
// member after it, wherever it falls among them, on redis-server and miniredis.
func TestPageAfterAbsentMember(t *testing.T) {
	for name, rdb := range map[string]redis.UniversalClient{
		"redis-server": redis.NewClient(&redis.Options{Addr: testenv.StartRedis(t).Addr}),
		"miniredis":    redis.NewClient(&redis.Options{Addr: miniredis.RunT(t).Addr()}),
	} {
		t.Run(name, func(t *testing.T) {
			defer rdb.Close()
			ctx := context.Background()
			st := store.NewRecordings(rdb, "", nil)
			const score = 1_700_000_000_000
			id := func(i int) string { return fmt.Sprintf("%024x", i) }
			rdb.ZAdd(ctx, store.Keys{}.RecordingIndex(), redis.Z{Score: score - 1, Member: id(999)}, redis.Z{Score: score + 1, Member: id(0)})
			for i := 2; i <= 200; i += 2 {
				rdb.ZAdd(ctx, store.Keys{}.RecordingIndex(), redis.Z{Score: score, Member: id(i)})
			}
			for _, c := range []struct {
				after int
				want  string // where the page of 3 after it ends; "" when it is the last
			}{{0, id(6)}, {1, id(6)}, {2, id(8)}, {3, id(8)}, {101, id(106)}, {195, id(200)}, {197, ""}, {199, ""}, {200, ""}, {201, ""}} {
				_, next, err := st.SessionRecordings(ctx, time.Time{}, ca.RecordingCursor{Start: score, ID: id(c.after)}, 3)
				if err != nil || next.ID != c.want {
					t.Errorf("after %s: the page of 3 ends at %q (%v), want %q", id(c.after), next.ID, err, c.want)
				}
			}
		})
	}
}
