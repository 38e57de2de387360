package client

import "github.com/sshca/sshca/ca"

// The request and response bodies of the v1 API (DESIGN.md, "Contracts"). services encodes
// and decodes exactly these types, so the server and its clients cannot drift apart. Serials
// and versions are decimal strings (a uint64 does not survive JSON numbers in every client),
// times RFC 3339.

// CertRequest is the body of POST /v1/certs/user and /v1/certs/host. Principals are for user
// certificates and Hostnames for host certificates; only the matching one may be set.
type CertRequest struct {
	PublicKey  string   `json:"public_key"`
	Principals []string `json:"principals,omitempty"`
	Hostnames  []string `json:"hostnames,omitempty"`
	TTL        string   `json:"ttl,omitempty"`
	Reason     string   `json:"reason,omitempty"`
	// AccessRequest is the ID of an approved access request of the caller's to issue the
	// user certificate under (sshca login --request ID).
	AccessRequest string `json:"access_request,omitempty"`
}

// CertResponse is the answer to a certificate request or a renewal.
type CertResponse struct {
	// Certificate is the certificate as one authorized_keys line (*-cert-v01@openssh.com).
	Certificate string   `json:"certificate"`
	Serial      string   `json:"serial"`
	KeyID       string   `json:"key_id"`
	Principals  []string `json:"principals"`
	ValidAfter  string   `json:"valid_after"`
	ValidBefore string   `json:"valid_before"`
}

// RevokeRequest is the body of POST /v1/revocations: exactly one target, and a reason.
type RevokeRequest struct {
	Serial    string `json:"serial,omitempty"`
	KeyID     string `json:"key_id,omitempty"`
	PublicKey string `json:"public_key,omitempty"`
	// Identity is "<issuer>|<subject>", a verified e-mail or a username; AllMatches revokes
	// every identity an e-mail or username names (else several matches are a 409 listing them).
	Identity   string `json:"identity,omitempty"`
	AllMatches bool   `json:"all_matches,omitempty"`
	Reason     string `json:"reason"`
}

// RevocationEntry is one entry of a revocation list: what is revoked (Kind "serial",
// "key_id" or "key"), and until when it stays in the KRL. A permanent entry (a banned public
// key, a compromised CA key) stays until an administrator lifts it: Permanent, and Expires
// empty.
type RevocationEntry struct {
	Kind      string `json:"kind"`
	Value     string `json:"value"`
	Expires   string `json:"expires"`
	Permanent bool   `json:"permanent,omitempty"`
}

// UnrevokeRequest is the body of POST /v1/revocations/lift: the banned public key to lift
// (authorized_keys line; a certificate names its key), and a reason.
type UnrevokeRequest struct {
	PublicKey string `json:"public_key"`
	Reason    string `json:"reason"`
}

// UnrevokeResponse says what lifting a ban changed: Lifted is false when the key was not
// banned. Version is the user CA key's revocation list version.
type UnrevokeResponse struct {
	Lifted  bool   `json:"lifted"`
	Version string `json:"version"`
}

// Certificate is an inventory record of a live certificate.
type Certificate struct {
	Serial         string   `json:"serial"`
	KeyID          string   `json:"key_id"`
	Kind           string   `json:"kind"`
	Identity       string   `json:"identity"`
	Principals     []string `json:"principals"`
	KeyFingerprint string   `json:"key_fingerprint"`
	CAFingerprint  string   `json:"ca_fingerprint"`
	ValidAfter     string   `json:"valid_after"`
	ValidBefore    string   `json:"valid_before"`
	Ticket         string   `json:"ticket,omitempty"`
	// AccessRequest is the access request it was issued under, Approvers who approved it.
	AccessRequest string   `json:"access_request,omitempty"`
	Approvers     []string `json:"approvers,omitempty"`
	// Revoked says why an unexpired certificate no longer grants access (GET /v1/certs):
	// "serial", "key_id", "public_key" or "ca_compromised"; "" when it still does.
	Revoked string `json:"revoked,omitempty"`
}

// RevokeResponse says what a revocation changed.
type RevokeResponse struct {
	Revoked      []RevocationEntry `json:"revoked"`
	Certificates []Certificate     `json:"certificates"`
	BlockedUntil string            `json:"blocked_until,omitempty"`
	// Matches are the identities (canonical names) an identity revocation covered.
	Matches []string `json:"matches,omitempty"`
	Version string   `json:"version"`
}

// RevocationScope is the revocation list of one CA key.
type RevocationScope struct {
	CA          string            `json:"ca"`
	Fingerprint string            `json:"fingerprint"`
	Version     string            `json:"version"`
	Entries     []RevocationEntry `json:"entries"`
}

// RevocationsResponse is the answer to GET /v1/revocations[?limit=N][&cursor=…]: one page of
// what is revoked under the active user CA key (every entry of its scope first), then under the
// active host CA key, each scope's entries soonest to expire first and permanent bans last.
// Both scopes carry their key and version on every page; a page holds at most limit entries in
// all. NextCursor, absent on the last page, is the cursor parameter of the next.
type RevocationsResponse struct {
	UserCA     RevocationScope `json:"user_ca"`
	HostCA     RevocationScope `json:"host_ca"`
	NextCursor string          `json:"next_cursor,omitempty"`
}

// InventoryResponse is the answer to GET
// /v1/certs[?identity=…][&principal=…][&live=true][&limit=N][&cursor=…]: one page of the
// unexpired certificates selected, soonest to expire first. NextCursor, absent on the last page,
// is the cursor parameter of the next; a page may hold fewer than limit certificates (the
// filters apply after the page is read), even none, and still have one.
type InventoryResponse struct {
	Certificates []Certificate `json:"certificates"`
	NextCursor   string        `json:"next_cursor,omitempty"`
}

