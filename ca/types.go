package ca

import (
	"context"
	"encoding/json"
	"slices"
	"time"

	"golang.org/x/crypto/ssh"
)

// CertKind is the kind of certificate asked for: a user or a host certificate.
type CertKind string

const (
	UserCert CertKind = "user"
	HostCert CertKind = "host"
)

// Action is what a caller asks the policy to allow, the policy input's "kind": a certificate
// (ActionUser, ActionHost), a renewal (ActionRenew), a revocation (ActionRevoke), a read of the
// inventory or of revocation state (ActionRead), or key administration (ActionAdmin). It is not a CertKind: a renewal asks for
// a host certificate, a revocation for none.
type Action string

const (
	ActionUser   Action = "user"
	ActionHost   Action = "host"
	ActionRenew  Action = "renew"
	ActionRevoke Action = "revoke"
	ActionAdmin  Action = "admin"
	// ActionRead is reading what was issued or revoked (GET /v1/certs, GET /v1/revocations):
	// an auditor may be allowed it without being allowed to revoke, approve or administer.
	ActionRead Action = "read"
	// ActionRequest is creating an access request (ca/access.go), ActionApprove deciding one
	// (approving or denying it).
	ActionRequest Action = "request"
	ActionApprove Action = "approve"
)

// Action is the policy action of asking for a certificate of the kind.
func (k CertKind) Action() Action { return Action(k) }

// SSHCertType is the OpenSSH certificate type for the kind.
func (k CertKind) SSHCertType() uint32 {
	if k == HostCert {
		return ssh.HostCert
	}
	return ssh.UserCert
}

// Identity is who the caller is, as established by an Authenticator. The JSON form is the
// policy input's "identity" object.
type Identity struct {
	Issuer   string         `json:"issuer"`
	Subject  string         `json:"subject"`
	Email    string         `json:"email"`
	Username string         `json:"username"`
	Groups   []string       `json:"groups"`
	AMR      []string       `json:"amr"`
	ACR      string         `json:"acr,omitempty"`
	AuthTime int64          `json:"auth_time,omitempty"`
	Workload bool           `json:"workload"`
	Claims   map[string]any `json:"claims"`

	// Token names the credential for replay protection (not shown to the policy).
	Token TokenUse `json:"-"`
}

// TokenUse says whether the credential may be used for one certificate only, and how to
// recognise it: its jti, or a hash of the token when it has none, until it expires. IssuedAt
// is its iat (zero when the token has none): a store rebuilt after losing its spent tokens
// refuses the tokens issued before the rebuild, and can tell them only by iat (by expiry
// without it).
type TokenUse struct {
	SingleUse bool
	ID        string
	IssuedAt  time.Time
	Expiry    time.Time
}

// Request is what a caller asks for, after the transport has parsed it.
// Principals are user names for a user certificate and host names for a host certificate;
// empty means "everything the policy grants" for users and is invalid for hosts.
// TTL zero means the policy's default.
type Request struct {
	Kind       CertKind
	PublicKey  ssh.PublicKey
	Principals []string
	TTL        time.Duration
	Reason     string
	SourceIP   string
	// AccessRequest, when set, is the ID of the approved access request the certificate is
	// asked under (user certificates only): the policy input carries the request and its
	// approvals, the key ID and the inventory record name it.
	AccessRequest string
}

// CertRequest is a certificate request as the caller sent it: the public key an
// authorized_keys line and the TTL a duration string, neither parsed yet. IssueRequest parses
// them only once the caller is authenticated. Principals and TTL mean what they mean in Request
// (an empty TTL is the policy's default).
type CertRequest struct {
	Kind       CertKind
	PublicKey  string
	Principals []string
	TTL        string
	Reason     string
	SourceIP   string
	// AccessRequest, when set, is the ID of the approved access request the certificate is
	// asked under (user certificates only).
	AccessRequest string
}

// PolicyRequest is the policy input's "request" object.
type PolicyRequest struct {
	Principals     []string `json:"principals"`
	TTLSeconds     int64    `json:"ttl_seconds"`
	KeyType        string   `json:"key_type"`
	KeyFingerprint string   `json:"key_fingerprint"`
	SourceIP       string   `json:"source_ip"`
	Reason         string   `json:"reason"`
	// Target names what a revoke request is about ("serial:N", "identity:alice@example.com").
	Target string `json:"target,omitempty"`
}

