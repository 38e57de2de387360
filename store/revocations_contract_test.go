package store_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/revocation"
)

// TestRevocationContract: revocation scopes and signing-time refusals (ca.RevocationStore)
// on every backend.
func TestRevocationContract(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newStore newStore) {
		testRevocations(t, func(t *testing.T, c *clock) ca.RevocationStore { return newStore(t, c) })
	})
}

func testRevocations(t *testing.T, newStore func(*testing.T, *clock) ca.RevocationStore) {
	ctx := context.Background()
	t0 := time.Now().UTC().Truncate(time.Second)
	caKey, otherCA, userKey := testenv.PublicKey(t), testenv.PublicKey(t), testenv.PublicKey(t)

	t.Run("revoke, idempotent, versioned, scoped", func(t *testing.T) {
		c := &clock{t: t0}
		s := newStore(t, c)
		e1 := ca.RevocationEntry{Kind: ca.RevokedSerial, Value: "42", Expiry: t0.Add(time.Hour)}
		e2 := ca.RevocationEntry{Kind: ca.RevokedKeyID, Value: "alice@example.com#42", Expiry: t0.Add(time.Hour)}
		v1, err := s.Revoke(ctx, caKey, []ca.RevocationEntry{e1, e2})
		if err != nil || v1 != 1 {
			t.Fatalf("Revoke = %d, %v; want version 1", v1, err)
		}
		if v, _ := s.Revoke(ctx, caKey, []ca.RevocationEntry{e1}); v != v1 {
			t.Errorf("re-revoking bumped the version to %d", v)
		}
		e3 := ca.RevocationEntry{Kind: ca.RevokedSerial, Value: "43", Expiry: t0.Add(time.Minute)}
		if v, _ := s.Revoke(ctx, caKey, []ca.RevocationEntry{e3}); v != v1+1 {
			t.Errorf("version after a new entry = %d, want %d", v, v1+1)
		}
		st, err := s.State(ctx, caKey)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]ca.RevocationEntry{e2, e1, e3}, st.Entries); diff != "" {
			t.Errorf("entries (-want +got):\n%s", diff)
		}
		if st.Version != 2 || st.CA == nil || ssh.FingerprintSHA256(st.CA) != ssh.FingerprintSHA256(caKey) {
			t.Errorf("state version %d CA %v", st.Version, st.CA)
		}
		if other, _ := s.State(ctx, otherCA); len(other.Entries) != 0 || other.Version != 0 {
			t.Errorf("another CA's scope is not empty: %+v", other)
		}
		c.Set(t0.Add(2 * time.Minute))
		st, _ = s.State(ctx, caKey)
		if len(st.Entries) != 2 {
			t.Errorf("expired entry still listed: %+v", st.Entries)
		}
	})

	t.Run("bad entries", func(t *testing.T) {
		s := newStore(t, &clock{t: t0})
		for _, e := range []ca.RevocationEntry{{Kind: ca.RevokedSerial, Value: "0"}, {Kind: ca.RevokedSerial, Value: "x"}, {Kind: "bogus", Value: "1"}, {Kind: ca.RevokedKey, Value: "!!"}} {
			if _, err := s.Revoke(ctx, caKey, []ca.RevocationEntry{e}); err == nil {
				t.Errorf("%+v accepted", e)
			}
		}
	})

	t.Run("refused at signing", func(t *testing.T) {
		c := &clock{t: t0}
		s := newStore(t, c)
		if why, err := s.Refused(ctx, caKey, []string{"alice"}, userKey); err != nil || why != "" {
			t.Fatalf("Refused = %q, %v before any revocation", why, err)
		}
		if _, err := s.Revoke(ctx, caKey, []ca.RevocationEntry{{Kind: ca.RevokedKey, Value: revocation.KeyEntry(userKey), Expiry: t0.Add(time.Hour)}}); err != nil {
			t.Fatal(err)
		}
		if why, _ := s.Refused(ctx, caKey, []string{"alice"}, userKey); !strings.Contains(why, "public key has been revoked") {
			t.Errorf("revoked key: %q", why)
		}
		// After a CA key rotation the next CA key signs: the key stays refused.
		if why, _ := s.Refused(ctx, testenv.PublicKey(t), []string{"alice"}, userKey); !strings.Contains(why, "public key has been revoked") {
			t.Errorf("revoked key, asked of another CA key: %q", why)
		}
		if err := s.BlockIdentity(ctx, "bob", t0.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if why, _ := s.Refused(ctx, caKey, []string{"bob"}, testenv.PublicKey(t)); !strings.Contains(why, "bob were revoked") {
			t.Errorf("blocked identity: %q", why)
		}
		c.Set(t0.Add(2 * time.Hour))
		if why, _ := s.Refused(ctx, caKey, []string{"bob"}, userKey); why != "" {
			t.Errorf("after expiry: %q", why)
		}
	})
}
