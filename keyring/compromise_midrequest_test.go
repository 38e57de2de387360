package keyring_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/kms"
	"github.com/sshca/sshca/revocation"
)

// TestCompromiseMidRequest: the CA key, user or host, is marked compromised through another
// replica (its own store client and manager) after this replica's admission read the key's
// ban and before it signs; this replica's key ring does not refresh, so the key it fixed signs.
// Against a real redis-server, the step injected right after the admission's answer (a hook,
// no sleeps). The audit append after the signature reads the key's ban in its own round trip:
// the certificate is withheld (503 naming the key, "not handed out"), its inventory record
// withdrawn, and the audit log holds its "issued" record followed by one naming its serial as
// not handed out (which store rebuild honours: TestRestoreWithheldCertificate). The token
// stays spent. Before the audit append read the ban, the certificate was handed out, signed by
// a key every KRL and known_hosts already refused. "unrelated ban": a ban of another public
// key landing in the same place withholds nothing.
func TestCompromiseMidRequest(t *testing.T) {
	for _, c := range []struct {
		name       string
		kind       ca.CertKind
		compromise bool
	}{{"user", ca.UserCert, true}, {"host", ca.HostCert, true}, {"unrelated ban", ca.UserCert, false}} {
		t.Run(c.name, func(t *testing.T) { testCompromiseMidRequest(t, c.kind, c.compromise) })
	}
}

func testCompromiseMidRequest(t *testing.T, kind ca.CertKind, compromise bool) {
	ctx := context.Background()
	var step func()
	r := newTwoReplicas(t, kind, true, func(db ca.Admission) ca.Admission { return stepAfterAdmit{db, &step} })
	db, first, kr, al, a, req, db2, m := r.db, r.first, r.kr, r.al, r.a, r.req, r.db2, r.m
	old := ssh.FingerprintSHA256(first)
	next, err := m.Generate(ctx, kind, kms.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	if err := kr.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	stepped := false
	step = func() {
		stepped = true
		if !compromise {
			_, other, _ := newKey(t)
			if _, err := db2.Revoke(ctx, first, []ca.RevocationEntry{{Kind: ca.RevokedKey, Value: revocation.KeyEntry(other)}}); err != nil {
				t.Fatal(err)
			}
			return
		}
		if _, err := m.Promote(ctx, kind, true); err != nil {
			t.Fatal(err)
		}
		if _, err := m.Compromised(ctx, old); err != nil {
			t.Fatal(err)
		}
	}
	iss, err := a.Issue(ctx, "job-1", req)
	if !stepped {
		t.Fatal("the step did not run between admission and signature: the test shows nothing")
	}
	if got := ssh.FingerprintSHA256(kr.PublicKey()); got != old {
		t.Fatalf("this replica's keyring refreshed by itself (active %s): the test shows nothing", got)
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
	if !compromise {
		if err != nil {
			t.Fatalf("a ban of another key withheld the certificate: %v", err)
		}
		if len(live) != 1 || live[0].Serial != iss.Cert.Serial {
			t.Errorf("inventory %+v, want the certificate issued", live)
		}
		return
	}
	if err == nil {
		t.Fatalf("handed out a certificate signed by %s, marked compromised before its audit record was kept", ssh.FingerprintSHA256(iss.Cert.SignatureKey))
	}
	if ca.KindOf(err) != ca.KindUnavailable || !strings.Contains(err.Error(), old) || !strings.Contains(err.Error(), "not handed out") {
		t.Fatalf("issue: %v (%v), want unavailable naming key %s, not handed out", err, ca.KindOf(err), old)
	}
	if len(live) != 0 {
		t.Errorf("inventory holds %+v after the certificate was withheld, want nothing", live)
	}
	// The audit log: "issued", then the same serial not handed out.
	var serial uint64
	var outcomes []string
	if _, err := al.Verify(ctx, func(e audit.Entry) {
		r := e.Record
		if r.Action != kind.Action() {
			return
		}
		if r.Outcome == "issued" {
			serial = r.Serial
		}
		if r.Serial != 0 && r.Serial == serial {
			outcomes = append(outcomes, r.Outcome)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if serial == 0 || strings.Join(outcomes, ",") != "issued,unavailable" {
		t.Errorf("audit records of serial %d: %q, want issued then unavailable", serial, outcomes)
	}
	if err := kr.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	// The token stays spent (asked once the replica signs with the new key, which the
	// admission does not refuse).
	if _, err := a.Issue(ctx, "job-1", req); ca.KindOf(err) != ca.KindUnauthenticated {
		t.Errorf("the same token again: %v, want refused as used", err)
	}
	iss, err = a.Issue(ctx, "job-2", req)
	if err != nil || ssh.FingerprintSHA256(iss.Cert.SignatureKey) != next.Fingerprint {
		t.Fatalf("after the refresh: %v, want signed by %s", err, next.Fingerprint)
	}
}
