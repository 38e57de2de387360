package ca

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// Limits are the hard caps that no policy can lift.
type Limits struct {
	MaxUserTTL    time.Duration // default 24h; the shipped policy grants at most 1h
	MaxHostTTL    time.Duration // default 7 days; the shipped policy grants at most 24h
	MaxPrincipals int           // default 32
	// IdentityBlock is how long revoking an identity refuses it new certificates (default
	// 24h); disable the account at the identity provider for longer.
	IdentityBlock time.Duration
	// Extensions and CriticalOptions are the allow-lists of what a policy may grant.
	Extensions      []string
	CriticalOptions []string
}

// DefaultLimits are the caps used where Config.Limits leaves a field zero.
var DefaultLimits = Limits{
	MaxUserTTL:    24 * time.Hour,
	MaxHostTTL:    7 * 24 * time.Hour,
	MaxPrincipals: 32,
	IdentityBlock: 24 * time.Hour,
	Extensions: []string{
		"permit-pty", "permit-port-forwarding", "permit-agent-forwarding",
		"permit-X11-forwarding", "permit-user-rc", "no-touch-required",
	},
	CriticalOptions: []string{"force-command", "source-address", "verify-required"},
}

// Config wires an Authority. Every field but Logger, Now and Limits is required.
type Config struct {
	Authenticator Authenticator
	Policy        Policy
	// UserSigner and HostSigner sign. A Signer that is also a Publisher (keyring.CA) says
	// which keys to trust, which are compromised and which revocation scopes a KRL covers; any
	// other publishes its own key only.
	UserSigner  Signer
	HostSigner  Signer
	Store       CertStore
	Revocations RevocationStore
	// Tokens records single-use tokens; required when an authenticator marks tokens so.
	Tokens TokenLedger
	// Admission, optional, is the store that checks the signing-time refusals and spends the
	// token in one round trip; issuance then asks it instead of Revocations.Refused and
	// Tokens, once the policy has allowed the request, just before signing.
	Admission Admission
	// Audit keeps a record of every decision; with it, nothing is issued, revoked or
	// administered unless its record is kept.
	Audit AuditLog
	// Faults, optional, learns of every policy fault (metrics, readiness details).
	Faults FaultObserver
	// TokenReturns, optional, learns what became of each token a refusal of the server's own
	// tried to give back (metrics).
	TokenReturns TokenReturns
	// IdentityLimiter, optional, bounds how often one identity may ask for certificates.
	IdentityLimiter IdentityLimiter
	// Stages, optional, learns how long each dependency call takes (metrics).
	Stages StageObserver
	// Requests, optional, keeps access requests; without it they are refused as unavailable.
	Requests AccessRequestStore
	// AccessRequests are the hard caps on access requests (zero fields: defaults).
	AccessRequests AccessRequestLimits
	// Notifier, optional, queues access request events for webhooks.
	Notifier Notifier

	Limits Limits
	// Now is the clock (default time.Now), and After its timer (default time.After): the
	// background retry of a signed certificate's audit record waits on it, and so do the
	// waits for an access request's decision (WaitAccessRequest).
	Now    func() time.Time
	After  func(time.Duration) <-chan time.Time
	Logger *slog.Logger
}

// Authority issues certificates: authenticate → validate → decide → sign → record. A
// certificate is returned only after it has been recorded; it never carries an empty principal
// list, more principals than requested, a longer lifetime than requested, or anything beyond
// Limits, whatever the policy says.
type Authority struct {
	auth     Authenticator
	policy   Policy
	user     Signer
	host     Signer
	userKeys Publisher // user's keyring, or its one key
	hostKeys Publisher
	// userSigning and hostSigning fix the key that signs one certificate (keyerOf).
	userSigning keyer
	hostSigning keyer
	// stages, optional, learns how long each signature takes (the other stages are observed
	// by wrapping their dependency, Config.observed).
	stages       StageObserver
	store        CertStore
	revocations  RevocationStore
	tokens       TokenLedger
	admission    Admission
	audit        AuditLog
	faults       FaultObserver
	tokenReturns TokenReturns
	idLimiter    IdentityLimiter
	requests     AccessRequestStore
	notifier     Notifier
	limits       Limits
	// accessLimits are the caps on access requests.
	accessLimits AccessRequestLimits
	// accessChanged wakes the waits (WaitAccessRequest) when this authority changes a request.
	accessChanged *changeNotice
	now           func() time.Time
	after         func(time.Duration) <-chan time.Time
	log           *slog.Logger
	// retries are the records of signed certificates still being retried in the background
	// (settleSigned), so that shutdown can wait for them before Redis closes (DrainRetries).
	retries pendingRecords
}

