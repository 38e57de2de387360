package ca

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// AccessRequestLimits are the hard caps on access requests that no policy can lift.
type AccessRequestLimits struct {
	// PendingTimeout is how long a request waits for its approvals before it expires
	// (default 1h).
	PendingTimeout time.Duration
	// MaxWindow is the longest access window a request may ask for (default 12h).
	MaxWindow time.Duration
}

// DefaultAccessRequestLimits are used where Config.AccessRequests leaves a field zero.
var DefaultAccessRequestLimits = AccessRequestLimits{PendingTimeout: time.Hour, MaxWindow: 12 * time.Hour}

// NewAccessRequest is an access request as the caller sent it: principals, the window as a
// duration string ("30m"), and the reason.
type NewAccessRequest struct {
	Principals []string
	TTL        string
	Reason     string
	SourceIP   string
	// BreakGlass asks for emergency access without approval: granted at once where the policy
	// allows it, and reviewed afterwards (ReviewAccessRequest).
	BreakGlass bool
}

// AccessDecision is an approver's decision as sent: approve (naming the content hash the
// approver saw) or deny, with a reason (required to deny).
type AccessDecision struct {
	Approve     bool
	ContentHash string
	Reason      string
}

// CreateAccessRequest authenticates the caller, checks what it asks for, asks the policy (kind
// "request": may this identity ask for these principals for this long, and how many approvals
// does it need) and stores the new request, pending. The "allowed" record is kept before the
// request is stored: nothing exists that the audit log does not show.
func (a *Authority) CreateAccessRequest(ctx context.Context, token string, nr NewAccessRequest) (AccessRequest, error) {
	id, err := a.auth.Authenticate(ctx, token)
	if err != nil {
		return AccessRequest{}, err
	}
	if err := a.limitIdentity(id); err != nil {
		return AccessRequest{}, err
	}
	if a.requests == nil {
		return AccessRequest{}, Unavailable("access requests are not configured on this server", nil)
	}
	now := a.now()
	r := AccessRequest{ID: NewAccessRequestID(), Requester: id, Principals: dedupe(nr.Principals), Reason: nr.Reason,
		CreatedAt: now.UTC(), PendingUntil: now.Add(a.accessLimits.PendingTimeout).UTC(), Status: RequestPending,
		BreakGlass: nr.BreakGlass}
	r.Requester.Token = TokenUse{}
	rec := a.auditRecord(ActionRequest, id)
	rec.Event, rec.AccessRequest, rec.Requested, rec.Reason, rec.SourceIP = "create", r.ID, r.Principals, nr.Reason, nr.SourceIP
	window, err := a.checkNewAccessRequest(nr)
	if err != nil {
		a.settle(ctx, &rec, err)
		return AccessRequest{}, err
	}
	r.TTLSeconds, rec.WindowSeconds, rec.BreakGlass = int64(window/time.Second), int64(window/time.Second), r.BreakGlass
	view := r.policyView()
	if r.BreakGlass {
		if view.BreakGlassLast24h, err = a.breakGlassLast24h(ctx, id, now); err != nil {
			a.settle(ctx, &rec, err)
			return AccessRequest{}, err
		}
	}
	in := PolicyInput{Kind: ActionRequest, Identity: id, Now: now.UTC().Format(time.RFC3339),
		Request: PolicyRequest{Principals: r.Principals, TTLSeconds: r.TTLSeconds, SourceIP: nr.SourceIP, Reason: nr.Reason,
			Target: "request:" + r.ID},
		AccessRequest: view}
	fillDefaults(&in.Identity)
	dec, err := a.policy.Decide(ctx, in)
	if err != nil {
		err = Unavailable("policy could not decide", err)
		a.settle(ctx, &rec, err)
		return AccessRequest{}, err
	}
	rec.PolicyRevision, rec.Ticket = dec.Revision, dec.Ticket
	if !dec.Allow {
		rec.Reasons = orDefault(dec.Reasons)
		err := Denied("policy denied the access request", rec.Reasons...)
		a.settle(ctx, &rec, err)
		return AccessRequest{}, err
	}
	if r.BreakGlass && dec.ApprovalsRequired > 0 {
		err := Denied("the policy does not grant break-glass access here", fmt.Sprintf("it asks for %d approval(s): create a request without --break-glass", dec.ApprovalsRequired))
		a.settle(ctx, &rec, err)
		return AccessRequest{}, err
	}
	if !r.BreakGlass && dec.ApprovalsRequired < 1 {
		// A request that needs nobody's approval is not a request: the policy meant a plain
		// grant (kind "user") or break-glass, and must say so there.
		err := &Error{Kind: KindDenied, Msg: "the policy allowed an access request that needs no approval",
			Reasons: []string{"policy fault in approvals_required: an access request needs at least one approval"}}
		a.log.ErrorContext(ctx, "policy fault: approvals_required below 1", "identity", id.Name(), "policy", dec.Revision)
		a.settle(ctx, &rec, err)
		return AccessRequest{}, err
	}
	if dec.Ticket != "" && (len(dec.Ticket) > 64 || strings.ContainsAny(dec.Ticket, "# \t\r\n")) {
		err := Denied("policy granted a ticket the service does not accept", "ticket must be at most 64 characters without spaces or '#'")
		a.settle(ctx, &rec, err)
		return AccessRequest{}, err
	}
	r.ApprovalsRequired, r.Ticket, r.PolicyRevision = dec.ApprovalsRequired, dec.Ticket, dec.Revision
	if r.BreakGlass {
		// Granted at once; its review is owed (ReviewAccessRequest).
		r.Status, r.DecidedAt, r.DecidedBy, r.DecisionReason = RequestApproved, now.UTC(), "break-glass", r.Reason
		r.NotAfter = now.Add(window).UTC()
	}
	rec.Outcome, rec.Access = "allowed", r.auditView()
	if err := a.keep(ctx, rec); err != nil {
		return AccessRequest{}, err
	}
	if err := a.requests.CreateRequest(ctx, r); err != nil {
		err = storeErr("access request store unavailable; no request was created", err)
		a.settleAllowed(ctx, rec, err)
		return AccessRequest{}, err
	}
	if r.BreakGlass {
		a.notify(ctx, "break_glass", r, id, r.Reason)
		a.log.WarnContext(ctx, "break-glass access granted", "request", r.ID, "identity", id.Name(), "principals", r.Principals,
			"window", window, "reason", r.Reason)
		return r, nil
	}
	a.notify(ctx, "create", r, id, "")
	a.log.InfoContext(ctx, "access requested", "request", r.ID, "identity", id.Name(), "principals", r.Principals,
		"window", window, "reason", r.Reason, "approvals_required", r.ApprovalsRequired)
	return r, nil
}

