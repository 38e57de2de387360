package keyring_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/keyring"
	"github.com/sshca/sshca/kms"
)

// singleUse authenticates every token as alice's, single-use (a workload's token).
type singleUse struct{}

func (singleUse) Authenticate(_ context.Context, token string) (ca.Identity, error) {
	now := time.Now()
	return ca.Identity{Issuer: "https://idp", Subject: "u1", Email: "alice@example.com", Username: "alice",
		Token: ca.TokenUse{SingleUse: true, ID: "test|" + token, IssuedAt: now, Expiry: now.Add(5 * time.Minute)}}, nil
}

type allowAlice struct{}

func (allowAlice) Decide(context.Context, ca.PolicyInput) (ca.Decision, error) {
	return ca.Decision{Allow: true, Principals: []string{"alice"}, TTL: 10 * time.Minute}, nil
}

// stepAfterAdmit runs step once, right after the admission answered (the token spent, the
// certificate recorded under the CA key the authority fixed) and before the signature.
type stepAfterAdmit struct {
	ca.Admission
	step *func()
}

func (s stepAfterAdmit) Admit(ctx context.Context, q ca.AdmissionRequest) (ca.Admitted, error) {
	res, err := s.Admission.Admit(ctx, q)
	if f := *s.step; f != nil {
		*s.step = nil
		f()
	}
	return res, err
}

