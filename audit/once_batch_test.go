package audit

import (
	"context"
	"maps"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
)

// queueAppends holds the chain's lock while recs are appended, one caller each, until all
// are queued, then lets them go: the first caller to take the lock commits them as one batch.
// It returns each caller's outcome in the order of recs.
func queueAppends(t *testing.T, l *Log, recs ...ca.AuditRecord) []error {
	t.Helper()
	l.lock <- struct{}{} // a leader holds the chain
	outs := make([]chan error, len(recs))
	for i, rec := range recs {
		outs[i] = make(chan error, 1)
		go func() { outs[i] <- l.Append(context.Background(), rec) }()
		for queued := 0; queued <= i; time.Sleep(time.Millisecond) {
			l.qmu.Lock()
			queued = len(l.queue)
			l.qmu.Unlock()
		}
	}
	<-l.lock
	errs := make([]error, len(recs))
	for i, c := range outs {
		select {
		case errs[i] = <-c:
		case <-time.After(20 * time.Second):
			t.Fatalf("append %d did not return", i)
		}
	}
	return errs
}

// countIdentities verifies l's chain and counts its records by identity.
func countIdentities(t *testing.T, l *Log) map[string]int {
	t.Helper()
	seen := map[string]int{}
	if rep, err := l.Verify(context.Background(), func(e Entry) { seen[e.Record.Identity]++ }); err != nil {
		t.Fatalf("verify: %+v %v", rep, err)
	}
	return seen
}

// TestAppendOnceMixedBatchLostReply: a batch holding a record with a Once key and records
// without one, whose script's answer is lost and which go-redis runs again (a client that
// retries, as TestAppendSurvivesLostReply's), is in the chain once: the second run finds the
// Once key that the first run set, and must not take the batch's other records, which that
// same run kept, for records still to append. Real redis-server behind a proxy that drops the
// one answer.
func TestAppendOnceMixedBatchLostReply(t *testing.T) {
	srv := testenv.StartRedis(t)
	proxy := testenv.DropReply(t, srv.Addr)
	rdb := proxy.RetryingClient(t)
	direct := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { direct.Close() })
	key := make([]byte, KeySize)
	l := New(rdb, Options{Key: key})
	// Loads the script: a dropped EVALSHA that Redis refused (NOSCRIPT) lands nothing.
	if err := l.Append(context.Background(), ca.AuditRecord{Outcome: "issued", Identity: "before"}); err != nil {
		t.Fatal(err)
	}
	once := ca.AuditRecord{Outcome: "unavailable", Identity: "once", Serial: 7, Once: ca.NewOnceKey()}
	proxy.Arm(once.Once)
	errs := queueAppends(t, l,
		ca.AuditRecord{Outcome: "issued", Identity: "plain-1"}, once, ca.AuditRecord{Outcome: "issued", Identity: "plain-2"})
	if proxy.Armed() {
		t.Fatal("the proxy dropped no answer: the test does not test a lost answer")
	}
	for i, err := range errs {
		if err != nil {
			t.Errorf("append %d: %v", i, err)
		}
	}
	want := map[string]int{"before": 1, "plain-1": 1, "once": 1, "plain-2": 1}
	if got := countIdentities(t, New(direct, Options{Key: key})); !maps.Equal(got, want) {
		t.Errorf("records by identity %v, want %v", got, want)
	}
}

// TestAppendOnceTwiceInOneBatch: two attempts at one record (the same Once key) queued
// together, as a retry racing an attempt still waiting for the chain, are one record in the
// chain, and both callers are told it is kept. The script looks the key up before it sets
// it, so two entries with one key in one batch both find it absent.
func TestAppendOnceTwiceInOneBatch(t *testing.T) {
	srv := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	l := New(rdb, Options{Key: make([]byte, KeySize)})
	once := ca.AuditRecord{Outcome: "unavailable", Identity: "once", Serial: 7, Once: ca.NewOnceKey()}
	other := ca.AuditRecord{Outcome: "unavailable", Identity: "other", Serial: 8, Once: ca.NewOnceKey()}
	errs := queueAppends(t, l, once, ca.AuditRecord{Outcome: "issued", Identity: "plain"}, once, other, once)
	for i, err := range errs {
		if err != nil {
			t.Errorf("append %d: %v", i, err)
		}
	}
	want := map[string]int{"once": 1, "plain": 1, "other": 1}
	if got := countIdentities(t, l); !maps.Equal(got, want) {
		t.Errorf("records by identity %v, want %v", got, want)
	}
}
