package ca_test

import (
	"context"
	"crypto/rand"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jonboulle/clockwork"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
)

// slowPolicy allows, but only answers once the request's deadline has passed (a policy, or
// anything before signing, that ate the whole budget).
type slowPolicy struct{ dec ca.Decision }

func (p slowPolicy) Decide(ctx context.Context, _ ca.PolicyInput) (ca.Decision, error) {
	<-ctx.Done()
	return p.dec, nil
}

// countingSigner counts signatures; with waitDeadline it signs only after the request's
// deadline has passed (a KMS signature that took too long).
type countingSigner struct {
	key          ssh.Signer
	waitDeadline bool
	mu           sync.Mutex
	signed       int
}

func (s *countingSigner) PublicKey() ssh.PublicKey { return s.key.PublicKey() }
func (s *countingSigner) Sign(ctx context.Context, tmpl *ssh.Certificate, ttl time.Duration) (*ssh.Certificate, error) {
	if s.waitDeadline {
		<-ctx.Done()
	}
	s.mu.Lock()
	s.signed++
	s.mu.Unlock()
	c := *tmpl
	c.Serial = 7
	c.KeyId += "#7"
	c.ValidBefore = uint64(time.Now().Add(ttl).Unix())
	if err := c.SignCert(rand.Reader, s.key); err != nil {
		return nil, err
	}
	return &c, nil
}

// ctxStore and ctxAudit refuse a context that is already done, as a real store would, and
// remember the deadline they were given.
type ctxStore struct {
	fakeStore
	deadline time.Time
}

func (s *ctxStore) Record(ctx context.Context, c ca.Certificate) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.deadline, _ = ctx.Deadline()
	return s.fakeStore.Record(ctx, c)
}

type ctxAudit struct{ fakeAudit }

func (a *ctxAudit) Append(ctx context.Context, r ca.AuditRecord) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return a.fakeAudit.Append(ctx, r)
}

