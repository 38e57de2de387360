package store

import (
	"testing"
	"time"

	"github.com/sshca/sshca/ca"
)

// TestFoldAccessConcurrentApprovals: two approvers approve a request needing two at once, each
// record showing the request as its replica read it (its own approval only, still pending).
// The fold counts both and approves the request by the second, as the store's change did; an
// approval whose store write failed (its allowed record settled by a second one carrying the
// same request) does not count.
func TestFoldAccessConcurrentApprovals(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	alice := ca.Identity{Issuer: "https://idp", Subject: "u1", Email: "alice@example.com"}
	req := ca.AccessRequest{ID: "req_aaaaaaaaaaaaaaaa", Requester: alice, Principals: []string{"prod-db"}, TTLSeconds: 1800,
		Reason: "OPS-1", CreatedAt: t0, PendingUntil: t0.Add(time.Hour), ApprovalsRequired: 2, Status: ca.RequestPending}
	approval := func(sub string, at time.Duration) (ca.AuditRecord, *ca.AccessRequest) {
		who := ca.Identity{Issuer: "https://idp", Subject: sub}
		v := req
		v.Approvals = []ca.Approval{{Approver: who, At: t0.Add(at), ContentHash: req.ContentHash()}}
		return ca.AuditRecord{Time: t0.Add(at), Action: ca.ActionApprove, Outcome: "allowed", Identity: who.Name(),
			AccessRequest: req.ID, Event: "approve", Access: &v}, &v
	}
	created := req
	for _, tt := range []struct {
		name        string
		failed      bool // lead2's approval was not written
		wantState   ca.AccessRequestState
		wantDecider string
	}{
		{"both written", false, ca.RequestApproved, "https://idp|u3"},
		{"second failed", true, ca.RequestPending, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var s Restore
			s.Add(ca.AuditRecord{Time: t0, Action: ca.ActionRequest, Outcome: "allowed", Identity: alice.Name(), AccessRequest: req.ID, Event: "create", Access: &created})
			r1, _ := approval("u2", time.Minute)
			r2, _ := approval("u3", 2*time.Minute)
			s.Add(r1)
			s.Add(r2)
			if tt.failed {
				settled := r2
				settled.Outcome, settled.Time = "unavailable", t0.Add(3*time.Minute)
				s.Add(settled)
			}
			s.Add(ca.AuditRecord{Time: t0.Add(4 * time.Minute), Action: ca.ActionUser, Outcome: "issued", Serial: 77, AccessRequest: req.ID})
			got, ok := foldAccess(s.access[req.ID])
			if !ok {
				t.Fatal("no request folded")
			}
			if got.Status != tt.wantState || got.DecidedBy != tt.wantDecider {
				t.Errorf("state %s decided by %q, want %s by %q", got.Status, got.DecidedBy, tt.wantState, tt.wantDecider)
			}
			if tt.wantState == ca.RequestApproved && !got.NotAfter.Equal(t0.Add(2*time.Minute+30*time.Minute)) {
				t.Errorf("window ends %v, want 30 minutes after the second approval", got.NotAfter)
			}
			if len(got.Serials) != 1 || got.Serials[0] != 77 {
				t.Errorf("serials %v, want [77]", got.Serials)
			}
		})
	}
}
