package store_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
)

// BenchmarkPruneRecordings: one batch of 100 expired sessions pruned on a real redis-server
// (what a new session's append may add to its answer), in four round trips.
func BenchmarkPruneRecordings(b *testing.B) {
	r := testenv.StartRedis(b)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	b.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	c := &clock{t: time.Now()}
	st := store.NewRecordings(rdb, "", c.Now).WithRetention(24 * time.Hour)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		c.Set(time.Now())
		for j := range 100 {
			id := fmt.Sprintf("s%d-%d", i, j)
			rec := ca.SessionRecording{ID: id, Host: "b1", Header: ca.RecordingHeader{Version: 1, ID: id, Start: c.Now()}, Received: 1}
			if ok, err := st.AppendRecording(ctx, rec, 0, false, [][]byte{[]byte("h")}); !ok || err != nil {
				b.Fatal(ok, err)
			}
		}
		c.Set(c.Now().Add(25 * time.Hour))
		b.StartTimer()
		if n, err := st.PruneRecordings(ctx); n != 100 || err != nil {
			b.Fatal(n, err)
		}
	}
}