// PolicyInput is the whole document a Policy decides on (DESIGN.md, "Policy contract"). It is
// the one definition of that document: its JSON form (MarshalJSON) is what every policy sees,
// whether the server builds it (policies' fast builder is tested equal to it) or `sshca policy
// eval` reads it from a file. Shape: {"kind", "identity": {...}, "request": {...}, "now",
// "access_request": {...}}; "access_request" is there only for kinds "request" and "approve"
// and for a certificate asked under an access request.
type PolicyInput struct {
	Kind     Action        `json:"kind"`
	Identity Identity      `json:"identity"`
	Request  PolicyRequest `json:"request"`
	Now      string        `json:"now"`
	// AccessRequest is the access request the input is about (zero: none).
	AccessRequest PolicyAccessRequest `json:"access_request,omitzero"`
}

// MarshalJSON writes the input document. Lists and claims that are nil are written as [] and
// {}, never null: a policy can count and iterate them whoever built the input.
func (in PolicyInput) MarshalJSON() ([]byte, error) {
	type document PolicyInput // the same fields, without this method
	in.Identity.Groups = nonNil(in.Identity.Groups)
	in.Identity.AMR = nonNil(in.Identity.AMR)
	if in.Identity.Claims == nil {
		in.Identity.Claims = map[string]any{}
	}
	in.Request.Principals = nonNil(in.Request.Principals)
	if !in.AccessRequest.IsZero() {
		ar := &in.AccessRequest
		ar.Principals = nonNil(ar.Principals)
		fillDefaults(&ar.Requester)
		if ar.Approvals == nil {
			ar.Approvals = []PolicyApproval{}
		}
		ar.Approvals = slices.Clone(ar.Approvals)
		for i := range ar.Approvals {
			fillDefaults(&ar.Approvals[i].Approver)
		}
	}
	return json.Marshal(document(in))
}

// PolicyDecision is the decision document a policy returns (data.sshca.decision; DESIGN.md,
// "Policy contract"): {"allow", "reasons", "principals", "ttl_seconds", "extensions",
// "critical_options", "ticket", "approvals_required"}. Its JSON keys are the contract; policies reads decisions by
// them and turns them into a Decision.
type PolicyDecision struct {
	Allow           bool              `json:"allow"`
	Reasons         []string          `json:"reasons"`
	Principals      []string          `json:"principals"`
	TTLSeconds      int64             `json:"ttl_seconds"`
	Extensions      map[string]string `json:"extensions"`
	CriticalOptions map[string]string `json:"critical_options"`
	Ticket          string            `json:"ticket"`
	// ApprovalsRequired is how many distinct approvers an access request needs (kinds
	// "request" and "approve"; 0 elsewhere).
	ApprovalsRequired int64 `json:"approvals_required"`
}

// Decision is what a Policy grants. The Authority never issues more than the decision grants,
// nor more than the request asked, nor beyond its own hard caps.
type Decision struct {
	Allow           bool
	Reasons         []string
	Principals      []string
	TTL             time.Duration
	Extensions      map[string]string
	CriticalOptions map[string]string
	// Ticket is the change or incident ticket the policy required and found in the reason;
	// it goes into the key ID and the record.
	Ticket string
	// Revision names the policy version that decided (for the record).
	Revision string
	// ApprovalsRequired is how many distinct approvers an access request needs (kinds
	// "request" and "approve").
	ApprovalsRequired int
}

// Certificate is the inventory record of an issued certificate, kept until it expires.
type Certificate struct {
	Serial         uint64    `json:"serial,string"`
	KeyID          string    `json:"key_id"`
	Kind           CertKind  `json:"kind"`
	Identity       string    `json:"identity"`
	Principals     []string  `json:"principals"`
	KeyFingerprint string    `json:"key_fingerprint"`
	CAFingerprint  string    `json:"ca_fingerprint"`
	ValidAfter     time.Time `json:"valid_after"`
	ValidBefore    time.Time `json:"valid_before"`
	Ticket         string    `json:"ticket,omitempty"`
	Reason         string    `json:"reason,omitempty"`
	PolicyRevision string    `json:"policy_revision,omitempty"`
	// Aliases are the other names of the identity (Identity.Aliases: "email:…", "username:…");
	// the store indexes each to Identity, for revoke-by-identity.
	Aliases []string `json:"aliases,omitempty"`
	// IndexUntil is how long the store keeps the alias index entries (at least ValidBefore): as
	// long as revoking the identity blocks it, so a later revocation by alias still finds the
	// identity after its certificates expired. Not part of the record.
	IndexUntil time.Time `json:"-"`
	// AccessRequest is the ID of the access request the certificate was issued under, and
	// Approvers the canonical names of the approvals that counted then.
	AccessRequest string   `json:"access_request,omitempty"`
	Approvers     []string `json:"approvers,omitempty"`
}

// Issued is the result of a successful issue: the signed certificate and its record.
type Issued struct {
	Cert   *ssh.Certificate
	Record Certificate
}

// Authenticator turns a bearer token into an Identity. Errors are *Error of
// KindUnauthenticated (bad token) or KindDenied (a valid token that names no usable identity).
type Authenticator interface {
	Authenticate(ctx context.Context, token string) (Identity, error)
}

