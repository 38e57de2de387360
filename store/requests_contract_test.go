package store_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sshca/sshca/ca"
)

// TestAccessRequestContract: access requests (ca.AccessRequestStore) on every backend.
func TestAccessRequestContract(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newStore newStore) {
		testAccessRequests(t, func(t *testing.T, c *clock) requestStore { return newStore(t, c) })
	})
}

// requestStore is what ca consumes (ca.AccessRequestStore), with the inventory it records into.
type requestStore interface {
	ca.AccessRequestStore
	ca.CertStore
}

func testAccessRequests(t *testing.T, newStore func(*testing.T, *clock) requestStore) {
	ctx := context.Background()
	// Real time, truncated: Redis expiries run on the server's clock.
	t0 := time.Now().UTC().Truncate(time.Second)
	alice := ca.Identity{Issuer: "https://idp.example", Subject: "u1", Email: "alice@example.com", Groups: []string{"ops"}}
	bob := ca.Identity{Issuer: "https://idp.example", Subject: "u2", Email: "bob@example.com", Groups: []string{"sre-leads"}}
	newRequest := func(n int, at time.Time) ca.AccessRequest {
		return ca.AccessRequest{ID: fmt.Sprintf("req_aaaaaaaaaaaaaaa%c", 'a'+n), Requester: alice, Principals: []string{"root"},
			TTLSeconds: 1800, Reason: "OPS-1 disk full", CreatedAt: at, PendingUntil: at.Add(time.Hour),
			ApprovalsRequired: 1, Status: ca.RequestPending}
	}
	cert := func(serial uint64, ttl time.Duration) ca.Certificate {
		return ca.Certificate{Serial: serial, KeyID: "alice#x", Kind: ca.UserCert, Identity: alice.Name(),
			Principals: []string{"root"}, KeyFingerprint: "SHA256:k", CAFingerprint: "SHA256:ca",
			ValidAfter: t0.Add(-30 * time.Second), ValidBefore: t0.Add(ttl)}
	}
	approved := func(r *ca.AccessRequest) error {
		r.Status, r.NotAfter = ca.RequestApproved, t0.Add(30*time.Minute)
		return nil
	}
	isApproved := func(r ca.AccessRequest) error {
		if r.StateAt(t0) != ca.RequestApproved {
			return ca.Denied("request is " + string(r.StateAt(t0)))
		}
		return nil
	}

	// Pages (GET /v1/requests): ten requests created a second apart, their windows in no
	// relation to their creation, read 3 at a time in (CreatedAt, ID) order. Between pages one
	// is created after the position (listed), one before it (not); a listed one is approved
	// with a window that moves its KeepUntil past every other, an unlisted one approved and one
	// denied (each moves its KeepUntil); then the clock passes the retention of two of the
	// first page (the cursor's own among them) and of one not yet listed, and a write prunes
	// them. Every request kept throughout is listed exactly once, in creation order: before
	// stop 17 the order was KeepUntil's, and the approved one came again on a later page.
	t.Run("pages", func(t *testing.T) {
		c := &clock{t: t0}
		s := newStore(t, c)
		pending := []time.Duration{9, 1, 2, 8, 7, 6, 5, 4, 1, 3} // hours, by creation
		var want []ca.AccessRequest
		for i, h := range pending {
			r := newRequest(i, t0.Add(time.Duration(i)*time.Second))
			r.PendingUntil = t0.Add(h * time.Hour)
			if err := s.CreateRequest(ctx, r); err != nil {
				t.Fatal(err)
			}
			want = append(want, r)
		}
		if got, next, err := s.RequestsPage(ctx, ca.RequestCursor{}, 0); err != nil || !next.IsZero() || !cmp.Equal(want, got) {
			t.Fatalf("every request at once: %v next %+v\n%s", err, next, cmp.Diff(want, got))
		}
		late, early, later := newRequest(20, t0.Add(20*time.Second)), newRequest(21, t0.Add(-time.Second)), newRequest(22, t0.Add(21*time.Second))
		late.PendingUntil, early.PendingUntil, later.PendingUntil = t0.Add(9*time.Hour), t0.Add(9*time.Hour), t0.Add(9*time.Hour)
		decide := func(id string, st ca.AccessRequestState, until time.Time) {
			t.Helper()
			if _, err := s.UpdateRequest(ctx, id, func(r *ca.AccessRequest) error {
				r.Status, r.DecidedAt = st, t0.Add(time.Minute)
				if st == ca.RequestApproved {
					r.NotAfter = until
				}
				r.CreatedAt = t0.Add(time.Hour) // a change cannot move a request in the order
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		}
		seen := map[string]int{}
		var order []ca.AccessRequest
		var after ca.RequestCursor
		for pages := 1; ; pages++ {
			page, next, err := s.RequestsPage(ctx, after, 3)
			if err != nil || len(page) > 3 || pages > 10 {
				t.Fatalf("page %d: %d, %v", pages, len(page), err)
			}
			for _, r := range page {
				seen[r.ID]++
				order = append(order, r)
			}
			if pages == 1 {
				for _, r := range []ca.AccessRequest{late, early} {
					if err := s.CreateRequest(ctx, r); err != nil {
						t.Fatal(err)
					}
				}
				decide(want[0].ID, ca.RequestApproved, t0.Add(12*time.Hour))
				decide(want[5].ID, ca.RequestApproved, t0.Add(11*time.Hour))
				decide(want[4].ID, ca.RequestDenied, time.Time{})
				// want[1], want[2] (the cursor) and want[8] are no longer kept; a write prunes them.
				c.Set(t0.Add(ca.AccessRequestRetention + 2*time.Hour + 30*time.Minute))
				if err := s.CreateRequest(ctx, later); err != nil {
					t.Fatal(err)
				}
			}
			if next.IsZero() {
				break
			}
			if last := page[len(page)-1]; next != ca.RequestCursorOf(last) {
				t.Fatalf("page %d: next %+v, want its last request's position %+v", pages, next, ca.RequestCursorOf(last))
			}
			after = next
		}
		for id, n := range seen {
			if n != 1 {
				t.Errorf("%s listed %d times", id, n)
			}
		}
		for i, r := range want {
			if i != 8 && seen[r.ID] != 1 {
				t.Errorf("request %d (kept throughout, or listed before it expired) listed %d times", i, seen[r.ID])
			}
		}
		if seen[want[8].ID] != 0 || seen[late.ID] != 1 || seen[later.ID] != 1 || seen[early.ID] != 0 {
			t.Errorf("expired before its page %d times (want 0), created after the position %d and %d (want 1), before it %d (want 0)",
				seen[want[8].ID], seen[late.ID], seen[later.ID], seen[early.ID])
		}
		if !slices.IsSortedFunc(order, func(x, y ca.AccessRequest) int { return ca.RequestCursorOf(x).Compare(ca.RequestCursorOf(y)) }) {
			t.Errorf("not in creation order: %v", order)
		}
		if got, _, _ := s.GetRequest(ctx, want[0].ID); !got.CreatedAt.Equal(want[0].CreatedAt) {
			t.Errorf("a change moved the request's creation to %v", got.CreatedAt)
		}
	})

	t.Run("create get list", func(t *testing.T) {
		s := newStore(t, &clock{t: t0})
		r1, r2 := newRequest(1, t0.Add(time.Second)), newRequest(2, t0)
		for _, r := range []ca.AccessRequest{r1, r2} {
			if err := s.CreateRequest(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
		got, ok, err := s.GetRequest(ctx, r1.ID)
		if err != nil || !ok {
			t.Fatalf("get: %v %v", ok, err)
		}
		if diff := cmp.Diff(r1, got); diff != "" {
			t.Errorf("get (-created +got):\n%s", diff)
		}
		list, err := s.ListRequests(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]ca.AccessRequest{r2, r1}, list); diff != "" {
			t.Errorf("list, oldest first (-want +got):\n%s", diff)
		}
		if _, ok, _ := s.GetRequest(ctx, "req_nonenonenonenone"); ok {
			t.Error("an unknown ID was found")
		}
	})

	t.Run("an ID is created once", func(t *testing.T) {
		s := newStore(t, &clock{t: t0})
		r := newRequest(1, t0)
		if err := s.CreateRequest(ctx, r); err != nil {
			t.Fatal(err)
		}
		other := r
		other.Principals, other.Requester = []string{"admin"}, bob
		if err := s.CreateRequest(ctx, other); ca.KindOf(err) != ca.KindConflict {
			t.Fatalf("second create of one ID: %v, want a conflict", err)
		}
		got, _, _ := s.GetRequest(ctx, r.ID)
		if diff := cmp.Diff(r, got); diff != "" {
			t.Errorf("the second create changed the request (-first +got):\n%s", diff)
		}
	})

	t.Run("kept until KeepUntil", func(t *testing.T) {
		c := &clock{t: t0}
		s := newStore(t, c)
		r := newRequest(1, t0)
		if err := s.CreateRequest(ctx, r); err != nil {
			t.Fatal(err)
		}
		c.Set(r.KeepUntil().Add(-time.Second))
		if _, ok, _ := s.GetRequest(ctx, r.ID); !ok {
			t.Fatal("gone before KeepUntil")
		}
		c.Set(r.KeepUntil())
		if _, ok, _ := s.GetRequest(ctx, r.ID); ok {
			t.Error("still there at KeepUntil")
		}
		if list, _ := s.ListRequests(ctx); len(list) != 0 {
			t.Errorf("listed at KeepUntil: %v", list)
		}
	})

	t.Run("update", func(t *testing.T) {
		s := newStore(t, &clock{t: t0})
		r := newRequest(1, t0)
		if err := s.CreateRequest(ctx, r); err != nil {
			t.Fatal(err)
		}
		refused := ca.Denied("no")
		if _, err := s.UpdateRequest(ctx, r.ID, func(cur *ca.AccessRequest) error {
			cur.Status = ca.RequestDenied
			return refused
		}); err != refused {
			t.Fatalf("a change that fails: %v, want its error as is", err)
		}
		if got, _, _ := s.GetRequest(ctx, r.ID); got.Status != ca.RequestPending {
			t.Fatalf("a change that failed was written: %s", got.Status)
		}
		updated, err := s.UpdateRequest(ctx, r.ID, func(cur *ca.AccessRequest) error {
			cur.ID = "req_movedmovedmoved" // a change cannot move a request
			return approved(cur)
		})
		if err != nil {
			t.Fatal(err)
		}
		got, _, _ := s.GetRequest(ctx, r.ID)
		if diff := cmp.Diff(updated, got); diff != "" || got.Status != ca.RequestApproved {
			t.Errorf("update (-answered +kept):\n%s", diff)
		}
		if _, err := s.UpdateRequest(ctx, "req_nonenonenonenone", approved); ca.KindOf(err) != ca.KindNotFound {
			t.Errorf("update of an unknown request: %v, want not found", err)
		}
	})

	t.Run("concurrent updates all land", func(t *testing.T) {
		s := newStore(t, &clock{t: t0})
		r := newRequest(1, t0)
		if err := s.CreateRequest(ctx, r); err != nil {
			t.Fatal(err)
		}
		const n = 6
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				if _, err := s.UpdateRequest(ctx, r.ID, func(cur *ca.AccessRequest) error {
					id := bob
					id.Subject = fmt.Sprint("approver", i)
					cur.Approvals = append(cur.Approvals, ca.Approval{Approver: id, At: t0, ContentHash: cur.ContentHash()})
					return nil
				}); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		got, _, _ := s.GetRequest(ctx, r.ID)
		if len(got.Approvals) != n {
			t.Errorf("%d approvals kept of %d written concurrently: a change was lost", len(got.Approvals), n)
		}
	})

	t.Run("record under request", func(t *testing.T) {
		s := newStore(t, &clock{t: t0})
		r := newRequest(1, t0)
		if err := s.CreateRequest(ctx, r); err != nil {
			t.Fatal(err)
		}
		// Pending: the check refuses, nothing is recorded.
		if err := s.RecordUnderRequest(ctx, cert(7, time.Minute), r.ID, isApproved); ca.KindOf(err) != ca.KindDenied {
			t.Fatalf("record under a pending request: %v, want the check's refusal", err)
		}
		if _, ok, _ := s.Get(ctx, 7); ok {
			t.Fatal("a certificate refused by the check is in the inventory")
		}
		if _, err := s.UpdateRequest(ctx, r.ID, approved); err != nil {
			t.Fatal(err)
		}
		c := cert(8, 5*time.Minute)
		if err := s.RecordUnderRequest(ctx, c, r.ID, isApproved); err != nil {
			t.Fatal(err)
		}
		if got, ok, _ := s.Get(ctx, 8); !ok || !cmp.Equal(c, got) {
			t.Errorf("inventory record %v %+v, want %+v", ok, got, c)
		}
		if live, _ := s.Live(ctx, alice.Name(), t0); len(live) != 1 {
			t.Errorf("live %v, want the certificate", live)
		}
		if all, next, err := s.LivePage(ctx, t0, ca.CertCursor{}, 0); err != nil || len(all) != 1 || all[0].Serial != 8 || !next.IsZero() {
			t.Errorf("every live certificate: %v %v, want the one recorded under the request", all, err)
		}
		got, _, _ := s.GetRequest(ctx, r.ID)
		if !slices.Equal(got.Serials, []uint64{8}) {
			t.Errorf("request serials %v, want [8]", got.Serials)
		}
		if err := s.RecordUnderRequest(ctx, cert(9, time.Minute), "req_nonenonenonenone", isApproved); ca.KindOf(err) != ca.KindNotFound {
			t.Errorf("record under an unknown request: %v, want not found", err)
		}
	})

	// A cancellation racing issuances: every certificate in the inventory is in the request's
	// serials (so cancelling finds it to revoke), and none is recorded after the cancellation.
	t.Run("record races cancel", func(t *testing.T) {
		s := newStore(t, &clock{t: t0})
		r := newRequest(1, t0)
		if err := s.CreateRequest(ctx, r); err != nil {
			t.Fatal(err)
		}
		if _, err := s.UpdateRequest(ctx, r.ID, approved); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var cancelled ca.AccessRequest
		for i := range 8 {
			wg.Go(func() {
				err := s.RecordUnderRequest(ctx, cert(uint64(100+i), 5*time.Minute), r.ID, isApproved)
				if err != nil && ca.KindOf(err) != ca.KindDenied && ca.KindOf(err) != ca.KindUnavailable {
					t.Error(err)
				}
			})
			if i == 3 {
				wg.Go(func() {
					var err error
					if cancelled, err = s.UpdateRequest(ctx, r.ID, func(cur *ca.AccessRequest) error {
						cur.Status = ca.RequestCancelled
						return nil
					}); err != nil {
						t.Error(err)
					}
				})
			}
		}
		wg.Wait()
		final, _, _ := s.GetRequest(ctx, r.ID)
		var recorded []uint64
		for i := range 8 {
			if _, ok, _ := s.Get(ctx, uint64(100+i)); ok {
				recorded = append(recorded, uint64(100+i))
			}
		}
		got := slices.Sorted(slices.Values(final.Serials))
		if !slices.Equal(recorded, got) {
			t.Errorf("inventory holds %v, the request lists %v: not one atomic step", recorded, got)
		}
		for _, s := range final.Serials {
			if !slices.Contains(cancelled.Serials, s) {
				t.Errorf("serial %d was recorded after the request was cancelled", s)
			}
		}
	})
}