// checkNewAccessRequest checks a request as sent against the hard caps and returns its window.
func (a *Authority) checkNewAccessRequest(nr NewAccessRequest) (time.Duration, error) {
	if len(nr.Principals) == 0 {
		return 0, Invalid("principals: name at least one principal (--principal root)")
	}
	if err := validatePrincipals(UserCert, nr.Principals, a.limits.MaxPrincipals); err != nil {
		return 0, err
	}
	if strings.TrimSpace(nr.TTL) == "" {
		return 0, Invalid("ttl is required: how long the access should last once approved (--ttl 30m)")
	}
	window, err := ParseTTL(nr.TTL, a.accessLimits.MaxWindow)
	if err != nil {
		return 0, err
	}
	if window < MinTTL {
		return 0, Invalid("ttl must be at least 1m")
	}
	if strings.TrimSpace(nr.Reason) == "" {
		return 0, Invalid("reason is required: say why, with the ticket (--reason \"OPS-1234 disk full\")")
	}
	if len(nr.Reason) > 1024 {
		return 0, Invalid("reason is longer than 1024 bytes")
	}
	return window.Truncate(time.Second), nil
}

// GetAccessRequest authenticates the caller and returns the request. Its requester (also under
// another identity with the same verified e-mail), and anyone the policy allows to decide it
// (kind "approve", not audited: a read), may see it.
func (a *Authority) GetAccessRequest(ctx context.Context, token, reqID string) (AccessRequest, error) {
	id, r, err := a.authenticatedRequest(ctx, token, reqID)
	if err != nil {
		return AccessRequest{}, err
	}
	if r.SameRequester(id) || a.mayDecide(ctx, id, r) {
		return r, nil
	}
	// Not 403: whether a request exists is not told to whoever may not see it.
	return AccessRequest{}, &Error{Kind: KindNotFound, Msg: "no access request " + reqID + " that you may see"}
}

