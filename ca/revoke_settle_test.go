package ca_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/signer"
	"github.com/sshca/sshca/store"
)

// failingRevocations is a revocation store whose writes fail.
type failingRevocations struct{ ca.RevocationStore }

func (failingRevocations) Revoke(context.Context, ssh.PublicKey, []ca.RevocationEntry) (uint64, error) {
	return 0, errors.New("dial tcp 10.0.0.9:6379: i/o timeout")
}

// TestAllowedThenFailedIsSettled: a revocation (or an AuthorizeThen action) that the policy
// allows is recorded "allowed" before it acts; when the action then fails, a second record of
// the same decision says how it ended, with the caller-safe message and without the cause.
func TestAllowedThenFailedIsSettled(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	caKey, _ := newSSHKey(t)
	_, victim := newSSHKey(t)
	db := store.NewMemory(clock)
	sgn := signer.New(caKey, db, signer.Options{Now: clock})
	audit := &fakeAudit{}
	admin := ca.Identity{Issuer: "https://idp", Subject: "admin"}
	a, err := ca.New(ca.Config{Authenticator: fakeAuth{admin}, Policy: &fakePolicy{dec: ca.Decision{Allow: true}}, UserSigner: sgn, HostSigner: sgn,
		Store: db, Revocations: failingRevocations{db}, Audit: audit, Now: clock})
	if err != nil {
		t.Fatal(err)
	}

	_, err = a.Revoke(ctx, "good", ca.RevokeRequest{PublicKey: victim, Reason: "laptop stolen"})
	if ca.KindOf(err) != ca.KindUnavailable {
		t.Fatalf("revoke: %v, want unavailable", err)
	}
	type summary struct{ Action, Outcome, Target, Reason string }
	var got []summary
	for _, r := range audit.recs {
		got = append(got, summary{string(r.Action), r.Outcome, r.Target, r.Reason})
		if strings.Contains(strings.Join(r.Reasons, " "), "10.0.0.9") {
			t.Errorf("the cause is in the audit record: %v", r.Reasons)
		}
	}
	target := "public_key:" + ssh.FingerprintSHA256(victim)
	want := []summary{{"revoke", "allowed", target, "laptop stolen"}, {"revoke", "unavailable", target, "laptop stolen"}}
	if d := cmp.Diff(want, got); d != "" {
		t.Fatalf("audit records (-want +got):\n%s", d)
	}
	if r := audit.recs[1]; len(r.Reasons) != 1 || r.Reasons[0] != "revocation store unavailable; nothing was revoked in it" {
		t.Errorf("settled reasons %q", r.Reasons)
	}

	audit.recs = nil
	err = a.AuthorizeThen(ctx, "good", ca.ActionAdmin, "promote user CA key", func(context.Context) error {
		return ca.Unavailable("keyring store unavailable", errors.New("secret cause"))
	})
	if ca.KindOf(err) != ca.KindUnavailable || len(audit.recs) != 2 || audit.recs[0].Outcome != "allowed" || audit.recs[1].Outcome != "unavailable" ||
		audit.recs[1].Target != "promote user CA key" || audit.recs[1].Action != ca.ActionAdmin {
		t.Errorf("AuthorizeThen: %v, records %+v", err, audit.recs)
	}

	// An action that succeeds has its one "allowed" record.
	audit.recs = nil
	if err := a.AuthorizeThen(ctx, "good", ca.ActionAdmin, "list CA keys", func(context.Context) error { return nil }); err != nil || len(audit.recs) != 1 {
		t.Errorf("AuthorizeThen that succeeds: %v, %d records", err, len(audit.recs))
	}
}
