package store_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
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