// AccessRequestsPage authenticates the caller and lists one page of the requests it may see
// (its own, and those it may decide) in RequestCursor order: at most q.Limit kept requests
// after q.After, then filtered (q.Mine keeps only its own, q.Pending only the pending ones),
// so a page may hold fewer, even none, and still have a Next. Errors: Invalid for a negative
// limit, Unauthenticated from the token, Unavailable when the store does not answer.
func (a *Authority) AccessRequestsPage(ctx context.Context, token string, q RequestQuery) (RequestPage, error) {
	if q.Limit < 0 {
		return RequestPage{}, Invalid("limit %d is negative: give how many requests a page may hold", q.Limit)
	}
	id, err := a.auth.Authenticate(ctx, token)
	if err != nil {
		return RequestPage{}, err
	}
	if a.requests == nil {
		return RequestPage{}, Unavailable("access requests are not configured on this server", nil)
	}
	all, next, err := a.requests.RequestsPage(ctx, q.After, q.Limit)
	if err != nil {
		return RequestPage{}, storeErr("access request store unavailable", err)
	}
	now := a.now()
	out := []AccessRequest{}
	for _, r := range all {
		if q.Pending && r.StateAt(now) != RequestPending {
			continue
		}
		own := r.Requester.Name() == id.Name()
		if own || (!q.Mine && a.mayDecide(ctx, id, r)) {
			out = append(out, r)
		}
	}
	return RequestPage{Requests: out, Next: next}, nil
}

// mayDecide reports whether the policy would let id decide r (an unaudited read: nothing is
// decided). Any error is a no.
func (a *Authority) mayDecide(ctx context.Context, id Identity, r AccessRequest) bool {
	if id.Workload || r.SameRequester(id) {
		return false
	}
	dec, err := a.policy.Decide(ctx, a.approveInput(id, r, ""))
	return err == nil && dec.Allow
}

func (a *Authority) approveInput(id Identity, r AccessRequest, reason string) PolicyInput {
	in := PolicyInput{Kind: ActionApprove, Identity: id, Now: a.now().UTC().Format(time.RFC3339),
		Request: PolicyRequest{Principals: nonNil(slices.Clone(r.Principals)), TTLSeconds: r.TTLSeconds, Reason: reason,
			Target: "request:" + r.ID},
		AccessRequest: r.policyView()}
	fillDefaults(&in.Identity)
	return in
}

// authenticatedRequest authenticates the caller, then loads the request reqID: what every
// call about one request does first.
func (a *Authority) authenticatedRequest(ctx context.Context, token, reqID string) (Identity, AccessRequest, error) {
	id, err := a.auth.Authenticate(ctx, token)
	if err != nil {
		return Identity{}, AccessRequest{}, err
	}
	r, err := a.loadAccessRequest(ctx, reqID)
	return id, r, err
}

func (a *Authority) loadAccessRequest(ctx context.Context, reqID string) (AccessRequest, error) {
	if a.requests == nil {
		return AccessRequest{}, Unavailable("access requests are not configured on this server", nil)
	}
	if !ValidAccessRequestID(reqID) {
		return AccessRequest{}, Invalid("request id %q is not an access request ID (req_ and 16 characters a-z, 2-7)", truncate(reqID, 40))
	}
	r, ok, err := a.requests.GetRequest(ctx, reqID)
	if err != nil {
		return AccessRequest{}, storeErr("access request store unavailable", err)
	}
	if !ok {
		return AccessRequest{}, &Error{Kind: KindNotFound, Msg: "no access request " + reqID + " (it may have ended more than a week ago)"}
	}
	return r, nil
}

