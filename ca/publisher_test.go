package ca_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/signer"
	"github.com/sshca/sshca/store"
)

// TestPublisherOfUserSigner: the user CA's KRL states, trusted keys and compromise checks come
// from the declared Publisher of the user Signer (every scope of its keyring: a retired key's
// revocations stay in the KRL), and a Signer without a keyring publishes its one key. A
// compromised user CA key cannot be unbanned.
func TestPublisherOfUserSigner(t *testing.T) {
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Second)
	clock := func() time.Time { return now }
	userCA, _ := newSSHKey(t)
	hostCA, _ := newSSHKey(t)
	_, retired := newSSHKey(t)
	_, compromised := newSSHKey(t)
	db := store.NewMemory(clock)
	fps := func(keys []ssh.PublicKey) []string {
		var out []string
		for _, k := range keys {
			out = append(out, ssh.FingerprintSHA256(k))
		}
		return out
	}
	stateFPs := func(states []ca.RevocationState) []string {
		var keys []ssh.PublicKey
		for _, st := range states {
			keys = append(keys, st.CA)
		}
		return fps(keys)
	}
	newAuthority := func(user ca.Signer) *ca.Authority {
		a, err := ca.New(ca.Config{Authenticator: fakeAuth{ca.Identity{Issuer: "https://idp", Subject: "admin"}}, Policy: &fakePolicy{dec: ca.Decision{Allow: true}},
			UserSigner: user, HostSigner: signer.New(hostCA, db, signer.Options{Now: clock}), Store: db, Revocations: db, Now: clock})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}

	ring := hostKeyring{Signer: signer.New(userCA, db, signer.Options{Now: clock}), older: retired, compromised: compromised}
	a := newAuthority(ring)
	states, err := a.UserRevocationStates(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(fps(ring.Scopes()), stateFPs(states)); d != "" {
		t.Errorf("user KRL scopes with a keyring (-want +got):\n%s", d)
	}
	if d := cmp.Diff(fps(ring.Published()), fps(a.UserCAKeys())); d != "" {
		t.Errorf("trusted user CA keys (-want +got):\n%s", d)
	}
	if _, err := a.Unrevoke(ctx, "good", ca.UnrevokeRequest{PublicKey: compromised, Reason: "oops"}); ca.KindOf(err) != ca.KindConflict {
		t.Errorf("unrevoking a compromised user CA key: %v, want a conflict", err)
	}

	plain := newAuthority(signer.New(userCA, db, signer.Options{Now: clock}))
	states, err = plain.UserRevocationStates(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := fps([]ssh.PublicKey{userCA.PublicKey()})
	if d := cmp.Diff(want, stateFPs(states)); d != "" {
		t.Errorf("user KRL scopes without a keyring (-want +got):\n%s", d)
	}
	if d := cmp.Diff(want, fps(plain.UserCAKeys())); d != "" || len(plain.RevokedHostCAKeys()) != 0 {
		t.Errorf("a signer without a keyring publishes %v (revoked host keys %v)", plain.UserCAKeys(), plain.RevokedHostCAKeys())
	}
}
