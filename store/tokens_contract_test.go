package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/sshca/sshca/ca"
)

// TestTokenLedgerContract: a token is accepted once (ca.TokenLedger), on every backend.
func TestTokenLedgerContract(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newStore newStore) {
		testTokenLedger(t, func(t *testing.T, c *clock) ca.TokenLedger { return newStore(t, c) })
	})
}

func testTokenLedger(t *testing.T, newStore func(*testing.T, *clock) ca.TokenLedger) {
	ctx := context.Background()
	t.Run("single use", func(t *testing.T) {
		s := newStore(t, &clock{t: time.Now()})
		exp := time.Now().Add(time.Minute)
		if ok, err := s.UseToken(ctx, "iss|jti-1", time.Time{}, exp); err != nil || !ok {
			t.Fatalf("first use = %v %v", ok, err)
		}
		if ok, _ := s.UseToken(ctx, "iss|jti-1", time.Time{}, exp); ok {
			t.Fatal("second use accepted")
		}
		if ok, _ := s.UseToken(ctx, "other|jti-1", time.Time{}, exp); !ok {
			t.Fatal("the same jti from another issuer was refused")
		}
		if ok, _ := s.UseToken(ctx, "iss|expired", time.Time{}, time.Now().Add(-time.Second)); ok {
			t.Fatal("an expired token was accepted")
		}
	})
}