func deadlineAuthority(t *testing.T, pol ca.Policy, sgn ca.Signer, inv ca.CertStore, log ca.AuditLog) *ca.Authority {
	t.Helper()
	alice := ca.Identity{Issuer: "https://idp", Subject: "u1", Email: "alice@example.com", Username: "alice"}
	a, err := ca.New(ca.Config{Authenticator: fakeAuth{alice}, Policy: pol, UserSigner: sgn, HostSigner: sgn,
		Store: inv, Revocations: store.NewMemory(time.Now), Audit: log})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

var deadlineGrant = ca.Decision{Allow: true, Principals: []string{"alice"}, TTL: 5 * time.Minute}

// TestIssueNoSigningAfterDeadline: once the request's deadline has passed, nothing is signed
// and nothing recorded; the answer is unavailable, and the refusal is logged, not audited
// (an append would wait behind others on a stalled store).
func TestIssueNoSigningAfterDeadline(t *testing.T) {
	caKey, _ := newSSHKey(t)
	_, userKey := newSSHKey(t)
	sgn := &countingSigner{key: caKey}
	store, log := &fakeStore{}, &fakeAudit{}
	a := deadlineAuthority(t, slowPolicy{deadlineGrant}, sgn, store, log)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := a.Issue(ctx, "good", ca.Request{Kind: ca.UserCert, PublicKey: userKey})
	if ca.KindOf(err) != ca.KindUnavailable {
		t.Fatalf("Issue after the deadline = %v, want unavailable", err)
	}
	if sgn.signed != 0 || len(store.recs) != 0 {
		t.Errorf("signed %d, recorded %d after the deadline; want none", sgn.signed, len(store.recs))
	}
	if len(log.recs) != 0 {
		t.Errorf("audit records %+v, want none", log.recs)
	}
}

// TestIssueSignedIsRecordedPastDeadline: a certificate signed as the deadline passes is still
// recorded and audited (under a bound of its own, not the spent request context), returned,
// and its audit record says the answer was late.
func TestIssueSignedIsRecordedPastDeadline(t *testing.T) {
	caKey, _ := newSSHKey(t)
	_, userKey := newSSHKey(t)
	sgn := &countingSigner{key: caKey, waitDeadline: true}
	store, log := &ctxStore{}, &ctxAudit{}
	a := deadlineAuthority(t, &fakePolicy{dec: deadlineGrant}, sgn, store, log)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	begin := time.Now()
	got, err := a.Issue(ctx, "good", ca.Request{Kind: ca.UserCert, PublicKey: userKey})
	if err != nil {
		t.Fatalf("Issue: %v", err)
	}
	if len(store.recs) != 1 || store.recs[0].Serial != got.Cert.Serial {
		t.Fatalf("inventory %+v, want the signed serial %d", store.recs, got.Cert.Serial)
	}
	if store.deadline.IsZero() || store.deadline.Sub(begin) > ca.SignedCertTimeout+time.Second {
		t.Errorf("recorded with deadline %v (begin %v), want a bound of about %s", store.deadline, begin, ca.SignedCertTimeout)
	}
	if len(log.recs) != 1 || log.recs[0].Outcome != "issued" || log.recs[0].Serial != got.Cert.Serial || !log.recs[0].Late {
		t.Errorf("audit records %+v, want one issued, late, serial %d", log.recs, got.Cert.Serial)
	}
}

// TestIssueInTimeIsNotLate: the Late mark is not set on every record.
func TestIssueInTimeIsNotLate(t *testing.T) {
	caKey, _ := newSSHKey(t)
	_, userKey := newSSHKey(t)
	store, log := &ctxStore{}, &ctxAudit{}
	a := deadlineAuthority(t, &fakePolicy{dec: deadlineGrant}, &countingSigner{key: caKey}, store, log)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := a.Issue(ctx, "good", ca.Request{Kind: ca.UserCert, PublicKey: userKey}); err != nil {
		t.Fatal(err)
	}
	if len(log.recs) != 1 || log.recs[0].Late {
		t.Errorf("audit records %+v, want one, not late", log.recs)
	}
}

// TestIssueSignedNotRecordedIsAudited: when the inventory fails after signing (as the
// deadline passes), nothing is returned and the failure is audited with the serial under a
// bound of its own, so that a write that lands late in the inventory has its audit record.
func TestIssueSignedNotRecordedIsAudited(t *testing.T) {
	caKey, _ := newSSHKey(t)
	_, userKey := newSSHKey(t)
	sgn := &countingSigner{key: caKey, waitDeadline: true}
	store, log := &ctxStore{fakeStore: fakeStore{err: context.DeadlineExceeded}}, &ctxAudit{}
	a := deadlineAuthority(t, &fakePolicy{dec: deadlineGrant}, sgn, store, log)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := a.Issue(ctx, "good", ca.Request{Kind: ca.UserCert, PublicKey: userKey})
	if ca.KindOf(err) != ca.KindUnavailable {
		t.Fatalf("Issue with the inventory failing = %v, want unavailable", err)
	}
	var recs []ca.AuditRecord
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		log.mu.Lock()
		recs = append([]ca.AuditRecord(nil), log.recs...)
		log.mu.Unlock()
		if len(recs) > 0 {
			break
		}
	}
	if len(recs) != 1 || recs[0].Outcome != "unavailable" || recs[0].Serial != 7 || !recs[0].Late {
		t.Errorf("audit records %+v, want one unavailable, late, serial 7", recs)
	}
}

// flakyAudit fails its first appends (a store that has not come back yet).
type flakyAudit struct {
	fakeAudit
	failures int
}

func (a *flakyAudit) Append(ctx context.Context, r ca.AuditRecord) error {
	a.mu.Lock()
	if a.failures > 0 {
		a.failures--
		a.mu.Unlock()
		return context.DeadlineExceeded
	}
	a.mu.Unlock()
	return a.fakeAudit.Append(ctx, r)
}

