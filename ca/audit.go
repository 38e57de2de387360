package ca

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// AuditRecord is one decision as the audit log keeps it: who asked for what, what the policy
// said and why, and what was issued. It never holds a token or a private key.
type AuditRecord struct {
	// V is the record's format version, AuditRecordVersion for records written now. Records
	// written before the field existed have none in their JSON and are version 1. Any later
	// change to what a record holds raises it, and readers of the audit log (verify, archives,
	// rebuilds) read every version.
	V    int       `json:"v"`
	Time time.Time `json:"time"`
	// Action is what was asked: "user", "host", "renew", "revoke", "admin", and since version 3
	// "request" (an access request created, cancelled or revoked) and "approve" (one approved
	// or denied), and "read" (the inventory or the revocations listed; earlier records of
	// version 3 and before show such reads as "revoke" with a target "list …").
	Action Action `json:"action"`
	// Outcome is "issued", "allowed" (revoke, admin), "refused" (a revoked key or identity),
	// or the kind of the error the request ended with: "denied" (the policy or the caps),
	// "invalid", "unauthenticated" (a replayed token), "unavailable" (a dependency failed;
	// nothing was done).
	Outcome        string   `json:"outcome"`
	Identity       string   `json:"identity"`
	Issuer         string   `json:"issuer,omitempty"`
	Subject        string   `json:"subject,omitempty"`
	Workload       bool     `json:"workload,omitempty"`
	Requested      []string `json:"requested,omitempty"`
	KeyFingerprint string   `json:"key_fingerprint,omitempty"`
	SourceIP       string   `json:"source_ip,omitempty"`
	Reason         string   `json:"reason,omitempty"`
	Target         string   `json:"target,omitempty"`
	// Matches are the identities a revoke-by-identity covered (canonical names). Added in
	// version 2 without raising V (absent means none).
	Matches []string `json:"matches,omitempty"`
	// BlockedUntil is when a revoke-by-identity stops refusing new certificates. Added in
	// version 2 without raising V (absent: the record predates it; a rebuild then takes the
	// record's time plus limits.identity_block).
	BlockedUntil time.Time `json:"blocked_until,omitzero"`
	// PublicKey is the public key a ban names (target "public_key:<fingerprint>"), base64 of
	// its wire form as in a revocation entry, so that `sshca store rebuild` can restore the
	// ban exactly. Added in version 2 without raising V (absent: the record predates it, and
	// only the fingerprint in the target is known).
	PublicKey string `json:"public_key,omitempty"`
	// CAFingerprint is the SHA256 fingerprint of the CA key that signed an issued
	// certificate. Added in version 2 without raising V (absent: the record predates it; a
	// rebuild then takes the active key of the kind).
	CAFingerprint string `json:"ca_fingerprint,omitempty"`
	// Aliases are the other names of the identity an issued certificate was for ("email:…",
	// "username:…"), which the inventory indexes for revoke-by-identity. Added in version 2
	// without raising V (absent: the record predates it).
	Aliases        []string  `json:"aliases,omitempty"`
	Reasons        []string  `json:"reasons,omitempty"`
	Ticket         string    `json:"ticket,omitempty"`
	Serial         uint64    `json:"serial,omitempty,string"`
	KeyID          string    `json:"key_id,omitempty"`
	Principals     []string  `json:"principals,omitempty"`
	ValidBefore    time.Time `json:"valid_before,omitzero"`
	PolicyRevision string    `json:"policy_revision,omitempty"`
	// Late says the request's deadline had passed when this record was kept, so its answer
	// left after the caller may have stopped listening: a certificate issued late may never
	// have reached anyone. Added in version 2 without raising V (absent means false).
	Late bool `json:"late,omitempty"`
	// RequestID is the ID of the request this record answers (X-Request-ID, taken from the
	// context with RequestID), so the record, the request's log lines and the caller's answer
	// can be matched. Added in version 2 without raising V (absent: the record predates it, or
	// the request came with no ID, as from the CLI's offline paths).
	RequestID string `json:"request_id,omitempty"`
	// AccessRequest is the access request the record is about: the one created, approved,
	// denied, cancelled or revoked (Event says which), or the one a certificate was issued
	// under. Added in version 3.
	AccessRequest string `json:"access_request,omitempty"`
	// Event is what happened to AccessRequest: "create", "approve", "deny", "cancel" or
	// "revoke" ("" for a certificate issued under it). Added in version 3.
	Event string `json:"event,omitempty"`
	// Approvers are the canonical names of the approvals of AccessRequest that counted when
	// the record was kept. Added in version 3.
	Approvers []string `json:"approvers,omitempty"`
	// WindowSeconds is the access window an access request asked for. Added in version 3.
	WindowSeconds int64 `json:"window_seconds,omitempty"`
	// BreakGlass marks emergency access granted without approval. Added in version 3.
	BreakGlass bool `json:"break_glass,omitempty"`
	// Keyring is the key ring a key-ring change left (outcome "done", the record kept once
	// the change is made, after its "allowed" one), with every KMS URI's PIN (pin-value)
	// redacted: `sshca store rebuild` restores the last one. Added in version 3 (absent: the
	// record is of another kind, or predates it and the change cannot be replayed).
	Keyring *Keyring `json:"keyring,omitempty"`
	// Store is the store's generation and marks when an audit archive was written (target
	// "audit archive", outcome "done"): the archive is then a witness outside the store, and a
	// store found older than it was rolled back. Added in version 3.
	Store *StoreWitness `json:"store,omitempty"`
	// Session is a recorded session's start or end (Action ActionSession, Event "start" or
	// "end"), kept on its bastion agent's report. Added in version 3 without raising V (absent:
	// a record of another kind).
	Session *SessionAudit `json:"session,omitempty"`
	// Access is the access request as the change this record allows leaves it (events
	// create, approve, deny, cancel, revoke and review), so that `sshca store rebuild` restores
	// requests (store.Restore): without the serials issued under it (their "issued" records
	// name the request) and with the identities' token claims left out (the audit log keeps
	// names, e-mail, groups and sign-in facts, not whatever else a token carried). Added in
	// version 3 without raising V (absent: the record predates it; that request is not
	// restored).
	Access *AccessRequest `json:"access,omitempty"`
}

