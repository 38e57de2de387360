package ca_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/revocation"
)

// banAudit is the rig's audit log as a BanCheckedAuditLog whose ban read answers banned (the
// CA key marked compromised through another replica after the admission).
type banAudit struct {
	*fakeAudit
	banned atomic.Bool
	asked  atomic.Int32
}

func (b *banAudit) AppendIssued(ctx context.Context, rec ca.AuditRecord, _ ssh.PublicKey) (bool, error) {
	b.asked.Add(1)
	return b.banned.Load(), b.Append(ctx, rec)
}

// grantHosts is the shipped policy, except that host certificates and renewals get the host
// names asked for: the paths under test, not the policy's rules for CI jobs.
type grantHosts struct{ ca.Policy }

func (g grantHosts) Decide(ctx context.Context, in ca.PolicyInput) (ca.Decision, error) {
	if in.Kind == ca.ActionHost || in.Kind == ca.ActionRenew {
		return ca.Decision{Allow: true, Principals: in.Request.Principals, TTL: 10 * time.Minute}, nil
	}
	return g.Policy.Decide(ctx, in)
}

// TestEverySigningPathChecksTheCAKeyBan: every way the authority signs goes through both
// checks of its CA key's ban: a user certificate (OIDC), a host certificate (workload token,
// `sshca cert host`), a host certificate's renewal, a certificate under an approved access
// request, and one under break-glass access. "before": the CA key is banned before the request
// (marked compromised through another replica, whose key ring this one has not re-read): the
// admission refuses it and nothing is signed (the signer's count stays). "during": the ban
// lands after the admission; the audit append's ban read (BanCheckedAuditLog) withholds the
// signed certificate (503, not handed out) and withdraws its inventory record. "none": each
// path issues, so the checks refuse only banned keys. `sshca dev` and serve run these very
// paths with the Redis store as Admission and the audit log reading bans
// (TestCompromiseMidRequest, TestCompromiseOnAnotherReplica against redis-server).
func TestEverySigningPathChecksTheCAKeyBan(t *testing.T) {
	paths := []struct {
		name string
		kind ca.CertKind
		run  func(t *testing.T, r *accessRig, a *ca.Authority, ready func()) (ca.Issued, error)
	}{
		{"user", ca.UserCert, func(t *testing.T, r *accessRig, a *ca.Authority, ready func()) (ca.Issued, error) {
			ready()
			return a.IssueRequest(t.Context(), "token-alice", ca.CertRequest{Kind: ca.UserCert, PublicKey: string(ssh.MarshalAuthorizedKey(r.key)), TTL: "5m"})
		}},
		{"host", ca.HostCert, func(t *testing.T, r *accessRig, a *ca.Authority, ready func()) (ca.Issued, error) {
			ready()
			return a.IssueRequest(t.Context(), "token-job", ca.CertRequest{Kind: ca.HostCert, PublicKey: string(ssh.MarshalAuthorizedKey(r.key)),
				Principals: []string{"web1.example.com"}, TTL: "5m"})
		}},
		{"renew", ca.HostCert, func(t *testing.T, r *accessRig, a *ca.Authority, ready func()) (ca.Issued, error) {
			hostKey, hostPub := newSSHKey(t)
			cur, err := r.config.HostSigner.Sign(t.Context(), &ssh.Certificate{Key: hostPub, CertType: ssh.HostCert, KeyId: "web1",
				ValidPrincipals: []string{"web1.example.com"}}, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			tok, err := ca.SignRenewToken(hostKey, cur, r.clock(), "jti-"+t.Name())
			if err != nil {
				t.Fatal(err)
			}
			ready()
			return a.Renew(t.Context(), tok)
		}},
		{"access request", ca.UserCert, func(t *testing.T, r *accessRig, a *ca.Authority, ready func()) (ca.Issued, error) {
			req := r.create("alice", []string{"root"}, "30m", "OPS-1234 disk full")
			if _, err := r.approve("lead", req); err != nil {
				t.Fatal(err)
			}
			ready()
			return a.IssueRequest(t.Context(), "token-alice", ca.CertRequest{Kind: ca.UserCert, PublicKey: string(ssh.MarshalAuthorizedKey(r.key)),
				TTL: "5m", AccessRequest: req.ID})
		}},
		{"break-glass", ca.UserCert, func(t *testing.T, r *accessRig, a *ca.Authority, ready func()) (ca.Issued, error) {
			req, err := r.a.CreateAccessRequest(t.Context(), "token-oncall", ca.NewAccessRequest{Principals: []string{"root"}, TTL: "20m",
				Reason: "INC-9 site down", BreakGlass: true})
			if err != nil {
				t.Fatal(err)
			}
			ready()
			return a.IssueRequest(t.Context(), "token-oncall", ca.CertRequest{Kind: ca.UserCert, PublicKey: string(ssh.MarshalAuthorizedKey(r.key)),
				TTL: "5m", AccessRequest: req.ID})
		}},
	}
	for _, p := range paths {
		t.Run(p.name, func(t *testing.T) {
			// One rig per path (the shipped policy loads once); the modes in this order, since
			// "before" bans the CA key for good, a day apart (break-glass: twice a day at most).
			r := newAccessRig(t)
			audit := &banAudit{fakeAudit: r.audit}
			c := r.config
			c.Policy, c.Admission, c.Tokens, c.Audit = grantHosts{r.policy}, r.st, r.st, audit
			a, err := ca.New(c)
			if err != nil {
				t.Fatal(err)
			}
			signer := c.UserSigner.(*serialSigner)
			if p.kind == ca.HostCert {
				signer = c.HostSigner.(*serialSigner)
			}
			caKey := signer.PublicKey()
			for _, when := range []string{"none", "during", "before"} {
				t.Run(when, func(t *testing.T) {
					r.advance(25 * time.Hour)
					audit.asked.Store(0)
					audit.banned.Store(when == "during")
					if when == "before" {
						if _, err := r.st.Revoke(t.Context(), caKey, []ca.RevocationEntry{{Kind: ca.RevokedKey, Value: revocation.KeyEntry(caKey)}}); err != nil {
							t.Fatal(err)
						}
					}
					var signed uint64
					iss, err := p.run(t, r, a, func() { signed = signer.serial.Load() })
					switch when {
					case "none":
						if err != nil {
							t.Fatalf("nothing banned: %v", err)
						}
						if audit.asked.Load() != 1 {
							t.Errorf("the audit append read the CA key's ban %d times, want once", audit.asked.Load())
						}
					case "before":
						if err == nil {
							t.Fatalf("issued serial %d with a banned CA key", iss.Cert.Serial)
						}
						if ca.KindOf(err) != ca.KindUnavailable || !strings.Contains(err.Error(), ssh.FingerprintSHA256(caKey)) {
							t.Errorf("refused for another reason than the CA key's ban: %v", err)
						}
						if n := signer.serial.Load(); n != signed {
							t.Errorf("%d signatures with a CA key banned before the request (%v)", n-signed, err)
						}
					case "during":
						if err == nil {
							t.Fatalf("handed out serial %d signed by a CA key banned before its audit record was kept", iss.Cert.Serial)
						}
						if ca.KindOf(err) != ca.KindUnavailable || !strings.Contains(err.Error(), "not handed out") {
							t.Fatalf("got %v (%v), want unavailable, not handed out", err, ca.KindOf(err))
						}
						serial := signer.serial.Load()
						if serial == signed {
							t.Fatal("nothing was signed: the test shows nothing")
						}
						if got, ok, err := r.st.Get(t.Context(), serial); err != nil || ok {
							t.Errorf("the withheld certificate %d is still in the inventory: %+v %v", serial, got, err)
						}
					}
				})
			}
		})
	}
}
