package ca_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/policies"
	"github.com/sshca/sshca/signer"
)

// memDiscoveries is a DiscoveryStore in a map.
type memDiscoveries struct {
	mu     sync.Mutex
	recs   map[string]ca.DiscoveryRecord
	orders []string // "host fingerprint"
}

func (m *memDiscoveries) PutDiscovery(_ context.Context, r ca.DiscoveryRecord) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.recs == nil {
		m.recs = map[string]ca.DiscoveryRecord{}
	}
	m.recs[r.Host] = r
	return nil
}

func (m *memDiscoveries) OrderDisable(_ context.Context, host, fp string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.orders = append(m.orders, host+" "+fp)
	return nil
}

func (m *memDiscoveries) DisableOrders(_ context.Context, host string) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for _, o := range m.orders {
		if h, fp, _ := strings.Cut(o, " "); h == host {
			out = append(out, fp)
		}
	}
	return out, nil
}

func (m *memDiscoveries) DoneDisable(_ context.Context, host, fp string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.orders = slices.DeleteFunc(m.orders, func(o string) bool { return o == host+" "+fp })
	return nil
}

func (m *memDiscoveries) Discoveries(context.Context) ([]ca.DiscoveryRecord, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []ca.DiscoveryRecord
	for _, r := range m.recs {
		out = append(out, r)
	}
	return out, nil
}

func (m *memDiscoveries) DiscoveryPage(ctx context.Context, after string, limit int) ([]ca.DiscoveryRecord, string, error) {
	all, _ := m.Discoveries(ctx)
	return all, "", nil
}