// New checks the configuration and returns an Authority.
func New(c Config) (*Authority, error) {
	if c.Authenticator == nil || c.Policy == nil || c.UserSigner == nil || c.HostSigner == nil || c.Store == nil || c.Revocations == nil {
		return nil, errors.New("sshca: authority: authenticator, policy, user and host signers, store and revocations are required")
	}
	// The keyrings are the signers' own, taken before they are wrapped for observation.
	userKeys, hostKeys := publisherOf(c.UserSigner), publisherOf(c.HostSigner)
	userSigning, hostSigning := keyerOf(c.UserSigner), keyerOf(c.HostSigner)
	c = c.observed()
	l := c.Limits
	if l.MaxUserTTL == 0 {
		l.MaxUserTTL = DefaultLimits.MaxUserTTL
	}
	if l.MaxHostTTL == 0 {
		l.MaxHostTTL = DefaultLimits.MaxHostTTL
	}
	if l.MaxPrincipals == 0 {
		l.MaxPrincipals = DefaultLimits.MaxPrincipals
	}
	if l.IdentityBlock == 0 {
		l.IdentityBlock = DefaultLimits.IdentityBlock
	}
	if l.Extensions == nil {
		l.Extensions = DefaultLimits.Extensions
	}
	if l.CriticalOptions == nil {
		l.CriticalOptions = DefaultLimits.CriticalOptions
	}
	al := c.AccessRequests
	if al.PendingTimeout <= 0 {
		al.PendingTimeout = DefaultAccessRequestLimits.PendingTimeout
	}
	if al.MaxWindow <= 0 {
		al.MaxWindow = DefaultAccessRequestLimits.MaxWindow
	}
	a := &Authority{requests: c.Requests, notifier: c.Notifier, accessLimits: al, auth: c.Authenticator, policy: c.Policy, user: c.UserSigner, host: c.HostSigner,
		userKeys: userKeys, hostKeys: hostKeys, userSigning: userSigning, hostSigning: hostSigning, stages: c.Stages,
		store: c.Store, revocations: c.Revocations, tokens: c.Tokens, admission: c.Admission, audit: c.Audit, faults: c.Faults, tokenReturns: c.TokenReturns, idLimiter: c.IdentityLimiter, limits: l, now: c.Now, after: c.After, log: c.Logger,
		accessChanged: &changeNotice{}}
	if a.now == nil {
		a.now = time.Now
	}
	if a.after == nil {
		a.after = time.After
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	return a, nil
}

// Limits returns the hard caps in force.
func (a *Authority) Limits() Limits { return a.limits }

// MaxTTL is the hard cap on the lifetime of a certificate of the kind.
func (a *Authority) MaxTTL(kind CertKind) time.Duration {
	if kind == HostCert {
		return a.limits.MaxHostTTL
	}
	return a.limits.MaxUserTTL
}

// Publisher is a Signer with a keyring behind it: the keys to trust now (next, active, retired
// whose certificates may live), the keys announced as compromised, and every key whose
// certificates the revocation list covers. New takes it from each Signer, once: a Signer that
// is not one publishes its own key only (singleKey). keyring.CA is one, checked at compile
// time.
type Publisher interface {
	Published() []ssh.PublicKey
	Compromised() []ssh.PublicKey
	// Scopes are every key of the keyring (active, next, retired, compromised): the
	// revocation scopes a KRL covers.
	Scopes() []ssh.PublicKey
}

// RefreshingPublisher is a Publisher that re-reads the shared key ring when asked (keyring.CA),
// rather than only at its periodic refresh: a decision that must see a change made through
// another replica meanwhile (Unrevoke's refusal to lift a compromised CA key) asks first.
// Refresh's error means the key ring could not be read.
type RefreshingPublisher interface {
	Publisher
	Refresh(ctx context.Context) error
}

// singleKey is the Publisher of a Signer without a keyring: its one key, never compromised.
type singleKey struct{ Signer }

var _ Publisher = singleKey{}

func (s singleKey) Published() []ssh.PublicKey   { return []ssh.PublicKey{s.PublicKey()} }
func (s singleKey) Compromised() []ssh.PublicKey { return nil }
func (s singleKey) Scopes() []ssh.PublicKey      { return []ssh.PublicKey{s.PublicKey()} }

// publisherOf is s's Publisher: s itself when it has a keyring behind it, else its one key.
func publisherOf(s Signer) Publisher {
	if p, ok := s.(Publisher); ok {
		return p
	}
	return singleKey{s}
}

// keyer fixes the key that signs one certificate.
type keyer interface{ SigningKey() SigningKey }

// keyerOf is s's keyer, taken once by New: s itself when it has several keys (KeyedSigner);
// s, every time, when it is one key that knows its fingerprint (signer.Signer); else one that
// asks s for its key each time (unfixed).
func keyerOf(s Signer) keyer {
	switch k := s.(type) {
	case KeyedSigner:
		return k
	case SigningKey:
		return oneKey{k}
	}
	return unfixedKeyer{s}
}

type oneKey struct{ k SigningKey }

func (o oneKey) SigningKey() SigningKey { return o.k }

type unfixedKeyer struct{ s Signer }

func (u unfixedKeyer) SigningKey() SigningKey {
	pub := u.s.PublicKey()
	return &unfixed{Signer: u.s, fp: ssh.FingerprintSHA256(pub)}
}

// unfixed is the key a Signer that cannot fix one (neither a KeyedSigner nor a SigningKey)
// named when asked: it may sign with another by the time it signs, so what it signs is checked
// against the record made before (signedBy, sameRecord).
type unfixed struct {
	Signer
	fp string
}

func (u *unfixed) Fingerprint() string { return u.fp }

// signedBy is the fingerprint of the CA key that signed cert with key and of the key cert
// certifies: key's own and tmplKeyFP (the template's, which a SigningKey signs as it is, with
// itself and no other), unless key is unfixed, when cert says.
func signedBy(key SigningKey, cert *ssh.Certificate, tmplKeyFP string) (caFP, keyFP string) {
	if _, ok := key.(*unfixed); ok {
		return ssh.FingerprintSHA256(cert.SignatureKey), ssh.FingerprintSHA256(cert.Key)
	}
	return key.Fingerprint(), tmplKeyFP
}

// sign is key.Sign, observed as StageSign.
func (a *Authority) sign(ctx context.Context, key SigningKey, tmpl *ssh.Certificate, ttl time.Duration) (_ *ssh.Certificate, err error) {
	if a.stages != nil {
		defer func(begin time.Time) { observe(a.stages, StageSign, begin, err) }(time.Now())
	}
	return key.Sign(ctx, tmpl, ttl)
}

// UserCAKeys are the public keys hosts trust for user certificates.
func (a *Authority) UserCAKeys() []ssh.PublicKey { return a.userKeys.Published() }

// HostCAKeys are the public keys clients trust for host certificates.
func (a *Authority) HostCAKeys() []ssh.PublicKey { return a.hostKeys.Published() }

// RevokedHostCAKeys are compromised host CA keys, for @revoked lines in known_hosts.
func (a *Authority) RevokedHostCAKeys() []ssh.PublicKey { return a.hostKeys.Compromised() }

// IdentityLimiter bounds the rate of certificate requests per identity. Allow is asked once per
// authenticated request with the identity's canonical name (Identity.Name); a refusal says how
// long until the identity may ask again. It must be safe for concurrent use.
type IdentityLimiter interface {
	Allow(identity string) (ok bool, retryAfter time.Duration)
}

// limitIdentity asks the IdentityLimiter, if any, whether id may ask for a certificate now. A
// refusal is not audited: it is load shedding, like a refusal before authentication, and
// auditing it would let a flood write to the audit log; the token is not spent.
func (a *Authority) limitIdentity(id Identity) error {
	if a.idLimiter == nil {
		return nil
	}
	if ok, wait := a.idLimiter.Allow(id.Name()); !ok {
		secs := max(1, int64((wait+time.Second-1)/time.Second))
		return RateLimited(fmt.Sprintf("too many certificate requests for this identity; retry in %ds", secs), wait)
	}
	return nil
}

// IssueRequest authenticates the bearer token, then parses the request as sent and issues the
// certificate it asks for, as far as the policy and the hard caps allow.
//
// Authentication comes before anything in the request is read: an anonymous caller learns
// nothing about its input (which key or TTL would be refused, and why), and cannot make the
// service run the key checks, which cost up to ~0.7 ms for a large RSA key (the small-factor
// screen). Only the HTTP envelope (Content-Type, size, JSON shape, the Authorization header) is
// checked before, by the transport. A request that does not parse is refused as invalid, and
// its audit record says so.
func (a *Authority) IssueRequest(ctx context.Context, token string, cr CertRequest) (Issued, error) {
	if cr.Kind != UserCert && cr.Kind != HostCert {
		return Issued{}, Invalid("unknown certificate kind %q", cr.Kind)
	}
	id, err := a.auth.Authenticate(ctx, token)
	if err != nil {
		return Issued{}, err
	}
	if err := a.limitIdentity(id); err != nil {
		return Issued{}, err
	}
	req, err := a.parseRequest(cr)
	if err != nil {
		rec := a.issueRecord(cr.Kind.Action(), id, req)
		a.settle(ctx, &rec, err)
		return Issued{}, err
	}
	return a.issueFor(ctx, id, req, req.Kind.Action())
}

// parseRequest parses the public key and the TTL of a request as sent. On error, the Request
// holds what did parse (for the audit record).
func (a *Authority) parseRequest(cr CertRequest) (Request, error) {
	req := Request{Kind: cr.Kind, Principals: cr.Principals, Reason: cr.Reason, SourceIP: cr.SourceIP, AccessRequest: cr.AccessRequest}
	key, err := ParsePublicKey(cr.PublicKey)
	if err != nil {
		return req, err
	}
	req.PublicKey = key
	if req.TTL, err = ParseTTL(cr.TTL, a.MaxTTL(cr.Kind)); err != nil {
		return req, err
	}
	return req, nil
}

// Issue is IssueRequest for a request already parsed (Go callers that hold an ssh.PublicKey).
// It too authenticates before looking at the request.
func (a *Authority) Issue(ctx context.Context, token string, req Request) (Issued, error) {
	if req.Kind != UserCert && req.Kind != HostCert {
		return Issued{}, Invalid("unknown certificate kind %q", req.Kind)
	}
	// Authenticate before looking at the request, so an anonymous caller learns nothing.
	id, err := a.auth.Authenticate(ctx, token)
	if err != nil {
		return Issued{}, err
	}
	if err := a.limitIdentity(id); err != nil {
		return Issued{}, err
	}
	return a.issueFor(ctx, id, req, req.Kind.Action())
}

// issueRecord starts the audit record of id asking for req.
func (a *Authority) issueRecord(policyKind Action, id Identity, req Request) AuditRecord {
	rec := a.auditRecord(policyKind, id)
	rec.Requested, rec.SourceIP, rec.Reason = req.Principals, req.SourceIP, req.Reason
	if req.PublicKey != nil {
		rec.KeyFingerprint = ssh.FingerprintSHA256(req.PublicKey)
	}
	return rec
}

// issueFor issues for an authenticated identity; policyKind is the policy input's kind. Every
// outcome leaves an audit record; a certificate is returned only once its record is kept.
func (a *Authority) issueFor(ctx context.Context, id Identity, req Request, policyKind Action) (_ Issued, err error) {
	rec := a.issueRecord(policyKind, id, req)
	// Records are kept under the request's deadline until a certificate is signed. The failure
	// of a signed certificate is audited with its serial under a bound of its own, and retried
	// in the background until kept (settleSigned): writes that timed out, the inventory's record
	// among them, may still land once a stalled store resumes, and this record must land beside
	// them. An admission whose answer was lost after it recorded the certificate (lost) is
	// settled likewise, all in the background: nothing was signed, and the caller has waited
	// its deadline already.
	var lost *Certificate
	defer func() {
		if err == nil {
			return
		}
		rec.Late = ctx.Err() != nil
		switch {
		case lost != nil:
			a.settleLost(context.WithoutCancel(ctx), rec, err, *lost)
		case rec.Serial == 0:
			a.settle(ctx, &rec, err)
		default:
			a.settleSigned(context.WithoutCancel(ctx), rec, err)
		}
	}()
	if err := a.validate(req); err != nil {
		return Issued{}, err
	}
	// The CA key is fixed here, once: the revocation scope checked, the key the record names
	// and the key that signs are one, whatever key rotation lands meanwhile. A key promoted away
	// from signs on (it is published until its certificates expire); one marked compromised or
	// withdrawn meanwhile refuses to sign (SigningKey).
	key := a.userSigning.SigningKey()
	if req.Kind == HostCert {
		key = a.hostSigning.SigningKey()
	}
	// A revoked key or identity does not get a new certificate.
	// Under every name the identity goes by: a block given by e-mail or username holds for
	// the identity whatever its token says next time. With an Admission, the check waits for
	// the token's spending below and shares its round trip.
	aliases := id.Aliases()
	names := append([]string{rec.Identity}, aliases...)
	if a.admission == nil {
		why, err := a.revocations.Refused(ctx, key.PublicKey(), names, req.PublicKey)
		if err != nil {
			return Issued{}, storeErr("revocation store unavailable; no certificate issued", err)
		}
		if why != "" {
			rec.Outcome = "refused"
			return Issued{}, Denied("revoked", why)
		}
	}
	now := a.now()
	// Under an access request: its requester only, approved, in its window, with its approvals
	// still counting; the principals within the request's.
	var ar AccessRequest
	var counting []Approval
	if req.AccessRequest != "" {
		if req.Kind != UserCert || policyKind != ActionUser {
			return Issued{}, Invalid("access_request: only user certificates are issued under an access request")
		}
		if ValidAccessRequestID(req.AccessRequest) {
			rec.AccessRequest = req.AccessRequest
		}
		if ar, counting, err = a.underRequest(ctx, id, req.AccessRequest, now); err != nil {
			return Issued{}, err
		}
		rec.Approvers = approverNames(counting)
		if len(req.Principals) == 0 {
			req.Principals = ar.Principals
		}
		for _, p := range req.Principals {
			if !slices.Contains(ar.Principals, p) {
				return Issued{}, Denied("principal "+p+" is not in access request "+ar.ID, "the request grants "+strings.Join(ar.Principals, ", "))
			}
		}
		if req.Reason == "" {
			req.Reason = ar.Reason
		}
		rec.Requested, rec.Reason = req.Principals, req.Reason
	}
	in := PolicyInput{
		Kind:     policyKind,
		Identity: id,
		Request: PolicyRequest{
			Principals:     nonNil(req.Principals),
			TTLSeconds:     int64(req.TTL / time.Second),
			KeyType:        req.PublicKey.Type(),
			KeyFingerprint: rec.KeyFingerprint, // req.PublicKey's, computed once
			SourceIP:       req.SourceIP,
			Reason:         req.Reason,
		},
		Now: now.UTC().Format(time.RFC3339),
	}
	if ar.ID != "" {
		view := ar
		view.Approvals = counting
		in.AccessRequest = view.policyView()
	}
	fillDefaults(&in.Identity)
	dec, err := a.policy.Decide(ctx, in)
	if err != nil {
		return Issued{}, Unavailable("policy could not decide", err)
	}
	rec.PolicyRevision, rec.Ticket = dec.Revision, dec.Ticket
	if !dec.Allow {
		reasons := orDefault(dec.Reasons)
		rec.Reasons = reasons
		a.log.InfoContext(ctx, "denied", "kind", req.Kind, "identity", id.Name(), "reasons", reasons, "policy", dec.Revision)
		return Issued{}, Denied("policy denied the request", reasons...)
	}
	tmpl, ttl, err := a.template(ctx, req, id, dec)
	if err != nil {
		return Issued{}, err
	}
	if ar.ID != "" {
		// No certificate outlives the approved window; the request's ID goes into the key ID,
		// so sshd's log names it.
		left := ar.NotAfter.Sub(now).Truncate(time.Second)
		if left < MinTTL {
			return Issued{}, Denied("access request "+ar.ID+" ends in less than a minute", "create a new request (sshca request create)")
		}
		ttl = min(ttl, left)
		tmpl.KeyId += "/" + ar.ID
	}
	// Spend a single-use token only now, so that a request the policy denies does not burn it. Both
	// this and the refusal check come before the signature: replaying a captured token, or
	// presenting a revoked key, never makes the KMS sign.
	// Outside an access request the certificate is recorded in that same round trip, before it
	// is signed (preRecord), and withdrawn if it is then not signed.
	// Until the signature, a refusal of the server's own (a 503) gives the token back (giveBack):
	// the caller did nothing wrong and nothing was signed. From the signature on it stays spent.
	var pre *Certificate
	var spent string // the admission's spend of the token (Admitted.Spent)
	if a.admission != nil {
		if ar.ID == "" {
			pre = a.preRecord(tmpl, ttl, req, rec, key.Fingerprint(), dec, aliases)
		}
		var recorded bool
		recorded, spent, err = a.admit(ctx, &rec, tmpl, ttl, key, names, id.Token, pre)
		if !recorded {
			pre = nil
		}
		if err != nil {
			// A refusal or a spent token is the admission's answer; any other error is its
			// answer lost.
			if k := KindOf(err); pre != nil && k != KindDenied && k != KindUnauthenticated {
				lost, rec.Serial, rec.KeyID = pre, pre.Serial, pre.KeyID
			} else {
				lost = a.withdraw(ctx, &rec, pre)
			}
			return Issued{}, a.giveBack(ctx, id.Token, spent, err)
		}
	} else if err := a.spend(ctx, id.Token); err != nil {
		return Issued{}, err
	}
	// No signing starts once the request's deadline has passed: the caller has been told
	// nothing useful by then (or has given up), and a certificate nobody receives only adds
	// to what is outstanding.
	if err := ctx.Err(); err != nil {
		lost = a.withdraw(ctx, &rec, pre)
		return Issued{}, a.giveBack(ctx, id.Token, spent, Unavailable("the request's deadline passed; no certificate issued", err))
	}
	cert, err := a.sign(ctx, key, tmpl, ttl)
	if err != nil {
		// The signer handed back no certificate: whatever the KMS or HSM did, nobody holds
		// one signed for this request.
		lost = a.withdraw(ctx, &rec, pre)
		if !refusedBeforeSigning(err) {
			// The KMS or HSM was asked to sign and failed: the token stays spent. Given back, a
			// captured token replayed while the HSM fails would make it attempt a signature on
			// every replay; spent, it makes one (the issue's "replaying one captured token cannot
			// make an HSM sign" holds for attempts too, TestFailedSignatureKeepsTokenSpent).
			return Issued{}, keptSpent(id.Token, signErr(err))
		}
		return Issued{}, a.giveBack(ctx, id.Token, spent, err)
	}
	// A certificate exists now: record and audit it to completion under a bound of its own,
	// even if the request's deadline passes meanwhile, so that the inventory never misses a
	// signed certificate (and a failure to record it is audited with its serial).
	recordCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), SignedCertTimeout)
	defer cancel()
	// The key certified and the CA key that signed.
	caFP, keyFP := signedBy(key, cert, rec.KeyFingerprint)
	cr := a.certRecord(cert, keyFP, caFP, req, rec, dec, aliases)
	rec.Serial, rec.KeyID = cr.Serial, cr.KeyID
	// Recording checks the identity's blocks in the same atomic step (the admission's record,
	// CertStore.Record, and RecordUnderRequest likewise): a revocation that blocked the identity
	// before it refuses the record, so the certificate is never returned (never signed, when
	// recorded by the admission); one that blocked it after the record reads it among the live
	// certificates and revokes it.
	// The inventory's record of the certificate as kept: withdrawn (Unrecord, compare-and-delete)
	// if the certificate is then not handed out.
	kept := cr
	switch {
	case pre != nil && sameRecord(*pre, cr):
		// Recorded by the admission: what was signed is what was recorded.
		kept = *pre
	case pre != nil && pre.CAFingerprint != cr.CAFingerprint:
		// Signed by another CA key than recorded (a Signer that could not fix its key, whose
		// active key was promoted meanwhile): a revocation by serial or key ID that found the record revoked it in the
		// recorded key's scope, which does not cover this certificate. It is not handed out.
		a.dropRecorded(ctx, recordCtx, rec, pre, cr.Serial)
		return Issued{}, Unavailable("the CA key changed (a key rotation) while the certificate was signed; no certificate issued: ask again", nil)
	case ar.ID == "":
		// Not recorded before signing, or signed otherwise than recorded (a signer that drew
		// its own serial or window).
		if pre != nil {
			a.dropRecorded(ctx, recordCtx, rec, pre, cr.Serial)
		}
		if err := a.store.Record(recordCtx, cr); err != nil {
			if KindOf(err) == KindDenied {
				rec.Outcome = "refused"
				return Issued{}, err
			}
			return Issued{}, storeErr("certificate inventory unavailable; no certificate issued", err)
		}
	default:
		cr.AccessRequest, cr.Approvers = ar.ID, rec.Approvers
		kept = cr
		// The request's state is checked in the step that records the certificate: a request
		// cancelled, revoked or ended while this one was signed yields no certificate.
		err := a.requests.RecordUnderRequest(recordCtx, cr, ar.ID, func(cur AccessRequest) error {
			if cur.Requester.Name() != cr.Identity {
				return Denied("access request " + ar.ID + " is not yours")
			}
			return usable(cur, a.now())
		})
		if KindOf(err) == KindDenied {
			return Issued{}, err
		}
		if err != nil {
			return Issued{}, storeErr("certificate inventory unavailable; no certificate issued", err)
		}
	}
	rec.Outcome, rec.Principals, rec.ValidBefore = "issued", cr.Principals, cr.ValidBefore
	// What a rebuild restores the inventory from (sshca store rebuild).
	rec.CAFingerprint, rec.Aliases = cr.CAFingerprint, cr.Aliases
	// The authority cannot know whether its answer reaches the caller; it can say that the
	// answer left after the request's deadline, when the caller may have stopped listening.
	rec.Late = ctx.Err() != nil
	// The CA key's ban is read again in the audit append's round trip: the admission read it
	// before the signature, and a compromise through another replica (whose key ring this
	// replica re-reads only every keyring.refresh) may have landed since.
	banned, err := a.keepIssued(recordCtx, rec, cert.SignatureKey)
	if err != nil {
		rec.Outcome = ""
		return Issued{}, err
	}
	if banned {
		// Signed, recorded and audited as issued, but not handed out: a certificate of a
		// banned CA key is refused by every KRL and known_hosts that lists the key, so handing
		// it out is an outage for its holder, not access. Its record is withdrawn as a failed
		// signature's is; the deferred settleSigned then keeps a second audit record naming its
		// serial with this outcome, which tells a rebuild (store.Restore) not to restore it.
		// (Without an Admission, which serve always has, there is no withdrawal: the record
		// stays, of a certificate that exists and that every KRL refuses.)
		rec.Outcome = ""
		if a.admission != nil {
			a.unrecord(recordCtx, &kept) // a failure is logged; the audit record names the serial
		}
		return Issued{}, Unavailable(fmt.Sprintf("the CA key %s was banned (marked compromised through another replica, or its public key revoked) while this certificate was signed; it was not handed out: ask again with a new token", caFP), nil)
	}
	// At debug level: the decision's one info line is the caller's (services' logging
	// middleware, "issue" or "renew", from the returned record), and the audit record above is
	// the durable trace. Checked first, so an info-level log boxes none of the arguments.
	if a.log.Enabled(ctx, slog.LevelDebug) {
		a.log.DebugContext(ctx, "issued", "kind", req.Kind, "identity", cr.Identity, "serial", cr.Serial,
			"key_id", cr.KeyID, "principals", cr.Principals, "valid_before", cr.ValidBefore, "ticket", cr.Ticket,
			"reason", cr.Reason, "policy", dec.Revision)
	}
	return Issued{Cert: cert, Record: cr}, nil
}

