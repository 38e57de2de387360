package ca_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/policies"
	"github.com/sshca/sshca/signer"
)

// nothingRevoked is a revocation store with nothing revoked or blocked.
type nothingRevoked struct{}

func (nothingRevoked) Revoke(context.Context, ssh.PublicKey, []ca.RevocationEntry) (uint64, error) {
	return 1, nil
}
func (nothingRevoked) State(context.Context, ssh.PublicKey) (ca.RevocationState, error) {
	return ca.RevocationState{}, nil
}
func (nothingRevoked) StatePage(context.Context, ssh.PublicKey, ca.EntryCursor, int) (ca.RevocationState, ca.EntryCursor, error) {
	return ca.RevocationState{}, ca.EntryCursor{}, nil
}
func (nothingRevoked) BlockIdentity(context.Context, string, time.Time) error { return nil }
func (nothingRevoked) LiftKey(context.Context, ssh.PublicKey) (map[string]uint64, error) {
	return nil, nil
}
func (nothingRevoked) Refused(context.Context, ssh.PublicKey, []string, ssh.PublicKey) (string, error) {
	return "", nil
}

// anySerial reserves every serial.
type anySerial struct{}

func (anySerial) ReserveSerial(context.Context, uint64, time.Time) (bool, error) { return true, nil }

// TestRenewKeepsLifetime: a renewal asks for the lifetime of the certificate it renews (its
// validity window less the signer's back-dating), and the shipped policy caps it at its host
// maximum (24 h) instead of refusing. Real signer (its default skew), real policy.
func TestRenewKeepsLifetime(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	pol, err := policies.LoadFS(ctx, policies.Embedded)
	if err != nil {
		t.Fatal(err)
	}
	caKey, _ := newSSHKey(t)
	sgn := signer.New(caKey, anySerial{}, signer.Options{Now: clock})
	a, err := ca.New(ca.Config{Authenticator: fakeAuth{}, Policy: pol, UserSigner: sgn, HostSigner: sgn,
		Store: &fakeStore{}, Revocations: nothingRevoked{}, Tokens: &onceLedger{}, Audit: &fakeAudit{}, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	lifetime := func(c *ssh.Certificate) time.Duration {
		return time.Duration(c.ValidBefore-c.ValidAfter)*time.Second - 30*time.Second
	}
	for i, tt := range []struct {
		current, want time.Duration
	}{
		{2 * time.Minute, 2 * time.Minute},
		{90 * time.Second, 90 * time.Second},
		{time.Hour, time.Hour},
		{20 * time.Hour, 20 * time.Hour},
		{48 * time.Hour, 24 * time.Hour}, // the shipped policy's host maximum
	} {
		t.Run(tt.current.String(), func(t *testing.T) {
			hostKey, hostPub := newSSHKey(t)
			// Signed as the service signs, by the same signer: its back-dating is the real one.
			cur, err := sgn.Sign(ctx, &ssh.Certificate{Key: hostPub, CertType: ssh.HostCert, KeyId: "ci-job",
				ValidPrincipals: []string{"localhost"}}, tt.current)
			if err != nil {
				t.Fatal(err)
			}
			if got := lifetime(cur); got != tt.current {
				t.Fatalf("the signer back-dates by other than 30s: window %s for %s", got+30*time.Second, tt.current)
			}
			tok, err := ca.SignRenewToken(hostKey, cur, now, fmt.Sprint("jti-", i))
			if err != nil {
				t.Fatal(err)
			}
			got, err := a.Renew(ctx, tok)
			if err != nil {
				t.Fatalf("Renew: %v", err)
			}
			if l := lifetime(got.Cert); l != tt.want {
				t.Errorf("renewal of a %s certificate lives %s, want %s", tt.current, l, tt.want)
			}
			if got.Cert.Serial == cur.Serial || string(got.Cert.Key.Marshal()) != string(hostPub.Marshal()) {
				t.Errorf("not a new certificate for the same key")
			}
		})
	}
}
