package ca_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/store"
)

type fakeAuth struct{ id ca.Identity }

func (f fakeAuth) Authenticate(_ context.Context, token string) (ca.Identity, error) {
	if token != "good" {
		return ca.Identity{}, ca.Unauthenticated("bad token", nil)
	}
	return f.id, nil
}

type fakePolicy struct {
	dec  ca.Decision
	err  error
	seen ca.PolicyInput
}

func (f *fakePolicy) Decide(_ context.Context, in ca.PolicyInput) (ca.Decision, error) {
	f.seen = in
	return f.dec, f.err
}

// fakeSigner signs for real with an in-memory key, with a fixed serial.
type fakeSigner struct {
	key ssh.Signer
	now func() time.Time
	err error
}

func (f fakeSigner) PublicKey() ssh.PublicKey { return f.key.PublicKey() }
func (f fakeSigner) Sign(_ context.Context, tmpl *ssh.Certificate, ttl time.Duration) (*ssh.Certificate, error) {
	if f.err != nil {
		return nil, f.err
	}
	c := *tmpl
	c.Serial = 42
	c.KeyId += "#" + strconv.Itoa(42)
	c.ValidAfter = uint64(f.now().Add(-30 * time.Second).Unix())
	c.ValidBefore = uint64(f.now().Add(ttl).Unix())
	if err := c.SignCert(rand.Reader, f.key); err != nil {
		return nil, err
	}
	return &c, nil
}

type fakeStore struct {
	mu   sync.Mutex
	recs []ca.Certificate
	err  error
}

func (f *fakeStore) Record(_ context.Context, c ca.Certificate) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	f.recs = append(f.recs, c)
	return nil
}
func (f *fakeStore) Live(context.Context, string, time.Time) ([]ca.Certificate, error) {
	return nil, nil
}

func (f *fakeStore) ResolveAlias(context.Context, string, time.Time) ([]string, error) {
	return nil, nil
}
func (f *fakeStore) LivePage(context.Context, time.Time, ca.CertCursor, int) ([]ca.Certificate, ca.CertCursor, error) {
	return nil, ca.CertCursor{}, nil
}
func (f *fakeStore) LivePageOf(context.Context, string, time.Time, ca.CertCursor, int) ([]ca.Certificate, ca.CertCursor, error) {
	return nil, ca.CertCursor{}, nil
}
func (f *fakeStore) Get(context.Context, uint64) (ca.Certificate, bool, error) {
	return ca.Certificate{}, false, nil
}

// fakeAudit keeps records in memory, or fails.
type fakeAudit struct {
	mu   sync.Mutex
	recs []ca.AuditRecord
	err  error
}

func (f *fakeAudit) Append(_ context.Context, r ca.AuditRecord) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	f.recs = append(f.recs, r)
	return nil
}

func newSSHKey(t testing.TB) (ssh.Signer, ssh.PublicKey) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s, s.PublicKey()
}

