package ca_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/signer"
	"github.com/sshca/sshca/store"
)

// groupPolicy grants user certificates for the principals asked, and every other kind to the
// members of the group named by the kind in groups (e.g. "read" -> "auditors").
type groupPolicy struct{ groups map[ca.Action]string }

func (p groupPolicy) Decide(_ context.Context, in ca.PolicyInput) (ca.Decision, error) {
	if in.Kind == ca.ActionUser {
		return ca.Decision{Allow: true, Principals: in.Request.Principals, TTL: time.Hour}, nil
	}
	for _, g := range in.Identity.Groups {
		if g == p.groups[in.Kind] {
			return ca.Decision{Allow: true}, nil
		}
	}
	return ca.Decision{Reasons: []string{"not a member of " + p.groups[in.Kind]}}, nil
}

// TestListCertificates: the inventory across identities (the store's global index) or of one
// identity (by alias too), narrowed by principal; revoked certificates flagged by serial, key
// ID or public key, left out with Live; authorized and audited as a read, so that an auditor
// lists but cannot revoke; malformed filters refused with the field named.
func TestListCertificates(t *testing.T) {
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Second)
	clock := func() time.Time { return now }
	caKey, _ := newSSHKey(t)
	db := store.NewMemory(clock)
	sgn := signer.New(caKey, db, signer.Options{Now: clock})
	log := &fakeAudit{}
	pol := groupPolicy{groups: map[ca.Action]string{ca.ActionRead: "auditors", ca.ActionRevoke: "admins"}}
	authority := func(id ca.Identity) *ca.Authority {
		a, err := ca.New(ca.Config{Authenticator: fakeAuth{id}, Policy: pol, UserSigner: sgn, HostSigner: sgn,
			Store: db, Revocations: db, Audit: log, Now: clock})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	alice := ca.Identity{Issuer: "https://idp", Subject: "u1", Email: "alice@example.com", Username: "alice"}
	bob := ca.Identity{Issuer: "https://idp", Subject: "u2", Email: "bob@example.com", Username: "bob"}
	issue := func(id ca.Identity, principals ...string) ca.Issued {
		t.Helper()
		_, key := newSSHKey(t)
		got, err := authority(id).Issue(ctx, "good", ca.Request{Kind: ca.UserCert, PublicKey: key, Principals: principals})
		if err != nil {
			t.Fatalf("issue for %s: %v", id.Name(), err)
		}
		return got
	}
	a1, a2, b1, b2 := issue(alice, "alice"), issue(alice, "root"), issue(bob, "bob"), issue(bob, "root")
	auditor := authority(ca.Identity{Issuer: "https://idp", Subject: "u9", Groups: []string{"auditors"}})
	admin := authority(ca.Identity{Issuer: "https://idp", Subject: "u0", Groups: []string{"admins"}})

	list := func(q ca.CertQuery) map[uint64]string {
		t.Helper()
		page, err := auditor.ListCertificates(ctx, "good", q)
		if err != nil {
			t.Fatalf("list %+v: %v", q, err)
		}
		got := page.Certificates
		out := map[uint64]string{}
		for i, c := range got {
			if i > 0 && ca.CursorOf(got[i-1].Certificate).Compare(ca.CursorOf(c.Certificate)) >= 0 {
				t.Errorf("not in cursor order: %d after %d", c.Serial, got[i-1].Serial)
			}
			out[c.Serial] = c.Revoked
		}
		return out
	}
	s := func(i ca.Issued) uint64 { return i.Cert.Serial }
	if diff := cmp.Diff(map[uint64]string{s(a1): "", s(a2): "", s(b1): "", s(b2): ""}, list(ca.CertQuery{})); diff != "" {
		t.Errorf("everyone (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[uint64]string{s(a2): "", s(b2): ""}, list(ca.CertQuery{Principal: "root"})); diff != "" {
		t.Errorf("root (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[uint64]string{s(a1): "", s(a2): ""}, list(ca.CertQuery{Identity: "alice@example.com"})); diff != "" {
		t.Errorf("alice by e-mail (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[uint64]string{s(b2): ""}, list(ca.CertQuery{Identity: bob.Name(), Principal: "root"})); diff != "" {
		t.Errorf("bob's root (-want +got):\n%s", diff)
	}

	// One certificate a page, across identities (the store's pages) and of one identity (paged
	// here): every one once, in cursor order, and no next after the last. A negative limit is
	// refused naming it.
	for _, q := range []ca.CertQuery{{Limit: 1}, {Identity: "alice@example.com", Limit: 1}, {Principal: "root", Limit: 3}} {
		var got []uint64
		for pages := 0; ; pages++ {
			page, err := auditor.ListCertificates(ctx, "good", q)
			if err != nil || len(page.Certificates) > q.Limit || pages > 10 {
				t.Fatalf("page %d of %+v: %v %v", pages, q, page, err)
			}
			for _, c := range page.Certificates {
				got = append(got, c.Serial)
			}
			if page.Next.IsZero() {
				break
			}
			q.After = page.Next
		}
		q.After, q.Limit = ca.CertQuery{}.After, 0
		want := list(q)
		if len(got) != len(want) {
			t.Errorf("paged %+v: %v, want each of %v once", q, got, want)
		}
		for _, sn := range got {
			if _, ok := want[sn]; !ok {
				t.Errorf("paged %+v: %d not in %v", q, sn, want)
			}
		}
	}
	if _, err := auditor.ListCertificates(ctx, "good", ca.CertQuery{Limit: -1}); ca.KindOf(err) != ca.KindInvalid || !strings.HasPrefix(err.Error(), "limit") {
		t.Errorf("a negative limit: %v", err)
	}

	// The auditor cannot revoke; the admin revokes a2 by serial, b1 by key ID, b2's public key.
	if _, err := auditor.Revoke(ctx, "good", ca.RevokeRequest{Serial: s(a2), Reason: "audit"}); ca.KindOf(err) != ca.KindDenied {
		t.Fatalf("an auditor revoking: %v, want denied", err)
	}
	for _, req := range []ca.RevokeRequest{{Serial: s(a2)}, {KeyID: b1.Cert.KeyId}, {PublicKey: b2.Cert.Key}} {
		req.Reason = "test"
		if _, err := admin.Revoke(ctx, "good", req); err != nil {
			t.Fatal(err)
		}
	}
	want := map[uint64]string{s(a1): "", s(a2): ca.RevokedBySerial, s(b1): ca.RevokedByKeyID, s(b2): ca.RevokedByPublicKey}
	if diff := cmp.Diff(want, list(ca.CertQuery{})); diff != "" {
		t.Errorf("flagged (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[uint64]string{s(a1): ""}, list(ca.CertQuery{Live: true})); diff != "" {
		t.Errorf("live only (-want +got):\n%s", diff)
	}
	// Expired certificates are not listed.
	now = now.Add(2 * time.Hour)
	if got := list(ca.CertQuery{}); len(got) != 0 {
		t.Errorf("two hours later: %v", got)
	}

	// Every list was audited as a read, with its filters in the target; none as a revocation.
	reads := 0
	for _, r := range log.recs {
		if r.Action == ca.ActionRead {
			reads++
			if r.Outcome != "allowed" || !strings.HasPrefix(r.Target, "list certificates") {
				t.Errorf("read record %+v", r)
			}
		}
		if r.Action == ca.ActionRevoke && strings.HasPrefix(r.Target, "list") {
			t.Errorf("a read audited as a revocation: %+v", r)
		}
	}
	if reads != 18 { // 7 lists, and 11 for the pages above (each page is a read)
		t.Errorf("%d read records, want 18", reads)
	}
	found := false
	for _, r := range log.recs {
		found = found || (r.Action == ca.ActionRead && r.Target == "list certificates of "+bob.Name()+" with principal root")
	}
	if !found {
		t.Error("no read record names its filters")
	}

	// Someone who is neither auditor nor admin of reads is denied, and it is audited.
	if _, err := authority(alice).ListCertificates(ctx, "good", ca.CertQuery{}); ca.KindOf(err) != ca.KindDenied {
		t.Errorf("alice listing: %v, want denied", err)
	}
	if last := log.recs[len(log.recs)-1]; last.Action != ca.ActionRead || last.Outcome != "denied" {
		t.Errorf("the denied read is recorded as %+v", last)
	}

	// Malformed filters: 400 naming the field, before any policy or store.
	for _, q := range []ca.CertQuery{{Identity: "alice bob"}, {Principal: "root\n"}, {Principal: strings.Repeat("r", 257)},
		{Identity: "a\x00"}} {
		_, err := auditor.ListCertificates(ctx, "good", q)
		field := "identity"
		if q.Principal != "" {
			field = "principal"
		}
		if ca.KindOf(err) != ca.KindInvalid || !strings.HasPrefix(err.Error(), field) && !strings.Contains(err.Error(), field+" ") {
			t.Errorf("query %q: %v, want invalid naming %s", strconv.Quote(q.Identity+q.Principal), err, field)
		}
	}
	// The longest allowed filter still passes (no certificate has it).
	if got, err := auditor.ListCertificates(ctx, "good", ca.CertQuery{Principal: strings.Repeat("r", 256)}); err != nil || len(got.Certificates) != 0 {
		t.Errorf("a 256-byte principal: %v %v", got, err)
	}
}
