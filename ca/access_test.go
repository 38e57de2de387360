package ca_test

import (
	"context"
	"crypto/rand"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/policies"
	"github.com/sshca/sshca/store"
)

// The access request tests run the shipped policy (policies/sshca.rego and data.json:
// developers may ask for root and prod-*; one approval from sre-leads for root, two for prod-*) on the memory
// store, with identities named by their tokens.

var (
	accAlice = ca.Identity{Issuer: "https://idp.example", Subject: "u1", Email: "alice@example.com", Username: "alice",
		Groups: []string{"developers"}, AMR: []string{"pwd", "mfa"}}
	accLead = ca.Identity{Issuer: "https://idp.example", Subject: "u7", Email: "lead@example.com", Username: "lead",
		Groups: []string{"sre-leads"}, AMR: []string{"pwd", "hwk"}}
	accLead2 = ca.Identity{Issuer: "https://idp.example", Subject: "u8", Email: "lead2@example.com", Username: "lead2",
		Groups: []string{"sre-leads"}, AMR: []string{"hwk"}}
	// alice again, signed in through another issuer that is in sre-leads there.
	accAliceElsewhere = ca.Identity{Issuer: "https://other-idp.example", Subject: "x9", Email: "ALICE@example.com",
		Groups: []string{"sre-leads"}, AMR: []string{"hwk"}}
	accJob    = ca.Identity{Issuer: "https://ci.example", Subject: "repo:org/app", Groups: []string{"sre-leads"}, AMR: []string{"hwk"}, Workload: true}
	accOncall = ca.Identity{Issuer: "https://idp.example", Subject: "u5", Email: "oncall@example.com", Username: "oncall",
		Groups: []string{"oncall"}, AMR: []string{"pwd", "mfa"}}
	accBob = ca.Identity{Issuer: "https://idp.example", Subject: "u2", Email: "bob@example.com", Username: "bob",
		Groups: []string{"developers"}, AMR: []string{"pwd", "mfa"}}
)

// tokenAuth authenticates "token-<name>" as the identity of that name, signed in at now.
type tokenAuth struct {
	ids map[string]ca.Identity
	now func() time.Time
}

func (a tokenAuth) Authenticate(_ context.Context, token string) (ca.Identity, error) {
	id, ok := a.ids[strings.TrimPrefix(token, "token-")]
	if !ok || !strings.HasPrefix(token, "token-") {
		return ca.Identity{}, ca.Unauthenticated("bad token", nil)
	}
	id.AuthTime = a.now().Add(-time.Minute).Unix()
	return id, nil
}

// serialSigner signs for real with serials 1, 2, 3, ...
type serialSigner struct {
	key    ssh.Signer
	now    func() time.Time
	serial atomic.Uint64
}

func (s *serialSigner) PublicKey() ssh.PublicKey { return s.key.PublicKey() }
func (s *serialSigner) Sign(_ context.Context, tmpl *ssh.Certificate, ttl time.Duration) (*ssh.Certificate, error) {
	c := *tmpl
	c.Serial = s.serial.Add(1)
	c.KeyId += "#" + itoa(c.Serial)
	c.ValidAfter = uint64(s.now().Add(-30 * time.Second).Unix())
	c.ValidBefore = uint64(s.now().Add(ttl).Unix())
	if err := c.SignCert(rand.Reader, s.key); err != nil {
		return nil, err
	}
	return &c, nil
}

func itoa(n uint64) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}

// hookPolicy is the shipped policy with a hook run after each decision (to act while an
// issuance is in flight).
type hookPolicy struct {
	ca.Policy
	mu    sync.Mutex
	after func(in ca.PolicyInput)
}

func (h *hookPolicy) Decide(ctx context.Context, in ca.PolicyInput) (ca.Decision, error) {
	d, err := h.Policy.Decide(ctx, in)
	h.mu.Lock()
	after := h.after
	h.mu.Unlock()
	if after != nil {
		after(in)
	}
	return d, err
}

