package ca

import (
	"context"
	"time"

	"golang.org/x/crypto/ssh"
)

// Stage names one step of the Authority's pipelines, for StageObserver.
type Stage string

// The stages. Each is a call of one dependency, so a stage's time is that dependency's time as
// the Authority sees it (network included).
const (
	// StageAuthenticate is token verification (Authenticator): signature, claims, and a key
	// set fetch when the issuer rotated its keys.
	StageAuthenticate Stage = "authenticate"
	// StagePolicy is one policy decision (Policy.Decide).
	StagePolicy Stage = "policy"
	// StageStore is one call of the inventory, the revocation store or the token ledger.
	StageStore Stage = "store"
	// StageSign is SigningKey.Sign: the serial's reservation in the store and the CA key's
	// signature (KMS).
	StageSign Stage = "sign"
	// StageAudit is one append to the audit log.
	StageAudit Stage = "audit"
)

// Stages are every Stage, in pipeline order.
var Stages = []Stage{StageAuthenticate, StagePolicy, StageStore, StageSign, StageAudit}

// StageObserver learns how long each dependency call took and how it ended (err nil: it
// answered; a refusal such as an invalid token is an error here too, classified by KindOf).
// It is called on the request's goroutine once the call returns, so it must be quick and safe
// for concurrent use. It gets no identity, token or key: only the stage.
type StageObserver interface {
	ObserveStage(stage Stage, took time.Duration, err error)
}

// observed wraps every dependency of c whose calls are a stage with one that reports them to
// c.Stages, but the signers: the Authority observes the signature of the key it fixed
// (Authority.sign), and asks the signers themselves for their keyrings (Publisher, KeyedSigner).
func (c Config) observed() Config {
	o := c.Stages
	if o == nil {
		return c
	}
	if c.Authenticator != nil {
		c.Authenticator = observedAuth{c.Authenticator, o}
	}
	if c.Policy != nil {
		c.Policy = observedPolicy{c.Policy, o}
	}
	if c.Store != nil {
		c.Store = observedCertStore{c.Store, o}
	}
	if c.Revocations != nil {
		c.Revocations = observedRevocations{c.Revocations, o}
	}
	if c.Tokens != nil {
		c.Tokens = observedTokens{c.Tokens, o}
	}
	if c.Admission != nil {
		c.Admission = observedAdmission{c.Admission, o}
	}
	if c.Audit != nil {
		c.Audit = observedAudit{c.Audit, o}
	}
	return c
}

func observe(o StageObserver, s Stage, begin time.Time, err error) {
	o.ObserveStage(s, time.Since(begin), err)
}

type observedAuth struct {
	next Authenticator
	o    StageObserver
}

func (w observedAuth) Authenticate(ctx context.Context, token string) (_ Identity, err error) {
	defer func(begin time.Time) { observe(w.o, StageAuthenticate, begin, err) }(time.Now())
	return w.next.Authenticate(ctx, token)
}

type observedPolicy struct {
	next Policy
	o    StageObserver
}

func (w observedPolicy) Decide(ctx context.Context, in PolicyInput) (_ Decision, err error) {
	defer func(begin time.Time) { observe(w.o, StagePolicy, begin, err) }(time.Now())
	return w.next.Decide(ctx, in)
}

// observedCertStore and observedRevocations embed what they wrap: a method added to the
// interface later passes through, unobserved, rather than breaking the build.
type observedCertStore struct {
	CertStore
	o StageObserver
}

func (w observedCertStore) Record(ctx context.Context, c Certificate) (err error) {
	defer func(begin time.Time) { observe(w.o, StageStore, begin, err) }(time.Now())
	return w.CertStore.Record(ctx, c)
}

func (w observedCertStore) Live(ctx context.Context, identity string, now time.Time) (_ []Certificate, err error) {
	defer func(begin time.Time) { observe(w.o, StageStore, begin, err) }(time.Now())
	return w.CertStore.Live(ctx, identity, now)
}

func (w observedCertStore) LivePage(ctx context.Context, now time.Time, after CertCursor, limit int) (_ []Certificate, _ CertCursor, err error) {
	defer func(begin time.Time) { observe(w.o, StageStore, begin, err) }(time.Now())
	return w.CertStore.LivePage(ctx, now, after, limit)
}

func (w observedCertStore) LivePageOf(ctx context.Context, identity string, now time.Time, after CertCursor, limit int) (_ []Certificate, _ CertCursor, err error) {
	defer func(begin time.Time) { observe(w.o, StageStore, begin, err) }(time.Now())
	return w.CertStore.LivePageOf(ctx, identity, now, after, limit)
}

func (w observedCertStore) Get(ctx context.Context, serial uint64) (_ Certificate, _ bool, err error) {
	defer func(begin time.Time) { observe(w.o, StageStore, begin, err) }(time.Now())
	return w.CertStore.Get(ctx, serial)
}