func (a *Authority) validate(req Request) error {
	if req.PublicKey == nil {
		return Invalid("public_key is required")
	}
	if req.Kind == HostCert && len(req.Principals) == 0 {
		return Invalid("hostnames: at least one host name is required")
	}
	if req.TTL < 0 {
		return Invalid("ttl must be positive")
	}
	if req.TTL != 0 && req.TTL.Truncate(time.Second) < MinTTL {
		return Invalid("ttl must be at least 1m")
	}
	if max := a.MaxTTL(req.Kind); req.TTL > max {
		return Invalid("ttl %s exceeds the service maximum of %s", req.TTL, max)
	}
	if len(req.Reason) > 1024 {
		return Invalid("reason is longer than 1024 bytes")
	}
	return validatePrincipals(req.Kind, req.Principals, a.limits.MaxPrincipals)
}

// template narrows the decision to what was asked and what the caps allow, and builds the
// certificate template. A policy that grants more than that is cut down, never trusted; a
// policy that grants what sshd would refuse or read differently (CheckCertificateContent) is a
// policy fault: denied, logged at error level, counted, and nothing is signed.
func (a *Authority) template(ctx context.Context, req Request, id Identity, dec Decision) (*ssh.Certificate, time.Duration, error) {
	principals := dec.Principals
	if len(req.Principals) > 0 {
		principals = nil
		for _, p := range dec.Principals {
			if slices.Contains(req.Principals, p) {
				principals = append(principals, p)
			}
		}
	}
	principals = dedupe(principals)
	if len(principals) == 0 {
		return nil, 0, Denied("policy denied the request", "the policy grants none of the requested principals")
	}
	if max := a.limits.MaxPrincipals; max > 0 && len(principals) > max {
		return nil, 0, Denied("policy granted more principals than the service signs", fmt.Sprintf("%d principals; at most %d", len(principals), max))
	}
	if dec.TTL <= 0 {
		return nil, 0, Denied("policy denied the request", "the policy granted no lifetime")
	}
	ttl := dec.TTL
	if rt := req.TTL.Truncate(time.Second); rt > 0 && rt < ttl {
		ttl = rt
	}
	if max := a.MaxTTL(req.Kind); ttl > max {
		ttl = max
	}
	// Everything the policy granted goes to the check, for host certificates too: what the
	// allow-lists or the kind exclude is a fault, never dropped in silence.
	perms := ssh.Permissions{Extensions: nonNilMap(dec.Extensions), CriticalOptions: nonNilMap(dec.CriticalOptions)}
	if f := CheckCertificateContent(req.Kind, principals, ttl, perms, a.limits.Extensions, a.limits.CriticalOptions); f != nil {
		a.log.ErrorContext(ctx, "policy fault: not signed", "field", f.Field, "value", f.Value, "why", f.Why,
			"kind", req.Kind, "identity", id.Name(), "policy", dec.Revision)
		if a.faults != nil {
			a.faults.PolicyFault(*f)
		}
		return nil, 0, &Error{Kind: KindDenied, Msg: "the policy granted a certificate the service does not sign", Reasons: []string{f.Reason()}, Err: f}
	}
	keyID := id.KeyIDName()
	if dec.Ticket != "" {
		if len(dec.Ticket) > 64 || strings.ContainsAny(dec.Ticket, "# \t\r\n") {
			return nil, 0, Denied("policy granted a ticket the service does not accept", "ticket must be at most 64 characters without spaces or '#'")
		}
		keyID += "/" + dec.Ticket
	}
	return &ssh.Certificate{
		Key:             req.PublicKey,
		CertType:        req.Kind.SSHCertType(),
		KeyId:           keyID,
		ValidPrincipals: principals,
		Permissions:     perms,
	}, ttl, nil
}