type accessRig struct {
	t      *testing.T
	a      *ca.Authority
	st     *store.Memory
	audit  *fakeAudit
	policy *hookPolicy
	now    time.Time
	mu     sync.Mutex
	key    ssh.PublicKey
	// config is r.a's: another authority made from it is another replica on the same store.
	config ca.Config
}

func (r *accessRig) clock() time.Time { r.mu.Lock(); defer r.mu.Unlock(); return r.now }
func (r *accessRig) advance(d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.now = r.now.Add(d)
}

func newAccessRig(t *testing.T) *accessRig {
	t.Helper()
	r := &accessRig{t: t, now: time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC), audit: &fakeAudit{}}
	engine, err := policies.LoadFS(t.Context(), policies.Embedded)
	if err != nil {
		t.Fatal(err)
	}
	r.policy = &hookPolicy{Policy: engine}
	r.st = store.NewMemory(r.clock)
	userKey, _ := newSSHKey(t)
	hostKey, _ := newSSHKey(t)
	_, r.key = newSSHKey(t)
	ids := map[string]ca.Identity{"alice": accAlice, "lead": accLead, "lead2": accLead2, "alice-elsewhere": accAliceElsewhere,
		"job": accJob, "bob": accBob, "oncall": accOncall}
	r.config = ca.Config{Authenticator: tokenAuth{ids: ids, now: r.clock}, Policy: r.policy,
		UserSigner: &serialSigner{key: userKey, now: r.clock}, HostSigner: &serialSigner{key: hostKey, now: r.clock},
		Store: r.st, Revocations: r.st, Requests: r.st, Audit: r.audit, Now: r.clock}
	r.a, err = ca.New(r.config)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *accessRig) create(who string, principals []string, ttl, reason string) ca.AccessRequest {
	r.t.Helper()
	req, err := r.a.CreateAccessRequest(r.t.Context(), "token-"+who, ca.NewAccessRequest{Principals: principals, TTL: ttl, Reason: reason})
	if err != nil {
		r.t.Fatalf("create: %v", err)
	}
	return req
}

func (r *accessRig) approve(who string, req ca.AccessRequest) (ca.AccessRequest, error) {
	return r.a.DecideAccessRequest(r.t.Context(), "token-"+who, req.ID, ca.AccessDecision{Approve: true, ContentHash: req.ContentHash(), Reason: "ok"})
}

func (r *accessRig) cert(who, reqID string, principals []string, ttl string) (ca.Issued, error) {
	return r.a.IssueRequest(r.t.Context(), "token-"+who, ca.CertRequest{Kind: ca.UserCert,
		PublicKey: string(ssh.MarshalAuthorizedKey(r.key)), Principals: principals, TTL: ttl, AccessRequest: reqID})
}

func wantKind(t *testing.T, what string, err error, kind ca.ErrorKind, contains string) {
	t.Helper()
	if ca.KindOf(err) != kind || (contains != "" && !strings.Contains(err.Error(), contains)) {
		t.Errorf("%s: %v, want %s containing %q", what, err, kind, contains)
	}
}

