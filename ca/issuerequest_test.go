package ca_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
)

// noRevocations revokes nothing and refuses nobody.
type noRevocations struct{}

func (noRevocations) Revoke(context.Context, ssh.PublicKey, []ca.RevocationEntry) (uint64, error) {
	return 0, nil
}
func (noRevocations) State(context.Context, ssh.PublicKey) (ca.RevocationState, error) {
	return ca.RevocationState{}, nil
}
func (noRevocations) StatePage(context.Context, ssh.PublicKey, ca.EntryCursor, int) (ca.RevocationState, ca.EntryCursor, error) {
	return ca.RevocationState{}, ca.EntryCursor{}, nil
}
func (noRevocations) BlockIdentity(context.Context, string, time.Time) error { return nil }
func (noRevocations) LiftKey(context.Context, ssh.PublicKey) (map[string]uint64, error) {
	return nil, nil
}
func (noRevocations) Refused(context.Context, ssh.PublicKey, []string, ssh.PublicKey) (string, error) {
	return "", nil
}

// TestIssueRequestAuthenticatesFirst: nothing in a request is parsed for an anonymous caller
// (a bad token with a bad key or TTL is 401, and no audit record); an authenticated caller's
// request that does not parse is 400 and audited "invalid"; a good one is issued.
func TestIssueRequestAuthenticatesFirst(t *testing.T) {
	now := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	caKey, _ := newSSHKey(t)
	_, userKey := newSSHKey(t)
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(userKey)))
	alice := ca.Identity{Issuer: "https://idp", Subject: "u1", Username: "alice"}
	grant := ca.Decision{Allow: true, Principals: []string{"alice"}, TTL: 10 * time.Minute}
	for _, tt := range []struct {
		name, token, key, ttl string
		kind                  ca.ErrorKind
		outcome               string // of the audit record, "" for none
	}{
		{"anonymous, bad key", "bad", "ssh-ed25519 AAAA", "", ca.KindUnauthenticated, ""},
		{"anonymous, private key pasted", "bad", "-----BEGIN OPENSSH PRIVATE KEY-----", "", ca.KindUnauthenticated, ""},
		{"anonymous, bad ttl", "bad", line, "1ns", ca.KindUnauthenticated, ""},
		{"anonymous, good request", "bad", line, "5m", ca.KindUnauthenticated, ""},
		{"authenticated, bad key", "good", "ssh-ed25519 AAAA", "", ca.KindInvalid, "invalid"},
		{"authenticated, bad ttl", "good", line, "1ns", ca.KindInvalid, "invalid"},
		{"authenticated, ttl over cap", "good", line, "25h", ca.KindInvalid, "invalid"},
		{"authenticated, good request", "good", line, "5m", 0, "issued"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			log := &fakeAudit{}
			sgn := fakeSigner{key: caKey, now: clock}
			a, err := ca.New(ca.Config{Authenticator: fakeAuth{alice}, Policy: &fakePolicy{dec: grant}, UserSigner: sgn, HostSigner: sgn,
				Store: &fakeStore{}, Revocations: noRevocations{}, Audit: log, Now: clock})
			if err != nil {
				t.Fatal(err)
			}
			_, err = a.IssueRequest(context.Background(), tt.token, ca.CertRequest{Kind: ca.UserCert, PublicKey: tt.key, TTL: tt.ttl, Principals: []string{"alice"}})
			if tt.outcome == "issued" {
				if err != nil {
					t.Fatalf("IssueRequest: %v", err)
				}
			} else if ca.KindOf(err) != tt.kind {
				t.Fatalf("IssueRequest: %v (kind %v), want kind %v", err, ca.KindOf(err), tt.kind)
			}
			var outcomes []string
			for _, r := range log.recs {
				outcomes = append(outcomes, r.Outcome)
			}
			want := []string{}
			if tt.outcome != "" {
				want = []string{tt.outcome}
			}
			if strings.Join(outcomes, ",") != strings.Join(want, ",") {
				t.Errorf("audit outcomes %q, want %q", outcomes, want)
			}
			if tt.outcome == "invalid" && (log.recs[0].Identity == "" || log.recs[0].Requested[0] != "alice") {
				t.Errorf("invalid request's record: %+v", log.recs[0])
			}
		})
	}
}
