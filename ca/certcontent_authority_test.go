package ca_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/store"
)

// spendLedger counts the single-use tokens spent.
type spendLedger struct {
	mu    sync.Mutex
	spent []string
}

func (l *spendLedger) UseToken(_ context.Context, id string, _, _ time.Time) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.spent = append(l.spent, id)
	return true, nil
}

type faultLog struct {
	mu     sync.Mutex
	faults []ca.PolicyFault
}

func (f *faultLog) PolicyFault(pf ca.PolicyFault) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults = append(f.faults, pf)
}

// TestPolicyFaultNotSigned: a policy that allows a certificate sshd would refuse or read
// differently gets a denial (403) naming the field and the value, an error log line with
// both, one fault counted; nothing is signed or recorded and the single-use token is not
// spent. The near miss beside each is issued.
func TestPolicyFaultNotSigned(t *testing.T) {
	now := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	caKey, _ := newSSHKey(t)
	_, userKey := newSSHKey(t)
	alice := ca.Identity{Issuer: "https://idp", Subject: "u1", Email: "alice@example.com", Username: "alice",
		Token: ca.TokenUse{SingleUse: true, ID: "jti-1", Expiry: now.Add(time.Minute)}}
	userReq := ca.Request{Kind: ca.UserCert, PublicKey: userKey}
	hostReq := ca.Request{Kind: ca.HostCert, PublicKey: userKey, Principals: []string{"web1.dev.internal", "::1"}}
	opts := func(k, v string) map[string]string { return map[string]string{k: v} }
	for _, tt := range []struct {
		name      string
		req       ca.Request
		dec       ca.Decision
		wantField string // "" when it must be issued
		wantValue string
	}{
		{name: "source-address with host bits", req: userReq, dec: ca.Decision{Allow: true, Principals: []string{"alice"}, TTL: time.Hour,
			CriticalOptions: opts("source-address", "10.0.0.1/8")}, wantField: "critical_options.source-address", wantValue: `"10.0.0.1/8"`},
		{name: "source-address near miss", req: userReq, dec: ca.Decision{Allow: true, Principals: []string{"alice"}, TTL: time.Hour,
			CriticalOptions: opts("source-address", "10.0.0.0/8,2001:db8::/32")}},
		{name: "force-command with newline", req: userReq, dec: ca.Decision{Allow: true, Principals: []string{"alice"}, TTL: time.Hour,
			CriticalOptions: opts("force-command", "/bin/true\nrm -rf /")}, wantField: "critical_options.force-command", wantValue: `"/bin/true\nrm -rf /"`},
		{name: "extension outside the allow-list", req: userReq, dec: ca.Decision{Allow: true, Principals: []string{"alice"}, TTL: time.Hour,
			Extensions: opts("made-up@example.com", "")}, wantField: "extensions", wantValue: `"made-up@example.com"`},
		{name: "flag with a value", req: userReq, dec: ca.Decision{Allow: true, Principals: []string{"alice"}, TTL: time.Hour,
			Extensions: opts("permit-pty", "yes")}, wantField: "extensions", wantValue: `"permit-pty=yes"`},
		{name: "critical option outside the allow-list", req: userReq, dec: ca.Decision{Allow: true, Principals: []string{"alice"}, TTL: time.Hour,
			CriticalOptions: opts("bogus", "x")}, wantField: "critical_options", wantValue: `"bogus"`},
		{name: "policy ttl 59s", req: userReq, dec: ca.Decision{Allow: true, Principals: []string{"alice"}, TTL: 59 * time.Second},
			wantField: "ttl_seconds", wantValue: `"59"`},
		{name: "policy ttl 60s", req: userReq, dec: ca.Decision{Allow: true, Principals: []string{"alice"}, TTL: time.Minute}},
		{name: "policy wildcard principal", req: userReq, dec: ca.Decision{Allow: true, Principals: []string{"*"}, TTL: time.Hour},
			wantField: "principals", wantValue: `"*"`},
		{name: "single-label host name", req: ca.Request{Kind: ca.HostCert, PublicKey: userKey, Principals: []string{"web1"}},
			dec: ca.Decision{Allow: true, Principals: []string{"web1"}, TTL: time.Hour}},
		{name: "host with an option", req: hostReq, dec: ca.Decision{Allow: true, Principals: []string{"web1.dev.internal"}, TTL: time.Hour,
			CriticalOptions: opts("source-address", "10.0.0.0/8")}, wantField: "critical_options", wantValue: `"source-address"`},
		{name: "host ::1 reaches the policy and is signed", req: hostReq, dec: ca.Decision{Allow: true, Principals: []string{"::1", "web1.dev.internal"}, TTL: time.Hour}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var logs bytes.Buffer
			inv, tokens, faults := &fakeStore{}, &spendLedger{}, &faultLog{}
			sgn := fakeSigner{key: caKey, now: clock}
			a, err := ca.New(ca.Config{Authenticator: fakeAuth{alice}, Policy: &fakePolicy{dec: tt.dec}, UserSigner: sgn, HostSigner: sgn,
				Store: inv, Revocations: store.NewMemory(clock), Tokens: tokens, Faults: faults, Now: clock,
				Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			if err != nil {
				t.Fatal(err)
			}
			got, err := a.Issue(context.Background(), "good", tt.req)
			if tt.wantField == "" {
				if err != nil {
					t.Fatalf("Issue: %v", err)
				}
				if len(tokens.spent) != 1 || len(inv.recs) != 1 || len(faults.faults) != 0 || got.Cert == nil {
					t.Fatalf("spent %v, recorded %d, faults %v", tokens.spent, len(inv.recs), faults.faults)
				}
				return
			}
			var e *ca.Error
			if !errors.As(err, &e) || e.Kind != ca.KindDenied {
				t.Fatalf("Issue = %v, want a denial (403)", err)
			}
			if len(e.Reasons) != 1 || !strings.Contains(e.Reasons[0], tt.wantField) || !strings.Contains(e.Reasons[0], tt.wantValue) {
				t.Errorf("reasons %q do not name %s %s", e.Reasons, tt.wantField, tt.wantValue)
			}
			var pf *ca.PolicyFault
			if !errors.As(err, &pf) || pf.Field != tt.wantField {
				t.Errorf("cause %v, want a PolicyFault in %s", err, tt.wantField)
			}
			if got.Cert != nil || len(inv.recs) != 0 || len(tokens.spent) != 0 {
				t.Errorf("certificate %v, %d recorded, tokens spent %v: want none", got.Cert, len(inv.recs), tokens.spent)
			}
			if len(faults.faults) != 1 || faults.faults[0].Field != tt.wantField {
				t.Errorf("faults observed: %+v", faults.faults)
			}
			if l := logs.String(); !strings.Contains(l, "level=ERROR") || !strings.Contains(l, "field="+tt.wantField) || !strings.Contains(l, "value=") {
				t.Errorf("error log does not name the field and value:\n%s", l)
			}
		})
	}
}

// TestRequestTTLBelowMinute: a request for less than a minute is invalid (400) before the
// policy is asked and before the token is spent; 60.5s is truncated to 60s and issued.
func TestRequestTTLBelowMinute(t *testing.T) {
	now := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	caKey, _ := newSSHKey(t)
	_, userKey := newSSHKey(t)
	alice := ca.Identity{Issuer: "https://idp", Subject: "u1", Email: "alice@example.com", Username: "alice",
		Token: ca.TokenUse{SingleUse: true, ID: "jti-1", Expiry: now.Add(time.Minute)}}
	for _, tt := range []struct {
		ttl     time.Duration
		wantErr bool
		want    time.Duration
	}{{ttl: 1, wantErr: true}, {ttl: 59999 * time.Millisecond, wantErr: true}, {ttl: 60500 * time.Millisecond, want: time.Minute}} {
		pol, tokens := &fakePolicy{dec: ca.Decision{Allow: true, Principals: []string{"alice"}, TTL: time.Hour}}, &spendLedger{}
		sgn := fakeSigner{key: caKey, now: clock}
		a, err := ca.New(ca.Config{Authenticator: fakeAuth{alice}, Policy: pol, UserSigner: sgn, HostSigner: sgn,
			Store: &fakeStore{}, Revocations: store.NewMemory(clock), Tokens: tokens, Now: clock})
		if err != nil {
			t.Fatal(err)
		}
		got, err := a.Issue(context.Background(), "good", ca.Request{Kind: ca.UserCert, PublicKey: userKey, TTL: tt.ttl})
		if tt.wantErr {
			if ca.KindOf(err) != ca.KindInvalid || !strings.Contains(err.Error(), "ttl must be at least 1m") || len(tokens.spent) != 0 || pol.seen.Kind != "" {
				t.Errorf("ttl %v: %v, tokens spent %v, policy asked %v", tt.ttl, err, tokens.spent, pol.seen.Kind != "")
			}
			continue
		}
		if err != nil {
			t.Fatalf("ttl %v: %v", tt.ttl, err)
		}
		if d := time.Duration(got.Cert.ValidBefore-uint64(now.Unix())) * time.Second; d != tt.want || pol.seen.Request.TTLSeconds != 60 {
			t.Errorf("ttl %v: certificate lives %v (policy saw %ds), want %v", tt.ttl, d, pol.seen.Request.TTLSeconds, tt.want)
		}
	}
}