// TestAccessRequestApproved: a request approved by another identity gives its requester root
// certificates named after it, within the policy's certificate TTL, with the approval in the
// policy input, the key ID, the inventory and the audit log.
func TestAccessRequestApproved(t *testing.T) {
	r := newAccessRig(t)
	req := r.create("alice", []string{"root"}, "30m", "OPS-1234 disk full")
	if req.Status != ca.RequestPending || req.ApprovalsRequired != 1 || req.Ticket != "OPS-1234" || req.TTLSeconds != 1800 {
		t.Fatalf("created %+v", req)
	}
	if _, err := r.cert("alice", req.ID, nil, "5m"); ca.KindOf(err) != ca.KindDenied || !strings.Contains(err.Error(), "not approved yet") {
		t.Fatalf("certificate under a pending request: %v", err)
	}
	approved, err := r.approve("lead", req)
	if err != nil {
		t.Fatal(err)
	}
	if approved.Status != ca.RequestApproved || !approved.NotAfter.Equal(r.now.Add(30*time.Minute)) {
		t.Fatalf("after one approval from sre-leads: %s until %s", approved.Status, approved.NotAfter)
	}
	r.advance(time.Minute)
	iss, err := r.cert("alice", req.ID, nil, "5m")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(iss.Cert.ValidPrincipals, []string{"root"}) || !strings.Contains(iss.Cert.KeyId, "/OPS-1234/"+req.ID+"#") {
		t.Errorf("certificate principals %v key ID %q", iss.Cert.ValidPrincipals, iss.Cert.KeyId)
	}
	if iss.Record.AccessRequest != req.ID || !slices.Equal(iss.Record.Approvers, []string{accLead.Name()}) {
		t.Errorf("inventory record names request %q approvers %v", iss.Record.AccessRequest, iss.Record.Approvers)
	}
	kept, _, _ := r.st.GetRequest(t.Context(), req.ID)
	if !slices.Equal(kept.Serials, []uint64{iss.Cert.Serial}) {
		t.Errorf("request serials %v, want the certificate's", kept.Serials)
	}
	// A certificate that asks for the request's window is held to the policy's certificate TTL.
	if _, err := r.cert("alice", req.ID, nil, "30m"); ca.KindOf(err) != ca.KindDenied || !strings.Contains(err.Error(), "policy maximum of 900s") {
		t.Errorf("a 30m certificate under the request: %v", err)
	}
	// Principals beyond the request are refused.
	wantKind(t, "alice beyond the request", func() error { _, err := r.cert("alice", req.ID, []string{"root", "admin"}, "5m"); return err }(),
		ca.KindDenied, "principal admin is not in access request")

	var events []string
	for _, rec := range r.audit.recs {
		if rec.AccessRequest == req.ID {
			events = append(events, string(rec.Action)+"/"+rec.Event+"/"+rec.Outcome)
			if rec.V != ca.AuditRecordVersion {
				t.Errorf("record version %d", rec.V)
			}
		}
	}
	want := []string{"request/create/allowed", "user//denied", "approve/approve/allowed", "user//issued", "user//denied", "user//denied"}
	if !slices.Equal(events, want) {
		t.Errorf("audit records %v, want %v", events, want)
	}
}

// TestAccessRequestPolicyInput: a certificate under a request shows the policy the request
// and the approvals that count.
func TestAccessRequestPolicyInput(t *testing.T) {
	r := newAccessRig(t)
	req := r.create("alice", []string{"root"}, "30m", "OPS-1234 disk full")
	if _, err := r.approve("lead", req); err != nil {
		t.Fatal(err)
	}
	var seen ca.PolicyInput
	r.policy.after = func(in ca.PolicyInput) { seen = in }
	if _, err := r.cert("alice", req.ID, nil, "5m"); err != nil {
		t.Fatal(err)
	}
	ar := seen.AccessRequest
	if seen.Kind != ca.ActionUser || ar.ID != req.ID || len(ar.Approvals) != 1 || ar.Approvals[0].Approver.Name() != accLead.Name() ||
		!slices.Equal(ar.Principals, []string{"root"}) || ar.Requester.Name() != accAlice.Name() {
		t.Errorf("policy input %+v", seen)
	}
}

// TestAccessRequestSelfApproval: the requester cannot approve, neither as itself nor under
// another identity with the same verified e-mail, and no workload identity can: the service
// refuses these whatever the policy says.
func TestAccessRequestSelfApproval(t *testing.T) {
	r := newAccessRig(t)
	req := r.create("alice", []string{"root"}, "30m", "OPS-1234 disk full")
	for _, who := range []string{"alice", "alice-elsewhere"} {
		_, err := r.approve(who, req)
		wantKind(t, who, err, ca.KindDenied, "your own access request")
	}
	_, err := r.approve("job", req)
	wantKind(t, "job", err, ca.KindDenied, "workload identity")
	// ... and bob, a developer but not in sre-leads, is refused by the policy.
	_, err = r.approve("bob", req)
	wantKind(t, "bob", err, ca.KindDenied, "needs membership of one of the groups [\"sre-leads\"]")
	kept, _, _ := r.st.GetRequest(t.Context(), req.ID)
	if kept.Status != ca.RequestPending || len(kept.Approvals) != 0 {
		t.Errorf("after refused approvals: %s with %d approvals", kept.Status, len(kept.Approvals))
	}
	if _, err := r.cert("alice", req.ID, nil, "5m"); ca.KindOf(err) != ca.KindDenied {
		t.Errorf("certificate without approval: %v", err)
	}
}

