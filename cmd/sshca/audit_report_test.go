package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/sshca/sshca/ca"
)

// TestAccessReport: the report joins a request's creation, approvals, certificates,
// revocations and end; break-glass shows its review; a certificate with a ticket outside any
// request is a grant of its own; requests that granted nothing, old grants and other
// identities or principals are left out.
func TestAccessReport(t *testing.T) {
	now := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	at := func(m int) time.Time { return now.Add(time.Duration(m) * time.Minute) }
	alice, bob, lead := "https://idp|u1", "https://idp|u2", "https://idp|u7"
	recs := []ca.AuditRecord{
		{Time: at(-60 * 24 * 40), Action: ca.ActionUser, Outcome: "issued", Identity: alice, Serial: 1, Ticket: "OLD-1", Principals: []string{"root"}},
		{Time: at(0), Action: ca.ActionRequest, Event: "create", Outcome: "allowed", Identity: alice, AccessRequest: "req_a", Requested: []string{"root"}, Ticket: "OPS-1", Reason: "OPS-1 disk"},
		{Time: at(1), Action: ca.ActionApprove, Event: "approve", Outcome: "denied", Identity: alice, AccessRequest: "req_a"},
		{Time: at(2), Action: ca.ActionApprove, Event: "approve", Outcome: "allowed", Identity: lead, AccessRequest: "req_a", Approvers: []string{lead}},
		{Time: at(3), Action: ca.ActionUser, Outcome: "issued", Identity: alice, Serial: 10, AccessRequest: "req_a", Principals: []string{"root"}, Aliases: []string{"email:alice@example.com"}},
		{Time: at(4), Action: ca.ActionUser, Outcome: "issued", Identity: alice, Serial: 11, AccessRequest: "req_a", Principals: []string{"root"}},
		{Time: at(5), Action: ca.ActionRevoke, Outcome: "allowed", Identity: lead, Target: "serial:10"},
		{Time: at(6), Action: ca.ActionRequest, Event: "cancel", Outcome: "allowed", Identity: alice, AccessRequest: "req_a"},
		{Time: at(7), Action: ca.ActionRequest, Event: "create", Outcome: "allowed", Identity: alice, AccessRequest: "req_denied", Requested: []string{"root"}},
		{Time: at(8), Action: ca.ActionApprove, Event: "deny", Outcome: "allowed", Identity: lead, AccessRequest: "req_denied"},
		{Time: at(9), Action: ca.ActionRequest, Event: "create", Outcome: "allowed", Identity: bob, AccessRequest: "req_bg", Requested: []string{"root"}, BreakGlass: true, Ticket: "INC-9"},
		{Time: at(10), Action: ca.ActionApprove, Event: "review", Outcome: "allowed", Identity: lead, AccessRequest: "req_bg"},
		{Time: at(11), Action: ca.ActionUser, Outcome: "issued", Identity: bob, Serial: 20, Ticket: "OPS-2", Principals: []string{"admin"}},
		{Time: at(12), Action: ca.ActionUser, Outcome: "issued", Identity: bob, Serial: 21, Principals: []string{"bob"}},
	}
	got := accessReport(recs, now.Add(-30*24*time.Hour), "", "")
	want := []grant{
		{Time: at(0), Requester: alice, Principals: []string{"root"}, Ticket: "OPS-1", Reason: "OPS-1 disk", Request: "req_a",
			Approvers: []string{lead}, Serials: []string{"10", "11"}, Revoked: []string{"10", "11"}, Ended: "cancel"},
		{Time: at(9), Requester: bob, Principals: []string{"root"}, Ticket: "INC-9", Request: "req_bg", BreakGlass: true, Reviewer: lead},
		{Time: at(11), Requester: bob, Principals: []string{"admin"}, Ticket: "OPS-2", Serials: []string{"20"}},
	}
	if diff := cmp.Diff(want, got, cmpopts.IgnoreUnexported(grant{})); diff != "" {
		t.Errorf("report (-want +got):\n%s", diff)
	}
	if g := accessReport(recs, now.Add(-30*24*time.Hour), "alice@example.com", "root"); len(g) != 1 || g[0].Request != "req_a" {
		t.Errorf("alice's root grants: %+v", g)
	}
	if g := accessReport(recs, now.Add(-30*24*time.Hour), bob, "root"); len(g) != 1 || !g[0].BreakGlass {
		t.Errorf("bob's root grants: %+v", g)
	}
	var b bytes.Buffer
	if err := writeReport(&b, "table", got); err != nil || !strings.Contains(b.String(), "BREAK-GLASS") || !strings.Contains(b.String(), "reviewed by "+lead) {
		t.Errorf("table: %v\n%s", err, b.String())
	}
	b.Reset()
	if err := writeReport(&b, "csv", got); err != nil || strings.Count(b.String(), "\n") != 4 {
		t.Errorf("csv: %v\n%s", err, b.String())
	}
	b.Reset()
	var back []grant
	if err := writeReport(&b, "json", got); err != nil || json.Unmarshal(b.Bytes(), &back) != nil || len(back) != 3 {
		t.Errorf("json: %v\n%s", err, b.String())
	}
	for _, s := range []string{"30x", "-1d", "abc"} {
		if _, err := parseSince(s); err == nil {
			t.Errorf("--since %q accepted", s)
		}
	}
	if d, err := parseSince("30d"); err != nil || d != 720*time.Hour {
		t.Errorf("30d: %v %v", d, err)
	}
}
