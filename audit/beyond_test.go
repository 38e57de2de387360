package audit_test

import (
	"context"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/internal/testenv"
)

// TestStripeCountHidesNoStripe: against a real redis-server, a log whose one replica appends
// to stripe 2 of 3 (its records and checkpoints all there, none in the stripes a reader walks
// when the count is gone). Lowering the stripe count to 1, or deleting it (no audit key
// needed), must not hide stripe 2 from a reader configured without stripes (`sshca audit
// verify`, archive, report, store rebuild): no checkpoint walked says more stripes were used,
// so the reader looks for stripes beyond the count and fails naming the stripe and the count
// to set. What should get past: the intact log, whose stripes 0 and 1 are empty, verifies.
func TestStripeCountHidesNoStripe(t *testing.T) {
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	key := []byte("0123456789abcdef0123456789abcdef")
	l := audit.New(rdb, audit.Options{Key: key, Stripes: 3, Home: new(2)})
	for i := range 3 {
		if err := l.Append(ctx, record(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	reader := audit.New(rdb, audit.Options{Key: key})
	if rep, err := reader.Verify(ctx, nil); err != nil || rep.Records != 3 || len(rep.Stripes) != 3 {
		t.Fatalf("intact: %+v %v; want 3 records in 3 stripes", rep, err)
	}
	for _, attack := range []struct {
		name string
		do   func() error
	}{
		{"count lowered to 1", func() error { return rdb.Set(ctx, "sshca:{audit}:stripes", "1", 0).Err() }},
		{"count deleted", func() error { return rdb.Del(ctx, "sshca:{audit}:stripes").Err() }},
	} {
		t.Run(attack.name, func(t *testing.T) {
			if err := attack.do(); err != nil {
				t.Fatal(err)
			}
			rep, err := reader.Verify(ctx, nil)
			if err == nil || !strings.Contains(err.Error(), "stripe 2 holds records") || !strings.Contains(err.Error(), "set it to 3") {
				t.Errorf("verify: %d records, %v; want stripe 2 found beyond the count, the count 3 named", rep.Records, err)
			}
			if _, err := reader.Archive(ctx, &strings.Builder{}, nil); err == nil {
				t.Error("archive went ahead without stripe 2")
			}
		})
	}
}

// BenchmarkVerify is Verify of a log of 3 stripes holding 30 records and a checkpoint each,
// as `sshca audit verify` runs it: what looking for stripes beyond the count adds (one
// pipeline of EXISTS, MaxStripes-3 of them) beside the walk itself.
func BenchmarkVerify(b *testing.B) {
	r := testenv.StartRedis(b)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	b.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	key := []byte("0123456789abcdef0123456789abcdef")
	for s := range 3 {
		l := audit.New(rdb, audit.Options{Key: key, Stripes: 3, Home: new(s)})
		for i := range 10 {
			if err := l.Append(ctx, record(s*100+i)); err != nil {
				b.Fatal(err)
			}
		}
		if err := l.Checkpoint(ctx); err != nil {
			b.Fatal(err)
		}
	}
	reader := audit.New(rdb, audit.Options{Key: key})
	b.ResetTimer()
	for b.Loop() {
		if rep, err := reader.Verify(ctx, nil); err != nil || rep.Records != 30 {
			b.Fatal(rep, err)
		}
	}
}

// TestBaseMarkStaysInItsStripe: against a real redis-server, after an archive of 3 stripes
// (each with a signed base mark), someone with write access but not the key makes stripe 2
// start where stripe 1 does: stripe 1's base mark and head copied over stripe 2's, which hides
// whatever stripe 2 kept since (here a record appended after the archive) behind a mark signed
// with the key. Each base MAC names its stripe, so the copied mark does not verify in stripe
// 2, nor stripe 0's (which names none) in stripe 1. The control: the marks where they were
// verify.
func TestBaseMarkStaysInItsStripe(t *testing.T) {
	r := testenv.StartRedis(t)
	key := []byte("0123456789abcdef0123456789abcdef")
	ctx := context.Background()
	base := func(i int) string { return strings.Replace(stripeStream(i), ":log", ":base", 1) }
	for _, c := range []struct{ from, to int }{{1, 2}, {0, 1}} {
		rdb, logs := stripedRig(t, r, key, true)
		reader := audit.New(rdb, audit.Options{Key: key})
		if _, err := reader.Archive(ctx, &strings.Builder{}, nil); err != nil {
			t.Fatal(err)
		}
		if err := logs[c.to].Append(ctx, record(999)); err != nil {
			t.Fatal(err)
		}
		if rep, err := reader.Verify(ctx, nil); err != nil || rep.Records != 1 {
			t.Fatalf("after the archive: %+v %v; want the one record appended since", rep, err)
		}
		b, h := rdb.Get(ctx, base(c.from)).Val(), rdb.Get(ctx, stripeHead(c.from)).Val()
		if b == "" {
			t.Fatalf("stripe %d has no base mark after the archive", c.from)
		}
		rdb.Set(ctx, base(c.to), b, 0)
		rdb.Set(ctx, stripeHead(c.to), h, 0)
		if _, err := reader.Verify(ctx, nil); err == nil || !strings.Contains(err.Error(), "not signed") {
			t.Errorf("stripe %d's base mark copied to stripe %d: %v; want it refused as not signed", c.from, c.to, err)
		}
	}
}

// TestCheckpointRaisesCountAgain: a replica remembers that it raised the stripe count, so a
// count deleted afterwards (or its slot back from an older copy) would leave the stripes it
// goes on appending to beyond the count. Its next checkpoint raises the count again, and a
// reader without stripes walks them and verifies. The control: a count above the replica's
// stripes (another replica's, larger) is left as it is.
func TestCheckpointRaisesCountAgain(t *testing.T) {
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	key := []byte("0123456789abcdef0123456789abcdef")
	l := audit.New(rdb, audit.Options{Key: key, Stripes: 3, Home: new(2)})
	if err := l.Append(ctx, record(1)); err != nil {
		t.Fatal(err)
	}
	rdb.Del(ctx, "sshca:{audit}:stripes")
	if err := l.Append(ctx, record(2)); err != nil {
		t.Fatal(err)
	}
	if err := l.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if v := rdb.Get(ctx, "sshca:{audit}:stripes").Val(); v != "3" {
		t.Errorf("stripe count after the checkpoint %q, want 3", v)
	}
	if rep, err := audit.New(rdb, audit.Options{Key: key}).Verify(ctx, nil); err != nil || rep.Records != 2 {
		t.Errorf("verify: %+v %v; want the 2 records of stripe 2", rep, err)
	}
	rdb.Set(ctx, "sshca:{audit}:stripes", "5", 0)
	if err := l.Append(ctx, record(3)); err != nil {
		t.Fatal(err)
	}
	if err := l.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if v := rdb.Get(ctx, "sshca:{audit}:stripes").Val(); v != "5" {
		t.Errorf("stripe count %q after a checkpoint of a replica of 3 stripes, want 5 kept", v)
	}
}