// TestAccessRequestContentHash: an approval names the content it saw.
func TestAccessRequestContentHash(t *testing.T) {
	r := newAccessRig(t)
	req := r.create("alice", []string{"root"}, "30m", "OPS-1234 disk full")
	_, err := r.a.DecideAccessRequest(t.Context(), "token-lead", req.ID, ca.AccessDecision{Approve: true})
	wantKind(t, "no hash", err, ca.KindInvalid, "content_hash is required")
	other := req
	other.Principals = []string{"root", "prod-db"}
	_, err = r.a.DecideAccessRequest(t.Context(), "token-lead", req.ID, ca.AccessDecision{Approve: true, ContentHash: other.ContentHash()})
	wantKind(t, "hash of other content", err, ca.KindConflict, "content_hash does not match")
	for _, change := range []func(*ca.AccessRequest){
		func(x *ca.AccessRequest) { x.Principals = []string{"rooT"} },
		func(x *ca.AccessRequest) { x.TTLSeconds++ },
		func(x *ca.AccessRequest) { x.Reason += " " },
		func(x *ca.AccessRequest) { x.Requester = accBob },
		func(x *ca.AccessRequest) { x.ID = "req_bbbbbbbbbbbbbbbb" },
	} {
		x := req
		change(&x)
		if x.ContentHash() == req.ContentHash() {
			t.Errorf("a change of content keeps the hash: %+v", x)
		}
	}
}

// TestAccessRequestTwoApprovals: prod-* needs two distinct approvers; the same one twice is one.
func TestAccessRequestTwoApprovals(t *testing.T) {
	r := newAccessRig(t)
	req := r.create("alice", []string{"prod-db"}, "1h", "OPS-7 failover")
	if req.ApprovalsRequired != 2 {
		t.Fatalf("approvals required %d, want 2", req.ApprovalsRequired)
	}
	got, err := r.approve("lead", req)
	if err != nil || got.Status != ca.RequestPending {
		t.Fatalf("after one approval: %v %v", got.Status, err)
	}
	_, err = r.approve("lead", req)
	wantKind(t, "lead again", err, ca.KindConflict, "already approved")
	if _, err := r.cert("alice", req.ID, nil, "5m"); ca.KindOf(err) != ca.KindDenied {
		t.Errorf("certificate with one of two approvals: %v", err)
	}
	got, err = r.approve("lead2", req)
	if err != nil || got.Status != ca.RequestApproved {
		t.Fatalf("after two approvals: %v %v", got.Status, err)
	}
	iss, err := r.cert("alice", req.ID, nil, "5m")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(iss.Record.Approvers, []string{accLead.Name(), accLead2.Name()}) {
		t.Errorf("approvers %v", iss.Record.Approvers)
	}
}

// TestAccessRequestOnlyRequester: nobody but the requester can use the request.
func TestAccessRequestOnlyRequester(t *testing.T) {
	r := newAccessRig(t)
	req := r.create("alice", []string{"root"}, "30m", "OPS-1234 disk full")
	if _, err := r.approve("lead", req); err != nil {
		t.Fatal(err)
	}
	for _, who := range []string{"lead", "bob", "alice-elsewhere"} {
		_, err := r.cert(who, req.ID, nil, "5m")
		wantKind(t, who, err, ca.KindNotFound, "only its requester")
	}
	_, err := r.cert("alice", "req_bogus", nil, "5m")
	wantKind(t, "malformed ID", err, ca.KindInvalid, "not an access request ID")
}

