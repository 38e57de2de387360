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
