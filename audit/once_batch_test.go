package audit

import (
	"context"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
)

// queuedAppend is one caller of queueAppends: rec, appended with AppendOnce when once is not 0.
type queuedAppend struct {
	rec  ca.AuditRecord
	once uint64
}

// queueAppends holds the chain's lock while each append starts, one caller each, until all
// wait for the chain (Append's in its queue, AppendOnce's for the lock), then lets them go,
// and returns each caller's outcome in order.
func queueAppends(t *testing.T, l *Log, apps ...queuedAppend) []error {
	t.Helper()
	l.lock <- struct{}{} // a leader holds the chain
	outs := make([]chan error, len(apps))
	plain := 0
	for i, a := range apps {
		outs[i] = make(chan error, 1)
		if a.once != 0 {
			go func() { outs[i] <- l.AppendOnce(context.Background(), a.rec, a.once) }()
			time.Sleep(20 * time.Millisecond) // waiting for the lock: nothing shows it
			continue
		}
		plain++
		go func() { outs[i] <- l.Append(context.Background(), a.rec) }()
		for queued := 0; queued < plain; time.Sleep(time.Millisecond) {
			l.qmu.Lock()
			queued = len(l.queue)
			l.qmu.Unlock()
		}
	}
	<-l.lock
	errs := make([]error, len(apps))
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

// TestAppendOnceMixedLostReply: a record appended with a Once key while records without one
// wait for the chain, whose script's answer is lost and which go-redis runs again (a client
// that retries, as TestAppendSurvivesLostReply's), is in the chain once, and so is each of the
// others: the second run finds the key the first one set, and no other record rode in that
// script to be appended again. Real redis-server behind a proxy that drops the one answer.
func TestAppendOnceMixedLostReply(t *testing.T) {
	srv := testenv.StartRedis(t)
	proxy := testenv.DropReply(t, srv.Addr)
	rdb := proxy.RetryingClient(t)
	direct := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { direct.Close() })
	key := make([]byte, KeySize)
	l := New(rdb, Options{Key: key})
	// Loads the scripts: a dropped EVALSHA that Redis refused (NOSCRIPT) lands nothing.
	if err := l.Append(context.Background(), ca.AuditRecord{Outcome: "issued", Identity: "before"}); err != nil {
		t.Fatal(err)
	}
	if err := l.AppendOnce(context.Background(), ca.AuditRecord{Outcome: "issued", Identity: "before-once"}, ca.NewOnceKey()); err != nil {
		t.Fatal(err)
	}
	once := queuedAppend{ca.AuditRecord{Outcome: "unavailable", Identity: "once", Serial: 7}, ca.NewOnceKey()}
	proxy.Arm(store.Keys{}.AuditOnce(once.once))
	errs := queueAppends(t, l, queuedAppend{rec: ca.AuditRecord{Outcome: "issued", Identity: "plain-1"}}, once,
		queuedAppend{rec: ca.AuditRecord{Outcome: "issued", Identity: "plain-2"}})
	if proxy.Armed() {
		t.Fatal("the proxy dropped no answer: the test does not test a lost answer")
	}
	for i, err := range errs {
		if err != nil {
			t.Errorf("append %d: %v", i, err)
		}
	}
	want := map[string]int{"before": 1, "before-once": 1, "plain-1": 1, "once": 1, "plain-2": 1}
	if got := countIdentities(t, New(direct, Options{Key: key})); !maps.Equal(got, want) {
		t.Errorf("records by identity %v, want %v", got, want)
	}
}

// TestAppendOnceTwiceAtOnce: attempts at one record (the same Once key) that wait for the
// chain together, as a retry racing an attempt still waiting, are one record in the chain,
// and every caller is told it is kept; another keyed record and a plain one waiting with them
// are kept once each.
func TestAppendOnceTwiceAtOnce(t *testing.T) {
	srv := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	l := New(rdb, Options{Key: make([]byte, KeySize)})
	once := queuedAppend{ca.AuditRecord{Outcome: "unavailable", Identity: "once", Serial: 7}, ca.NewOnceKey()}
	other := queuedAppend{ca.AuditRecord{Outcome: "unavailable", Identity: "other", Serial: 8}, ca.NewOnceKey()}
	errs := queueAppends(t, l, once, queuedAppend{rec: ca.AuditRecord{Outcome: "issued", Identity: "plain"}}, once, other, once)
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

// TestAppendOnceWaitsUnderItsContext: an AppendOnce waiting for the chain gives up when its
// context ends, saying so, and appends nothing.
func TestAppendOnceWaitsUnderItsContext(t *testing.T) {
	srv := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	l := New(rdb, Options{})
	l.lock <- struct{}{} // a leader holds the chain
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err := l.AppendOnce(ctx, ca.AuditRecord{Identity: "late"}, ca.NewOnceKey())
	<-l.lock
	if err == nil || !strings.Contains(err.Error(), "deadline") {
		t.Errorf("AppendOnce past its deadline = %v, want the deadline named", err)
	}
	if got := countIdentities(t, l); len(got) != 0 {
		t.Errorf("records %v, want none", got)
	}
}