func (w observedCertStore) ResolveAlias(ctx context.Context, alias string, now time.Time) (_ []string, err error) {
	defer func(begin time.Time) { observe(w.o, StageStore, begin, err) }(time.Now())
	return w.CertStore.ResolveAlias(ctx, alias, now)
}

type observedTokens struct {
	next TokenLedger
	o    StageObserver
}

func (w observedTokens) UseToken(ctx context.Context, id string, issued, until time.Time) (_ bool, err error) {
	defer func(begin time.Time) { observe(w.o, StageStore, begin, err) }(time.Now())
	return w.next.UseToken(ctx, id, issued, until)
}

type observedAdmission struct {
	next Admission
	o    StageObserver
}

func (w observedAdmission) Admit(ctx context.Context, r AdmissionRequest) (_ Admitted, err error) {
	defer func(begin time.Time) { observe(w.o, StageStore, begin, err) }(time.Now())
	return w.next.Admit(ctx, r)
}

func (w observedAdmission) Unrecord(ctx context.Context, c Certificate) (err error) {
	defer func(begin time.Time) { observe(w.o, StageStore, begin, err) }(time.Now())
	return w.next.Unrecord(ctx, c)
}

func (w observedAdmission) ReturnToken(ctx context.Context, t TokenUse, spent string) (_ bool, err error) {
	defer func(begin time.Time) { observe(w.o, StageStore, begin, err) }(time.Now())
	return w.next.ReturnToken(ctx, t, spent)
}

type observedAudit struct {
	next AuditLog
	o    StageObserver
}

func (w observedAudit) Append(ctx context.Context, rec AuditRecord) (err error) {
	defer func(begin time.Time) { observe(w.o, StageAudit, begin, err) }(time.Now())
	return w.next.Append(ctx, rec)
}

var _ OnceAuditLog = observedAudit{}

// AppendOnce keeps the wrapped log's AppendOnce visible through the observer (plain Append
// when it has none).
func (w observedAudit) AppendOnce(ctx context.Context, rec AuditRecord, once uint64) (err error) {
	defer func(begin time.Time) { observe(w.o, StageAudit, begin, err) }(time.Now())
	if o, ok := w.next.(OnceAuditLog); ok {
		return o.AppendOnce(ctx, rec, once)
	}
	return w.next.Append(ctx, rec)
}

var _ BanCheckedAuditLog = observedAudit{}

// AppendIssued keeps the wrapped log's AppendIssued visible through the observer (plain
// Append, nothing banned, when it has none).
func (w observedAudit) AppendIssued(ctx context.Context, rec AuditRecord, caKey ssh.PublicKey) (banned bool, err error) {
	defer func(begin time.Time) { observe(w.o, StageAudit, begin, err) }(time.Now())
	if c, ok := w.next.(BanCheckedAuditLog); ok {
		return c.AppendIssued(ctx, rec, caKey)
	}
	return false, w.next.Append(ctx, rec)
}

type observedRevocations struct {
	RevocationStore
	o StageObserver
}

func (w observedRevocations) Revoke(ctx context.Context, caKey ssh.PublicKey, entries []RevocationEntry) (_ uint64, err error) {
	defer func(begin time.Time) { observe(w.o, StageStore, begin, err) }(time.Now())
	return w.RevocationStore.Revoke(ctx, caKey, entries)
}

func (w observedRevocations) State(ctx context.Context, caKey ssh.PublicKey) (_ RevocationState, err error) {
	defer func(begin time.Time) { observe(w.o, StageStore, begin, err) }(time.Now())
	return w.RevocationStore.State(ctx, caKey)
}

func (w observedRevocations) BlockIdentity(ctx context.Context, identity string, until time.Time) (err error) {
	defer func(begin time.Time) { observe(w.o, StageStore, begin, err) }(time.Now())
	return w.RevocationStore.BlockIdentity(ctx, identity, until)
}

func (w observedRevocations) Refused(ctx context.Context, caKey ssh.PublicKey, identities []string, key ssh.PublicKey) (_ string, err error) {
	defer func(begin time.Time) { observe(w.o, StageStore, begin, err) }(time.Now())
	return w.RevocationStore.Refused(ctx, caKey, identities, key)
}

func (w observedRevocations) LiftKey(ctx context.Context, key ssh.PublicKey) (_ map[string]uint64, err error) {
	defer func(begin time.Time) { observe(w.o, StageStore, begin, err) }(time.Now())
	return w.RevocationStore.LiftKey(ctx, key)
}

func (w observedRevocations) StatePage(ctx context.Context, caKey ssh.PublicKey, after EntryCursor, limit int) (_ RevocationState, _ EntryCursor, err error) {
	defer func(begin time.Time) { observe(w.o, StageStore, begin, err) }(time.Now())
	return w.RevocationStore.StatePage(ctx, caKey, after, limit)
}