// TestAcceptDiscovery: a report is kept only under a proof signed with the discovery context
// by the key of a current host certificate of ours, over the exact bytes sent, for a host
// name of that certificate; a renewal proof is no report proof and a report proof renews
// nothing; the list is for admins.
func TestAcceptDiscovery(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	pol, err := policies.LoadFS(ctx, policies.Embedded)
	if err != nil {
		t.Fatal(err)
	}
	caKey, _ := newSSHKey(t)
	sgn := signer.New(caKey, anySerial{}, signer.Options{Now: clock})
	admin := ca.Identity{Issuer: "https://idp", Subject: "admin", Username: "admin", Groups: []string{"sshca-admins"}}
	a, err := ca.New(ca.Config{Authenticator: fakeAuth{id: admin}, Policy: pol, UserSigner: sgn, HostSigner: sgn,
		Store: &fakeStore{}, Revocations: nothingRevoked{}, Tokens: &onceLedger{}, Audit: &fakeAudit{}, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	hostKey, hostPub := newSSHKey(t)
	cert, err := sgn.Sign(ctx, &ssh.Certificate{Key: hostPub, CertType: ssh.HostCert, KeyId: "web1",
		ValidPrincipals: []string{"web1.example.com", "web1"}}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	otherCA, _ := newSSHKey(t)
	foreign, err := signer.New(otherCA, anySerial{}, signer.Options{Now: clock}).Sign(ctx, &ssh.Certificate{Key: hostPub,
		CertType: ssh.HostCert, KeyId: "web1", ValidPrincipals: []string{"web1.example.com"}}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	report := func(host string) []byte { return []byte(`{"host":"` + host + `","keys":[]}`) }
	sign := func(c *ssh.Certificate, host string, body []byte) string {
		tok, err := ca.SignDiscoverProof(hostKey, c, host, body, now, "jti")
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	renewTok, err := ca.SignRenewToken(hostKey, cert, now, "jti-r")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name  string
		token string
		body  []byte
		want  ca.ErrorKind
		msg   string
	}{
		{"accepted", sign(cert, "web1.example.com", report("web1.example.com")), report("web1.example.com"), 0, ""},
		{"short name of the certificate", sign(cert, "web1", report("web1")), report("web1"), 0, ""},
		{"host not in the certificate", sign(cert, "db1.example.com", report("db1.example.com")), report("db1.example.com"), ca.KindUnauthenticated, "not among the host names"},
		{"body changed after signing", sign(cert, "web1", report("web1")), []byte(`{"host":"web1","keys":[{}]}`), ca.KindUnauthenticated, "report_sha256"},
		{"report for another host than the proof", sign(cert, "web1", report("db1.example.com")), report("db1.example.com"), ca.KindInvalid, "differs from the proof's host"},
		{"not JSON", sign(cert, "web1", []byte("keys")), []byte("keys"), ca.KindInvalid, "JSON object"},
		{"renewal proof (signed under the renewal context)", renewTok, report("web1"), ca.KindUnauthenticated, "not signed by the certificate's key"},
		{"certificate of another CA", sign(foreign, "web1.example.com", report("web1.example.com")), report("web1.example.com"), ca.KindUnauthenticated, "not signed by this host CA"},
		{"no token", "", report("web1"), ca.KindUnauthenticated, "missing bearer token"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			st := &memDiscoveries{}
			host, _, err := a.AcceptDiscovery(ctx, st, tt.token, tt.body)
			if tt.want == 0 {
				if err != nil || len(st.recs) != 1 || string(st.recs[host].Report) != string(tt.body) || !st.recs[host].Received.Equal(now) {
					t.Fatalf("refused or not kept: %v, %+v", err, st.recs)
				}
				return
			}
			var e *ca.Error
			if !errors.As(err, &e) || e.Kind != tt.want || !strings.Contains(e.Error(), tt.msg) || len(st.recs) != 0 {
				t.Fatalf("got %v (kept %d), want %s with %q", err, len(st.recs), tt.want, tt.msg)
			}
		})
	}
	// A discovery proof does not renew (its payload and its context differ).
	if _, err := a.Renew(ctx, sign(cert, "web1", report("web1"))); err == nil {
		t.Error("a discovery proof renewed a certificate")
	}
	if _, err := a.DiscoveriesPage(ctx, &memDiscoveries{}, "bad", ca.DiscoveryCursor{}, 0); err == nil {
		t.Error("listed discoveries without a valid admin token")
	}
	if _, err := a.DiscoveriesPage(ctx, &memDiscoveries{}, "good", ca.DiscoveryCursor{}, 0); err != nil {
		t.Errorf("admin listing: %v", err)
	}
}

// TestDisableDiscovered: an admin's order reaches the host with its next report while that
// report lists the key, and ends once a report no longer does; bad input is a 400 naming the
// field; a non-admin's order is refused and not kept.
func TestDisableDiscovered(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	clock := func() time.Time { return now }
	pol, err := policies.LoadFS(ctx, policies.Embedded)
	if err != nil {
		t.Fatal(err)
	}
	caKey, _ := newSSHKey(t)
	sgn := signer.New(caKey, anySerial{}, signer.Options{Now: clock})
	admin := ca.Identity{Issuer: "https://idp", Subject: "admin", Username: "admin", Groups: []string{"sshca-admins"}}
	audit := &fakeAudit{}
	newAuthority := func(id ca.Identity) *ca.Authority {
		a, err := ca.New(ca.Config{Authenticator: fakeAuth{id: id}, Policy: pol, UserSigner: sgn, HostSigner: sgn,
			Store: &fakeStore{}, Revocations: nothingRevoked{}, Tokens: &onceLedger{}, Audit: audit, Now: clock})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	a := newAuthority(admin)
	hostKey, hostPub := newSSHKey(t)
	cert, err := sgn.Sign(ctx, &ssh.Certificate{Key: hostPub, CertType: ssh.HostCert, KeyId: "web1", ValidPrincipals: []string{"web1"}}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	fp := ssh.FingerprintSHA256(hostPub)
	st := &memDiscoveries{}
	for _, bad := range []struct{ host, fp, reason, field string }{
		{"", fp, "r", "host"}, {"web1", "MD5:aa", "r", "fingerprint"}, {"web1", fp, " ", "reason"}, {"a b", fp, "r", "host"},
	} {
		var e *ca.Error
		if err := a.DisableDiscovered(ctx, st, "good", bad.host, bad.fp, bad.reason); !errors.As(err, &e) || e.Kind != ca.KindInvalid || !strings.Contains(err.Error(), bad.field) {
			t.Errorf("%+v: %v, want invalid naming %s", bad, err, bad.field)
		}
	}
	user := ca.Identity{Issuer: "https://idp", Subject: "bob", Username: "bob", Groups: []string{"dev"}}
	if err := newAuthority(user).DisableDiscovered(ctx, st, "good", "web1", fp, "left"); err == nil || len(st.orders) != 0 {
		t.Errorf("a non-admin ordered a disable: %v %v", err, st.orders)
	}
	if err := a.DisableDiscovered(ctx, st, "good", "web1", fp, "bob left"); err != nil {
		t.Fatal(err)
	}
	send := func(body string) []string {
		t.Helper()
		tok, err := ca.SignDiscoverProof(hostKey, cert, "web1", []byte(body), now, "j")
		if err != nil {
			t.Fatal(err)
		}
		_, orders, err := a.AcceptDiscovery(ctx, st, tok, []byte(body))
		if err != nil {
			t.Fatal(err)
		}
		return orders
	}
	with := `{"host":"web1","keys":[{"fingerprint":"` + fp + `"}]}`
	if got := send(with); len(got) != 1 || got[0] != fp {
		t.Errorf("orders with the key listed: %v", got)
	}
	if got := send(with); len(got) != 1 {
		t.Errorf("the order ended before the key was gone: %v", got)
	}
	if got := send(`{"host":"web1","keys":[]}`); len(got) != 0 || len(st.orders) != 0 {
		t.Errorf("the order outlived the key: %v %v", got, st.orders)
	}
}