// AuditOnceWindow is how long an OnceAuditLog remembers a record's key after keeping it: it
// covers settleSigned's retries (SignedAuditRetry, the last attempt under SignedCertTimeout)
// with room for an attempt that a stalled store runs late, and for clocks that disagree.
const AuditOnceWindow = 10 * time.Minute

// NewOnceKey returns a random, non-zero key for OnceAuditLog.AppendOnce, from crypto/rand,
// unique to the record it is given to: two of the keys alive at once (one per record retried
// within AuditOnceWindow) are the same with a chance of about n²/2⁶⁵, 4·10⁻⁸ for a million.
func NewOnceKey() uint64 {
	var b [8]byte
	for {
		_, _ = rand.Read(b[:]) // never fails (crypto/rand.Read)
		if k := binary.BigEndian.Uint64(b[:]); k != 0 {
			return k
		}
	}
}

// StoreWitness is what a store's generation marks said at one moment: the generation's random
// ID and number, and the counter of each hash tag's mark in that generation (tag → counter).
type StoreWitness struct {
	Generation string            `json:"generation"`
	Epoch      uint16            `json:"epoch"`
	Marks      map[string]uint64 `json:"marks,omitempty"`
}

// AuditRecordVersion is the version of the records this package writes (AuditRecord.V).
// Version 3 added the access request fields (AccessRequest, Event, Approvers, WindowSeconds,
// BreakGlass), the actions "request" and "approve", and the "done" records of key-ring changes
// with Keyring.
const AuditRecordVersion = 3

// OutcomeDone is the outcome of the record that follows an "allowed" one once the action is
// carried out, holding what it left (AuditRecord.Keyring for a key-ring change).
const OutcomeDone = "done"

// AuditLog keeps the audit records, tamper-evident (the audit package chains them). A decision
// to issue, revoke or administer takes effect only once its record is kept.
type AuditLog interface {
	Append(ctx context.Context, rec AuditRecord) error
}

