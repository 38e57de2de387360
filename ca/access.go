package ca

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/binary"
	"encoding/hex"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// Just-in-time access (issue 17): an identity asks for principals for a while and gives a
// reason; the policy (kind "request") says whether it may ask and how many approvals the
// request needs; other people approve it (kind "approve"); once approved, the requester gets
// ordinary minutes-long certificates under it (kind "user" with the request in the input) until
// its window ends. A request never changes after it is created: an approval names a hash of its
// content (ContentHash) and counts only for that content.

// AccessRequestState is where an access request is in its life:
//
//	pending ──approve (enough approvals)──▶ approved ──window ends──▶ expired
//	   │ ├──deny──▶ denied                     └──cancel / revoke──▶ cancelled / revoked
//	   │ └──not decided in time──▶ expired
//	   └──cancel──▶ cancelled
//
// Expiry is not written: State reads it from the clock (AccessRequest.StateAt), so a request
// expires on time whether or not anyone touches it.
type AccessRequestState string

const (
	RequestPending   AccessRequestState = "pending"
	RequestApproved  AccessRequestState = "approved"
	RequestDenied    AccessRequestState = "denied"
	RequestExpired   AccessRequestState = "expired"
	RequestCancelled AccessRequestState = "cancelled"
	RequestRevoked   AccessRequestState = "revoked"
)

// Final reports whether nothing can happen to a request in this state any more.
func (s AccessRequestState) Final() bool { return s != RequestPending && s != RequestApproved }

// AccessRequest is one access request as the store keeps it. Everything up to BreakGlass is
// its content, fixed at creation; the rest is its history.
type AccessRequest struct {
	// ID is "req_" and 16 base32 characters (80 random bits): unguessable, printable, and
	// allowed in a key ID.
	ID string `json:"id"`
	// Requester is the identity that created the request, as its token said then (no token).
	Requester Identity `json:"requester"`
	// Principals are the user names asked for, sorted, without duplicates.
	Principals []string `json:"principals"`
	// TTLSeconds is how long the access lasts once approved (the window), in seconds.
	TTLSeconds int64  `json:"ttl_seconds"`
	Reason     string `json:"reason"`
	// Ticket is the ticket the policy found in the reason ("" when none).
	Ticket     string `json:"ticket,omitempty"`
	BreakGlass bool   `json:"break_glass,omitempty"`

	CreatedAt time.Time `json:"created_at"`
	// PendingUntil is when a request not yet decided expires.
	PendingUntil time.Time `json:"pending_until"`
	// ApprovalsRequired is what the policy asked for at creation (the policy asks again at
	// each approval; ApprovalsRequired is then updated).
	ApprovalsRequired int        `json:"approvals_required"`
	Approvals         []Approval `json:"approvals,omitempty"`
	// Status is the state as last written: pending, approved, denied, cancelled or revoked.
	// StateAt adds expiry.
	Status AccessRequestState `json:"status"`
	// DecidedAt, DecidedBy (a canonical identity name) and DecisionReason record the last
	// change of Status.
	DecidedAt      time.Time `json:"decided_at,omitzero"`
	DecidedBy      string    `json:"decided_by,omitempty"`
	DecisionReason string    `json:"decision_reason,omitempty"`
	// ReviewedAt, ReviewedBy (a canonical name) and ReviewReason are the follow-up review a
	// break-glass request needs (sshca request review); reports show it missing until then.
	ReviewedAt   time.Time `json:"reviewed_at,omitzero"`
	ReviewedBy   string    `json:"reviewed_by,omitempty"`
	ReviewReason string    `json:"review_reason,omitempty"`
	// ExpiryNotified says the "expire" event of a request that expired pending was queued
	// (Authority.NotifyExpired).
	ExpiryNotified bool `json:"expiry_notified,omitempty"`
	// NotAfter is the end of the approved window: approval time plus TTLSeconds.
	NotAfter time.Time `json:"not_after,omitzero"`
	// Serials are the certificates issued under the request, appended once their inventory
	// records are kept and the request was checked (AccessRequestStore.RecordUnderRequest).
	Serials        []uint64 `json:"serials,omitempty"`
	PolicyRevision string   `json:"policy_revision,omitempty"`
}

