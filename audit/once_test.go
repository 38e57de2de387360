package audit_test

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
)

// onceRig is redis-server, a dropping proxy in front of it with a client that retries nothing
// (serve's: an answer lost is an error, and the caller decides), and a direct client for
// another replica.
type onceRig struct {
	proxy           *testenv.ReplyDropper
	proxied, direct *redis.Client
}

func newOnceRig(t *testing.T) onceRig {
	srv := testenv.StartRedis(t)
	r := onceRig{proxy: testenv.DropReply(t, srv.Addr),
		direct: redis.NewClient(&redis.Options{Addr: srv.Addr})}
	r.proxied = redis.NewClient(&redis.Options{Addr: r.proxy.Addr, MaxRetries: -1})
	t.Cleanup(func() { r.proxied.Close(); r.direct.Close() })
	// Loads the append scripts: the first run of a script is an EVALSHA that Redis refuses
	// (NOSCRIPT) before the EVAL that runs it, and an answer dropped then lands nothing.
	warm := audit.New(r.direct, audit.Options{Prefix: "warm-up"})
	if err := warm.Append(context.Background(), ca.AuditRecord{Identity: "warm-up"}); err != nil {
		t.Fatal(err)
	}
	if err := warm.AppendOnce(context.Background(), ca.AuditRecord{Identity: "warm-up"}, ca.NewOnceKey()); err != nil {
		t.Fatal(err)
	}
	return r
}

// keyed is a record and the key it is appended with (AppendOnce).
type keyed struct {
	rec  ca.AuditRecord
	once uint64
}

func once(rec ca.AuditRecord) keyed { return keyed{rec, ca.NewOnceKey()} }

// lose appends k through l with its answer dropped: the append lands and l's caller is told
// it failed.
func (r onceRig) lose(t *testing.T, l *audit.Log, prefix string, k keyed) {
	t.Helper()
	r.proxy.Arm(store.Keys{Prefix: prefix}.AuditOnce(k.once))
	if err := l.AppendOnce(context.Background(), k.rec, k.once); err == nil {
		t.Fatalf("append of %s whose answer was dropped succeeded", k.rec.Identity)
	}
	if r.proxy.Armed() {
		t.Fatal("the proxy dropped no answer: the test does not test a lost answer")
	}
	if n, err := r.direct.Exists(context.Background(), store.Keys{Prefix: prefix}.AuditOnce(k.once)).Result(); err != nil || n != 1 {
		t.Fatalf("the append whose answer was dropped did not land (%v): the test does not test a lost answer", err)
	}
}

// count verifies the chain and counts its records by identity.
func count(t *testing.T, rdb *redis.Client, o audit.Options) map[string]int {
	t.Helper()
	seen := map[string]int{}
	if rep, err := audit.New(rdb, o).Verify(context.Background(), func(e audit.Entry) { seen[e.Record.Identity]++ }); err != nil {
		t.Fatalf("verify: %+v %v", rep, err)
	}
	return seen
}

// TestAppendOnceAfterLostReplyAndMovedHead: a record with a Once key whose first append
// landed but whose answer was lost, appended again after another replica moved the head, is
// in the chain once; the chain verifies; the records around it are kept once each. Its Once
// key still holds after an archive trimmed the record away, and neither the archive nor the
// chain in Redis after it is troubled by the key. With and without the generation mark.
func TestAppendOnceAfterLostReplyAndMovedHead(t *testing.T) {
	ctx := context.Background()
	r := newOnceRig(t)
	key := []byte("0123456789abcdef0123456789abcdef")
	for _, marked := range []bool{false, true} {
		prefix := fmt.Sprintf("once%v", marked)
		o := audit.Options{Key: key, Prefix: prefix}
		var st *store.Redis
		if marked {
			st = store.NewRedis(r.proxied, store.RedisOptions{Prefix: prefix})
			o.Marks = st
		}
		l := audit.New(r.proxied, o)
		other := audit.New(r.direct, audit.Options{Key: key, Prefix: prefix}) // another replica
		if err := l.Append(ctx, ca.AuditRecord{Outcome: "issued", Identity: "before"}); err != nil {
			t.Fatal(err)
		}
		lost := once(ca.AuditRecord{Outcome: "unavailable", Identity: "lost-reply", Serial: 7})
		r.lose(t, l, prefix, lost)
		if err := other.Append(ctx, ca.AuditRecord{Outcome: "issued", Identity: "moved-head"}); err != nil {
			t.Fatal(err)
		}
		if err := l.AppendOnce(ctx, lost.rec, lost.once); err != nil {
			t.Fatalf("the retry: %v", err)
		}
		if err := l.Append(ctx, ca.AuditRecord{Outcome: "issued", Identity: "after"}); err != nil {
			t.Fatal(err)
		}
		want := map[string]int{"before": 1, "lost-reply": 1, "moved-head": 1, "after": 1}
		if got := count(t, r.direct, audit.Options{Key: key, Prefix: prefix}); !maps.Equal(got, want) {
			t.Errorf("records by identity %v, want %v", got, want)
		}
		// The key names the record's place in the chain and lasts AuditOnceWindow.
		onceKey := store.Keys{Prefix: prefix}.AuditOnce(lost.once)
		if v, err := r.direct.Get(ctx, onceKey).Result(); err != nil || v != "2" {
			t.Errorf("%s = %q, %v; want 2, the record's seq", onceKey, v, err)
		}
		if ttl, err := r.direct.PTTL(ctx, onceKey).Result(); err != nil || ttl <= ca.AuditOnceWindow-time.Minute || ttl > ca.AuditOnceWindow {
			t.Errorf("%s expires in %v (%v), want about %v", onceKey, ttl, err, ca.AuditOnceWindow)
		}
		if st != nil {
			if err := st.CheckState(ctx); err != nil {
				t.Errorf("store state after the lost answer: %v", err)
			}
		}

		// Archive and trim, then try once more: still once, and archive and chain verify.
		var arch bytes.Buffer
		if _, err := other.Archive(ctx, &arch, nil); err != nil {
			t.Fatalf("archive: %v", err)
		}
		if err := l.AppendOnce(ctx, lost.rec, lost.once); err != nil {
			t.Fatalf("the retry after an archive: %v", err)
		}
		ar, err := other.VerifyArchive(bytes.NewReader(arch.Bytes()), nil)
		if err != nil || ar.Records != 4 {
			t.Fatalf("archive: %+v %v, want 4 records", ar, err)
		}
		rep, err := other.VerifyAfter(ctx, ar, nil)
		if err != nil || rep.Records != 0 {
			t.Errorf("the chain after the archive: %+v %v, want no record", rep, err)
		}
	}
}