// TestAccessRequestExpires: a pending request not decided in time expires; an approved one
// ends with its window, and no certificate outlives the window.
func TestAccessRequestExpires(t *testing.T) {
	r := newAccessRig(t)
	req := r.create("alice", []string{"root"}, "30m", "OPS-1234 disk full")
	r.advance(time.Hour)
	_, err := r.approve("lead", req)
	wantKind(t, "approve after pending timeout", err, ca.KindConflict, "is expired")
	_, err = r.cert("alice", req.ID, nil, "5m")
	wantKind(t, "certificate under an expired request", err, ca.KindDenied, "is expired")

	req = r.create("alice", []string{"root"}, "10m", "OPS-1234 disk full")
	if _, err := r.approve("lead", req); err != nil {
		t.Fatal(err)
	}
	r.advance(7 * time.Minute)
	iss, err := r.cert("alice", req.ID, nil, "10m")
	if err != nil {
		t.Fatal(err)
	}
	if end := time.Unix(int64(iss.Cert.ValidBefore), 0); end.After(r.clock().Add(3 * time.Minute)) {
		t.Errorf("certificate valid until %s, past the window's end %s", end, r.clock().Add(3*time.Minute))
	}
	r.advance(2*time.Minute + 30*time.Second)
	_, err = r.cert("alice", req.ID, nil, "5m")
	wantKind(t, "30s before the window ends", err, ca.KindDenied, "ends in less than a minute")
	r.advance(time.Minute)
	_, err = r.cert("alice", req.ID, nil, "5m")
	wantKind(t, "after the window", err, ca.KindDenied, "is expired")
}

// TestAccessRequestDenied: an approver's denial needs a reason and ends the request.
func TestAccessRequestDenied(t *testing.T) {
	r := newAccessRig(t)
	req := r.create("alice", []string{"root"}, "30m", "OPS-1234 disk full")
	_, err := r.a.DecideAccessRequest(t.Context(), "token-lead", req.ID, ca.AccessDecision{})
	wantKind(t, "deny without reason", err, ca.KindInvalid, "reason is required")
	got, err := r.a.DecideAccessRequest(t.Context(), "token-lead", req.ID, ca.AccessDecision{Reason: "use the runbook"})
	if err != nil || got.Status != ca.RequestDenied || got.DecisionReason != "use the runbook" {
		t.Fatalf("deny: %+v %v", got, err)
	}
	_, err = r.cert("alice", req.ID, nil, "5m")
	wantKind(t, "certificate under a denied request", err, ca.KindDenied, "is denied")
	_, err = r.approve("lead2", req)
	wantKind(t, "approve after deny", err, ca.KindConflict, "is denied")
}

