package audit_test

import (
	"context"
	"encoding/json"
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

// clock is a settable clock for Options.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// TestStripesWaitForLayout: on a store whose layout is older than store.LayoutStripes (a
// rolling upgrade whose older replicas and tools read stripe 0 alone), a Log configured with
// stripes appends to stripe 0 alone, raises no stripe count and takes no checkpoint, so that
// an older reader that walks stripe 0 reads the whole log; once `sshca store migrate` moved
// the store on, it stripes at its next look at the layout (within 5 s). Whenever the stripe
// count is above 1, the store's layout is one that older readers refuse. An empty store
// starts at the current layout and stripes at once. Against a real redis-server.
func TestStripesWaitForLayout(t *testing.T) {
	r := testenv.StartRedis(t)
	ctx := context.Background()
	key := []byte("0123456789abcdef0123456789abcdef")
	keys := store.Keys{}
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { rdb.FlushAll(ctx); rdb.Close() })

	t.Run("layout 2: stripe 0 until migrated", func(t *testing.T) {
		rdb.FlushAll(ctx)
		// A store of layout 2, in use: its generation record and its layout.
		st := store.NewRedis(rdb, store.RedisOptions{})
		if _, err := st.Refused(ctx, testenv.PublicKey(t), nil, testenv.PublicKey(t)); err != nil {
			t.Fatal(err)
		}
		rdb.Set(ctx, keys.StoreLayout(), 2, 0)
		st = store.NewRedis(rdb, store.RedisOptions{}) // a replica started on it

		clk := &clock{t: time.Unix(1_800_000_000, 0)}
		l := audit.New(rdb, audit.Options{Key: key, Stripes: 4, Home: new(2), Marks: st, Now: clk.now})
		for i := range 5 {
			if err := l.Append(ctx, record(i)); err != nil {
				t.Fatal(err)
			}
		}
		if err := l.Checkpoint(ctx); err != nil {
			t.Fatal(err)
		}
		if n, _ := rdb.XLen(ctx, stripeStream(0)).Result(); n != 5 {
			t.Errorf("stripe 0 holds %d entries at layout 2, want the 5 records (no checkpoint)", n)
		}
		for i := 1; i < 4; i++ {
			if n, _ := rdb.Exists(ctx, stripeStream(i)).Result(); n != 0 {
				t.Errorf("stripe %d was written while the store's layout is 2", i)
			}
		}
		if n, _ := rdb.Exists(ctx, keys.AuditStripes()).Result(); n != 0 {
			t.Error("the stripe count was raised while the store's layout is 2")
		}

		// Migrated: the Log stripes at its next look, not before.
		m, err := store.NewRedis(rdb, store.RedisOptions{}).Migrate(ctx)
		if err != nil || m != (store.Migration{From: 2, To: store.LayoutVersion}) {
			t.Fatalf("migrate = %+v, %v", m, err)
		}
		if err := l.Append(ctx, record(5)); err != nil {
			t.Fatal(err)
		}
		if n, _ := rdb.XLen(ctx, stripeStream(0)).Result(); n != 6 {
			t.Errorf("stripe 0 holds %d entries; the Log looked at the layout again before 5 s", n)
		}
		clk.add(5 * time.Second)
		for i := 6; i < 9; i++ {
			if err := l.Append(ctx, record(i)); err != nil {
				t.Fatal(err)
			}
		}
		if n, _ := rdb.XLen(ctx, stripeStream(2)).Result(); n != 3 {
			t.Errorf("the home stripe holds %d entries after the migration, want 3", n)
		}
		// Before its first append beyond stripe 0, the Log appended a striped mark to it.
		if s0 := entriesOf(t, rdb, 0); len(s0) != 7 || !strings.HasPrefix(field(s0[6], "rec"), `{"striped":`) {
			t.Errorf("stripe 0 holds %d entries; want the 6 records and a striped mark last", len(s0))
		}
		if v, _ := rdb.Get(ctx, keys.AuditStripes()).Result(); v != "4" {
			t.Errorf("stripe count %q after the migration, want 4", v)
		}
		if err := l.Checkpoint(ctx); err != nil {
			t.Fatal(err)
		}
		rep, _ := verifyAll(t, rdb, key)
		if rep.Records != 9 || rep.Checkpoints != 1 || rep.StripedMarks != 1 {
			t.Errorf("verify: %d records, %d checkpoints, %d striped marks; want 9, 1 and 1", rep.Records, rep.Checkpoints, rep.StripedMarks)
		}
	})

	t.Run("empty store stripes at once", func(t *testing.T) {
		rdb.FlushAll(ctx)
		l := audit.New(rdb, audit.Options{Key: key, Stripes: 3, Home: new(1)})
		if err := l.Append(ctx, record(0)); err != nil {
			t.Fatal(err)
		}
		if n, _ := rdb.XLen(ctx, stripeStream(1)).Result(); n != 1 {
			t.Error("a Log on an empty store did not append to its home stripe")
		}
		if v, _ := rdb.Get(ctx, keys.StoreLayout()).Result(); v != strconv.Itoa(store.LayoutVersion) {
			t.Errorf("an empty store striped at layout %q, want %d", v, store.LayoutVersion)
		}
	})

	t.Run("a store newer than this code", func(t *testing.T) {
		rdb.FlushAll(ctx)
		l := audit.New(rdb, audit.Options{Key: key, Stripes: 3})
		if err := l.Append(ctx, record(0)); err != nil {
			t.Fatal(err)
		}
		rdb.Set(ctx, keys.StoreLayout(), store.LayoutVersion+1, 0)
		// Readers (verify, archive, report, rebuild) refuse it: it may keep records where
		// this code does not look, as layout 3's stripes were to layout 2's readers.
		_, err := audit.New(rdb, audit.Options{Key: key}).Verify(ctx, nil)
		if err == nil || !strings.Contains(err.Error(), "upgrade sshca") {
			t.Errorf("verify of a store of a newer layout: %v, want a refusal that says to upgrade", err)
		}
		var buf strings.Builder
		if _, err := audit.New(rdb, audit.Options{Key: key}).Archive(ctx, &buf, nil); err == nil || buf.Len() != 0 {
			t.Errorf("archive of a store of a newer layout: %v, %d bytes written", err, buf.Len())
		}
		// A Log that has not striped yet refuses to.
		l2 := audit.New(rdb, audit.Options{Key: key, Stripes: 3})
		if err := l2.Append(ctx, record(1)); err == nil || !strings.Contains(err.Error(), "upgrade sshca") {
			t.Errorf("append to a store of a newer layout: %v", err)
		}
	})
}

