package audit_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/internal/testenv"
)

// TestGroupCommitKill9: redis-server (append-only file, fsync always) is killed with SIGKILL
// while callers append in groups, and started again. The chain must still verify from its
// first record, hold every record whose Append returned nil exactly once (a batch is one
// script: all of it or none of it is in the file), and take appends again afterwards from
// the head it finds, though the replica's last known head may be older or newer than it.
func TestGroupCommitKill9(t *testing.T) {
	r := testenv.StartRedisPersistent(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond,
		ReadTimeout: 500 * time.Millisecond, WriteTimeout: 500 * time.Millisecond})
	t.Cleanup(func() { rdb.Close() })
	key := []byte("0123456789abcdef0123456789abcdef")
	l := audit.New(rdb, audit.Options{Key: key})

	var mu sync.Mutex
	acked := map[string]bool{}
	var n, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for c := range 16 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				rec := record(c*100000 + i)
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				err := l.Append(ctx, rec)
				cancel()
				if err != nil {
					failed.Add(1)
					time.Sleep(10 * time.Millisecond)
					continue
				}
				mu.Lock()
				acked[rec.Identity] = true
				mu.Unlock()
				n.Add(1)
			}
		})
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				close(stop)
				wg.Wait()
				t.Fatalf("%s: not within 30 s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFor("200 records before the kill", func() bool { return n.Load() >= 200 })
	r.Stop()                           // SIGKILL, mid-batch: the callers keep appending
	time.Sleep(300 * time.Millisecond) // appends fail meanwhile
	r.Start()
	after := n.Load()
	waitFor("200 records after the restart", func() bool { return n.Load() >= after+200 })
	close(stop)
	wg.Wait()

	seen := map[string]int{}
	rep, err := audit.New(rdb, audit.Options{Key: key}).Verify(context.Background(), func(e audit.Entry) { seen[e.Record.Identity]++ })
	if err != nil {
		t.Fatalf("verify after kill -9: %+v %v", rep, err)
	}
	for id, k := range seen {
		if k != 1 {
			t.Errorf("%s kept %d times", id, k)
		}
	}
	missing := 0
	for id := range acked {
		if seen[id] != 1 {
			missing++
		}
	}
	if missing > 0 {
		t.Errorf("%d of %d acknowledged records are not in the chain", missing, len(acked))
	}
	t.Logf("%d records acknowledged, %d appends failed, %d records in the chain", len(acked), failed.Load(), rep.Records)
}
