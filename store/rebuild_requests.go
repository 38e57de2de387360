package store

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"time"

	"github.com/sshca/sshca/ca"
)

// Restoring access requests: each record that changes a request (create, approve, deny,
// cancel, revoke, review, outcome "allowed") carries the request as the change leaves it
// (ca.AuditRecord.Access), and each certificate issued under one names it. A rebuild folds
// those, in chain order, into the request as the store last held it.

// accessTrail is what the trail says of one access request.
type accessTrail struct {
	changes []ca.AuditRecord // allowed changes still standing, in chain order
	serials []uint64         // certificates issued under it, in chain order
}

// addAccess takes the part of a record that concerns an access request.
func (s *Restore) addAccess(rec ca.AuditRecord) {
	if rec.AccessRequest == "" || !ca.ValidAccessRequestID(rec.AccessRequest) {
		return
	}
	if s.access == nil {
		s.access = map[string]*accessTrail{}
	}
	t := s.access[rec.AccessRequest]
	if t == nil {
		t = &accessTrail{}
		s.access[rec.AccessRequest] = t
	}
	switch {
	case rec.Outcome == "issued" && rec.Serial != 0 && rec.Event == "":
		if !slices.Contains(t.serials, rec.Serial) {
			t.serials = append(t.serials, rec.Serial)
		}
	case rec.Access == nil || rec.Access.ID != rec.AccessRequest:
		// A refusal, or a record from before records carried the request.
	case rec.Outcome == "allowed":
		t.changes = append(t.changes, rec)
	default:
		// A change allowed and then not made (the store failed): its second record carries
		// the same request (settleAllowed) with the failure; the change does not stand.
		for i := len(t.changes) - 1; i >= 0; i-- {
			c := t.changes[i]
			if c.Event == rec.Event && c.Identity == rec.Identity && sameAccess(c.Access, rec.Access) {
				t.changes = slices.Delete(t.changes, i, i+1)
				break
			}
		}
	}
}

func sameAccess(a, b *ca.AccessRequest) bool {
	ja, err1 := json.Marshal(a)
	jb, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && string(ja) == string(jb)
}

// foldAccess is the request the standing changes leave, in chain order. Each change's view
// was taken from the request as its replica read it, so two approvals made at once each show
// only their own: approvals are merged (once per approver and content), an ending is never
// undone, and a pending request with enough approvals for its content is approved by the
// one that completed it, as the store's change would have.
func foldAccess(t *accessTrail) (ca.AccessRequest, bool) {
	// Its creation first: every other change came after it, but one kept in another audit
	// stripe by a replica whose clock is behind may carry an earlier time.
	if i := slices.IndexFunc(t.changes, func(c ca.AuditRecord) bool { return c.Event == "create" }); i > 0 {
		c := t.changes[i]
		t.changes = slices.Insert(slices.Delete(t.changes, i, i+1), 0, c)
	}
	if len(t.changes) == 0 || t.changes[0].Event != "create" {
		return ca.AccessRequest{}, false // its creation is not in the trail (an archive not given)
	}
	cur := *t.changes[0].Access
	cur.Approvals = slices.Clone(cur.Approvals)
	for _, c := range t.changes[1:] {
		next := c.Access
		for _, ap := range next.Approvals {
			if !slices.ContainsFunc(cur.Approvals, func(x ca.Approval) bool {
				return x.Approver.Name() == ap.Approver.Name() && x.ContentHash == ap.ContentHash
			}) {
				cur.Approvals = append(cur.Approvals, ap)
			}
		}
		cur.ApprovalsRequired = next.ApprovalsRequired
		if cur.Status == ca.RequestPending || (cur.Status == ca.RequestApproved && next.Status.Final()) {
			if next.Status != ca.RequestPending {
				cur.Status, cur.DecidedAt, cur.DecidedBy, cur.DecisionReason = next.Status, next.DecidedAt, next.DecidedBy, next.DecisionReason
				if !next.NotAfter.IsZero() && cur.NotAfter.IsZero() {
					cur.NotAfter = next.NotAfter
				}
			}
		}
		if cur.ReviewedBy == "" && next.ReviewedBy != "" {
			cur.ReviewedAt, cur.ReviewedBy, cur.ReviewReason = next.ReviewedAt, next.ReviewedBy, next.ReviewReason
		}
		if cur.Status == ca.RequestPending && cur.ApprovalsRequired > 0 {
			slices.SortStableFunc(cur.Approvals, func(a, b ca.Approval) int { return a.At.Compare(b.At) })
			hash, seen := cur.ContentHash(), map[string]bool{}
			for _, ap := range cur.Approvals {
				if ap.ContentHash != hash || seen[ap.Approver.Name()] {
					continue
				}
				seen[ap.Approver.Name()] = true
				if len(seen) == cur.ApprovalsRequired && !ap.At.After(cur.PendingUntil) {
					cur.Status, cur.DecidedAt, cur.DecidedBy, cur.DecisionReason = ca.RequestApproved, ap.At, ap.Approver.Name(), ap.Reason
					cur.NotAfter = ap.At.Add(time.Duration(cur.TTLSeconds) * time.Second).UTC()
					break
				}
			}
		}
	}
	cur.Serials = slices.Clone(t.serials)
	return cur, true
}

// applyAccess writes back every access request the trail shows that the store still keeps
// (KeepUntil after now): created if missing, else replaced by the trail's version with the
// serials of both (a store restored from an old copy holds an older one). A request that
// expired pending before now is marked as notified, so that its expiry is not announced
// again: the event was queued by the replica that saw it, and the outbox went with the store.
// The live certificates of a request cancelled or revoked are revoked again (revokeCert).
func (s *Restore) applyAccess(ctx context.Context, r *Redis, now time.Time, rep *RestoreReport,
	revokeCert func(restoreAction, ca.EntryKind, uint64, string) (bool, error)) error {
	ids := make([]string, 0, len(s.access))
	for id := range s.access {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		t := s.access[id]
		req, ok := foldAccess(t)
		if !ok {
			if len(t.changes) > 0 {
				c := t.changes[0]
				s.Skipped = append(s.Skipped, Skip{c.Time, "request:" + id, "the record of its creation is not in the trail (give the archive that holds it with --archive)"})
			}
			continue
		}
		if req.Status == ca.RequestCancelled || req.Status == ca.RequestRevoked {
			end := t.changes[len(t.changes)-1]
			for _, serial := range req.Serials {
				issued, ok := s.issued[serial]
				if !ok || !issued.Time.Before(req.DecidedAt.Add(RestoreClockSkew)) {
					continue
				}
				done, err := revokeCert(restoreAction{rec: end, kind: "serial", arg: strconv.FormatUint(serial, 10)}, ca.RevokedSerial, serial, "")
				if err != nil {
					return err
				}
				if done {
					rep.Revocations++
				}
			}
		}
		if !req.KeepUntil().After(now) {
			continue
		}
		if req.Status == ca.RequestPending && req.StateAt(now) == ca.RequestExpired {
			req.ExpiryNotified = true
		}
		err := r.CreateRequest(ctx, req)
		var ce *ca.Error
		if errors.As(err, &ce) && ce.Kind == ca.KindConflict {
			_, err = r.UpdateRequest(ctx, id, func(cur *ca.AccessRequest) error {
				serials := slices.Clone(req.Serials)
				for _, n := range cur.Serials {
					if !slices.Contains(serials, n) {
						serials = append(serials, n)
					}
				}
				*cur = req
				cur.Serials = serials
				return nil
			})
		}
		if err != nil {
			return err
		}
		rep.AccessRequests++
	}
	return nil
}
