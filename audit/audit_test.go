package audit_test

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
)

// TestChain runs against a real redis-server and against miniredis (what `sshca dev` runs on).
func TestChain(t *testing.T) {
	t.Run("redis-server", func(t *testing.T) {
		r := testenv.StartRedis(t)
		testChain(t, func(t *testing.T) *redis.Client {
			rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
			t.Cleanup(func() { rdb.FlushAll(context.Background()); rdb.Close() })
			return rdb
		})
	})
	t.Run("miniredis", func(t *testing.T) {
		testChain(t, func(t *testing.T) *redis.Client {
			mr := miniredis.RunT(t)
			rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
			t.Cleanup(func() { rdb.Close() })
			return rdb
		})
	})
}

func record(i int) ca.AuditRecord {
	return ca.AuditRecord{Time: time.Unix(1764064800+int64(i), 0).UTC(), Action: ca.ActionUser, Outcome: "issued",
		Identity: fmt.Sprintf("user%d@example.com", i), Serial: uint64(1000 + i), Ticket: "OPS-1"}
}

func testChain(t *testing.T, newClient func(*testing.T) *redis.Client) {
	ctx := context.Background()
	key := []byte("0123456789abcdef0123456789abcdef")

	t.Run("concurrent appends form one chain", func(t *testing.T) {
		rdb := newClient(t)
		// Four replicas append at once.
		var wg sync.WaitGroup
		errs := make(chan error, 4)
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				l := audit.New(rdb, audit.Options{Key: key})
				for i := range 25 {
					if err := l.Append(ctx, record(w*100+i)); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		var seen []uint64
		rep, err := audit.New(rdb, audit.Options{Key: key}).Verify(ctx, func(e audit.Entry) { seen = append(seen, e.Seq) })
		if err != nil {
			t.Fatal(err)
		}
		if rep.Records != 100 || len(seen) != 100 || seen[99] != 100 {
			t.Fatalf("verified %d records (%d seen, last seq %v), want 100", rep.Records, len(seen), seen[len(seen)-1:])
		}
		// The chain is keyed: another key does not verify it.
		if _, err := audit.New(rdb, audit.Options{Key: []byte("another key")}).Verify(ctx, nil); err == nil ||
			!strings.Contains(err.Error(), "MAC does not match") {
			t.Fatalf("verified with the wrong key: %v", err)
		}
	})

	// Each way of tampering breaks the chain where it was done.
	for _, tt := range []struct {
		name   string
		tamper func(t *testing.T, rdb *redis.Client, ids []string)
		want   string
	}{
		{"a record removed", func(t *testing.T, rdb *redis.Client, ids []string) {
			rdb.XDel(ctx, "sshca:{audit}:log", ids[4])
		}, "record 6 where 5 should be"},
		{"a record changed", func(t *testing.T, rdb *redis.Client, ids []string) {
			// Streams cannot be edited in place: rewrite the log with entry 3 changed.
			msgs, _ := rdb.XRange(ctx, "sshca:{audit}:log", "-", "+").Result()
			rdb.Del(ctx, "sshca:{audit}:log")
			for _, m := range msgs {
				if m.ID == ids[2] {
					m.Values["rec"] = strings.Replace(m.Values["rec"].(string), "user2@", "mallory@", 1)
				}
				rdb.XAdd(ctx, &redis.XAddArgs{Stream: "sshca:{audit}:log", ID: m.ID, Values: m.Values})
			}
		}, "MAC does not match"},
		{"a record appended without the key", func(t *testing.T, rdb *redis.Client, ids []string) {
			forger := audit.New(rdb, audit.Options{}) // a plain SHA-256 link: no key
			if err := forger.Append(ctx, record(99)); err != nil {
				t.Fatal(err)
			}
		}, "MAC does not match"},
		{"the tail removed", func(t *testing.T, rdb *redis.Client, ids []string) {
			rdb.XDel(ctx, "sshca:{audit}:log", ids[len(ids)-1])
		}, "removed from the end"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rdb := newClient(t)
			l := audit.New(rdb, audit.Options{Key: key})
			for i := range 10 {
				if err := l.Append(ctx, record(i)); err != nil {
					t.Fatal(err)
				}
			}
			var ids []string
			if _, err := l.Verify(ctx, func(e audit.Entry) { ids = append(ids, e.ID) }); err != nil {
				t.Fatalf("before tampering: %v", err)
			}
			tt.tamper(t, rdb, ids)
			_, err := l.Verify(ctx, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Verify = %v, want an error saying %q", err, tt.want)
			}
		})
	}

	t.Run("archive, trim and go on", func(t *testing.T) {
		rdb := newClient(t)
		l := audit.New(rdb, audit.Options{Key: key})
		for i := range 10 {
			if err := l.Append(ctx, record(i)); err != nil {
				t.Fatal(err)
			}
		}
		var first bytes.Buffer
		rep, err := l.Archive(ctx, &first, nil)
		if err != nil || rep.Records != 10 {
			t.Fatalf("archive: %+v %v", rep, err)
		}
		if n, _ := rdb.XLen(ctx, "sshca:{audit}:log").Result(); n != 0 {
			t.Fatalf("%d entries left in Redis after archiving", n)
		}
		if rep, err := l.Verify(ctx, nil); err != nil || rep.Records != 0 {
			t.Fatalf("verify after trimming: %+v %v", rep, err)
		}
		for i := 10; i < 15; i++ {
			if err := l.Append(ctx, record(i)); err != nil {
				t.Fatal(err)
			}
		}
		if rep, err := l.Verify(ctx, nil); err != nil || rep.Records != 5 {
			t.Fatalf("verify of the records after the archive: %+v %v", rep, err)
		}
		var second bytes.Buffer
		if _, err := l.Archive(ctx, &second, nil); err != nil {
			t.Fatal(err)
		}
		// The archives, in order, are one chain from the first record.
		both := first.String() + second.String()
		ar, err := l.VerifyArchive(strings.NewReader(both), nil)
		if err != nil || ar.Records != 15 || ar.FirstSeq != 1 || ar.FirstPrev != "" || ar.LastSeq != 15 {
			t.Fatalf("archives: %+v %v", ar, err)
		}
		if _, err := l.VerifyArchive(strings.NewReader(second.String()+first.String()), nil); err == nil {
			t.Fatal("archives out of order verified")
		}
		if _, err := l.VerifyArchive(strings.NewReader(strings.Replace(both, "user3@", "userX@", 1)), nil); err == nil ||
			!strings.Contains(err.Error(), "MAC does not match") {
			t.Fatalf("a changed archived record verified: %v", err)
		}
	})

	t.Run("verify while others append", func(t *testing.T) {
		rdb := newClient(t)
		l := audit.New(rdb, audit.Options{Key: key})
		done := make(chan error, 1)
		go func() {
			w := audit.New(rdb, audit.Options{Key: key})
			for i := range 300 {
				if err := w.Append(ctx, record(i)); err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
		for range 30 {
			if _, err := l.Verify(ctx, nil); err != nil {
				t.Fatalf("verify during appends: %v", err)
			}
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})

	t.Run("an empty log verifies", func(t *testing.T) {
		rep, err := audit.New(newClient(t), audit.Options{Key: key}).Verify(ctx, nil)
		if err != nil || rep.Records != 0 {
			t.Fatalf("%+v %v", rep, err)
		}
	})
}

// BenchmarkAppend: the cost of keeping one record (a round trip to read the head, one
// transaction), against a real redis-server on loopback.
func BenchmarkAppend(b *testing.B) {
	r := testenv.StartRedis(b)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	l := audit.New(rdb, audit.Options{Key: []byte("k")})
	ctx := context.Background()
	for i := 0; b.Loop(); i++ {
		if err := l.Append(ctx, record(i)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAppendReplicas: how many records a second the audit log takes from several CA
// replicas at once (each its own Log and Redis client, as separate sshca processes; 16
// appenders in each, so group commit shares round trips within a replica), against a real
// redis-server on loopback, with one chain (stripes=1) and with four stripes (stripes=4, each
// replica's home stripe at random, as serve's). With one chain every replica links to the
// head it last saw, so an append that another replica overtook costs one more round trip: the
// chain's head is one key, and this is where it stopped scaling (docs/scaling.md). With
// stripes, a batch that lost the race moves to the next stripe and the replicas settle apart.
// An append that loses the race for the head more than its attempts allow fails:
// contention_failures counts them. p50-us and p99-us are the latency of one Append, what a
// certificate's answer waits for its audit record.
func BenchmarkAppendReplicas(b *testing.B) {
	for _, stripes := range []int{1, 4} {
		for _, replicas := range []int{1, 2, 4} {
			b.Run(fmt.Sprintf("stripes=%d/replicas=%d", stripes, replicas), func(b *testing.B) {
				benchmarkAppendReplicas(b, stripes, replicas)
			})
		}
	}
}

// benchmarkAppendReplicas is one case of BenchmarkAppendReplicas.
func benchmarkAppendReplicas(b *testing.B, stripes, replicas int) {
	r := testenv.StartRedis(b)
	ctx := context.Background()
	logs := make([]*audit.Log, replicas)
	for i := range logs {
		rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
		defer rdb.Close()
		logs[i] = audit.New(rdb, audit.Options{Key: []byte("k"), Stripes: stripes})
	}
	const perReplica = 16
	var next, failed atomic.Int64
	took := make([][]time.Duration, replicas*perReplica)
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for i := range replicas * perReplica {
		wg.Go(func() {
			for {
				n := next.Add(1)
				if n > int64(b.N) {
					return
				}
				began := time.Now()
				err := logs[i%replicas].Append(ctx, record(int(n)))
				took[i] = append(took[i], time.Since(began))
				if err != nil {
					// Lost the race for the head maxAttempts times: the limit this
					// measures, counted rather than fatal.
					if !strings.Contains(err.Error(), "too much contention") {
						b.Error(err)
						return
					}
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	kept := b.N - int(failed.Load())
	b.ReportMetric(float64(kept)/time.Since(start).Seconds(), "appends/s")
	b.ReportMetric(float64(failed.Load()), "contention_failures")
	all := slices.Concat(took...)
	slices.Sort(all)
	if len(all) > 0 {
		b.ReportMetric(float64(all[len(all)/2].Microseconds()), "p50-us")
		b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "p99-us")
	}
	b.StopTimer()
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	if rep, err := audit.New(rdb, audit.Options{Key: []byte("k")}).Verify(ctx, nil); err != nil || rep.Records != kept {
		b.Fatalf("the chain after the run: %d records, %v; want the %d appended, verified", rep.Records, err, kept)
	}
}