// Approval is one approver's yes to one request content.
type Approval struct {
	// Approver is the approving identity as its token said when it approved.
	Approver Identity  `json:"approver"`
	At       time.Time `json:"at"`
	Reason   string    `json:"reason,omitempty"`
	// ContentHash is the AccessRequest.ContentHash the approver saw.
	ContentHash string `json:"content_hash"`
}

// StateAt is the request's state at now: Status, or expired when a pending request was not
// decided by PendingUntil or an approved request's window has ended.
func (r AccessRequest) StateAt(now time.Time) AccessRequestState {
	switch {
	case r.Status == RequestPending && !now.Before(r.PendingUntil):
		return RequestExpired
	case r.Status == RequestApproved && !now.Before(r.NotAfter):
		return RequestExpired
	}
	return r.Status
}

// KeepUntil is how long the store keeps the request: until it can change no more, plus
// AccessRequestRetention so that `sshca request show` still answers for a while (the audit log
// keeps it for good).
func (r AccessRequest) KeepUntil() time.Time {
	end := r.PendingUntil
	if r.NotAfter.After(end) {
		end = r.NotAfter
	}
	if r.DecidedAt.After(end) {
		end = r.DecidedAt
	}
	return end.Add(AccessRequestRetention)
}

// AccessRequestRetention is how long a request is kept after it ended.
const AccessRequestRetention = 7 * 24 * time.Hour

// ContentHash is the hex SHA-256 of the request's content: its ID, requester (canonical name),
// principals, TTL and reason, each length-prefixed so that no two contents share an encoding.
// An approval names it, so it counts only for the content the approver saw.
func (r AccessRequest) ContentHash() string {
	return AccessRequestContentHash(r.ID, r.Requester.Name(), r.Principals, r.TTLSeconds, r.Reason)
}