// TestIssueSignedFailureAuditRetried: the record of a signed certificate whose audit failed
// is retried until the audit log takes it.
func TestIssueSignedFailureAuditRetried(t *testing.T) {
	caKey, _ := newSSHKey(t)
	_, userKey := newSSHKey(t)
	store, log := &fakeStore{}, &flakyAudit{failures: 3}
	a := deadlineAuthority(t, &fakePolicy{dec: deadlineGrant}, &countingSigner{key: caKey}, store, log)
	_, err := a.Issue(context.Background(), "good", ca.Request{Kind: ca.UserCert, PublicKey: userKey})
	if ca.KindOf(err) != ca.KindUnavailable {
		t.Fatalf("Issue with the audit log failing = %v, want unavailable", err)
	}
	var recs []ca.AuditRecord
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		log.mu.Lock()
		recs = append([]ca.AuditRecord(nil), log.recs...)
		log.mu.Unlock()
		if len(recs) > 0 {
			break
		}
	}
	if len(store.recs) != 1 || len(recs) != 1 || recs[0].Outcome != "unavailable" || recs[0].Serial != 7 || recs[0].Late {
		t.Errorf("inventory %d, audit records %+v, want one unavailable, serial 7, not late", len(store.recs), recs)
	}
}

// clockedAudit fails every append, recording the clock's time at each append of a record
// with the given outcome.
type clockedAudit struct {
	clk     clockwork.Clock
	outcome string
	mu      sync.Mutex
	at      []time.Time
}

func (a *clockedAudit) Append(_ context.Context, r ca.AuditRecord) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if r.Outcome == a.outcome {
		a.at = append(a.at, a.clk.Now())
	}
	return context.DeadlineExceeded
}

func (a *clockedAudit) times() []time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.at)
}

// TestSignedAuditRetryOnItsClock: the record of a signed certificate whose audit keeps
// failing is retried after 100 ms, doubling up to 2 s, on the authority's clock (Config.Now
// and After, a clockwork.FakeClock advanced 100 ms at a time), and given up, logged as lost,
// once the next pause would end past SignedAuditRetry after the first attempt; nothing is
// tried after that, however far the clock moves.
func TestSignedAuditRetryOnItsClock(t *testing.T) {
	caKey, _ := newSSHKey(t)
	_, userKey := newSSHKey(t)
	clk := clockwork.NewFakeClockAt(time.Now())
	audit := &clockedAudit{clk: clk, outcome: "unavailable"} // the signed certificate's record
	var logs testenv.SyncBuffer
	alice := ca.Identity{Issuer: "https://idp", Subject: "u1", Email: "alice@example.com", Username: "alice"}
	a, err := ca.New(ca.Config{Authenticator: fakeAuth{alice}, Policy: &fakePolicy{dec: deadlineGrant}, UserSigner: &countingSigner{key: caKey},
		HostSigner: &countingSigner{key: caKey}, Store: &fakeStore{}, Revocations: store.NewMemory(clk.Now), Audit: audit,
		Now: clk.Now, After: clk.After, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Issue(context.Background(), "good", ca.Request{Kind: ca.UserCert, PublicKey: userKey}); ca.KindOf(err) != ca.KindUnavailable {
		t.Fatalf("Issue with the audit log failing = %v, want unavailable", err)
	}
	lost := func() bool { return strings.Contains(logs.String(), "audit record of a signed certificate lost") }
	testenv.Step(t, clk, 1, 100*time.Millisecond, lost)
	at := audit.times()
	gaps := testenv.Gaps(at)
	want := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond, 1600 * time.Millisecond}
	for len(want) < len(gaps) {
		want = append(want, 2*time.Second)
	}
	if diff := cmp.Diff(want, gaps); diff != "" {
		t.Errorf("pauses between attempts on the authority's clock (-want +got):\n%s", diff)
	}
	if span := at[len(at)-1].Sub(at[0]); span > ca.SignedAuditRetry || span+2*time.Second <= ca.SignedAuditRetry {
		t.Errorf("last attempt %v after the first; want within SignedAuditRetry (%v) and the next pause past it", span, ca.SignedAuditRetry)
	}
	clk.Advance(time.Hour)
	time.Sleep(100 * time.Millisecond)
	if n := len(audit.times()); n != len(at) {
		t.Errorf("%d attempts after giving up", n-len(at))
	}
}

// healingAudit fails every append until healed, and keeps what it accepted.
type healingAudit struct {
	mu       sync.Mutex
	healed   bool
	kept     []ca.AuditRecord
	attempts int
}

func (a *healingAudit) Append(_ context.Context, r ca.AuditRecord) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.attempts++
	if !a.healed {
		return context.DeadlineExceeded
	}
	a.kept = append(a.kept, r)
	return nil
}

func (a *healingAudit) heal() { a.mu.Lock(); a.healed = true; a.mu.Unlock() }