// OnceAuditLog is an AuditLog that keeps a record at most once however many times it is
// appended with the same key: what a caller needs that appends a record again after an
// unknown outcome (an answer lost or late: the record may be kept). The audit package's Log
// is one; the authority uses it, when its AuditLog is one, for the records it retries
// (settleSigned).
type OnceAuditLog interface {
	AuditLog
	// AppendOnce appends rec unless a record appended with the key once (non-zero, random and
	// unique to the record: NewOnceKey) was kept within AuditOnceWindow; then it returns nil
	// and appends nothing. Two records with different keys are both kept, however alike.
	AppendOnce(ctx context.Context, rec AuditRecord, once uint64) error
}

// BanCheckedAuditLog is an AuditLog that, in the round trip that keeps the record of an issued
// certificate, also reads whether the CA key that signed it is banned by now (marked
// compromised through any replica: keyring.Manager.Compromised; or its public key revoked).
// The admission reads that ban before the signature; a compromise landing through another
// replica between the admission and the signature is seen only here, after it, and the
// authority then withholds the certificate. The audit package's Log is one when given the
// store (audit.Options.Bans); the authority uses it, when its AuditLog is one, for every
// certificate it issues.
type BanCheckedAuditLog interface {
	AuditLog
	// AppendIssued appends rec as Append does (rec.CAFingerprint is caKey's SHA256
	// fingerprint) and, in the same round trip, reads whether caKey is banned: banned is
	// meaningful only when err is nil. A ban that could not be read is an error, never "not
	// banned".
	AppendIssued(ctx context.Context, rec AuditRecord, caKey ssh.PublicKey) (banned bool, err error)
}

// auditRecord starts a record for id asking for action.
func (a *Authority) auditRecord(action Action, id Identity) AuditRecord {
	return AuditRecord{V: AuditRecordVersion, Time: a.now().UTC(), Action: action, Identity: id.Name(), Issuer: id.Issuer,
		Subject: id.Subject, Workload: id.Workload}
}

// keep appends rec. For a grant, failing to keep it is an error (nothing takes effect); for a
// refusal it is only logged, since the caller is refused anyway.
func (a *Authority) keep(ctx context.Context, rec AuditRecord) error {
	_, err := a.keepIssued(ctx, rec, nil)
	return err
}

// keepIssued is keep; given caKey, the CA key that signed the certificate rec issues, it also
// reads in the same round trip whether caKey is banned by now, when the AuditLog can
// (BanCheckedAuditLog; else banned is false, as before the check existed).
func (a *Authority) keepIssued(ctx context.Context, rec AuditRecord, caKey ssh.PublicKey) (banned bool, _ error) {
	if a.audit == nil {
		return false, nil
	}
	if rec.RequestID == "" {
		rec.RequestID = RequestID(ctx)
	}
	grant := rec.Outcome == "issued" || rec.Outcome == "allowed"
	if err := ctx.Err(); err != nil && !grant {
		// The request's deadline has passed (the store stalled): the record cannot be written,
		// and waiting behind other appends would only delay the refusal.
		a.log.ErrorContext(ctx, "audit record lost", "action", rec.Action, "outcome", rec.Outcome, "identity", rec.Identity, "err", err)
		return false, nil
	}
	var err error
	if c, ok := a.audit.(BanCheckedAuditLog); ok && caKey != nil {
		banned, err = c.AppendIssued(ctx, rec, caKey)
	} else {
		err = a.audit.Append(ctx, rec)
	}
	if err == nil {
		return banned, nil
	}
	if grant {
		// The append's outcome may be unknown (its answer was lost or came too late): the
		// record may be in the chain. What is sure is that nothing was granted.
		return false, storeErr("audit log unavailable: nothing was granted (no certificate handed out, no change made); the record of this request may or may not have been kept", err)
	}
	a.log.ErrorContext(ctx, "audit record lost", "action", rec.Action, "outcome", rec.Outcome, "identity", rec.Identity, "err", err)
	return false, nil
}