// DecideAccessRequest authenticates an approver and approves or denies the request. The service
// itself refuses, whatever the policy says: a workload identity, the requester (by canonical
// name or verified e-mail), an approver who already approved, an approval of another content
// than the request's (ContentHash), and a request no longer pending. Then the policy (kind
// "approve") decides whether this identity may decide this request and how many distinct
// approvals it needs; approvals by identities blocked since no longer count. The request is
// approved once that many distinct approvers (canonical names) have approved its content.
func (a *Authority) DecideAccessRequest(ctx context.Context, token, reqID string, d AccessDecision) (AccessRequest, error) {
	id, r, err := a.authenticatedRequest(ctx, token, reqID)
	if err != nil {
		return AccessRequest{}, err
	}
	now := a.now()
	rec := a.auditRecord(ActionApprove, id)
	rec.Event, rec.AccessRequest, rec.Target, rec.Reason = "deny", r.ID, "request:"+r.ID, d.Reason
	rec.Requested, rec.WindowSeconds = r.Principals, r.TTLSeconds
	if d.Approve {
		rec.Event = "approve"
	}
	if err := checkDecision(r, id, d, now); err != nil {
		a.settle(ctx, &rec, err)
		return AccessRequest{}, err
	}
	// Approvals that no longer count leave the policy's view too: the policy counts what the
	// service counts.
	counting, err := a.countingApprovals(ctx, r)
	if err != nil {
		a.settle(ctx, &rec, err)
		return AccessRequest{}, err
	}
	view := r
	view.Approvals = counting
	dec, err := a.decide(ctx, &rec, a.approveInput(id, view, d.Reason), "policy does not let you decide this access request")
	if err != nil {
		return AccessRequest{}, err
	}
	need := max(dec.ApprovalsRequired, 1)
	approval := Approval{Approver: id, At: now.UTC(), Reason: d.Reason, ContentHash: r.ContentHash()}
	approval.Approver.Token = TokenUse{}
	change := func(cur *AccessRequest) error {
		if err := checkDecision(*cur, id, d, now); err != nil {
			return err
		}
		cur.ApprovalsRequired = need
		if !d.Approve {
			cur.Status, cur.DecidedAt, cur.DecidedBy, cur.DecisionReason = RequestDenied, now.UTC(), id.Name(), d.Reason
			return nil
		}
		cur.Approvals = append(cur.Approvals, approval)
		// Count what counted above plus the approvals written meanwhile (by this same rule).
		names := approverNames(counting)
		for _, ap := range cur.Approvals {
			if ap.ContentHash == approval.ContentHash && !slices.Contains(names, ap.Approver.Name()) &&
				!slices.ContainsFunc(r.Approvals, func(old Approval) bool { return old.Approver.Name() == ap.Approver.Name() }) {
				names = append(names, ap.Approver.Name())
			}
		}
		if len(names) >= need {
			cur.Status, cur.DecidedAt, cur.DecidedBy, cur.DecisionReason = RequestApproved, now.UTC(), id.Name(), d.Reason
			cur.NotAfter = now.Add(time.Duration(cur.TTLSeconds) * time.Second).UTC()
		}
		return nil
	}
	// The record keeps the request as this decision leaves it, applied to the request as read
	// (an approval written meanwhile by another approver is in that approver's record).
	after := r
	after.Approvals = slices.Clone(r.Approvals)
	if err := change(&after); err != nil {
		a.settle(ctx, &rec, err)
		return AccessRequest{}, err
	}
	rec.Outcome, rec.Access = "allowed", after.auditView()
	if d.Approve {
		rec.Approvers = approverNames(append(slices.Clone(counting), approval))
	}
	if err := a.keep(ctx, rec); err != nil {
		return AccessRequest{}, err
	}
	updated, err := a.requests.UpdateRequest(ctx, r.ID, change)
	if err != nil {
		return AccessRequest{}, a.failAllowed(ctx, rec, "access request store unavailable; nothing was decided", err)
	}
	a.accessChanged.signal()
	a.notify(ctx, rec.Event, updated, id, d.Reason)
	a.log.InfoContext(ctx, "access request decided", "request", r.ID, "by", id.Name(), "event", rec.Event,
		"state", updated.Status, "approvals_required", need)
	return updated, nil
}

// failAllowed settles rec, recorded as allowed, with the outcome of err, the failure of the
// change it allowed, and returns err; a failure of the store itself (an error without a kind)
// becomes unavailable with msg.
func (a *Authority) failAllowed(ctx context.Context, rec AuditRecord, msg string, err error) error {
	if KindOf(err) == KindInternal {
		err = storeErr(msg, err)
	}
	a.settleAllowed(ctx, rec, err)
	return err
}