// TestStripedMark: sshca of layout 2 reads stripe 0 alone and never reads the store's layout
// before the chain, so stripe 0 of a striped log starts with a striped mark that such a reader
// cannot decode: its decoding of a record (json.Unmarshal into ca.AuditRecord, as the check of
// every entry was then and is for records now) fails with a message that says to upgrade,
// before anything is read or restored. This reader hands it to no caller; the mark is chained
// and MACed like a record, so one changed without the key fails, and one of another shape
// written with the key is refused as malformed. A log of one stripe has none.
func TestStripedMark(t *testing.T) {
	r := testenv.StartRedis(t)
	ctx := context.Background()
	key := []byte("0123456789abcdef0123456789abcdef")
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { rdb.Close() })

	if err := audit.New(rdb, audit.Options{Key: key}).Append(ctx, record(0)); err != nil {
		t.Fatal(err)
	}
	if s0 := entriesOf(t, rdb, 0); len(s0) != 1 || strings.Contains(field(s0[0], "rec"), "striped") {
		t.Fatalf("a log of one stripe got a striped mark: %d entries", len(s0))
	}

	rdb.FlushAll(ctx)
	for home := range 3 {
		if err := audit.New(rdb, audit.Options{Key: key, Stripes: 3, Home: new(home)}).Append(ctx, record(home)); err != nil {
			t.Fatal(err)
		}
	}
	s0 := entriesOf(t, rdb, 0)
	if len(s0) != 2 {
		t.Fatalf("stripe 0 holds %d entries, want the striped mark and one record", len(s0))
	}
	mark := field(s0[0], "rec")
	var old ca.AuditRecord
	if err := json.Unmarshal([]byte(mark), &old); err == nil || !strings.Contains(err.Error(), "upgrade sshca") || !strings.Contains(err.Error(), "striped") {
		t.Errorf("a one-stripe reader's decoding of the mark: %v; want a failure that says the log is striped and to upgrade", err)
	}
	var seen []audit.Entry
	rep, err := audit.New(rdb, audit.Options{Key: key}).Verify(ctx, func(e audit.Entry) { seen = append(seen, e) })
	if err != nil || rep.Records != 3 || rep.StripedMarks != 1 || len(seen) != 3 {
		t.Fatalf("verify: %+v, %d handed out, %v; want 3 records and 1 striped mark", rep, len(seen), err)
	}
	for _, e := range seen {
		if e.Striped != nil || e.Record.Identity == "" {
			t.Errorf("a caller was handed a striped mark: %+v", e)
		}
	}

	// Changed without the key: the MAC fails. Another shape with the key: malformed.
	for name, rec := range map[string]string{
		"changed":   strings.Replace(mark, `"layout":3`, `"layout":4`, 1),
		"malformed": strings.Replace(mark, `"stripes":3`, `"stripes":3,"x":1`, 1),
	} {
		mac := field(s0[0], "mac")
		if name == "malformed" {
			mac = docStripeMAC(key, "", 1, 0, rec)
		}
		rewrite(t, rdb, 0, s0[0], rec, mac)
		_, err := audit.New(rdb, audit.Options{Key: key}).Verify(ctx, nil)
		if want := map[string]string{"changed": "MAC does not match", "malformed": "malformed striped mark"}[name]; err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s mark: %v; want %q", name, err, want)
		}
	}
}

// rewrite replaces entry m of stripe i with one of rec and mac (same seq and prev), in place.
func rewrite(t *testing.T, rdb *redis.Client, i int, m redis.XMessage, rec, mac string) {
	t.Helper()
	ctx := context.Background()
	all := entriesOf(t, rdb, i)
	rdb.Del(ctx, stripeStream(i))
	for _, e := range all {
		v := map[string]any{"seq": field(e, "seq"), "prev": field(e, "prev"), "mac": field(e, "mac"), "rec": field(e, "rec")}
		if e.ID == m.ID {
			v["rec"], v["mac"] = rec, mac
		}
		rdb.XAdd(ctx, &redis.XAddArgs{Stream: stripeStream(i), ID: e.ID, Values: v})
	}
}
