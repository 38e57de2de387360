package ca_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
)

// countingLimiter allows the first n requests of each identity and records whom it was asked about.
type countingLimiter struct {
	n    int
	mu   sync.Mutex
	seen []string
}

func (l *countingLimiter) Allow(identity string) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seen = append(l.seen, identity)
	count := 0
	for _, s := range l.seen {
		if s == identity {
			count++
		}
	}
	return count <= l.n, 1500 * time.Millisecond
}

// TestIdentityLimiter: the limiter is asked after authentication only (an anonymous caller is
// 401 and never counted), with the identity's canonical name; a refusal is KindRateLimited with
// the limiter's wait, nothing is signed or audited, and the limit holds for Issue as for
// IssueRequest.
func TestIdentityLimiter(t *testing.T) {
	now := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	caKey, _ := newSSHKey(t)
	_, userKey := newSSHKey(t)
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(userKey)))
	alice := ca.Identity{Issuer: "https://idp", Subject: "u1", Username: "alice"}
	grant := ca.Decision{Allow: true, Principals: []string{"alice"}, TTL: 10 * time.Minute}
	lim := &countingLimiter{n: 1}
	log, st := &fakeAudit{}, &fakeStore{}
	sgn := fakeSigner{key: caKey, now: clock}
	a, err := ca.New(ca.Config{Authenticator: fakeAuth{alice}, Policy: &fakePolicy{dec: grant}, UserSigner: sgn, HostSigner: sgn,
		Store: st, Revocations: noRevocations{}, Audit: log, Now: clock, IdentityLimiter: lim})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	req := ca.CertRequest{Kind: ca.UserCert, PublicKey: line, TTL: "5m"}

	if _, err := a.IssueRequest(ctx, "bad", req); ca.KindOf(err) != ca.KindUnauthenticated {
		t.Fatalf("anonymous: %v, want unauthenticated", err)
	}
	if len(lim.seen) != 0 {
		t.Fatalf("limiter asked about an anonymous caller: %q", lim.seen)
	}
	if _, err := a.IssueRequest(ctx, "good", req); err != nil {
		t.Fatalf("first request: %v", err)
	}
	_, err = a.IssueRequest(ctx, "good", req)
	var e *ca.Error
	if !errors.As(err, &e) || e.Kind != ca.KindRateLimited || e.RetryAfter != 1500*time.Millisecond {
		t.Fatalf("second request: %v, want KindRateLimited with RetryAfter 1.5s", err)
	}
	if !strings.Contains(e.Msg, "retry in 2s") {
		t.Errorf("message %q does not say when to retry (2s, rounded up)", e.Msg)
	}
	if _, err := a.Issue(ctx, "good", ca.Request{Kind: ca.UserCert, PublicKey: userKey}); ca.KindOf(err) != ca.KindRateLimited {
		t.Fatalf("Issue over the limit: %v, want rate limited", err)
	}
	if want := []string{alice.Name(), alice.Name(), alice.Name()}; strings.Join(lim.seen, ",") != strings.Join(want, ",") {
		t.Errorf("limiter asked about %q, want %q", lim.seen, want)
	}
	if len(st.recs) != 1 || len(log.recs) != 1 {
		t.Errorf("recorded %d certificates and %d audit records, want 1 and 1 (refusals by the limiter leave none)", len(st.recs), len(log.recs))
	}
}