func signErr(err error) error {
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	return Unavailable("signing failed", err)
}

// nonNilMap is m, or an empty map: x/crypto/ssh marshals both the same, and the inventory
// and tests compare with empty maps.
func nonNilMap(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

func dedupe(ps []string) []string {
	out := slices.Clone(ps)
	sort.Strings(out)
	return slices.Compact(out)
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func (a *Authority) spend(ctx context.Context, t TokenUse) error {
	if !t.SingleUse {
		return nil
	}
	if a.tokens == nil || t.ID == "" {
		return Unavailable("replay protection is not configured; no certificate issued", nil)
	}
	fresh, err := a.tokens.UseToken(ctx, t.ID, t.IssuedAt, t.Expiry)
	if err != nil {
		return storeErr("token ledger unavailable; no certificate issued", err)
	}
	if !fresh {
		return Unauthenticated("token already used: a token gives one certificate; get a new one", nil)
	}
	return nil
}

// admit asks the Admission whether the request may be signed: not refused (revoked key or
// identity, lost store state), its single-use token fresh, and a serial for tmpl reserved, in
// one round trip. The serial goes into tmpl (the signer signs with it instead of reserving one);
// in the unlikely case it was taken, tmpl keeps none and the signer reserves its own. With pre
// (preRecord), the same round trip records the certificate under that serial: recorded says
// whether it did, whatever the error, so that the caller withdraws a record it does not sign.
// spent names the admission's spend of the token (Admitted.Spent), also beside an error, so
// that the caller can give it back (giveBack).
func (a *Authority) admit(ctx context.Context, rec *AuditRecord, tmpl *ssh.Certificate, ttl time.Duration, key SigningKey, names []string, t TokenUse, pre *Certificate) (recorded bool, spent string, _ error) {
	if t.SingleUse && t.ID == "" {
		return false, "", Unavailable("replay protection is not configured; no certificate issued", nil)
	}
	serial, err := randomSerial()
	if err != nil {
		return false, "", Unavailable("no serial drawn; no certificate issued", err)
	}
	if pre != nil {
		pre.Serial, pre.KeyID = serial, tmpl.KeyId+"#"+strconv.FormatUint(serial, 10)
	}
	res, err := a.admission.Admit(ctx, AdmissionRequest{CAKey: key.PublicKey(), CAFingerprint: key.Fingerprint(), Identities: names, Key: tmpl.Key, Token: t,
		// As long as the certificate lives, with room for the signer's clock skew.
		Serial: serial, SerialUntil: a.now().Add(ttl + serialSlack), Record: pre})
	if err != nil {
		// The pipeline may have run all the same (its answer lost or late, as under a stalled
		// store), the record with it.
		return pre != nil, res.Spent, storeErr("revocation store or token ledger unavailable; no certificate issued", err)
	}
	if res.Refusal != "" {
		rec.Outcome = "refused"
		// The caller's refusal: its token stays spent (no spend named for giveBack).
		return res.Recorded, "", Denied("revoked", res.Refusal)
	}
	if !res.Fresh {
		return res.Recorded, "", Unauthenticated("token already used: a token gives one certificate; get a new one", nil)
	}
	if res.SerialReserved {
		tmpl.Serial = serial
	} else if res.Recorded {
		// Another certificate holds the serial's reservation: the signer draws its own, and
		// the record made under this one is withdrawn. When it cannot be, nothing is signed:
		// signed under another serial, the request's audit record would not name this one,
		// left in the inventory unexplained. The caller settles it as a lost admission's
		// (withdrawn again and audited with this serial, in the background).
		if !a.unrecord(ctx, pre) {
			return true, res.Spent, Unavailable("certificate inventory unavailable; no certificate issued", nil)
		}
		res.Recorded = false
	}
	return res.Recorded, res.Spent, nil
}

// refusedBeforeSigning: err, from SigningKey.Sign, is the key's own refusal made before the KMS
// was asked (an *Error of KindUnavailable: marked compromised or withdrawn since it was fixed,
// SigningKey's contract). Any other error may come from the KMS or HSM itself.
func refusedBeforeSigning(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Kind == KindUnavailable
}

// keptSpent is err (a *Error, as signErr makes it) with its message saying that t, when
// single-use, counts as spent, as giveBack says of a token it cannot give back.
func keptSpent(t TokenUse, err error) error {
	var e *Error
	if !t.SingleUse || !errors.As(err, &e) {
		return err
	}
	out := *e
	out.Msg += "; the token counts as spent: use a new token"
	return &out
}

// tokenReturnTimeout bounds giveBack's round trip: the request's deadline may be what ended
// it, and the caller waits for the answer that says what became of its token.
const tokenReturnTimeout = time.Second

// giveBack gives the single-use token t back after err, when err is a refusal of the
// server's own (KindUnavailable: the CA key banned before this replica's key ring moved,
// another number of inventory shards, a store failure, the signing key's own refusal before
// the KMS was asked, the deadline) that came once
// the admission had spent the token (spent, Admitted.Spent) and before anything was signed:
// the same token may then be sent again. The return is the Admission's compare and delete of
// that spend, so it never frees a token that another request spent. err comes back with a
// message that says what became of the token. A refusal of the caller's (a revoked key or
// identity, a replay) keeps the token spent, as does an error with no spend named (none was
// made, or the admission's answer was lost): err comes back as it is.
func (a *Authority) giveBack(ctx context.Context, t TokenUse, spent string, err error) error {
	var e *Error
	if !t.SingleUse || spent == "" || !errors.As(err, &e) || e.Kind != KindUnavailable {
		return err
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), tokenReturnTimeout)
	ok, rerr := a.admission.ReturnToken(rctx, t, spent)
	cancel()
	out := *e
	outcome := TokenKeptSpent
	switch {
	case ok:
		outcome = TokenGivenBack
		out.Msg += "; the token was given back and may be used again"
	case rerr != nil:
		// Unknown whether the delete ran: the caller is told the safe answer.
		outcome = TokenReturnUnknown
		a.log.WarnContext(ctx, "a token spent by a request refused for a fault of the server's could not be given back", "err", rerr)
		out.Msg += "; the token could not be given back and counts as spent: use a new token"
	default:
		// Its record is gone (expired with the token, a store that lost its state) or is
		// another spend's: nothing of this request's to give back.
		out.Msg += "; the token counts as spent: use a new token"
	}
	if a.tokenReturns != nil {
		a.tokenReturns.TokenReturn(outcome)
	}
	return &out
}

// preRecord is the inventory record of the certificate about to be signed from tmpl, made
// before the signature so that the admission's round trip keeps it (AdmissionRequest.Record):
// it fixes tmpl's validity window (from now less backdating to now plus ttl, in whole seconds,
// as the signer would draw it); admit fills in the serial and key ID. What the signer then
// returns is compared with it (sameRecord) and recorded again when it differs.
func (a *Authority) preRecord(tmpl *ssh.Certificate, ttl time.Duration, req Request, rec AuditRecord, caFP string, dec Decision, aliases []string) *Certificate {
	now := a.now()
	tmpl.ValidAfter, tmpl.ValidBefore = uint64(now.Add(-backdating).Unix()), uint64(now.Add(ttl).Unix())
	// tmpl.Key is req.PublicKey (template), whose fingerprint rec holds already.
	c := a.certRecord(tmpl, rec.KeyFingerprint, caFP, req, rec, dec, aliases)
	return &c
}

// certRecord is the inventory record of c (signed, or the template about to be signed by the
// CA key of fingerprint caFP; keyFP the fingerprint of c.Key) for rec's identity: one
// definition for the record made before signing and the one compared with it after.
func (a *Authority) certRecord(c *ssh.Certificate, keyFP, caFP string, req Request, rec AuditRecord, dec Decision, aliases []string) Certificate {
	return Certificate{
		Serial:         c.Serial,
		KeyID:          c.KeyId,
		Kind:           req.Kind,
		Identity:       rec.Identity,
		Principals:     c.ValidPrincipals,
		KeyFingerprint: keyFP,
		CAFingerprint:  caFP,
		ValidAfter:     time.Unix(int64(c.ValidAfter), 0).UTC(),
		ValidBefore:    time.Unix(int64(c.ValidBefore), 0).UTC(),
		Ticket:         dec.Ticket,
		Reason:         req.Reason,
		PolicyRevision: dec.Revision,
		Aliases:        aliases,
		IndexUntil:     a.now().Add(a.limits.IdentityBlock),
	}
}

// sameRecord: the signed certificate's record c is the one recorded before signing (pre),
// IndexUntil aside (not part of the record).
func sameRecord(pre, c Certificate) bool {
	return pre.Serial == c.Serial && pre.KeyID == c.KeyID && pre.Kind == c.Kind && pre.Identity == c.Identity &&
		slices.Equal(pre.Principals, c.Principals) && pre.KeyFingerprint == c.KeyFingerprint &&
		pre.CAFingerprint == c.CAFingerprint && pre.ValidAfter.Equal(c.ValidAfter) &&
		pre.ValidBefore.Equal(c.ValidBefore) && pre.Ticket == c.Ticket && pre.Reason == c.Reason &&
		pre.PolicyRevision == c.PolicyRevision && slices.Equal(pre.Aliases, c.Aliases) &&
		pre.AccessRequest == c.AccessRequest && slices.Equal(pre.Approvers, c.Approvers)
}

// withdraw withdraws pre (nil: nothing to withdraw), recorded before a signature that then did
// not happen. When the withdrawal fails, rec, the request's audit record, names pre's serial
// and key ID, and is then kept as a signed certificate's failure is (settleSigned: retried
// until kept): the inventory holds no serial that the audit log does not explain. Such a
// record is of a certificate that does not exist until its ValidBefore; revoking its serial
// revokes nothing.
//
// Once the request's deadline has passed (the caller has waited long enough, and the store may
// be what is slow), the withdrawal is left to settleLost: rec names pre's serial, and later is
// pre.
func (a *Authority) withdraw(ctx context.Context, rec *AuditRecord, pre *Certificate) (later *Certificate) {
	switch {
	case pre == nil:
	case ctx.Err() != nil:
		rec.Serial, rec.KeyID = pre.Serial, pre.KeyID
		return pre
	case !a.unrecord(ctx, pre):
		rec.Serial, rec.KeyID = pre.Serial, pre.KeyID
	}
	return nil
}

// dropRecorded withdraws pre, recorded before signing, once the certificate signed (serial
// signed) is not the one recorded. A withdrawal that fails leaves pre in the inventory: under
// the signed serial, the request's audit record names it; under another, it is withdrawn again
// and audited on its own, in the background, as a lost admission's is.
func (a *Authority) dropRecorded(ctx, recordCtx context.Context, rec AuditRecord, pre *Certificate, signed uint64) {
	if a.unrecord(recordCtx, pre) || pre.Serial == signed {
		return
	}
	rec.Serial, rec.KeyID = pre.Serial, pre.KeyID
	a.settleLost(context.WithoutCancel(ctx), rec, Unavailable("recorded before signing, then signed with serial "+strconv.FormatUint(signed, 10)+"; the record is withdrawn", nil), *pre)
}

// unrecord withdraws pre under a bound of its own (the request's deadline may be what ended
// it), and says whether it could: false is logged.
func (a *Authority) unrecord(ctx context.Context, pre *Certificate) bool {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), SignedCertTimeout)
	defer cancel()
	if err := a.admission.Unrecord(ctx, *pre); err != nil {
		a.log.WarnContext(ctx, "a certificate recorded before signing and then not signed may still be in the inventory until it would have expired; its serial is in the request's audit record",
			"serial", pre.Serial, "identity", pre.Identity, "err", err)
		return false
	}
	return true
}

// serialSlack is how much longer than the certificate's lifetime the admission keeps its
// serial reserved: the signer's clock may be ahead of the authority's.
const serialSlack = time.Minute

// randomSerial draws a random non-zero serial (crypto/rand).
func randomSerial() (uint64, error) {
	var b [8]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			return 0, err
		}
		if s := binary.BigEndian.Uint64(b[:]); s != 0 {
			return s, nil
		}
	}
}

// fillDefaults gives the policy empty lists and objects rather than nulls.
func fillDefaults(id *Identity) {
	if id.Groups == nil {
		id.Groups = []string{}
	}
	if id.AMR == nil {
		id.AMR = []string{}
	}
	if id.Claims == nil {
		id.Claims = map[string]any{}
	}
}

func base64Std(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
