package store_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
)

// trust is the CA trust registry as keyring.Manager writes it and bastions read it.
type trust interface {
	RegisterCA(ctx context.Context, caKey ssh.PublicKey) error
	UnregisterCA(ctx context.Context, caLine string) error
	RegisterHostCA(ctx context.Context, caKey ssh.PublicKey) error
	Revoke(ctx context.Context, caKey ssh.PublicKey, entries []ca.RevocationEntry) (uint64, error)
	TrustedCAs(ctx context.Context) ([]ssh.PublicKey, error)
	CAs(ctx context.Context) ([]ssh.PublicKey, error)
	State(ctx context.Context, caKey ssh.PublicKey) (ca.RevocationState, error)
}

// TestTrustContract: a registered key is trusted and its scope followed; an unregistered one
// is no longer trusted, but its scope stays followed; on every backend.
func TestTrustContract(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newStore newStore) {
		testTrust(t, func(t *testing.T, c *clock) trust { return newStore(t, c) })
	})
}

func testTrust(t *testing.T, newStore func(*testing.T, *clock) trust) {
	ctx := context.Background()
	line := func(k ssh.PublicKey) string { return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))) }
	same := func(got []ssh.PublicKey, want ...ssh.PublicKey) bool {
		if len(got) != len(want) {
			return false
		}
		for _, w := range want {
			found := false
			for _, g := range got {
				found = found || bytes.Equal(g.Marshal(), w.Marshal())
			}
			if !found {
				return false
			}
		}
		return true
	}
	t.Run("register and unregister", func(t *testing.T) {
		s := newStore(t, &clock{t: time.Now()})
		if got, err := s.TrustedCAs(ctx); err != nil || len(got) != 0 {
			t.Fatalf("empty registry: %v %v", got, err)
		}
		a, b := testenv.PublicKey(t), testenv.PublicKey(t)
		for _, k := range []ssh.PublicKey{a, b, a} {
			if err := s.RegisterCA(ctx, k); err != nil {
				t.Fatal(err)
			}
		}
		if got, _ := s.TrustedCAs(ctx); !same(got, a, b) {
			t.Errorf("trusted = %d keys, want a and b", len(got))
		}
		if got, _ := s.CAs(ctx); !same(got, a, b) {
			t.Errorf("followed = %d keys, want a and b", len(got))
		}
		if st, err := s.State(ctx, a); err != nil || st.CA == nil || st.Version != 0 {
			t.Errorf("a registered key's scope = %+v, %v", st, err)
		}
		if err := s.UnregisterCA(ctx, line(a)); err != nil {
			t.Fatal(err)
		}
		if got, _ := s.TrustedCAs(ctx); !same(got, b) {
			t.Errorf("trusted after unregistering a = %d keys, want b", len(got))
		}
		if got, _ := s.CAs(ctx); !same(got, a, b) {
			t.Errorf("followed after unregistering a = %d keys, want a and b still", len(got))
		}
	})

	// A host CA key's scope holds host revocations: never listed with the user CA keys
	// (whose scopes make the user KRL), whether it revoked before or after it was registered.
	t.Run("host CA keys are not followed for the user KRL", func(t *testing.T) {
		s := newStore(t, &clock{t: time.Now()})
		user, host, early := testenv.PublicKey(t), testenv.PublicKey(t), testenv.PublicKey(t)
		if err := s.RegisterCA(ctx, user); err != nil {
			t.Fatal(err)
		}
		entry := []ca.RevocationEntry{{Kind: ca.RevokedSerial, Value: "9", Expiry: time.Now().Add(time.Hour)}}
		// One host CA key revokes before it is registered (a replica of the previous
		// layout, or a start with Redis down), the other after.
		if _, err := s.Revoke(ctx, early, entry); err != nil {
			t.Fatal(err)
		}
		for _, k := range []ssh.PublicKey{host, early} {
			if err := s.RegisterHostCA(ctx, k); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := s.Revoke(ctx, host, entry); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Revoke(ctx, user, entry); err != nil {
			t.Fatal(err)
		}
		if got, err := s.CAs(ctx); err != nil || !same(got, user) {
			t.Errorf("followed = %d keys (%v), want the user CA key only", len(got), err)
		}
		if st, err := s.State(ctx, host); err != nil || st.Version == 0 || len(st.Entries) != 1 {
			t.Errorf("the host CA key's scope = %+v, %v: its revocation must still be kept", st, err)
		}
	})
}