// AccessRequestContentHash is AccessRequest.ContentHash from the request's fields as an API
// client sees them (requester as its canonical name), so that an approver's client computes
// the hash of what it showed rather than trusting the server's.
func AccessRequestContentHash(id, requester string, principals []string, ttlSeconds int64, reason string) string {
	h := sha256.New()
	field := func(s string) {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	field("sshca access request v1")
	field(id)
	field(requester)
	field(strings.Join(principals, "\x00"))
	var ttl [8]byte
	binary.BigEndian.PutUint64(ttl[:], uint64(ttlSeconds))
	h.Write(ttl[:])
	field(reason)
	return hex.EncodeToString(h.Sum(nil))
}

// SameRequester reports whether id is the request's requester under either of the names that
// identify a person: the canonical name, or the verified e-mail (case-insensitive), so that one
// person signed in through two issuers is still one person.
func (r AccessRequest) SameRequester(id Identity) bool {
	if id.Name() == r.Requester.Name() {
		return true
	}
	return id.Email != "" && r.Requester.Email != "" && strings.EqualFold(id.Email, r.Requester.Email)
}

// Approvers are the canonical names of the distinct approvers whose approval names the current
// content, in the order they approved.
func (r AccessRequest) Approvers() []string {
	hash := r.ContentHash()
	var out []string
	for _, a := range r.Approvals {
		if a.ContentHash == hash && !slices.Contains(out, a.Approver.Name()) {
			out = append(out, a.Approver.Name())
		}
	}
	return out
}

// auditView is the request as an audit record keeps it (AuditRecord.Access): without its
// serials and without the identities' token claims.
func (r AccessRequest) auditView() *AccessRequest {
	v := r
	v.Serials = nil
	v.Requester.Claims = nil
	v.Approvals = slices.Clone(r.Approvals)
	for i := range v.Approvals {
		v.Approvals[i].Approver.Claims = nil
	}
	return &v
}

// PolicyAccessRequest is the policy input's "access_request" object: the request an input is
// about (kinds "request" and "approve", and "user" when a certificate is asked for under an
// approved request).
type PolicyAccessRequest struct {
	ID         string           `json:"id"`
	Requester  Identity         `json:"requester"`
	Principals []string         `json:"principals"`
	TTLSeconds int64            `json:"ttl_seconds"`
	Reason     string           `json:"reason"`
	Approvals  []PolicyApproval `json:"approvals"`
	BreakGlass bool             `json:"break_glass"`
	// BreakGlassLast24h is how many break-glass requests the requester created in the 24
	// hours before this one (kind "request" of a break-glass request; 0 otherwise), for the
	// policy's limit per day.
	BreakGlassLast24h int64 `json:"break_glass_last_24h"`
}

// IsZero reports whether there is no request (no ID): the input then has no "access_request".
func (p PolicyAccessRequest) IsZero() bool { return p.ID == "" }

// PolicyApproval is one approval in the policy input: who, when (RFC 3339) and why.
type PolicyApproval struct {
	Approver Identity `json:"approver"`
	At       string   `json:"at"`
	Reason   string   `json:"reason"`
}

// policyView is the request as the policy sees it, with the approvals that count (those for
// the current content).
func (r AccessRequest) policyView() PolicyAccessRequest {
	hash := r.ContentHash()
	out := PolicyAccessRequest{ID: r.ID, Requester: r.Requester, Principals: nonNil(r.Principals),
		TTLSeconds: r.TTLSeconds, Reason: r.Reason, Approvals: []PolicyApproval{}, BreakGlass: r.BreakGlass}
	fillDefaults(&out.Requester)
	for _, a := range r.Approvals {
		if a.ContentHash != hash {
			continue
		}
		id := a.Approver
		fillDefaults(&id)
		out.Approvals = append(out.Approvals, PolicyApproval{Approver: id, At: a.At.UTC().Format(time.RFC3339), Reason: a.Reason})
	}
	return out
}

// AccessRequestStore keeps access requests (store/requests.go). Each request is kept until its
// KeepUntil. Update and RecordUnderRequest are atomic with respect to each other: the function
// they are given sees the request as it is and its result is written only if nobody wrote the
// request meanwhile (the function may be called more than once).
type AccessRequestStore interface {
	// CreateRequest stores a new request; KindConflict when the ID exists.
	CreateRequest(ctx context.Context, r AccessRequest) error
	// GetRequest returns the request, if kept.
	GetRequest(ctx context.Context, id string) (AccessRequest, bool, error)
	// ListRequests returns the kept requests, oldest first.
	ListRequests(ctx context.Context) ([]AccessRequest, error)
	// RequestsPage returns at most limit kept requests (0: all) after the position after, in
	// RequestCursor order, and where the next page starts (zero: none is left).
	RequestsPage(ctx context.Context, after RequestCursor, limit int) (page []AccessRequest, next RequestCursor, err error)
	// UpdateRequest applies change to the request and writes it; an error from change is
	// returned as is and nothing is written. KindNotFound when the request is not kept. The
	// request keeps its ID and CreatedAt whatever change sets: they are its place in the
	// order RequestsPage pages in.
	UpdateRequest(ctx context.Context, id string, change func(*AccessRequest) error) (AccessRequest, error)
	// RecordUnderRequest records the certificate c in the inventory (as CertStore.Record)
	// and appends its serial to the request's Serials if check, given the request as it is,
	// returns nil (the append atomic with the check, as UpdateRequest); else it leaves no
	// record and returns check's error. The record may be written before check runs (the
	// store may keep the request and the record in different places): whatever ends the
	// request then finds either the serial in Serials or check refusing; a record whose
	// take-back failed is of a certificate never handed out.
	RecordUnderRequest(ctx context.Context, c Certificate, id string, check func(AccessRequest) error) error
}

// NewAccessRequestID returns a fresh request ID: "req_" and 16 lower-case base32 characters.
func NewAccessRequestID() string {
	var b [10]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read does not fail (Go 1.24+)
	return "req_" + strings.ToLower(base32.StdEncoding.EncodeToString(b[:]))
}

// ValidAccessRequestID reports whether s has the form NewAccessRequestID makes.
func ValidAccessRequestID(s string) bool {
	rest, ok := strings.CutPrefix(s, "req_")
	if !ok || len(rest) != 16 {
		return false
	}
	for i := 0; i < len(rest); i++ {
		c := rest[i]
		if !('a' <= c && c <= 'z' || '2' <= c && c <= '7') {
			return false
		}
	}
	return true
}

// noKey is an Ed25519 public key that no revocation can name: the all-zero point, which
// ParsePublicKey refuses (a small-order point), so no certificate or ban ever carries it. It
// stands for "no key" when asking RevocationStore.Refused about an identity alone (is an
// approver blocked?).
var noKey = func() ssh.PublicKey {
	k, err := ssh.NewPublicKey(ed25519.PublicKey(make([]byte, ed25519.PublicKeySize)))
	if err != nil {
		panic(err)
	}
	return k
}()