func TestIssue(t *testing.T) {
	now := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	caKey, _ := newSSHKey(t)
	_, userKey := newSSHKey(t)
	alice := ca.Identity{Issuer: "https://idp", Subject: "u1", Email: "alice@example.com", Username: "alice", Groups: []string{"dev"}}
	grant := ca.Decision{Allow: true, Principals: []string{"alice", "deploy"}, TTL: 10 * time.Minute,
		Extensions: map[string]string{"permit-pty": ""}, CriticalOptions: map[string]string{"force-command": "/bin/true"}}

	tests := []struct {
		name           string
		token          string
		req            ca.Request
		dec            ca.Decision
		policyErr      error
		storeErr       error
		auditErr       error
		wantKind       ca.ErrorKind
		wantErr        bool
		wantPrincipals []string
		wantTTL        time.Duration
	}{
		{name: "grant all", token: "good", req: ca.Request{Kind: ca.UserCert, PublicKey: userKey}, dec: grant,
			wantPrincipals: []string{"alice", "deploy"}, wantTTL: 10 * time.Minute},
		{name: "narrowed to request", token: "good", req: ca.Request{Kind: ca.UserCert, PublicKey: userKey, Principals: []string{"alice"}, TTL: 5 * time.Minute}, dec: grant,
			wantPrincipals: []string{"alice"}, wantTTL: 5 * time.Minute},
		{name: "policy wider than asked is cut", token: "good", req: ca.Request{Kind: ca.UserCert, PublicKey: userKey, Principals: []string{"deploy"}}, dec: grant,
			wantPrincipals: []string{"deploy"}, wantTTL: 10 * time.Minute},
		{name: "ticket in key id", token: "good", req: ca.Request{Kind: ca.UserCert, PublicKey: userKey, Principals: []string{"alice"}},
			dec:            ca.Decision{Allow: true, Principals: []string{"alice"}, TTL: time.Minute, Ticket: "OPS-7", Extensions: grant.Extensions, CriticalOptions: grant.CriticalOptions},
			wantPrincipals: []string{"alice"}, wantTTL: time.Minute},
		{name: "ticket with # refused", token: "good", req: ca.Request{Kind: ca.UserCert, PublicKey: userKey},
			dec: ca.Decision{Allow: true, Principals: []string{"alice"}, TTL: time.Minute, Ticket: "OPS#7"}, wantErr: true, wantKind: ca.KindDenied},
		{name: "bad token", token: "bad", req: ca.Request{Kind: ca.UserCert, PublicKey: userKey}, dec: grant, wantErr: true, wantKind: ca.KindUnauthenticated},
		{name: "denied", token: "good", req: ca.Request{Kind: ca.UserCert, PublicKey: userKey}, dec: ca.Decision{Reasons: []string{"no"}}, wantErr: true, wantKind: ca.KindDenied},
		{name: "policy error fails closed", token: "good", req: ca.Request{Kind: ca.UserCert, PublicKey: userKey}, policyErr: errors.New("boom"), wantErr: true, wantKind: ca.KindUnavailable},
		{name: "empty principals never signed", token: "good", req: ca.Request{Kind: ca.UserCert, PublicKey: userKey}, dec: ca.Decision{Allow: true, TTL: time.Minute}, wantErr: true, wantKind: ca.KindDenied},
		{name: "granted none of requested", token: "good", req: ca.Request{Kind: ca.UserCert, PublicKey: userKey, Principals: []string{"bob"}}, dec: grant, wantErr: true, wantKind: ca.KindDenied},
		{name: "policy principal with comma refused", token: "good", req: ca.Request{Kind: ca.UserCert, PublicKey: userKey}, dec: ca.Decision{Allow: true, TTL: time.Minute, Principals: []string{"a,b"}}, wantErr: true, wantKind: ca.KindDenied},
		{name: "ttl over hard cap", token: "good", req: ca.Request{Kind: ca.UserCert, PublicKey: userKey, TTL: 25 * time.Hour}, dec: grant, wantErr: true, wantKind: ca.KindInvalid},
		{name: "policy ttl capped", token: "good", req: ca.Request{Kind: ca.UserCert, PublicKey: userKey}, dec: ca.Decision{Allow: true, TTL: 48 * time.Hour, Principals: []string{"alice"}, Extensions: grant.Extensions, CriticalOptions: grant.CriticalOptions},
			wantPrincipals: []string{"alice"}, wantTTL: 24 * time.Hour},
		{name: "bad principal grammar", token: "good", req: ca.Request{Kind: ca.UserCert, PublicKey: userKey, Principals: []string{"Alice"}}, dec: grant, wantErr: true, wantKind: ca.KindInvalid},
		{name: "host needs names", token: "good", req: ca.Request{Kind: ca.HostCert, PublicKey: userKey}, dec: grant, wantErr: true, wantKind: ca.KindInvalid},
		{name: "host wildcard refused", token: "good", req: ca.Request{Kind: ca.HostCert, PublicKey: userKey, Principals: []string{"*.example.com"}}, dec: grant, wantErr: true, wantKind: ca.KindInvalid},
		{name: "store down: nothing issued", token: "good", req: ca.Request{Kind: ca.UserCert, PublicKey: userKey}, dec: grant, storeErr: errors.New("down"), wantErr: true, wantKind: ca.KindUnavailable},
		{name: "audit down: nothing handed out", token: "good", req: ca.Request{Kind: ca.UserCert, PublicKey: userKey}, dec: grant, auditErr: errors.New("down"), wantErr: true, wantKind: ca.KindUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pol := &fakePolicy{dec: tt.dec, err: tt.policyErr}
			inv := &fakeStore{err: tt.storeErr}
			log := &fakeAudit{err: tt.auditErr}
			sgn := fakeSigner{key: caKey, now: clock}
			a, err := ca.New(ca.Config{Authenticator: fakeAuth{alice}, Policy: pol, UserSigner: sgn, HostSigner: sgn, Store: inv, Revocations: store.NewMemory(clock), Audit: log, Now: clock})
			if err != nil {
				t.Fatal(err)
			}
			got, err := a.Issue(context.Background(), tt.token, tt.req)
			// Every decision on an authenticated request leaves one audit record.
			wantRecords, wantOutcome := 1, "issued"
			switch {
			case tt.token != "good", tt.auditErr != nil:
				wantRecords = 0
			case tt.wantErr:
				wantOutcome = tt.wantKind.String()
			}
			if len(log.recs) != wantRecords {
				t.Fatalf("%d audit records, want %d: %+v", len(log.recs), wantRecords, log.recs)
			}
			if wantRecords == 1 {
				r := log.recs[0]
				if r.Outcome != wantOutcome || r.Identity != "https://idp|u1" || r.Action != tt.req.Kind.Action() || !r.Time.Equal(now) {
					t.Errorf("audit record %+v, want outcome %s", r, wantOutcome)
				}
				if tt.wantErr && len(r.Reasons) == 0 {
					t.Errorf("audit record of a refusal without reasons: %+v", r)
				}
				if !tt.wantErr && (r.Serial != 42 || r.KeyID != got.Cert.KeyId || r.Ticket != tt.dec.Ticket || len(r.Principals) == 0) {
					t.Errorf("audit record of an issue: %+v", r)
				}
			}
			if tt.wantErr {
				if err == nil {
					t.Fatalf("issued %v, want error of kind %v", got.Cert.ValidPrincipals, tt.wantKind)
				}
				if k := ca.KindOf(err); k != tt.wantKind {
					t.Fatalf("error kind = %v (%v), want %v", k, err, tt.wantKind)
				}
				if len(inv.recs) != 0 && tt.auditErr == nil {
					t.Fatalf("recorded %d certs on error", len(inv.recs))
				}
				return
			}
			if err != nil {
				t.Fatalf("Issue: %v", err)
			}
			if diff := cmp.Diff(tt.wantPrincipals, got.Cert.ValidPrincipals); diff != "" {
				t.Errorf("principals (-want +got):\n%s", diff)
			}
			if ttl := time.Duration(got.Cert.ValidBefore-uint64(now.Unix())) * time.Second; ttl != tt.wantTTL {
				t.Errorf("ttl = %v, want %v", ttl, tt.wantTTL)
			}
			if diff := cmp.Diff(map[string]string{"permit-pty": ""}, got.Cert.Extensions); diff != "" {
				t.Errorf("extensions (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(map[string]string{"force-command": "/bin/true"}, got.Cert.CriticalOptions); diff != "" {
				t.Errorf("critical options (-want +got):\n%s", diff)
			}
			// The display name, then the pair's handle: readable in sshd's log, one identity.
			wantKeyID := "alice@example.com~" + alice.Handle() + "#42"
			if tt.dec.Ticket != "" {
				wantKeyID = "alice@example.com~" + alice.Handle() + "/" + tt.dec.Ticket + "#42"
			}
			if got.Cert.KeyId != wantKeyID {
				t.Errorf("key id = %q", got.Cert.KeyId)
			}
			if len(inv.recs) != 1 || inv.recs[0].Serial != 42 || inv.recs[0].Identity != "https://idp|u1" {
				t.Errorf("record = %+v", inv.recs)
			}
			if pol.seen.Request.KeyType != ssh.KeyAlgoED25519 || pol.seen.Identity.Username != "alice" || pol.seen.Now != "2026-11-25T10:00:00Z" {
				t.Errorf("policy input = %+v", pol.seen)
			}
		})
	}
}

