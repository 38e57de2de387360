package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/ca"
)

// TestAccessReportRefusesTamperedChain: `sshca audit report` reads only a verified chain
// (real redis-server): an honest chain reports its grants; an edited copy of a record appended
// past the head is never printed, and once the head is moved onto it (without the key) or a
// record is deleted from the middle, the report fails with no grant printed, so an auditor never
// reads a history an intruder edited.
func TestAccessReportRefusesTamperedChain(t *testing.T) {
	f := newKeyedAudit(t)
	r, keyFile, rdb, l := f.redis, f.keyFile, f.rdb, f.log
	ctx := context.Background()
	now := time.Now().UTC().Add(-time.Hour)
	for i, rec := range []ca.AuditRecord{
		{Time: now, Action: ca.ActionUser, Outcome: "issued", Identity: "https://idp|u1", Serial: 10, Ticket: "OPS-1", Principals: []string{"root"}},
		{Time: now.Add(time.Minute), Action: ca.ActionUser, Outcome: "issued", Identity: "https://idp|u2", Serial: 11, Ticket: "OPS-2", Principals: []string{"root"}},
		{Time: now.Add(2 * time.Minute), Action: ca.ActionUser, Outcome: "issued", Identity: "https://idp|u3", Serial: 12, Ticket: "OPS-3", Principals: []string{"root"}},
	} {
		if err := l.Append(ctx, rec); err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
	}
	report := func() (string, error) {
		return runCLI(t, "", "audit", "report", "--redis", "redis://"+r.Addr, "--key-file", keyFile, "--since", "1d", "--format", "csv")
	}
	if out, err := report(); err != nil || !strings.Contains(out, "OPS-2") {
		t.Fatalf("honest chain: %v\n%s", err, out)
	}

	const stream = "sshca:{audit}:log"
	head, err := rdb.Get(ctx, "sshca:{audit}:head").Result()
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := rdb.XRange(ctx, stream, "-", "+").Result()
	if err != nil || len(msgs) != 3 {
		t.Fatalf("XRANGE %s: %v, %d entries", stream, err, len(msgs))
	}
	refused := func(what string) {
		t.Helper()
		out, err := report()
		if err == nil || !strings.Contains(err.Error(), "does not verify") || strings.Contains(out, "OPS-") {
			t.Errorf("%s: report = %v\n%s\nwant an error saying the chain does not verify, and no grant printed", what, err, out)
		}
	}
	// A stream entry cannot be rewritten under its ID; an intruder appends an edited copy of a
	// record (the second grant's ticket changed, its MAC kept) instead.
	forged := map[string]any{}
	for k, v := range msgs[1].Values {
		s, _ := v.(string)
		forged[k] = strings.ReplaceAll(s, "OPS-2", "OPS-9")
	}
	if forged["record"] == msgs[1].Values["record"] && !strings.Contains(strings.Join(valuesOf(forged), " "), "OPS-9") {
		t.Fatalf("the second record holds no OPS-2 ticket to edit: %v", msgs[1].Values)
	}
	if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: forged}).Err(); err != nil {
		t.Fatal(err)
	}
	// Past the head (which only the audit writer moves, with the key), the copy is not part of
	// the chain: the report either refuses or leaves it out, and never prints the edit.
	if out, err := report(); strings.Contains(out, "OPS-9") {
		t.Errorf("an edited copy appended: report = %v and prints the edited ticket\n%s", err, out)
	}
	// The head moved onto the copy: without the key its MAC cannot be made to fit.
	if err := rdb.Set(ctx, "sshca:{audit}:head", "4 "+strings.Repeat("ab", 32), 0).Err(); err != nil {
		t.Fatal(err)
	}
	refused("an edited copy appended and the head moved onto it")

	// The head put back; a record deleted from the middle of the chain.
	if err := rdb.XDel(ctx, stream, mustLast(t, rdb, stream)).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Set(ctx, "sshca:{audit}:head", head, 0).Err(); err != nil {
		t.Fatal(err)
	}
	if out, err := report(); err != nil || !strings.Contains(out, "OPS-2") {
		t.Fatalf("chain put back: %v\n%s", err, out)
	}
	if err := rdb.XDel(ctx, stream, msgs[1].ID).Err(); err != nil {
		t.Fatal(err)
	}
	refused("a record deleted")
}

func valuesOf(m map[string]any) []string {
	var out []string
	for _, v := range m {
		s, _ := v.(string)
		out = append(out, s)
	}
	return out
}

func mustLast(t *testing.T, rdb *redis.Client, stream string) string {
	t.Helper()
	m, err := rdb.XRevRangeN(context.Background(), stream, "+", "-", 1).Result()
	if err != nil || len(m) != 1 {
		t.Fatalf("XREVRANGE %s: %v", stream, err)
	}
	return m[0].ID
}
