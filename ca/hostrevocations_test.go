package ca_test

import (
	"context"
	"encoding/base64"
	"strconv"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/signer"
	"github.com/sshca/sshca/store"
)

// hostKeyring is a host Signer with a keyring behind it: an older key still in its scopes and
// a compromised one.
type hostKeyring struct {
	*signer.Signer
	older, compromised ssh.PublicKey
}

func (h hostKeyring) Published() []ssh.PublicKey   { return []ssh.PublicKey{h.PublicKey(), h.older} }
func (h hostKeyring) Compromised() []ssh.PublicKey { return []ssh.PublicKey{h.compromised} }
func (h hostKeyring) Scopes() []ssh.PublicKey {
	return []ssh.PublicKey{h.PublicKey(), h.older, h.compromised}
}

var _ ca.Publisher = hostKeyring{}

// TestHostRevocationStates: a host certificate revoked by serial and a banned key are in the
// host CA key's scope, a compromised host CA key is a permanent key entry of a state without a
// CA (version: how many), every host CA key's scope is there, and a user certificate's
// revocation is not.
func TestHostRevocationStates(t *testing.T) {
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Second)
	clock := func() time.Time { return now }
	userCA, _ := newSSHKey(t)
	hostCA, _ := newSSHKey(t)
	_, older := newSSHKey(t)
	_, compromised := newSSHKey(t)
	db := store.NewMemory(clock)
	host := hostKeyring{Signer: signer.New(hostCA, db, signer.Options{Now: clock}), older: older, compromised: compromised}
	pol := &fakePolicy{dec: ca.Decision{Allow: true, Principals: []string{"web1.example.com"}, TTL: time.Hour}}
	a, err := ca.New(ca.Config{Authenticator: fakeAuth{ca.Identity{Issuer: "https://idp", Subject: "ci"}}, Policy: pol,
		UserSigner: signer.New(userCA, db, signer.Options{Now: clock}), HostSigner: host, Store: db, Revocations: db,
		Audit: &fakeAudit{}, Now: clock, Limits: ca.Limits{MaxUserTTL: time.Hour, MaxHostTTL: 2 * time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	_, hostKey := newSSHKey(t)
	hc, err := a.Issue(ctx, "good", ca.Request{Kind: ca.HostCert, PublicKey: hostKey, Principals: []string{"web1.example.com"}})
	if err != nil {
		t.Fatal(err)
	}
	pol.dec.Principals = []string{"alice"}
	_, userKey := newSSHKey(t)
	uc, err := a.Issue(ctx, "good", ca.Request{Kind: ca.UserCert, PublicKey: userKey})
	if err != nil {
		t.Fatal(err)
	}
	_, banned := newSSHKey(t)
	for _, r := range []ca.RevokeRequest{{Serial: hc.Cert.Serial}, {Serial: uc.Cert.Serial}, {PublicKey: banned}} {
		r.Reason = "test"
		if _, err := a.Revoke(ctx, "good", r); err != nil {
			t.Fatalf("revoke %+v: %v", r, err)
		}
	}

	states, err := a.HostRevocationStates(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(states) != 4 {
		t.Fatalf("%d states, want one per host CA key scope (3) and the compromised keys", len(states))
	}
	for i, k := range host.Scopes() {
		if states[i].CA == nil || ssh.FingerprintSHA256(states[i].CA) != ssh.FingerprintSHA256(k) {
			t.Errorf("state %d is of %v, want the scope of %s", i, states[i].CA, ssh.FingerprintSHA256(k))
		}
	}
	has := func(st ca.RevocationState, kind ca.EntryKind, value string, permanent bool) bool {
		for _, e := range st.Entries {
			if e.Kind == kind && e.Value == value && e.Expiry.IsZero() == permanent {
				return true
			}
		}
		return false
	}
	active := states[0]
	if !has(active, ca.RevokedSerial, strconv.FormatUint(hc.Cert.Serial, 10), false) {
		t.Errorf("the host certificate's serial is not in the host CA's scope: %+v", active.Entries)
	}
	if !has(active, ca.RevokedKey, keyEntryOf(banned), true) {
		t.Errorf("the banned key is not a permanent entry of the host CA's scope: %+v", active.Entries)
	}
	for _, st := range states {
		if has(st, ca.RevokedSerial, strconv.FormatUint(uc.Cert.Serial, 10), false) {
			t.Errorf("a user certificate's revocation is published for hosts: %+v", st)
		}
	}
	last := states[3]
	if last.CA != nil || last.Version != 1 || len(last.Entries) != 1 || !has(last, ca.RevokedKey, keyEntryOf(compromised), true) {
		t.Errorf("compromised keys state = %+v; want no CA, version 1, the compromised key as a permanent key entry", last)
	}
}

func keyEntryOf(k ssh.PublicKey) string { return base64.StdEncoding.EncodeToString(k.Marshal()) }
