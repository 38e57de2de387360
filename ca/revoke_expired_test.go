package ca_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/signer"
	"github.com/sshca/sshca/store"
)

// TestRevokeExpiredIsNotFound: revoking a certificate that has expired answers "not found" and
// changes nothing, whether or not the store still holds its record (the memory store, like
// miniredis under sshca dev, keeps it until it prunes; Redis drops it on time).
func TestRevokeExpiredIsNotFound(t *testing.T) {
	ctx := context.Background()
	var mu sync.Mutex
	now := time.Now().UTC().Truncate(time.Second)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	caKey, _ := newSSHKey(t)
	db := store.NewMemory(clock)
	sgn := signer.New(caKey, db, signer.Options{Now: clock})
	grant := ca.Decision{Allow: true, Principals: []string{"alice"}, TTL: time.Minute, Extensions: map[string]string{"permit-pty": ""}}
	a, err := ca.New(ca.Config{Authenticator: fakeAuth{ca.Identity{Issuer: "https://idp", Subject: "u1"}}, Policy: &fakePolicy{dec: grant},
		UserSigner: sgn, HostSigner: sgn, Store: db, Revocations: db, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	_, key := newSSHKey(t)
	got, err := a.Issue(ctx, "good", ca.Request{Kind: ca.UserCert, PublicKey: key})
	if err != nil {
		t.Fatal(err)
	}
	before, _ := db.State(ctx, caKey.PublicKey())
	mu.Lock()
	now = now.Add(2 * time.Minute)
	mu.Unlock()
	if _, ok, _ := db.Get(ctx, got.Cert.Serial); !ok {
		t.Fatal("the memory store dropped the record already; the test needs it kept")
	}
	for _, req := range []ca.RevokeRequest{{Serial: got.Cert.Serial, Reason: "late"}, {KeyID: got.Cert.KeyId, Reason: "late"}} {
		_, err := a.Revoke(ctx, "good", req)
		if ca.KindOf(err) != ca.KindNotFound {
			t.Errorf("revoke %+v of an expired certificate: %v, want not found", req, err)
		}
	}
	after, _ := db.State(ctx, caKey.PublicKey())
	if after.Version != before.Version || len(after.Entries) != 0 {
		t.Errorf("revoking an expired certificate changed the state: version %d → %d, %v", before.Version, after.Version, after.Entries)
	}
}