// settle completes rec from the error a request ended with (outcome and reasons, unless set)
// and keeps it.
// decide asks the policy about in and, when it cannot decide (503) or does not allow (403,
// with denied as the message and its reasons), settles rec with that error. It records the
// policy revision either way.
func (a *Authority) decide(ctx context.Context, rec *AuditRecord, in PolicyInput, denied string) (Decision, error) {
	dec, err := a.policy.Decide(ctx, in)
	if err != nil {
		err = Unavailable("policy could not decide", err)
		a.settle(ctx, rec, err)
		return dec, err
	}
	rec.PolicyRevision = dec.Revision
	if !dec.Allow {
		rec.Reasons = orDefault(dec.Reasons)
		err = Denied(denied, rec.Reasons...)
		a.settle(ctx, rec, err)
		return dec, err
	}
	return dec, nil
}

func (a *Authority) settle(ctx context.Context, rec *AuditRecord, err error) {
	complete(rec, err)
	_ = a.keep(ctx, *rec)
}

// SignedAuditRetry is how long the record of a certificate that was signed but not handed out
// is retried: long enough for a stalled or restarting store to come back.
const SignedAuditRetry = time.Minute

// settleSigned keeps the record of a certificate that was signed but not handed out (its
// inventory record or its audit record failed): once now, then, if that fails, in the
// background with backoff for up to SignedAuditRetry, each attempt under SignedCertTimeout. A
// write that timed out in the client may land later, and then the inventory holds a
// certificate that only this record explains. Every attempt carries one Once key: an attempt
// that failed may still have kept the record (its answer was lost), and the next must not
// keep it a second time.
func (a *Authority) settleSigned(ctx context.Context, rec AuditRecord, cause error) {
	complete(&rec, cause)
	if a.audit == nil {
		return
	}
	if rec.RequestID == "" {
		rec.RequestID = RequestID(ctx)
	}
	once := NewOnceKey()
	actx, cancel := context.WithTimeout(ctx, SignedCertTimeout)
	err := a.appendOnce(actx, rec, once)
	cancel()
	if err != nil {
		id := a.retries.add(rec)
		go func() {
			defer a.retries.done(id)
			ctx, cancel := a.retries.background(ctx)
			defer cancel()
			a.retrySigned(ctx, rec, once)
		}()
	}
}

// settleLost is settleSigned, all in the background, for a request whose admission recorded
// pre (or may have: its answer was lost, and a stalled store may still carry it out): pre is
// withdrawn, and rec, naming pre's serial, kept, so that whatever lands the inventory holds no
// serial the audit log does not explain. The caller's answer waits for neither.
func (a *Authority) settleLost(ctx context.Context, rec AuditRecord, cause error, pre Certificate) {
	complete(&rec, cause)
	if rec.RequestID == "" {
		rec.RequestID = RequestID(ctx)
	}
	id := a.retries.add(rec)
	go func() {
		defer a.retries.done(id)
		ctx, cancel := a.retries.background(ctx)
		defer cancel()
		a.unrecord(ctx, &pre)
		if a.audit == nil {
			return
		}
		once := NewOnceKey()
		actx, cancelAttempt := context.WithTimeout(ctx, SignedCertTimeout)
		err := a.appendOnce(actx, rec, once)
		cancelAttempt()
		if err != nil {
			a.retrySigned(ctx, rec, once)
		}
	}()
}

// appendOnce appends rec with the key once when the audit log can keep a record once
// (OnceAuditLog), else plainly.
func (a *Authority) appendOnce(ctx context.Context, rec AuditRecord, once uint64) error {
	if o, ok := a.audit.(OnceAuditLog); ok {
		return o.AppendOnce(ctx, rec, once)
	}
	return a.audit.Append(ctx, rec)
}

