package store_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/revocation"
	"github.com/sshca/sshca/store"
)

// TestRestoreKeyring: Restore writes back the key ring of the last "done" record of a key-ring
// change, with each redacted PIN put back from KeyringKMS; a key whose PIN it cannot put back,
// and an allowed change followed by no record of what it left, are listed in Skipped; a change
// that failed (its decision settled as unavailable) is not.
func TestRestoreKeyring(t *testing.T) {
	srv := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Second)
	userPub, nextPub, hostPub := testenv.PublicKey(t), testenv.PublicKey(t), testenv.PublicKey(t)
	line := func(k ssh.PublicKey) string { return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))) }
	const pinKMS = "pkcs11:token=ssh-ca?pin-value=1234"
	const redactedKMS = "pkcs11:token=ssh-ca?pin-value=REDACTED" // as kms.Redact shows it
	uris := map[string]string{redactedKMS: pinKMS}
	ring := &ca.Keyring{Version: 7, Keys: []ca.CAKey{
		{CA: ca.UserCert, KMS: "softkms:", Key: "softkms:path=/k/user.pem", PublicKey: line(userPub), Fingerprint: ssh.FingerprintSHA256(userPub), State: ca.KeyActive, Created: now},
		{CA: ca.UserCert, KMS: redactedKMS, Key: "pkcs11:id=1", PublicKey: line(nextPub), Fingerprint: ssh.FingerprintSHA256(nextPub), State: ca.KeyNext, Created: now},
		{CA: ca.HostCert, KMS: "softkms:", Key: "softkms:path=/k/host.pem", PublicKey: line(hostPub), Fingerprint: ssh.FingerprintSHA256(hostPub), State: ca.KeyActive, Created: now},
	}}
	rec := func(outcome, target string, r *ca.Keyring) ca.AuditRecord {
		return ca.AuditRecord{Time: now, Action: ca.ActionAdmin, Outcome: outcome, Identity: "sre", Target: target, Keyring: r}
	}
	for _, c := range []struct {
		name       string
		kms        map[string]string
		records    []ca.AuditRecord
		wantKMS    string
		wantSkips  []string
		wantWrites bool
	}{
		{"PIN given back", uris, []ca.AuditRecord{rec("allowed", "generate user CA key", nil), rec(ca.OutcomeDone, "generate user CA key", ring),
			rec("allowed", "promote host CA key", nil), rec("unavailable", "promote host CA key", nil)}, pinKMS, nil, true},
		{"PIN unknown", nil, []ca.AuditRecord{rec(ca.OutcomeDone, "generate user CA key", ring)}, redactedKMS, []string{"PIN redacted"}, true},
		{"change without its ring", uris, []ca.AuditRecord{rec(ca.OutcomeDone, "generate user CA key", ring), rec("allowed", "promote user CA key", nil)},
			pinKMS, []string{"without the key ring it left"}, true},
		{"no key-ring change", nil, []ca.AuditRecord{rec("allowed", "list CA keys", nil)}, "", nil, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			rdb.FlushAll(ctx)
			s := store.NewRedis(rdb, store.RedisOptions{})
			r := &store.Restore{UserCA: userPub, HostCA: hostPub, KMSURIs: c.kms}
			for _, x := range c.records {
				r.Add(x)
			}
			rep, err := r.Apply(ctx, s, now)
			if err != nil {
				t.Fatal(err)
			}
			var skips []string
			for _, sk := range r.Skipped {
				skips = append(skips, sk.Why)
			}
			if len(skips) != len(c.wantSkips) {
				t.Fatalf("skipped %q, want %d naming %q", skips, len(c.wantSkips), c.wantSkips)
			}
			for i, w := range c.wantSkips {
				if !strings.Contains(skips[i], w) {
					t.Errorf("skip %q does not say %q", skips[i], w)
				}
			}
			got, err := s.Keyring(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !c.wantWrites {
				if rep.KeyringVersion != 0 || len(got.Keys) != 0 {
					t.Fatalf("a key ring was written with no change recorded: %+v", got)
				}
				return
			}
			if rep.KeyringVersion != 7 || got.Version != 7 || len(got.Keys) != 3 {
				t.Fatalf("key ring written: report %d, store %+v", rep.KeyringVersion, got)
			}
			if got.Keys[1].KMS != c.wantKMS {
				t.Errorf("next key's KMS %q, want %q", got.Keys[1].KMS, c.wantKMS)
			}
			trusted, err := s.TrustedCAs(ctx)
			if err != nil || len(trusted) != 2 {
				t.Errorf("trusted user CA keys after the restore: %d, %v; want the active and the next", len(trusted), err)
			}
		})
	}
}

