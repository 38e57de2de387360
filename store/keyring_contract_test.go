package store_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/keyring"
)

// TestKeyringContract: the keyring document (keyring.Document) on every backend: concurrent
// updates are all kept, with the version bumped for each; an error from fn changes nothing.
func TestKeyringContract(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newStore newStore) {
		testKeyring(t, func(t *testing.T, c *clock) keyring.Document { return newStore(t, c) })
	})
}

func testKeyring(t *testing.T, newStore func(*testing.T, *clock) keyring.Document) {
	ctx := context.Background()
	t.Run("concurrent updates", func(t *testing.T) {
		s := newStore(t, &clock{t: time.Now()})
		if k, err := s.Keyring(ctx); err != nil || k.Version != 0 {
			t.Fatalf("empty keyring: %+v %v", k, err)
		}
		done := make(chan error, 8)
		for i := range 8 {
			go func() {
				_, err := s.UpdateKeyring(ctx, func(k *ca.Keyring) error {
					k.Keys = append(k.Keys, ca.CAKey{CA: ca.UserCert, Fingerprint: string(rune('a' + i))})
					return nil
				})
				done <- err
			}()
		}
		for range 8 {
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		}
		k, _ := s.Keyring(ctx)
		if k.Version != 8 || len(k.Keys) != 8 {
			t.Fatalf("after 8 concurrent updates: version %d, %d keys", k.Version, len(k.Keys))
		}
	})
	t.Run("an error from fn", func(t *testing.T) {
		s := newStore(t, &clock{t: time.Now()})
		if _, err := s.UpdateKeyring(ctx, func(k *ca.Keyring) error {
			k.Keys = append(k.Keys, ca.CAKey{CA: ca.UserCert, Fingerprint: "a"})
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		_, err := s.UpdateKeyring(ctx, func(k *ca.Keyring) error {
			k.Keys = nil
			return ca.Invalid("no")
		})
		if ca.KindOf(err) != ca.KindInvalid {
			t.Errorf("a domain error from fn: %v", err)
		}
		other := errors.New("boom")
		if _, err := s.UpdateKeyring(ctx, func(*ca.Keyring) error { return other }); !errors.Is(err, other) {
			t.Errorf("another error from fn: %v", err)
		}
		k, _ := s.Keyring(ctx)
		if k.Version != 1 || len(k.Keys) != 1 {
			t.Errorf("after failed updates: version %d, keys %+v", k.Version, k.Keys)
		}
	})
}