// checkDecision is what the service refuses whatever the policy says (DecideAccessRequest).
func checkDecision(r AccessRequest, id Identity, d AccessDecision, now time.Time) error {
	if id.Workload {
		return Denied("a workload identity cannot decide access requests", "sign in as a person")
	}
	if r.SameRequester(id) {
		return Denied("you cannot decide your own access request", "ask someone else to approve it (the same person under another identity or e-mail does not count)")
	}
	if st := r.StateAt(now); st != RequestPending {
		return &Error{Kind: KindConflict, Msg: fmt.Sprintf("access request %s is %s, not pending: it can no longer be decided", r.ID, st)}
	}
	if d.Approve {
		if d.ContentHash == "" {
			return Invalid("content_hash is required: the hash of the request you saw (sshca request show prints it)")
		}
		if d.ContentHash != r.ContentHash() {
			return &Error{Kind: KindConflict, Msg: "content_hash does not match the request: look at it again (sshca request show " + r.ID + ")"}
		}
		if slices.ContainsFunc(r.Approvals, func(ap Approval) bool { return ap.Approver.Name() == id.Name() }) {
			return &Error{Kind: KindConflict, Msg: "you have already approved access request " + r.ID}
		}
	} else if strings.TrimSpace(d.Reason) == "" {
		return Invalid("reason is required to deny: say why (--reason)")
	}
	if len(d.Reason) > 1024 {
		return Invalid("reason is longer than 1024 bytes")
	}
	return nil
}

// countingApprovals are the approvals of r that count now: for its current content, by
// someone who is not its requester, once per canonical identity, and by an identity that no
// revocation blocks (an approver revoked since stops counting).
func (a *Authority) countingApprovals(ctx context.Context, r AccessRequest) ([]Approval, error) {
	hash := r.ContentHash()
	var out []Approval
	seen := map[string]bool{}
	for _, ap := range r.Approvals {
		name := ap.Approver.Name()
		if ap.ContentHash != hash || seen[name] || ap.Approver.Workload || r.SameRequester(ap.Approver) {
			continue
		}
		why, err := a.revocations.Refused(ctx, a.user.PublicKey(), append([]string{name}, ap.Approver.Aliases()...), noKey)
		if err != nil {
			return nil, storeErr("revocation store unavailable", err)
		}
		if why != "" {
			continue
		}
		seen[name] = true
		out = append(out, ap)
	}
	return out, nil
}