// TestAccessRequestRevokedApprover: an approval by an identity revoked since stops counting.
func TestAccessRequestRevokedApprover(t *testing.T) {
	r := newAccessRig(t)
	req := r.create("alice", []string{"root"}, "30m", "OPS-1234 disk full")
	if _, err := r.approve("lead", req); err != nil {
		t.Fatal(err)
	}
	if _, err := r.cert("alice", req.ID, nil, "5m"); err != nil {
		t.Fatal(err)
	}
	if err := r.st.BlockIdentity(t.Context(), "email:lead@example.com", r.clock().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	_, err := r.cert("alice", req.ID, nil, "5m")
	wantKind(t, "after the approver was revoked", err, ca.KindDenied, "no longer has the approvals")
}

// TestAccessRequestCancel: cancelling ends the request and revokes its live certificates; a
// certificate whose issuance was in flight when the request was cancelled is not issued.
func TestAccessRequestCancel(t *testing.T) {
	r := newAccessRig(t)
	req := r.create("alice", []string{"root"}, "30m", "OPS-1234 disk full")
	if _, err := r.approve("lead", req); err != nil {
		t.Fatal(err)
	}
	iss, err := r.cert("alice", req.ID, nil, "5m")
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.a.CancelAccessRequest(t.Context(), "token-bob", req.ID, "")
	wantKind(t, "bob cancels alice's request without reason", err, ca.KindInvalid, "reason is required")
	_, err = r.a.CancelAccessRequest(t.Context(), "token-bob", req.ID, "nope")
	wantKind(t, "bob revokes alice's request", err, ca.KindDenied, "may not revoke")

	// Cancel while the next issuance is between its policy decision and its record.
	r.policy.after = func(in ca.PolicyInput) {
		if in.Kind == ca.ActionUser {
			r.policy.after = nil
			if _, err := r.a.CancelAccessRequest(context.Background(), "token-alice", req.ID, "done"); err != nil {
				t.Errorf("cancel: %v", err)
			}
		}
	}
	_, err = r.cert("alice", req.ID, nil, "5m")
	wantKind(t, "issuance in flight during cancel", err, ca.KindDenied, "is cancelled")
	kept, _, _ := r.st.GetRequest(t.Context(), req.ID)
	if kept.Status != ca.RequestCancelled || !slices.Equal(kept.Serials, []uint64{iss.Cert.Serial}) {
		t.Errorf("after cancel: %s serials %v", kept.Status, kept.Serials)
	}
	if live, _ := r.st.Live(t.Context(), accAlice.Name(), r.clock()); len(live) != 1 {
		t.Errorf("inventory holds %d certificates, want only the one issued before the cancel", len(live))
	}
	why, err := r.st.Refused(t.Context(), iss.Cert.SignatureKey, nil, r.key)
	state, _ := r.st.State(t.Context(), iss.Cert.SignatureKey)
	revoked := false
	for _, e := range state.Entries {
		if e.Kind == ca.RevokedSerial && e.Value == itoa(iss.Cert.Serial) {
			revoked = true
		}
	}
	if !revoked || err != nil {
		t.Errorf("the certificate issued under the cancelled request is not revoked: %+v %q %v", state, why, err)
	}
	_, err = r.a.CancelAccessRequest(t.Context(), "token-alice", req.ID, "again")
	wantKind(t, "cancel twice", err, ca.KindConflict, "already cancelled")
}

// TestAccessRequestCreateRefused: what the service and the policy refuse at creation.
func TestAccessRequestCreateRefused(t *testing.T) {
	r := newAccessRig(t)
	for _, c := range []struct {
		who  string
		nr   ca.NewAccessRequest
		kind ca.ErrorKind
		msg  string
	}{
		{"alice", ca.NewAccessRequest{TTL: "30m", Reason: "OPS-1 x"}, ca.KindInvalid, "principals"},
		{"alice", ca.NewAccessRequest{Principals: []string{"root"}, Reason: "OPS-1 x"}, ca.KindInvalid, "ttl is required"},
		{"alice", ca.NewAccessRequest{Principals: []string{"root"}, TTL: "30s", Reason: "OPS-1 x"}, ca.KindInvalid, "at least 1m"},
		{"alice", ca.NewAccessRequest{Principals: []string{"root"}, TTL: "13h", Reason: "OPS-1 x"}, ca.KindInvalid, "ttl"},
		{"alice", ca.NewAccessRequest{Principals: []string{"root"}, TTL: "30m"}, ca.KindInvalid, "reason is required"},
		{"alice", ca.NewAccessRequest{Principals: []string{"ro ot"}, TTL: "30m", Reason: "OPS-1 x"}, ca.KindInvalid, ""},
		{"alice", ca.NewAccessRequest{Principals: []string{"root"}, TTL: "5h", Reason: "OPS-1 x"}, ca.KindDenied, "exceeds the policy maximum of 14400s"},
		{"alice", ca.NewAccessRequest{Principals: []string{"root"}, TTL: "30m", Reason: "disk"}, ca.KindDenied, "needs a ticket"},
		{"alice", ca.NewAccessRequest{Principals: []string{"admin"}, TTL: "30m", Reason: "OPS-1 x"}, ca.KindDenied, "may not request principal admin"},
		{"lead", ca.NewAccessRequest{Principals: []string{"root"}, TTL: "30m", Reason: "OPS-1 x"}, ca.KindDenied, "may not request principal root"},
	} {
		_, err := r.a.CreateAccessRequest(t.Context(), "token-"+c.who, c.nr)
		wantKind(t, c.who+" "+strings.Join(c.nr.Principals, ",")+" "+c.nr.TTL+" "+c.nr.Reason, err, c.kind, c.msg)
	}
	if list, _ := r.st.ListRequests(t.Context()); len(list) != 0 {
		t.Errorf("refused requests were stored: %v", list)
	}
	_, err := r.a.CreateAccessRequest(t.Context(), "bad", ca.NewAccessRequest{Principals: []string{"root"}, TTL: "30m", Reason: "OPS-1 x"})
	wantKind(t, "no identity", err, ca.KindUnauthenticated, "")
}

// TestAccessRequestVisibility: a request is shown to its requester and to those who may decide
// it, and listed for them; to others it does not exist.
func TestAccessRequestVisibility(t *testing.T) {
	r := newAccessRig(t)
	req := r.create("alice", []string{"root"}, "30m", "OPS-1234 disk full")
	for who, visible := range map[string]bool{"alice": true, "lead": true, "bob": false, "job": false, "alice-elsewhere": true} {
		_, err := r.a.GetAccessRequest(t.Context(), "token-"+who, req.ID)
		if visible != (err == nil) || (!visible && ca.KindOf(err) != ca.KindNotFound) {
			t.Errorf("%s sees the request: %v", who, err)
		}
		page, err := r.a.AccessRequestsPage(t.Context(), "token-"+who, ca.RequestQuery{Pending: true, Limit: 1})
		if who == "alice-elsewhere" {
			visible = false // listed only for its canonical requester and its approvers
		}
		if err != nil || (len(page.Requests) == 1) != visible || !page.Next.IsZero() {
			t.Errorf("%s lists %d requests, next %+v: %v", who, len(page.Requests), page.Next, err)
		}
	}
	if page, _ := r.a.AccessRequestsPage(t.Context(), "token-lead", ca.RequestQuery{Mine: true}); len(page.Requests) != 0 {
		t.Errorf("lead's own requests: %v", page.Requests)
	}
}

// TestAccessRequestBreakGlass: oncall gets root at once, without approval, marked break-glass,
// at most per_day times a day; a review follows, by an approver and never by the requester.
func TestAccessRequestBreakGlass(t *testing.T) {
	r := newAccessRig(t)
	bg := func(who, ttl string) (ca.AccessRequest, error) {
		return r.a.CreateAccessRequest(t.Context(), "token-"+who, ca.NewAccessRequest{Principals: []string{"root"}, TTL: ttl,
			Reason: "INC-9 site down", BreakGlass: true})
	}
	req, err := bg("oncall", "20m")
	if err != nil {
		t.Fatal(err)
	}
	if req.Status != ca.RequestApproved || req.DecidedBy != "break-glass" || !req.BreakGlass || !req.NotAfter.Equal(r.clock().Add(20*time.Minute)) {
		t.Fatalf("break-glass request %+v", req)
	}
	iss, err := r.cert("oncall", req.ID, nil, "5m")
	if err != nil || !slices.Equal(iss.Cert.ValidPrincipals, []string{"root"}) {
		t.Fatalf("certificate under break-glass: %v %v", iss.Cert, err)
	}
	var marked int
	for _, rec := range r.audit.recs {
		if rec.AccessRequest == req.ID && rec.Event == "create" && rec.BreakGlass && rec.Outcome == "allowed" {
			marked++
		}
	}
	if marked != 1 {
		t.Errorf("%d break-glass create records, want 1: %+v", marked, r.audit.recs)
	}
	_, err = bg("alice", "20m")
	wantKind(t, "alice is not oncall", err, ca.KindDenied, "may not use break-glass")
	_, err = bg("oncall", "31m")
	wantKind(t, "longer than break-glass allows", err, ca.KindDenied, "at most 1800s")
	if _, err := bg("oncall", "20m"); err != nil {
		t.Fatal(err)
	}
	_, err = bg("oncall", "20m")
	wantKind(t, "a third within a day", err, ca.KindDenied, "2 times in the last 24 hours")
	r.advance(24*time.Hour + time.Minute)
	if _, err := bg("oncall", "20m"); err != nil {
		t.Errorf("a day later: %v", err)
	}

	// The review.
	for who, want := range map[string]string{"oncall": "your own break-glass access", "job": "workload identity", "bob": "needs membership"} {
		_, err := r.a.ReviewAccessRequest(t.Context(), "token-"+who, req.ID, "ok")
		wantKind(t, who+" reviews", err, ca.KindDenied, want)
	}
	reviewed, err := r.a.ReviewAccessRequest(t.Context(), "token-lead", req.ID, "checked the incident")
	if err != nil || reviewed.ReviewedBy != accLead.Name() || reviewed.ReviewReason != "checked the incident" {
		t.Fatalf("review: %+v %v", reviewed, err)
	}
	_, err = r.a.ReviewAccessRequest(t.Context(), "token-lead2", req.ID, "again")
	wantKind(t, "second review", err, ca.KindConflict, "reviewed already")
	plain := r.create("alice", []string{"root"}, "30m", "OPS-1234 disk full")
	_, err = r.a.ReviewAccessRequest(t.Context(), "token-lead", plain.ID, "x")
	wantKind(t, "review of a request that is not break-glass", err, ca.KindConflict, "not break-glass")
}

// fakeNotifier keeps the events queued.
type fakeNotifier struct {
	mu     sync.Mutex
	events []ca.AccessEvent
}

func (f *fakeNotifier) Queue(_ context.Context, ev ca.AccessEvent) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.events = append(f.events, ev)
	return nil
}