// Policy decides what an identity may be granted. An error means the policy could not be
// evaluated; the Authority then fails closed.
type Policy interface {
	Decide(ctx context.Context, in PolicyInput) (Decision, error)
}

// Signer signs an approved template. It chooses (and reserves) the serial, appends
// "#<serial>" to the template's KeyId, sets the validity to [now-skew, now+ttl], and signs
// with its CA key.
type Signer interface {
	// Sign signs a copy of tmpl valid for ttl. A template with a non-zero Serial carries a
	// serial the authority has reserved (Admission): the signer signs with it as is; with a
	// zero Serial the signer draws and reserves one.
	Sign(ctx context.Context, tmpl *ssh.Certificate, ttl time.Duration) (*ssh.Certificate, error)
	PublicKey() ssh.PublicKey
}

// SigningKey is one CA key, fixed for one certificate: the authority names it in the record it
// keeps before signing (its fingerprint, its revocation scope) and signs with it, so a key
// rotation that lands in between cannot make the certificate differ from its record. Sign
// signs as Signer.Sign does (a copy of tmpl, its Key as it is), with this key and no other, or
// refuses: the authority takes the record's fingerprints from the key and the template, not
// from the certificate. It refuses with an *Error
// of KindUnavailable, before any signature, once the key may no longer sign (marked
// compromised, or withdrawn from publication, since the key was fixed). signer.Signer (one key)
// is one; a KeyedSigner hands them out.
type SigningKey interface {
	Sign(ctx context.Context, tmpl *ssh.Certificate, ttl time.Duration) (*ssh.Certificate, error)
	PublicKey() ssh.PublicKey
	// Fingerprint is ssh.FingerprintSHA256 of PublicKey ("SHA256:" and unpadded base64),
	// computed once per key: x/crypto/ssh marshals a key by reflection, 7 allocations.
	Fingerprint() string
}

// KeyedSigner is a Signer with several keys over time (keyring.CA): SigningKey fixes the key
// that signs now for one certificate. A Signer that is neither a KeyedSigner nor a SigningKey
// is asked for its key on every call, and a certificate it signs with another key than it
// named before is not handed out.
type KeyedSigner interface {
	Signer
	SigningKey() SigningKey
}

// CertStore is the inventory of issued certificates. Records are kept at least until their
// ValidBefore; Live returns those of an identity that have not expired at now.
//
// Record refuses a certificate whose Identity or one of whose Aliases is blocked
// (RevocationStore.BlockIdentity of the same store), with an *Error of KindDenied that says the
// identity was revoked, and checks that in the same atomic step as the write: a Record that
// follows a block is refused, and a Live that follows a block sees every Record that preceded
// it. Revoking an identity relies on it (block, then read and revoke the live certificates), so
// Config.Store and Config.Revocations must be one store for identity revocation to be exact.
type CertStore interface {
	Record(ctx context.Context, c Certificate) error
	Live(ctx context.Context, identity string, now time.Time) ([]Certificate, error)
	// LivePage returns the certificates, of any identity, still valid at now that come after
	// the position after in CertCursor order, at most limit of them (0: all), in that order:
	// one page of "who has access now" (Authority.ListCertificates). next is where the next
	// page starts, zero when none is left; a serial of the index whose record expired
	// meanwhile is skipped but still moves next, so a page may hold fewer than limit. It reads
	// the index and the position atomically, so successive pages neither skip nor repeat a
	// certificate live throughout.
	LivePage(ctx context.Context, now time.Time, after CertCursor, limit int) (page []Certificate, next CertCursor, err error)
	// LivePageOf is LivePage of one identity's certificates (recorded under that name), read
	// from its own index: a page costs the same however many the identity holds.
	LivePageOf(ctx context.Context, identity string, now time.Time, after CertCursor, limit int) (page []Certificate, next CertCursor, err error)
	Get(ctx context.Context, serial uint64) (Certificate, bool, error)
	// ResolveAlias returns the canonical names of the identities recorded under alias
	// ("email:…" or "username:…") whose index entries last beyond now, sorted.
	ResolveAlias(ctx context.Context, alias string, now time.Time) ([]string, error)
}

// TokenLedger records single-use tokens: UseToken records id until until (the token's
// expiry) and reports false when id was used before, or when the ledger refuses the token
// without knowing (a rebuilt ledger lost the tokens spent before the rebuild: it refuses
// tokens issued before it, by issued, the token's iat, or by until when issued is zero).
type TokenLedger interface {
	UseToken(ctx context.Context, id string, issued, until time.Time) (bool, error)
}

// Checker reports whether a dependency can serve; used for readiness.
type Checker interface {
	Check(ctx context.Context) error
}