// TestPromoteRacesIssuance: a keyring step lands on this replica (its refresh) between the
// admission, which spent the single-use token and recorded the certificate under the active
// CA key, and the signature; against a real redis-server, with the keyring, inventory and
// audit log in it. A promotion leaves the request to succeed, signed by the key it was
// recorded under (published until its certificates expire), the inventory and the audit
// record holding exactly what was signed. A key marked compromised, or withdrawn, meanwhile
// signs nothing: the request fails closed (503, the reason named), the record is withdrawn
// and the token is given back (a fault of the server's): the same token then gets one
// certificate, signed by the key promoted to.
func TestPromoteRacesIssuance(t *testing.T) {
	for _, tc := range []struct {
		name string
		// after is what the administrator does once the next key is promoted (old: the key
		// promoted away from).
		after   func(t *testing.T, m *keyring.Manager, old string)
		wantErr string // "" : issued
	}{
		{"promote", func(*testing.T, *keyring.Manager, string) {}, ""},
		{"promote then compromised", func(t *testing.T, m *keyring.Manager, old string) {
			if _, err := m.Compromised(context.Background(), old); err != nil {
				t.Fatal(err)
			}
		}, "marked compromised"},
		{"promote then retired", func(t *testing.T, m *keyring.Manager, old string) {
			if _, err := m.Retire(context.Background(), old, true); err != nil {
				t.Fatal(err)
			}
		}, "withdrawn"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			_, rdb, db, dir, first := bootstrapUserCA(t)
			old := ssh.FingerprintSHA256(first)
			kr, err := keyring.New(ctx, ca.UserCert, db, db, nil)
			if err != nil {
				t.Fatal(err)
			}
			m := &keyring.Manager{Store: db, KMS: "softkms:", KeyDir: dir, MaxUserTTL: time.Hour, MaxHostTTL: time.Hour}
			next, err := m.Generate(ctx, ca.UserCert, kms.Ed25519)
			if err != nil {
				t.Fatal(err)
			}
			if err := kr.Refresh(ctx); err != nil {
				t.Fatal(err)
			}
			al := audit.New(rdb, audit.Options{Key: make([]byte, audit.KeySize), Marks: db})
			var step func()
			a, err := ca.New(ca.Config{Authenticator: singleUse{}, Policy: allowAlice{}, UserSigner: kr, HostSigner: kr,
				Store: db, Revocations: db, Tokens: db, Admission: stepAfterAdmit{db, &step}, Audit: al})
			if err != nil {
				t.Fatal(err)
			}
			stepped := false
			step = func() {
				stepped = true
				if _, err := m.Promote(ctx, ca.UserCert, true); err != nil {
					t.Fatal(err)
				}
				tc.after(t, m, old)
				if err := kr.Refresh(ctx); err != nil {
					t.Fatal(err)
				}
				if got := ssh.FingerprintSHA256(kr.PublicKey()); got != next.Fingerprint {
					t.Fatalf("after the refresh the active key is %s, want %s", got, next.Fingerprint)
				}
			}
			_, userKey, _ := newKey(t)
			req := ca.Request{Kind: ca.UserCert, PublicKey: userKey, TTL: 5 * time.Minute}
			iss, err := a.Issue(ctx, "ci-job-1", req)
			if !stepped {
				t.Fatal("the keyring step did not run between admission and signature: the test shows nothing")
			}
			dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			if err := a.DrainRetries(dctx); err != nil {
				t.Fatal(err)
			}
			live, lerr := db.AllLive(ctx, time.Now())
			if lerr != nil {
				t.Fatal(lerr)
			}
			var issued []ca.AuditRecord
			if _, err := al.Verify(ctx, func(e audit.Entry) {
				if e.Record.Outcome == "issued" {
					issued = append(issued, e.Record)
				}
			}); err != nil {
				t.Fatal(err)
			}

			if tc.wantErr != "" {
				if err == nil {
					t.Fatalf("issued a certificate signed by %s after the key was %s", ssh.FingerprintSHA256(iss.Cert.SignatureKey), tc.wantErr)
				}
				if ca.KindOf(err) != ca.KindUnavailable || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), old) {
					t.Fatalf("issue: %v (%v), want unavailable naming key %s as %s", err, ca.KindOf(err), old, tc.wantErr)
				}
				if len(live) != 0 || len(issued) != 0 {
					t.Errorf("nothing signed, yet the inventory holds %+v and the audit log %+v", live, issued)
				}
				// Nothing was signed, a fault of the server's: the token was given back, and
				// serves once more, signed by the key promoted to.
				if !strings.Contains(err.Error(), "token was given back") {
					t.Errorf("issue: %q, want it to say the token was given back", err)
				}
				iss, err := a.Issue(ctx, "ci-job-1", req)
				if err != nil || ssh.FingerprintSHA256(iss.Cert.SignatureKey) != next.Fingerprint {
					t.Fatalf("the same token again: %v, want a certificate signed by %s", err, next.Fingerprint)
				}
				if _, err := a.Issue(ctx, "ci-job-1", req); ca.KindOf(err) != ca.KindUnauthenticated {
					t.Errorf("the same token a third time: %v, want refused as already used", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("issue during a promotion: %v", err)
			}
			c := iss.Cert
			if got := ssh.FingerprintSHA256(c.SignatureKey); got != old {
				t.Errorf("signed by %s, want the key recorded (%s)", got, old)
			}
			if len(live) != 1 || live[0].Serial != c.Serial || live[0].KeyID != c.KeyId || live[0].CAFingerprint != old ||
				live[0].KeyFingerprint != ssh.FingerprintSHA256(c.Key) || live[0].ValidBefore.Unix() != int64(c.ValidBefore) {
				t.Errorf("inventory %+v, want the certificate signed: serial %d, key ID %s, CA %s", live, c.Serial, c.KeyId, old)
			}
			if len(issued) != 1 || issued[0].Serial != c.Serial || issued[0].CAFingerprint != old || issued[0].KeyID != c.KeyId {
				t.Errorf("audit log %+v, want one issued record of serial %d by CA %s", issued, c.Serial, old)
			}
			// The key promoted away from is still published, so hosts accept what it signed.
			trusted := false
			for _, k := range kr.Published() {
				trusted = trusted || ssh.FingerprintSHA256(k) == old
			}
			if !trusted {
				t.Error("the key that signed is not published after the promotion")
			}
			// The next request signs with the new key.
			iss2, err := a.Issue(ctx, "ci-job-2", req)
			if err != nil || ssh.FingerprintSHA256(iss2.Cert.SignatureKey) != next.Fingerprint || iss2.Record.CAFingerprint != next.Fingerprint {
				t.Fatalf("the request after the promotion: %v, want signed by %s", err, next.Fingerprint)
			}
		})
	}
}