// TestRestoreCompromisedHostCAKey: a store rebuilt from a key-ring record in which a host CA
// key is compromised bans it again as keyring.Manager.Compromised did, in its own scope and
// the active host key's, so every replica's admission refuses to sign with it before its key
// ring catches up; the active host key still signs. Neither host key is listed among the user
// CA keys the user KRL is built from (the store lost the set of host CA keys with the rest, so
// the rebuild registers them first). Before the fix, the rebuild restored only a user CA key's
// ban, and the host key's scope joined the user KRL's list when a ban was revoked into it.
func TestRestoreCompromisedHostCAKey(t *testing.T) {
	srv := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Second)
	userPub, hostPub, oldHost, banned := testenv.PublicKey(t), testenv.PublicKey(t), testenv.PublicKey(t), testenv.PublicKey(t)
	line := func(k ssh.PublicKey) string { return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))) }
	ring := &ca.Keyring{Version: 4, Keys: []ca.CAKey{
		{CA: ca.UserCert, KMS: "softkms:", Key: "softkms:path=/k/user.pem", PublicKey: line(userPub), Fingerprint: ssh.FingerprintSHA256(userPub), State: ca.KeyActive, Created: now},
		{CA: ca.HostCert, KMS: "softkms:", Key: "softkms:path=/k/old.pem", PublicKey: line(oldHost), Fingerprint: ssh.FingerprintSHA256(oldHost), State: ca.KeyCompromised, Created: now},
		{CA: ca.HostCert, KMS: "softkms:", Key: "softkms:path=/k/host.pem", PublicKey: line(hostPub), Fingerprint: ssh.FingerprintSHA256(hostPub), State: ca.KeyActive, Created: now},
	}}
	r := &store.Restore{UserCA: userPub, HostCA: hostPub}
	r.Add(ca.AuditRecord{Time: now, Action: ca.ActionAdmin, Outcome: ca.OutcomeDone, Identity: "sre", Target: "mark host CA key compromised", Keyring: ring})
	// A ban of an ordinary key, which a rebuild revokes into the host CA key's scope as well.
	r.Add(ca.AuditRecord{Time: now, Action: ca.ActionRevoke, Outcome: "allowed", Identity: "sre",
		Target: "public_key:" + ssh.FingerprintSHA256(banned), PublicKey: revocation.KeyEntry(banned)})
	s := store.NewRedis(rdb, store.RedisOptions{})
	if _, err := r.Apply(ctx, s, now); err != nil {
		t.Fatal(err)
	}
	if len(r.Skipped) != 0 {
		t.Fatalf("skipped %+v", r.Skipped)
	}
	certified := testenv.PublicKey(t)
	_, err := s.Refused(ctx, oldHost, nil, certified)
	if ca.KindOf(err) != ca.KindUnavailable || !strings.Contains(err.Error(), ssh.FingerprintSHA256(oldHost)) {
		t.Errorf("admission with the compromised host CA key after the rebuild: %v, want unavailable naming it", err)
	}
	if why, err := s.Refused(ctx, hostPub, nil, certified); err != nil || why != "" {
		t.Errorf("admission with the active host CA key: %q, %v; want nothing refused", why, err)
	}
	for _, scope := range []ssh.PublicKey{oldHost, hostPub} {
		st, err := s.State(ctx, scope)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(st.Entries, func(e ca.RevocationEntry) bool {
			return e.Kind == ca.RevokedKey && e.Value == revocation.KeyEntry(oldHost) && revocation.Permanent(e)
		}) {
			t.Errorf("host scope %s does not ban the compromised host CA key for good: %+v", ssh.FingerprintSHA256(scope), st.Entries)
		}
	}
	cas, err := s.CAs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range cas {
		if fp := ssh.FingerprintSHA256(k); fp == ssh.FingerprintSHA256(hostPub) || fp == ssh.FingerprintSHA256(oldHost) {
			t.Errorf("host CA key %s is listed among the user CA keys the user KRL is built from", fp)
		}
	}
}