func (a *healingAudit) signed() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, r := range a.kept {
		if r.Serial != 0 {
			n++
		}
	}
	return n
}

// TestDrainRetriesWaitsForSignedRecords: shutdown (DrainRetries) waits for the record of a
// certificate signed but not handed out, still retried in the background, until it is kept;
// and when its bound ends first, logs the pending record as lost, naming its serial, and says
// how many were not kept, instead of letting Redis close under a retry that then vanishes.
func TestDrainRetriesWaitsForSignedRecords(t *testing.T) {
	caKey, _ := newSSHKey(t)
	_, userKey := newSSHKey(t)
	alice := ca.Identity{Issuer: "https://idp", Subject: "u1", Email: "alice@example.com", Username: "alice"}
	newAuthority := func(audit ca.AuditLog, logs *testenv.SyncBuffer, after func(time.Duration) <-chan time.Time) *ca.Authority {
		a, err := ca.New(ca.Config{Authenticator: fakeAuth{alice}, Policy: &fakePolicy{dec: deadlineGrant}, UserSigner: &countingSigner{key: caKey},
			HostSigner: &countingSigner{key: caKey}, Store: &fakeStore{}, Revocations: store.NewMemory(time.Now), Audit: audit,
			After: after, Logger: slog.New(slog.NewTextHandler(logs, nil))})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	fast := func(time.Duration) <-chan time.Time { return time.After(5 * time.Millisecond) }

	t.Run("kept", func(t *testing.T) {
		audit := &healingAudit{}
		var logs testenv.SyncBuffer
		a := newAuthority(audit, &logs, fast)
		if _, err := a.Issue(context.Background(), "good", ca.Request{Kind: ca.UserCert, PublicKey: userKey}); ca.KindOf(err) != ca.KindUnavailable {
			t.Fatalf("Issue with the audit log failing = %v, want unavailable", err)
		}
		time.AfterFunc(300*time.Millisecond, audit.heal)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := a.DrainRetries(ctx); err != nil {
			t.Fatalf("DrainRetries = %v, want the retried record kept", err)
		}
		if n := audit.signed(); n != 1 {
			t.Errorf("DrainRetries returned with %d signed certificate records kept, want 1 (it did not wait)", n)
		}
		if strings.Contains(logs.String(), "lost") {
			t.Errorf("a kept record was logged as lost:\n%s", logs.String())
		}
	})
	t.Run("lost at the bound", func(t *testing.T) {
		audit := &healingAudit{}
		var logs testenv.SyncBuffer
		a := newAuthority(audit, &logs, fast)
		if _, err := a.Issue(context.Background(), "good", ca.Request{Kind: ca.UserCert, PublicKey: userKey}); ca.KindOf(err) != ca.KindUnavailable {
			t.Fatalf("Issue with the audit log failing = %v, want unavailable", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		err := a.DrainRetries(ctx)
		if err == nil || !strings.Contains(err.Error(), "1 audit record") {
			t.Fatalf("DrainRetries with the audit log down = %v, want 1 record not kept", err)
		}
		if !strings.Contains(logs.String(), "audit record of a signed certificate lost") || !strings.Contains(logs.String(), "serial=") {
			t.Errorf("the pending record is not logged as lost with its serial:\n%s", logs.String())
		}
		// Nothing of the retry outlives DrainRetries: it would write to a store the server
		// closes next, and log after the server returned (a test's logger panics then).
		audit.mu.Lock()
		attempts, logged := audit.attempts, len(logs.String())
		audit.mu.Unlock()
		time.Sleep(100 * time.Millisecond) // 20 retry waits of fast
		audit.mu.Lock()
		defer audit.mu.Unlock()
		if audit.attempts != attempts || len(logs.String()) != logged {
			t.Errorf("after DrainRetries returned, the retry went on: %d more attempts, log now:\n%s", audit.attempts-attempts, logs.String())
		}
	})
	t.Run("nothing pending", func(t *testing.T) {
		var logs testenv.SyncBuffer
		a := newAuthority(&healingAudit{healed: true}, &logs, fast)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := a.DrainRetries(ctx); err != nil {
			t.Errorf("DrainRetries with nothing pending = %v", err)
		}
	})
}