func approverNames(aps []Approval) []string {
	var out []string
	for _, ap := range aps {
		if n := ap.Approver.Name(); !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}

// CancelAccessRequest ends a request: its requester may cancel it (pending or approved), and
// an identity the policy allows to revoke may revoke it (kind "revoke", target
// "request:<id>"). The certificates issued under it are revoked like any revocation (bastions
// end their sessions). A certificate being issued meanwhile is not issued: its record is
// written only if the request is still approved (RecordUnderRequest).
func (a *Authority) CancelAccessRequest(ctx context.Context, token, reqID, reason string) (AccessRequest, error) {
	id, r, err := a.authenticatedRequest(ctx, token, reqID)
	if err != nil {
		return AccessRequest{}, err
	}
	if len(reason) > 1024 {
		return AccessRequest{}, Invalid("reason is longer than 1024 bytes")
	}
	status, event := RequestCancelled, "cancel"
	var rec AuditRecord
	if r.Requester.Name() == id.Name() {
		rec = a.auditRecord(ActionRequest, id)
		rec.Target, rec.Reason = "request:"+r.ID, reason
	} else {
		if strings.TrimSpace(reason) == "" {
			return AccessRequest{}, Invalid("reason is required to revoke someone else's access request (--reason)")
		}
		status, event = RequestRevoked, "revoke"
	}
	now := a.now()
	change := func(cur *AccessRequest) error {
		if st := cur.StateAt(now); st.Final() {
			return &Error{Kind: KindConflict, Msg: fmt.Sprintf("access request %s is already %s", cur.ID, st)}
		}
		cur.Status, cur.DecidedAt, cur.DecidedBy, cur.DecisionReason = status, now.UTC(), id.Name(), reason
		return nil
	}
	// The record keeps the request as this change leaves it (none for a request already ended:
	// the change is refused below).
	var view *AccessRequest
	if after := r; change(&after) == nil {
		view = after.auditView()
	}
	if event == "revoke" {
		if rec, err = a.authorizeThen(ctx, id, ActionRevoke, reason, "request:"+r.ID, func(rec *AuditRecord) error {
			rec.Event, rec.AccessRequest, rec.Access = event, r.ID, view
			return nil
		}); err != nil {
			return AccessRequest{}, err
		}
	}
	rec.Event, rec.AccessRequest, rec.Access = event, r.ID, view
	if st := r.StateAt(now); st.Final() {
		err := &Error{Kind: KindConflict, Msg: fmt.Sprintf("access request %s is already %s", r.ID, st)}
		if event == "cancel" {
			a.settle(ctx, &rec, err)
		} else {
			a.settleAllowed(ctx, rec, err)
		}
		return AccessRequest{}, err
	}
	if event == "cancel" {
		rec.Outcome = "allowed"
		if err := a.keep(ctx, rec); err != nil {
			return AccessRequest{}, err
		}
	}
	updated, err := a.requests.UpdateRequest(ctx, r.ID, change)
	if err == nil {
		err = a.revokeSerials(ctx, updated.Serials)
	}
	if err != nil {
		return AccessRequest{}, a.failAllowed(ctx, rec, "access request store unavailable", err)
	}
	a.accessChanged.signal()
	a.notify(ctx, event, updated, id, reason)
	a.log.InfoContext(ctx, "access request ended", "request", r.ID, "by", id.Name(), "event", event, "certificates", len(updated.Serials))
	return updated, nil
}

// revokeSerials revokes the live certificates among serials, each under the CA key that
// signed it.
func (a *Authority) revokeSerials(ctx context.Context, serials []uint64) error {
	byCA := map[string][]RevocationEntry{}
	keys := map[string]ssh.PublicKey{}
	now := a.now()
	for _, s := range serials {
		c, ok, err := a.store.Get(ctx, s)
		if err != nil {
			return Unavailable("certificate inventory unavailable", err)
		}
		if !ok || !c.ValidBefore.After(now) {
			continue // expired: nothing to revoke
		}
		caKey, err := a.caKeyOf(c)
		if err != nil {
			continue // signed by a key no longer in use: it expires on its own
		}
		fp := ssh.FingerprintSHA256(caKey)
		keys[fp] = caKey
		byCA[fp] = append(byCA[fp], RevocationEntry{Kind: RevokedSerial, Value: strconv.FormatUint(c.Serial, 10), Expiry: c.ValidBefore})
	}
	for fp, entries := range byCA {
		if _, err := a.revocations.Revoke(ctx, keys[fp], entries); err != nil {
			return storeErr("revocation store unavailable; the request's certificates were not revoked", err)
		}
	}
	return nil
}

// underRequest loads the access request a certificate is asked under and checks that id may
// use it now: its requester (canonical name), approved and in its window, with enough
// approvals still counting. It returns the request and the approvals that count.
func (a *Authority) underRequest(ctx context.Context, id Identity, reqID string, now time.Time) (AccessRequest, []Approval, error) {
	r, err := a.loadAccessRequest(ctx, reqID)
	if err != nil {
		return AccessRequest{}, nil, err
	}
	if r.Requester.Name() != id.Name() {
		// Not found rather than denied: whose request it is stays unsaid.
		return AccessRequest{}, nil, &Error{Kind: KindNotFound, Msg: "no access request " + reqID + " of yours: only its requester can use it"}
	}
	if err := usable(r, now); err != nil {
		return AccessRequest{}, nil, err
	}
	counting, err := a.countingApprovals(ctx, r)
	if err != nil {
		return AccessRequest{}, nil, err
	}
	if len(counting) < r.ApprovalsRequired {
		return AccessRequest{}, nil, Denied("access request "+r.ID+" no longer has the approvals it needs",
			fmt.Sprintf("%d of %d approvals still count: an approver was revoked or blocked since", len(counting), r.ApprovalsRequired))
	}
	return r, counting, nil
}

// usable says why no certificate may be issued under r at now ("" reasons: nil).
func usable(r AccessRequest, now time.Time) error {
	switch st := r.StateAt(now); st {
	case RequestApproved:
		return nil
	case RequestPending:
		return Denied("access request "+r.ID+" is not approved yet", fmt.Sprintf("it has %d of %d approvals", len(r.Approvers()), r.ApprovalsRequired))
	default:
		return Denied("access request "+r.ID+" is "+string(st), "create a new request (sshca request create)")
	}
}

// breakGlassLast24h counts the break-glass requests id created in the 24 hours before now (the
// store keeps requests a week after they end).
func (a *Authority) breakGlassLast24h(ctx context.Context, id Identity, now time.Time) (int64, error) {
	all, err := a.requests.ListRequests(ctx)
	if err != nil {
		return 0, storeErr("access request store unavailable", err)
	}
	var n int64
	for _, r := range all {
		if r.BreakGlass && r.Requester.Name() == id.Name() && r.CreatedAt.After(now.Add(-24*time.Hour)) {
			n++
		}
	}
	return n, nil
}

// ReviewAccessRequest records the follow-up review of a break-glass request: by someone the
// policy lets decide the request (kind "approve"), never its requester nor a workload identity,
// once. Reports show a break-glass request without it as missing its review.
func (a *Authority) ReviewAccessRequest(ctx context.Context, token, reqID, reason string) (AccessRequest, error) {
	id, r, err := a.authenticatedRequest(ctx, token, reqID)
	if err != nil {
		return AccessRequest{}, err
	}
	rec := a.auditRecord(ActionApprove, id)
	rec.Event, rec.AccessRequest, rec.Target, rec.Reason, rec.BreakGlass = "review", r.ID, "request:"+r.ID, reason, r.BreakGlass
	check := func(cur AccessRequest) error {
		switch {
		case !cur.BreakGlass:
			return &Error{Kind: KindConflict, Msg: "access request " + cur.ID + " is not break-glass: only break-glass requests are reviewed"}
		case cur.ReviewedBy != "":
			return &Error{Kind: KindConflict, Msg: "access request " + cur.ID + " was reviewed already by " + cur.ReviewedBy}
		case id.Workload:
			return Denied("a workload identity cannot review access requests", "sign in as a person")
		case cur.SameRequester(id):
			return Denied("you cannot review your own break-glass access", "ask an approver to review it")
		case len(reason) > 1024:
			return Invalid("reason is longer than 1024 bytes")
		}
		return nil
	}
	if err := check(r); err != nil {
		a.settle(ctx, &rec, err)
		return AccessRequest{}, err
	}
	if _, err := a.decide(ctx, &rec, a.approveInput(id, r, reason), "policy does not let you review this access request"); err != nil {
		return AccessRequest{}, err
	}
	now := a.now()
	change := func(cur *AccessRequest) error {
		if err := check(*cur); err != nil {
			return err
		}
		cur.ReviewedAt, cur.ReviewedBy, cur.ReviewReason = now.UTC(), id.Name(), reason
		return nil
	}
	after := r
	_ = change(&after) // check(r) passed above
	rec.Outcome, rec.Access = "allowed", after.auditView()
	if err := a.keep(ctx, rec); err != nil {
		return AccessRequest{}, err
	}
	updated, err := a.requests.UpdateRequest(ctx, r.ID, change)
	if err != nil {
		return AccessRequest{}, a.failAllowed(ctx, rec, "access request store unavailable", err)
	}
	a.accessChanged.signal()
	a.notify(ctx, "review", updated, id, reason)
	return updated, nil
}

// NotifyExpired queues the "expire" event of each request that expired pending and whose event
// was not queued yet, marking it in the request in the same change (UpdateRequest), so that
// among several replicas one queues it, once, and a restart does not queue it again. Run it
// periodically (notify.Dispatcher). It answers how many it queued.
func (a *Authority) NotifyExpired(ctx context.Context) (int, error) {
	if a.requests == nil || a.notifier == nil {
		return 0, nil
	}
	all, err := a.requests.ListRequests(ctx)
	if err != nil {
		return 0, err
	}
	now := a.now()
	n := 0
	for _, r := range all {
		if r.Status != RequestPending || r.StateAt(now) != RequestExpired || r.ExpiryNotified {
			continue
		}
		var won bool
		updated, err := a.requests.UpdateRequest(ctx, r.ID, func(cur *AccessRequest) error {
			won = !cur.ExpiryNotified && cur.Status == RequestPending
			cur.ExpiryNotified = true
			return nil
		})
		if err != nil {
			return n, err
		}
		if won {
			a.notify(ctx, "expire", updated, Identity{}, "")
			n++
		}
	}
	return n, nil
}
