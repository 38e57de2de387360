package ca_test

import (
	"testing"
	"time"

	"github.com/sshca/sshca/ca"
)

func TestKeyringLifecycle(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	var r ca.Keyring
	key := func(fp string) ca.CAKey { return ca.CAKey{CA: ca.UserCert, Fingerprint: fp} }
	if err := r.AddNext(key("A"), t0); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Promote(ca.UserCert, t0, 0, time.Hour, false); err != nil {
		t.Fatal(err)
	}
	if err := r.AddNext(key("B"), t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := r.AddNext(key("C"), t0.Add(time.Hour)); ca.KindOf(err) != ca.KindConflict {
		t.Errorf("second next key: %v", err)
	}
	// B was published a minute ago; hosts refresh every 10 minutes.
	if _, err := r.Promote(ca.UserCert, t0.Add(61*time.Minute), 10*time.Minute, time.Hour, false); ca.KindOf(err) != ca.KindConflict {
		t.Fatalf("early promote: %v", err)
	}
	now := t0.Add(2 * time.Hour)
	if _, err := r.Promote(ca.UserCert, now, 10*time.Minute, time.Hour, false); err != nil {
		t.Fatal(err)
	}
	if a, _ := r.Active(ca.UserCert); a.Fingerprint != "B" {
		t.Errorf("active = %s", a.Fingerprint)
	}
	if got := r.Published(ca.UserCert, now.Add(30*time.Minute)); len(got) != 2 {
		t.Errorf("published while A's certs may live: %v", got)
	}
	if got := r.Published(ca.UserCert, now.Add(61*time.Minute)); len(got) != 1 {
		t.Errorf("published after A's certs expired: %v", got)
	}
	if _, err := r.Retire("A", now, false); ca.KindOf(err) != ca.KindConflict {
		t.Errorf("retire with live certs: %v", err)
	}
	if _, err := r.Retire("A", now, true); err != nil {
		t.Errorf("forced retire: %v", err)
	}
	if _, err := r.MarkCompromised("B", now); ca.KindOf(err) != ca.KindConflict {
		t.Errorf("compromising the only active key: %v", err)
	}
	if _, err := r.MarkCompromised("A", now); err != nil {
		t.Fatal(err)
	}
	if c := r.Compromised(ca.UserCert); len(c) != 1 || c[0].Fingerprint != "A" {
		t.Errorf("compromised = %v", c)
	}
	if _, err := r.Retire("Z", now, false); ca.KindOf(err) != ca.KindNotFound {
		t.Errorf("unknown key: %v", err)
	}
}
