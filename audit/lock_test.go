package audit

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
)

// TestAppendReturnsOnceKept: a caller whose record a leader has kept returns then, even while
// the chain's lock is held by the next leader (whose round trip may take a while): it does not
// wait for the lock to learn an outcome it already has. Real redis-server; the test plays both
// leaders by holding the lock itself.
func TestAppendReturnsOnceKept(t *testing.T) {
	srv := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	ctx := context.Background()
	l := New(rdb, Options{Key: make([]byte, KeySize)})

	l.lock <- struct{}{} // a leader holds the chain
	done := make(chan error, 1)
	go func() {
		done <- l.Append(ctx, ca.AuditRecord{Time: time.Now().UTC(), Action: "user", Outcome: "issued", Identity: "alice"})
	}()
	var batch []*pending
	for len(batch) == 0 {
		l.qmu.Lock()
		batch, l.queue = l.queue, nil
		l.qmu.Unlock()
		time.Sleep(time.Millisecond)
	}
	// The leader keeps the queued record and tells its caller, as lead does; the lock stays
	// held, as by the next leader in its round trip.
	err := l.commit(batch, 0)
	for _, b := range batch {
		b.done <- err
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Append = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Append waited for the chain's lock after its record was kept")
	}
	<-l.lock
	rep, err := l.Verify(ctx, nil)
	if err != nil || rep.Records != 1 {
		t.Fatalf("verify: %+v %v, want the one record", rep, err)
	}
}
