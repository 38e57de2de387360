package ca_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/signer"
	"github.com/sshca/sshca/store"
)

// TestRevokeByIdentityForms: an identity is (issuer, subject); an e-mail or username given to
// revoke finds every identity issued under it, blocks each and the name itself, and asks for
// all_matches when it names several. The example of the issue: alice's certificate issued
// while her e-mail was not verified is found by her e-mail, through the pair.
func TestRevokeByIdentityForms(t *testing.T) {
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Second)
	clock := func() time.Time { return now }
	caKey, _ := newSSHKey(t)
	db := store.NewMemory(clock)
	sgn := signer.New(caKey, db, signer.Options{Now: clock})
	grant := ca.Decision{Allow: true, Principals: []string{"alice"}, TTL: time.Hour, Extensions: map[string]string{"permit-pty": ""}}
	authority := func(id ca.Identity) *ca.Authority {
		a, err := ca.New(ca.Config{Authenticator: fakeAuth{id}, Policy: &fakePolicy{dec: grant}, UserSigner: sgn, HostSigner: sgn,
			Store: db, Revocations: db, Now: clock})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	aliceVerified := ca.Identity{Issuer: "https://idp", Subject: "u1", Email: "alice@example.com", Username: "alice"}
	aliceUnverified := ca.Identity{Issuer: "https://idp", Subject: "u1", Username: "alice"} // same pair
	otherAlice := ca.Identity{Issuer: "https://other-idp", Subject: "x9", Username: "alice"}
	issue := func(id ca.Identity) uint64 {
		t.Helper()
		_, key := newSSHKey(t)
		got, err := authority(id).Issue(ctx, "good", ca.Request{Kind: ca.UserCert, PublicKey: key})
		if err != nil {
			t.Fatalf("issue for %s: %v", id.Name(), err)
		}
		if !strings.HasSuffix(strings.Split(got.Cert.KeyId, "#")[0], "~"+id.Handle()) {
			t.Errorf("key ID %q does not end in the pair's handle %s", got.Cert.KeyId, id.Handle())
		}
		return got.Cert.Serial
	}
	s1, s2, s3 := issue(aliceVerified), issue(aliceUnverified), issue(otherAlice)
	admin := authority(ca.Identity{Issuer: "https://idp", Subject: "admin"})

	// "alice" names two identities: a conflict that lists them, and nothing revoked.
	_, err := admin.Revoke(ctx, "good", ca.RevokeRequest{Identity: "alice", Reason: "offboarding"})
	var e *ca.Error
	if ca.KindOf(err) != ca.KindConflict || !asError(err, &e) || !cmp.Equal(e.Reasons, []string{"https://idp|u1", "https://other-idp|x9"}) {
		t.Fatalf("revoke alice: %v, want a conflict listing both identities", err)
	}
	if st, _ := db.State(ctx, caKey.PublicKey()); len(st.Entries) != 0 {
		t.Fatalf("a conflict revoked %v", st.Entries)
	}

	// By e-mail: the pair, so both of alice's certificates, not the other issuer's alice.
	res, err := admin.Revoke(ctx, "good", ca.RevokeRequest{Identity: "alice@example.com", Reason: "offboarding"})
	if err != nil {
		t.Fatal(err)
	}
	var serials []uint64
	for _, c := range res.Certificates {
		serials = append(serials, c.Serial)
	}
	slices.Sort(serials)
	want := []uint64{s1, s2}
	slices.Sort(want)
	if diff := cmp.Diff(want, serials); diff != "" || !cmp.Equal(res.Matches, []string{"https://idp|u1"}) {
		t.Fatalf("revoked %v (matches %v), want %v (-want +got %s)", serials, res.Matches, want, diff)
	}
	// The pair is blocked, whatever its token says next time, and so is the e-mail.
	_, key := newSSHKey(t)
	if _, err := authority(aliceUnverified).Issue(ctx, "good", ca.Request{Kind: ca.UserCert, PublicKey: key}); ca.KindOf(err) != ca.KindDenied {
		t.Errorf("alice without a verified e-mail after the revocation: %v, want refused", err)
	}
	newcomer := ca.Identity{Issuer: "https://third-idp", Subject: "n1", Email: "alice@example.com"}
	if _, err := authority(newcomer).Issue(ctx, "good", ca.Request{Kind: ca.UserCert, PublicKey: key}); ca.KindOf(err) != ca.KindDenied {
		t.Errorf("a new identity with the revoked e-mail: %v, want refused", err)
	}
	if _, err := authority(otherAlice).Issue(ctx, "good", ca.Request{Kind: ca.UserCert, PublicKey: key}); err != nil {
		t.Errorf("the other issuer's alice was blocked too: %v", err)
	}

	// all_matches revokes every identity "alice" names; s3 now too.
	res, err = admin.Revoke(ctx, "good", ca.RevokeRequest{Identity: "alice", AllMatches: true, Reason: "offboarding"})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, c := range res.Certificates {
		found = found || c.Serial == s3
	}
	if !found || len(res.Matches) != 2 {
		t.Errorf("all_matches: certificates %+v matches %v, want serial %d among them", res.Certificates, res.Matches, s3)
	}

	// Records written before identities were canonical are found by the old name.
	old := ca.Certificate{Serial: 777, KeyID: "bob@example.com#777", Kind: ca.UserCert, Identity: "bob@example.com",
		Principals: []string{"bob"}, CAFingerprint: res.Certificates[0].CAFingerprint, ValidAfter: now, ValidBefore: now.Add(time.Hour)}
	if err := db.Record(ctx, old); err != nil {
		t.Fatal(err)
	}
	res, err = admin.Revoke(ctx, "good", ca.RevokeRequest{Identity: "bob@example.com", Reason: "offboarding"})
	if err != nil || len(res.Certificates) != 1 || res.Certificates[0].Serial != 777 {
		t.Errorf("old record by e-mail: %+v, %v", res.Certificates, err)
	}
}

func asError(err error, target **ca.Error) bool {
	e, ok := err.(*ca.Error)
	if ok {
		*target = e
	}
	return ok
}