// TestAppendOnceAmongOthers: the retry of a record kept with its answer lost, appended while
// many other records are (in group commits of their own, before and after it), is kept once,
// and so is every other record.
func TestAppendOnceAmongOthers(t *testing.T) {
	ctx := context.Background()
	r := newOnceRig(t)
	o := audit.Options{Key: []byte("0123456789abcdef0123456789abcdef")}
	l := audit.New(r.proxied, o)
	lost := once(ca.AuditRecord{Outcome: "unavailable", Identity: "lost-reply"})
	r.lose(t, l, "sshca", lost)
	if err := audit.New(r.direct, o).Append(ctx, ca.AuditRecord{Outcome: "issued", Identity: "moved-head"}); err != nil {
		t.Fatal(err)
	}
	const callers = 32
	var wg sync.WaitGroup
	errs := make(chan error, callers+1)
	want := map[string]int{"lost-reply": 1, "moved-head": 1}
	for c := range callers {
		id := "r" + strconv.Itoa(c)
		want[id] = 1
		wg.Go(func() { errs <- l.Append(ctx, ca.AuditRecord{Outcome: "issued", Identity: id}) })
		if c == callers/2 {
			wg.Go(func() { errs <- l.AppendOnce(ctx, lost.rec, lost.once) })
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if got := count(t, r.direct, o); !maps.Equal(got, want) {
		t.Errorf("records by identity %v, want %v", got, want)
	}
}

// TestAppendOnceKeepsDistinctRecords: the key says which records are the same, not their
// content. Two records alike in every field (two requests that failed the same way in the
// same second) with their own Once keys, each kept with its answer lost and then retried, are
// both kept, once each; two alike without a key are both kept too.
func TestAppendOnceKeepsDistinctRecords(t *testing.T) {
	ctx := context.Background()
	r := newOnceRig(t)
	o := audit.Options{Key: []byte("0123456789abcdef0123456789abcdef")}
	l := audit.New(r.proxied, o)
	at := time.Date(2026, 11, 30, 7, 0, 0, 0, time.UTC)
	twin := func(id string) ca.AuditRecord {
		return ca.AuditRecord{Time: at, Action: ca.ActionUser, Outcome: "unavailable", Identity: id, Serial: 7, KeyID: id + "#7"}
	}
	a, b := once(twin("twin")), once(twin("twin"))
	// A record after each lost answer: l learns the head its lost append moved, so the next
	// one's first run appends (and its answer is the one dropped).
	r.lose(t, l, "sshca", a)
	if err := l.Append(ctx, twin("plain")); err != nil {
		t.Fatal(err)
	}
	r.lose(t, l, "sshca", b)
	for _, k := range []keyed{a, b, {twin("plain"), 0}} {
		var err error
		if k.once != 0 {
			err = l.AppendOnce(ctx, k.rec, k.once)
		} else {
			err = l.Append(ctx, k.rec)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if got, want := count(t, r.direct, o), map[string]int{"twin": 2, "plain": 2}; !maps.Equal(got, want) {
		t.Errorf("records by identity %v, want %v", got, want)
	}
}

// TestAppendOnceStripes: with several stripes, a record with a Once key is kept in stripe 0
// whatever the Log's home stripe, and its retry after a lost answer, once other records moved
// stripe 0's head, finds its key there: once in the whole log, in stripe 0. Records without a
// key still go to the home stripe.
func TestAppendOnceStripes(t *testing.T) {
	ctx := context.Background()
	r := newOnceRig(t)
	home := 2
	o := audit.Options{Key: []byte("0123456789abcdef0123456789abcdef"), Stripes: 3}
	l := audit.New(r.proxied, audit.Options{Key: o.Key, Stripes: 3, Home: &home})
	zero := 0
	other := audit.New(r.direct, audit.Options{Key: o.Key, Stripes: 3, Home: &zero})
	if err := l.Append(ctx, ca.AuditRecord{Outcome: "issued", Identity: "home"}); err != nil {
		t.Fatal(err)
	}
	lost := once(ca.AuditRecord{Outcome: "unavailable", Identity: "lost-reply"})
	r.lose(t, l, "sshca", lost)
	// Another replica's record with a Once key of its own: it too stays on stripe 0 (one
	// without would move on to stripe 1 on finding the head moved), and moves its head.
	if err := other.AppendOnce(ctx, ca.AuditRecord{Outcome: "unavailable", Identity: "moved-head"}, ca.NewOnceKey()); err != nil {
		t.Fatal(err)
	}
	if err := l.AppendOnce(ctx, lost.rec, lost.once); err != nil {
		t.Fatalf("the retry: %v", err)
	}
	if err := l.Append(ctx, ca.AuditRecord{Outcome: "issued", Identity: "home-again"}); err != nil {
		t.Fatal(err)
	}
	where := map[string][]int{}
	if rep, err := audit.New(r.direct, o).Verify(ctx, func(e audit.Entry) {
		where[e.Record.Identity] = append(where[e.Record.Identity], e.Stripe)
	}); err != nil {
		t.Fatalf("verify: %+v %v", rep, err)
	}
	want := map[string][]int{"home": {2}, "home-again": {2}, "lost-reply": {0}, "moved-head": {0}}
	if fmt.Sprint(where) != fmt.Sprint(want) {
		t.Errorf("records by identity, with their stripes: %v, want %v", where, want)
	}
}

// TestAppendOnceOnCluster: on a real Redis Cluster of 3 masters, with stripes whose tags sit
// on other masters than stripe 0's and the generation marks on (serve's), a record with a
// Once key is kept (its key in the slot of the chain it goes to: no cross-slot script), once
// however many times it is appended, and records without one go on to the home stripe.
func TestAppendOnceOnCluster(t *testing.T) {
	ctx := context.Background()
	c := testenv.StartRedisCluster(t, 3)
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs})
	t.Cleanup(func() { cc.Close() })
	key := []byte("0123456789abcdef0123456789abcdef")
	home := 1
	l := audit.New(cc, audit.Options{Key: key, Stripes: 3, Home: &home, Marks: store.NewRedis(cc, store.RedisOptions{AuditStripes: 3})})
	k := once(ca.AuditRecord{Outcome: "unavailable", Identity: "once"})
	plain := keyed{ca.AuditRecord{Outcome: "issued", Identity: "plain"}, 0}
	for _, k := range []keyed{plain, k, k, plain, k} {
		var err error
		if k.once != 0 {
			err = l.AppendOnce(ctx, k.rec, k.once)
		} else {
			err = l.Append(ctx, k.rec)
		}
		if err != nil {
			t.Fatalf("append %s: %v", k.rec.Identity, err)
		}
	}
	where := map[string][]int{}
	if rep, err := audit.New(cc, audit.Options{Key: key}).Verify(ctx, func(e audit.Entry) {
		where[e.Record.Identity] = append(where[e.Record.Identity], e.Stripe)
	}); err != nil {
		t.Fatalf("verify: %+v %v", rep, err)
	}
	if want := map[string][]int{"plain": {1, 1}, "once": {0}}; fmt.Sprint(where) != fmt.Sprint(want) {
		t.Errorf("records by identity, with their stripes: %v, want %v", where, want)
	}
}

// TestAppendOnceRefusesKeyZero: 0 is no key (the zero value a caller forgot to set); AppendOnce
// refuses it and appends nothing, rather than treating every such record as one.
func TestAppendOnceRefusesKeyZero(t *testing.T) {
	srv := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	l := audit.New(rdb, audit.Options{})
	if err := l.AppendOnce(context.Background(), ca.AuditRecord{Identity: "zero"}, 0); err == nil || !strings.Contains(err.Error(), "other than 0") {
		t.Errorf("AppendOnce with key 0 = %v, want refused", err)
	}
	if got := count(t, rdb, audit.Options{}); len(got) != 0 {
		t.Errorf("records %v, want none", got)
	}
}

// BenchmarkAppendOnce: the cost of keeping one record with a Once key (AppendOnce: alone, its
// key looked up and set in the same script), beside BenchmarkAppend's plain record, against a
// real redis-server on loopback. Only records that may be retried (a signed certificate not
// handed out) take this path.
func BenchmarkAppendOnce(b *testing.B) {
	r := testenv.StartRedis(b)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	l := audit.New(rdb, audit.Options{Key: []byte("k")})
	ctx := context.Background()
	for i := 0; b.Loop(); i++ {
		if err := l.AppendOnce(ctx, ca.AuditRecord{Action: "issue", Outcome: "unavailable", Identity: "user" + strconv.Itoa(i)}, ca.NewOnceKey()); err != nil {
			b.Fatal(err)
		}
	}
}