func (a *Authority) retrySigned(ctx context.Context, rec AuditRecord, once uint64) {
	giveUp := a.now().Add(SignedAuditRetry)
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 2*time.Second) {
		select {
		case <-a.after(wait):
		case <-ctx.Done():
			return // halted by DrainRetries, which logged rec as lost
		}
		actx, cancel := context.WithTimeout(ctx, SignedCertTimeout)
		err := a.appendOnce(actx, rec, once)
		cancel()
		if err == nil {
			return
		}
		if ctx.Err() != nil {
			return // halted by DrainRetries, which logged rec as lost
		}
		if a.now().Add(wait).After(giveUp) {
			a.lostSigned(ctx, rec, err)
			return
		}
	}
}

func (a *Authority) lostSigned(ctx context.Context, rec AuditRecord, err error) {
	a.log.ErrorContext(ctx, "audit record of a signed certificate lost", "serial", rec.Serial, "key_id", rec.KeyID,
		"identity", rec.Identity, "outcome", rec.Outcome, "err", err)
}

// DrainRetries waits, until ctx ends, for the audit records of signed certificates that are
// still being retried in the background (see settleSigned); a server calls it on shutdown after
// its requests drained and before it closes the audit log's store. When ctx ends first, each
// record still pending is logged as lost (as when its retries give up), the number of them is
// returned in the error, and the retries are stopped: DrainRetries returns once they have
// (each within its current attempt, at most SignedCertTimeout), so none writes to a store
// closed after it, or logs, once the server has returned.
func (a *Authority) DrainRetries(ctx context.Context) error {
	select {
	case <-a.retries.idle():
		return nil
	case <-ctx.Done():
	}
	pending := a.retries.pending()
	a.retries.halt()
	for _, rec := range pending {
		a.lostSigned(ctx, rec, fmt.Errorf("shutdown before the record was kept: %w", context.Cause(ctx)))
	}
	<-a.retries.idle()
	if len(pending) == 0 {
		return nil
	}
	return fmt.Errorf("sshca: %d audit record(s) of signed certificates not kept before shutdown", len(pending))
}

// pendingRecords is the set of records being retried, with a channel closed whenever it is
// empty, and one closed when shutdown stops the retries.
type pendingRecords struct {
	mu    sync.Mutex
	next  uint64
	recs  map[uint64]AuditRecord
	empty chan struct{} // open while recs is not empty; nil while it is
	stop  chan struct{} // closed by halt; made on first use
}

// halted returns a channel closed once halt was called.
func (p *pendingRecords) halted() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stop == nil {
		p.stop = make(chan struct{})
	}
	return p.stop
}

// halt stops the retries (each returns at its next wait or attempt); idempotent.
func (p *pendingRecords) halt() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stop == nil {
		p.stop = make(chan struct{})
	}
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
}

// background returns ctx (detached from its request by the caller) ended also by halt, so that
// a retry's Redis call does not outlive the server's shutdown either.
func (p *pendingRecords) background(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	stop := p.halted()
	go func() {
		select {
		case <-stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

func (p *pendingRecords) add(rec AuditRecord) uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.recs == nil {
		p.recs = map[uint64]AuditRecord{}
	}
	if len(p.recs) == 0 {
		p.empty = make(chan struct{})
	}
	p.next++
	p.recs[p.next] = rec
	return p.next
}

func (p *pendingRecords) done(id uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.recs, id)
	if len(p.recs) == 0 && p.empty != nil {
		close(p.empty)
		p.empty = nil
	}
}

// idle returns a channel closed once no record is pending.
func (p *pendingRecords) idle() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.empty == nil {
		c := make(chan struct{})
		close(c)
		return c
	}
	return p.empty
}

func (p *pendingRecords) pending() []AuditRecord {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]AuditRecord, 0, len(p.recs))
	for _, r := range p.recs {
		out = append(out, r)
	}
	return out
}

// complete fills rec's outcome and reasons, unless set, from the error a request ended with.
func complete(rec *AuditRecord, err error) {
	var e *Error
	if errors.As(err, &e) {
		if rec.Outcome == "" {
			rec.Outcome = e.Kind.String()
		}
		if len(rec.Reasons) == 0 {
			rec.Reasons = append([]string{e.Msg}, e.Reasons...)
		}
	} else if rec.Outcome == "" {
		rec.Outcome = KindInternal.String()
	}
}