// DefaultPageLimit is a page's size when a list's query gives no limit, MaxPageLimit the
// largest limit a server takes (GET /v1/certs?limit=N).
const (
	DefaultPageLimit = 1000
	MaxPageLimit     = 10000
)

// LoginConfig is the answer to GET /v1/login/config: the OIDC client setting `sshca login`
// signs users in with. The yaml tags are the server's configuration of it.
type LoginConfig struct {
	Issuer   string   `json:"issuer" yaml:"issuer_url"`
	ClientID string   `json:"client_id" yaml:"client_id"`
	Scopes   []string `json:"scopes" yaml:"scopes"`
}

// KeyRequest is the body of the POST /v1/keys/{generate,promote,retire,compromised} calls.
// CA ("user" or "host") is for generate and promote, Fingerprint for retire and compromised.
type KeyRequest struct {
	CA          string `json:"ca,omitempty"`
	Type        string `json:"type,omitempty"`
	Fingerprint string `json:"fingerprint,omitempty"`
	Force       bool   `json:"force,omitempty"`
}

// KeyResponse is the answer of the key administration calls: the keyring for GET /v1/keys,
// the key changed for the others.
type KeyResponse struct {
	Key  *ca.CAKey   `json:"key,omitempty"`
	Ring *ca.Keyring `json:"keyring,omitempty"`
}

// ErrorBody is the body of every answer other than 200 (DESIGN.md): a message for the caller
// and, for a policy refusal, the policy's reasons.
type ErrorBody struct {
	Error   string   `json:"error"`
	Reasons []string `json:"reasons,omitempty"`
}

// NewAccessRequest is the body of POST /v1/requests: the principals asked for, how long the
// access lasts once approved (a duration, "30m"), and why (with the ticket).
type NewAccessRequest struct {
	Principals []string `json:"principals"`
	TTL        string   `json:"ttl"`
	Reason     string   `json:"reason"`
	// BreakGlass asks for emergency access without approval, where the policy allows it; it
	// is granted at once and needs a review afterwards (POST /v1/requests/{id}/review).
	BreakGlass bool `json:"break_glass,omitempty"`
}

// AccessDecision is the body of POST /v1/requests/{id}/approve, /deny and /cancel.
// ContentHash (approve only) is the hash of the request's content the approver saw
// (AccessRequest.Hash recomputes it); Reason is required to deny, and to revoke another's
// request.
type AccessDecision struct {
	ContentHash string `json:"content_hash,omitempty"`
	Reason      string `json:"reason,omitempty"`
}

// AccessRequest is an access request as the API shows it (GET /v1/requests/{id}, and the answer
// to every change). State is its state when answered: pending, approved, denied, expired,
// cancelled or revoked. Times are RFC 3339; Serials are decimal strings.
type AccessRequest struct {
	ID string `json:"id"`
	// Requester is the requester's canonical identity ("issuer|subject"), RequesterName what
	// people call it (verified e-mail, username or subject).
	Requester         string     `json:"requester"`
	RequesterName     string     `json:"requester_name"`
	Principals        []string   `json:"principals"`
	TTLSeconds        int64      `json:"ttl_seconds"`
	Reason            string     `json:"reason"`
	Ticket            string     `json:"ticket,omitempty"`
	BreakGlass        bool       `json:"break_glass,omitempty"`
	State             string     `json:"state"`
	CreatedAt         string     `json:"created_at"`
	PendingUntil      string     `json:"pending_until"`
	ApprovalsRequired int        `json:"approvals_required"`
	Approvals         []Approval `json:"approvals"`
	DecidedAt         string     `json:"decided_at,omitempty"`
	DecidedBy         string     `json:"decided_by,omitempty"`
	DecisionReason    string     `json:"decision_reason,omitempty"`
	// ReviewedAt, ReviewedBy and ReviewReason are a break-glass request's follow-up review
	// (empty while it is missing).
	ReviewedAt   string `json:"reviewed_at,omitempty"`
	ReviewedBy   string `json:"reviewed_by,omitempty"`
	ReviewReason string `json:"review_reason,omitempty"`
	// NotAfter is the end of the approved window.
	NotAfter string   `json:"not_after,omitempty"`
	Serials  []string `json:"serials,omitempty"`
	// ContentHash is the server's hash of the content; approvers send their own (Hash).
	ContentHash string `json:"content_hash"`
}

// Approval is one approval of an access request.
type Approval struct {
	Approver     string `json:"approver"`
	ApproverName string `json:"approver_name"`
	At           string `json:"at"`
	Reason       string `json:"reason,omitempty"`
}

// Hash is the content hash of the request as shown (ca.AccessRequestContentHash): what an
// approval names.
func (r AccessRequest) Hash() string {
	return ca.AccessRequestContentHash(r.ID, r.Requester, r.Principals, r.TTLSeconds, r.Reason)
}

// AccessRequestList is the answer to GET /v1/requests[?mine=true][&pending=true][&limit=N]
// [&cursor=…]: one page of the kept requests the caller may see, in the order the store keeps
// them (by the end of their retention, then ID). NextCursor, absent on the last page, is the
// cursor parameter of the next; the filters apply after the page is read, so a page may hold
// fewer than limit, even none, and still have one. A request decided while a listing pages may
// come again on a later page, with its decision.
type AccessRequestList struct {
	Requests   []AccessRequest `json:"requests"`
	NextCursor string          `json:"next_cursor,omitempty"`
}