// TestRevokeAudited: revoking is a policy decision kept in the audit log; a denied one is
// kept with its reasons, and an allowed one takes effect only once its record is kept.
func TestRevokeAudited(t *testing.T) {
	now := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	caKey, _ := newSSHKey(t)
	admin := ca.Identity{Issuer: "https://idp", Subject: "a1", Email: "admin@example.com"}
	for _, tt := range []struct {
		name        string
		dec         ca.Decision
		auditErr    error
		wantKind    ca.ErrorKind
		wantOutcome string
		wantBlocked bool
	}{
		{name: "allowed", dec: ca.Decision{Allow: true}, wantOutcome: "allowed", wantBlocked: true},
		{name: "denied", dec: ca.Decision{Reasons: []string{"not an admin"}}, wantKind: ca.KindDenied, wantOutcome: "denied"},
		{name: "audit down", dec: ca.Decision{Allow: true}, auditErr: errors.New("down"), wantKind: ca.KindUnavailable},
	} {
		t.Run(tt.name, func(t *testing.T) {
			sgn := fakeSigner{key: caKey, now: clock}
			revs := store.NewMemory(clock)
			log := &fakeAudit{err: tt.auditErr}
			a, err := ca.New(ca.Config{Authenticator: fakeAuth{admin}, Policy: &fakePolicy{dec: tt.dec}, UserSigner: sgn, HostSigner: sgn,
				Store: &fakeStore{}, Revocations: revs, Audit: log, Now: clock})
			if err != nil {
				t.Fatal(err)
			}
			_, err = a.Revoke(context.Background(), "good", ca.RevokeRequest{Identity: "bob@example.com", Reason: "offboarding"})
			if tt.wantOutcome == "allowed" && err != nil || tt.wantOutcome != "allowed" && ca.KindOf(err) != tt.wantKind {
				t.Fatalf("Revoke: %v, want kind %v", err, tt.wantKind)
			}
			// Blocked under the form given, whoever it turns out to be at the next sign-in.
			why, _ := revs.Refused(context.Background(), caKey.PublicKey(), []string{"https://idp|b1", "email:bob@example.com"}, caKey.PublicKey())
			if blocked := why != ""; blocked != tt.wantBlocked {
				t.Errorf("identity blocked = %v, want %v", blocked, tt.wantBlocked)
			}
			if tt.auditErr != nil {
				return
			}
			if len(log.recs) != 1 {
				t.Fatalf("%d audit records: %+v", len(log.recs), log.recs)
			}
			r := log.recs[0]
			if r.Action != ca.ActionRevoke || r.Outcome != tt.wantOutcome || r.Target != "identity:bob@example.com" || r.Reason != "offboarding" || r.Identity != "https://idp|a1" {
				t.Errorf("audit record %+v", r)
			}
		})
	}
}