func (f *fakeNotifier) types() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, ev := range f.events {
		out = append(out, ev.Type+":"+ev.Request)
	}
	return out
}

// TestAccessRequestNotifications: every decision queues its event; an expiry is queued once,
// by whichever of two authorities sweeps first.
func TestAccessRequestNotifications(t *testing.T) {
	r := newAccessRig(t)
	n := &fakeNotifier{}
	other, err := ca.New(ca.Config{Authenticator: fakeAuth{}, Policy: r.policy, UserSigner: &serialSigner{key: mustSigner(t), now: r.clock},
		HostSigner: &serialSigner{key: mustSigner(t), now: r.clock}, Store: r.st, Revocations: r.st, Requests: r.st, Notifier: n, Now: r.clock})
	if err != nil {
		t.Fatal(err)
	}
	r.a, err = ca.New(ca.Config{Authenticator: tokenAuth{ids: map[string]ca.Identity{"alice": accAlice, "lead": accLead}, now: r.clock},
		Policy: r.policy, UserSigner: &serialSigner{key: mustSigner(t), now: r.clock}, HostSigner: &serialSigner{key: mustSigner(t), now: r.clock},
		Store: r.st, Revocations: r.st, Requests: r.st, Audit: r.audit, Notifier: n, Now: r.clock})
	if err != nil {
		t.Fatal(err)
	}
	a := r.create("alice", []string{"root"}, "30m", "OPS-1 x")
	if _, err := r.approve("lead", a); err != nil {
		t.Fatal(err)
	}
	b := r.create("alice", []string{"root"}, "30m", "OPS-2 y")
	if _, err := r.a.DecideAccessRequest(t.Context(), "token-lead", b.ID, ca.AccessDecision{Reason: "no"}); err != nil {
		t.Fatal(err)
	}
	c := r.create("alice", []string{"root"}, "30m", "OPS-3 z")
	r.advance(time.Hour)
	for range 2 {
		for _, auth := range []*ca.Authority{r.a, other} {
			if _, err := auth.NotifyExpired(t.Context()); err != nil {
				t.Fatal(err)
			}
		}
	}
	want := []string{"create:" + a.ID, "approve:" + a.ID, "create:" + b.ID, "deny:" + b.ID, "create:" + c.ID, "expire:" + c.ID}
	if got := n.types(); !slices.Equal(got, want) {
		t.Errorf("events %v, want %v", got, want)
	}
}

func mustSigner(t *testing.T) ssh.Signer {
	s, _ := newSSHKey(t)
	return s
}
