package audit_test

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/audit"
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
		if v, _ := rdb.Get(ctx, keys.AuditStripes()).Result(); v != "4" {
			t.Errorf("stripe count %q after the migration, want 4", v)
		}
		if err := l.Checkpoint(ctx); err != nil {
			t.Fatal(err)
		}
		rep, _ := verifyAll(t, rdb, key)
		if rep.Records != 9 || rep.Checkpoints != 1 {
			t.Errorf("verify: %d records, %d checkpoints; want 9 and 1", rep.Records, rep.Checkpoints)
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
