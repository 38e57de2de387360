package keyring_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/revocation"
	"github.com/sshca/sshca/store"
)

// grantRequested allows every request and grants the principals it asks for, alice when it
// asks for none.
type grantRequested struct{}

func (grantRequested) Decide(_ context.Context, in ca.PolicyInput) (ca.Decision, error) {
	p := in.Request.Principals
	if len(p) == 0 {
		p = []string{"alice"}
	}
	return ca.Decision{Allow: true, Principals: p, TTL: 10 * time.Minute}, nil
}

// TestCompromiseOnAnotherReplica: the CA key, user or host, is promoted away from and marked
// compromised through another replica (the administrator's command), and this replica's
// keyring has not refreshed yet (keyring.refresh apart): its request must not be signed by the
// compromised key. Against a real redis-server; before the admission read the CA key's ban
// beside the certified key's, this replica signed with a compromised user CA key until its
// next refresh, and before keyring.Manager.Compromised banned host CA keys in the store, with
// a compromised host CA key (a CI job's certificate, which every client reading known_hosts'
// @revoked lines refuses). Then, refreshed, it signs with the new key: the check refuses only
// the banned key. The ban is in both scopes for good; a host CA key's never reaches the user
// KRL (the store's list of user CA keys), also when the compromised host key was never
// registered as one ("host unregistered": a store whose set of host CA keys was lost and no
// serve started since), which the compromise registers before banning it.
func TestCompromiseOnAnotherReplica(t *testing.T) {
	for _, c := range []struct {
		name       string
		kind       ca.CertKind
		registered bool
	}{{"user", ca.UserCert, true}, {"host", ca.HostCert, true}, {"host unregistered", ca.HostCert, false}} {
		t.Run(c.name, func(t *testing.T) { testCompromiseOnAnotherReplica(t, c.kind, c.registered) })
	}
}

func testCompromiseOnAnotherReplica(t *testing.T, kind ca.CertKind, registered bool) {
	ctx := context.Background()
	r := newTwoReplicas(t, kind, false, nil)
	db, first, kr, a, req, m := r.db, r.first, r.kr, r.a, r.req, r.m
	if !registered {
		if err := r.rdb.SRem(ctx, store.Keys{}.HostCAs(), strings.TrimSpace(string(ssh.MarshalAuthorizedKey(first)))).Err(); err != nil {
			t.Fatal(err)
		}
	}
	old := ssh.FingerprintSHA256(first)
	if _, err := a.Issue(ctx, "before", req); err != nil {
		t.Fatalf("issue before the rotation: %v", err)
	}

	// Another replica's administrator generates, promotes and marks the old key compromised.
	next := r.promoteNew(t, kind)
	if _, err := m.Compromised(ctx, old); err != nil {
		t.Fatal(err)
	}
	if got := ssh.FingerprintSHA256(kr.PublicKey()); got != old {
		t.Fatalf("this replica's keyring refreshed by itself (active %s): the test shows nothing", got)
	}

	iss, err := a.Issue(ctx, "after", req)
	if err == nil {
		t.Fatalf("issued a certificate signed by %s after it was marked compromised", ssh.FingerprintSHA256(iss.Cert.SignatureKey))
	}
	if ca.KindOf(err) != ca.KindUnavailable || !strings.Contains(err.Error(), "compromised") || !strings.Contains(err.Error(), old) ||
		!strings.Contains(err.Error(), "nothing was signed") {
		t.Fatalf("issue: %v (%v), want unavailable naming key %s as compromised, nothing signed", err, ca.KindOf(err), old)
	}
	// The admission recorded the certificate before it refused: the record is withdrawn.
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := a.DrainRetries(dctx); err != nil {
		t.Fatal(err)
	}
	live, err := db.AllLive(ctx, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(live) != 1 {
		t.Errorf("inventory holds %+v, want the one certificate issued before the rotation", live)
	}

	// Where the ban lives: both scopes of the kind, for good; a host CA key's never in the
	// user KRL.
	nextPub, err := next.SSHPublicKey()
	if err != nil {
		t.Fatal(err)
	}
	for _, scope := range []ssh.PublicKey{first, nextPub} {
		st, err := db.State(ctx, scope)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, e := range st.Entries {
			found = found || (e.Kind == ca.RevokedKey && e.Value == revocation.KeyEntry(first) && revocation.Permanent(e))
		}
		if !found {
			t.Errorf("scope %s does not ban the compromised key for good: %+v", ssh.FingerprintSHA256(scope), st.Entries)
		}
	}
	if kind == ca.HostCert {
		cas, err := db.CAs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range cas {
			if fp := ssh.FingerprintSHA256(k); fp == old || fp == next.Fingerprint {
				t.Errorf("host CA key %s is listed among the user CA keys the user KRL is built from", fp)
			}
		}
	}

	if err := kr.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	iss, err = a.Issue(ctx, "refreshed", req)
	if err != nil || ssh.FingerprintSHA256(iss.Cert.SignatureKey) != next.Fingerprint {
		t.Fatalf("after the refresh: %v, want signed by %s", err, next.Fingerprint)
	}
}
