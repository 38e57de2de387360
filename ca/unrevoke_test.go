package ca_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/signer"
	"github.com/sshca/sshca/store"
)

// TestBanHoldsUntilLifted: a banned public key is still refused at signing time ten days
// later (far past every TTL cap) on an injected clock; after Unrevoke it is accepted, and the
// lift is audited with its target and reason. Lifting again changes nothing.
func TestBanHoldsUntilLifted(t *testing.T) {
	ctx := context.Background()
	var mu sync.Mutex
	now := time.Now().UTC().Truncate(time.Second)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	caKey, _ := newSSHKey(t)
	db := store.NewMemory(clock)
	sgn := signer.New(caKey, db, signer.Options{Now: clock})
	grant := ca.Decision{Allow: true, Principals: []string{"alice"}, TTL: time.Minute, Extensions: map[string]string{"permit-pty": ""}}
	pol := &fakePolicy{dec: grant}
	log := &fakeAudit{}
	a, err := ca.New(ca.Config{Authenticator: fakeAuth{ca.Identity{Issuer: "https://idp", Subject: "u1"}}, Policy: pol,
		UserSigner: sgn, HostSigner: sgn, Store: db, Revocations: db, Audit: log, Now: clock,
		Limits: ca.Limits{MaxUserTTL: time.Hour, MaxHostTTL: 2 * time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	_, key := newSSHKey(t)
	res, err := a.Revoke(ctx, "good", ca.RevokeRequest{PublicKey: key, Reason: "laptop stolen"})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range res.Revoked {
		if !e.Expiry.IsZero() {
			t.Errorf("ban entry %+v expires; want permanent (zero Expiry)", e)
		}
	}
	mu.Lock()
	now = now.Add(10 * 24 * time.Hour)
	mu.Unlock()
	if _, err := a.Issue(ctx, "good", ca.Request{Kind: ca.UserCert, PublicKey: key}); ca.KindOf(err) != ca.KindDenied {
		t.Fatalf("ten days after the ban, issue: %v; want denied (revoked)", err)
	}

	if _, err := a.Unrevoke(ctx, "bad", ca.UnrevokeRequest{PublicKey: key, Reason: "found"}); ca.KindOf(err) != ca.KindUnauthenticated {
		t.Errorf("unrevoke with a bad token: %v", err)
	}
	if _, err := a.Unrevoke(ctx, "good", ca.UnrevokeRequest{PublicKey: key}); ca.KindOf(err) != ca.KindInvalid {
		t.Errorf("unrevoke without a reason: %v; want invalid", err)
	}
	pol.dec = ca.Decision{Allow: false, Reasons: []string{"not an admin"}}
	if _, err := a.Unrevoke(ctx, "good", ca.UnrevokeRequest{PublicKey: key, Reason: "found"}); ca.KindOf(err) != ca.KindDenied {
		t.Errorf("unrevoke the policy denies: %v; want denied", err)
	}
	if _, err := a.Issue(ctx, "good", ca.Request{Kind: ca.UserCert, PublicKey: key}); ca.KindOf(err) != ca.KindDenied {
		t.Fatalf("a denied unrevoke lifted the ban: %v", err)
	}
	pol.dec = grant
	n := len(log.recs)
	before, _ := db.State(ctx, caKey.PublicKey())
	got, err := a.Unrevoke(ctx, "good", ca.UnrevokeRequest{PublicKey: key, Reason: "laptop found, disk was encrypted"})
	if err != nil {
		t.Fatal(err)
	}
	if !got.Lifted || got.Version != before.Version+1 {
		t.Errorf("Unrevoke = %+v; want lifted at version %d", got, before.Version+1)
	}
	if pol.seen.Kind != ca.ActionRevoke || pol.seen.Request.Target != "unrevoke public_key:"+ssh.FingerprintSHA256(key) {
		t.Errorf("policy asked kind %q target %q", pol.seen.Kind, pol.seen.Request.Target)
	}
	if len(log.recs) != n+1 {
		t.Fatalf("%d audit records for the lift, want 1", len(log.recs)-n)
	}
	if r := log.recs[n]; r.Action != ca.ActionRevoke || r.Outcome != "allowed" || r.Target != "unrevoke public_key:"+ssh.FingerprintSHA256(key) ||
		r.Reason != "laptop found, disk was encrypted" {
		t.Errorf("audit record of the lift: %+v", r)
	}
	if _, err := a.Issue(ctx, "good", ca.Request{Kind: ca.UserCert, PublicKey: key}); err != nil {
		t.Fatalf("after the lift, issue: %v", err)
	}
	if st, _ := db.State(ctx, caKey.PublicKey()); len(st.Entries) != 0 {
		t.Errorf("entries after the lift: %+v", st.Entries)
	}
	again, err := a.Unrevoke(ctx, "good", ca.UnrevokeRequest{PublicKey: key, Reason: "again"})
	if err != nil || again.Lifted || again.Version != got.Version {
		t.Errorf("lifting again = %+v, %v; want nothing changed at version %d", again, err, got.Version)
	}
}
