package audit

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
)

// TestCommitLeavesOutKeptRecords: a batch of five whose second and fourth records an earlier
// attempt kept (their Once keys are in Redis) appends the other three, in their order, after
// the head that earlier attempt moved; commit answers that three records have its outcome and
// moves the two kept ones behind them, for lead to tell them they are kept. Real redis-server.
func TestCommitLeavesOutKeptRecords(t *testing.T) {
	srv := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	ctx := context.Background()
	pend := func(rec ca.AuditRecord) *pending {
		rec.V = ca.AuditRecordVersion
		body, err := json.Marshal(rec)
		if err != nil {
			t.Fatal(err)
		}
		return &pending{body: body, rec: &rec, ctx: ctx, done: make(chan error, 1)}
	}
	kept := []ca.AuditRecord{{Identity: "kept-1", Once: ca.NewOnceKey()}, {Identity: "kept-2", Once: ca.NewOnceKey()}}
	// The earlier attempt, by another replica's Log: this one's known head is then stale.
	other := New(rdb, Options{})
	for _, rec := range kept {
		if err := other.Append(ctx, rec); err != nil {
			t.Fatal(err)
		}
	}
	l := New(rdb, Options{})
	batch := []*pending{pend(ca.AuditRecord{Identity: "a"}), pend(kept[0]), pend(ca.AuditRecord{Identity: "b", Once: ca.NewOnceKey()}),
		pend(kept[1]), pend(ca.AuditRecord{Identity: "c"})}
	n, err := l.commit(batch)
	if err != nil || n != 3 {
		t.Fatalf("commit = %d, %v; want 3, nil", n, err)
	}
	var order []string
	for _, b := range batch {
		order = append(order, b.rec.Identity)
	}
	if want := []string{"a", "b", "c", "kept-1", "kept-2"}; fmt.Sprint(order) != fmt.Sprint(want) {
		t.Errorf("batch after commit %v, want %v", order, want)
	}
	var chain []string
	if _, err := l.Verify(ctx, func(e Entry) { chain = append(chain, e.Record.Identity) }); err != nil {
		t.Fatal(err)
	}
	if want := []string{"kept-1", "kept-2", "a", "b", "c"}; fmt.Sprint(chain) != fmt.Sprint(want) {
		t.Errorf("chain %v, want %v", chain, want)
	}
}
