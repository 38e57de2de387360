package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/revocation"
)

// TestAdmissionContract: Admit answers what Refused and UseToken answer apart (ca.Admission),
// on every backend: a fresh single-use token once, a replay not fresh, a token that is not
// single-use always fresh and never recorded, a revoked key and a blocked identity or alias
// refused.
func TestAdmissionContract(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newStore newStore) {
		ctx := context.Background()
		now := time.Now()
		s := newStore(t, &clock{t: now})
		caKey, key, other := pubKey(t), pubKey(t), pubKey(t)
		names := []string{"alice@idp", "alice@example.com"}
		tok := ca.TokenUse{SingleUse: true, ID: "iss|jti-1", IssuedAt: now, Expiry: now.Add(time.Minute)}

		if why, fresh, err := s.Admit(ctx, caKey, names, key, tok); err != nil || why != "" || !fresh {
			t.Fatalf("first admission = %q %v %v, want fresh and not refused", why, fresh, err)
		}
		if why, fresh, err := s.Admit(ctx, caKey, names, key, tok); err != nil || why != "" || fresh {
			t.Fatalf("replayed token = %q %v %v, want not fresh", why, fresh, err)
		}
		if ok, _ := s.UseToken(ctx, tok.ID, tok.IssuedAt, tok.Expiry); ok {
			t.Fatal("the ledger accepts a token that Admit spent")
		}
		reusable := ca.TokenUse{ID: "iss|session"}
		for range 2 {
			if why, fresh, err := s.Admit(ctx, caKey, names, key, reusable); err != nil || why != "" || !fresh {
				t.Fatalf("token that is not single-use = %q %v %v, want fresh every time", why, fresh, err)
			}
		}
		if ok, _ := s.UseToken(ctx, reusable.ID, now, now.Add(time.Minute)); !ok {
			t.Fatal("Admit recorded a token that is not single-use")
		}
		expired := ca.TokenUse{SingleUse: true, ID: "iss|old", IssuedAt: now.Add(-time.Hour), Expiry: now.Add(-time.Second)}
		if _, fresh, err := s.Admit(ctx, caKey, names, key, expired); err != nil || fresh {
			t.Fatalf("expired token = %v %v, want not fresh", fresh, err)
		}

		if _, err := s.Revoke(ctx, caKey, []ca.RevocationEntry{{Kind: ca.RevokedKey, Value: revocation.KeyEntry(key), Expiry: now.Add(time.Hour)}}); err != nil {
			t.Fatal(err)
		}
		fresh2 := ca.TokenUse{SingleUse: true, ID: "iss|jti-2", IssuedAt: now, Expiry: now.Add(time.Minute)}
		if why, _, err := s.Admit(ctx, caKey, names, key, fresh2); err != nil || why == "" {
			t.Fatalf("revoked key = %q %v, want a refusal", why, err)
		}
		// The same names with another key: admitted.
		fresh3 := ca.TokenUse{SingleUse: true, ID: "iss|jti-3", IssuedAt: now, Expiry: now.Add(time.Minute)}
		if why, fresh, err := s.Admit(ctx, caKey, names, other, fresh3); err != nil || why != "" || !fresh {
			t.Fatalf("another key = %q %v %v, want admitted", why, fresh, err)
		}
		if err := s.BlockIdentity(ctx, "alice@example.com", now.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		fresh4 := ca.TokenUse{SingleUse: true, ID: "iss|jti-4", IssuedAt: now, Expiry: now.Add(time.Minute)}
		if why, _, err := s.Admit(ctx, caKey, names, other, fresh4); err != nil || why == "" {
			t.Fatalf("blocked alias = %q %v, want a refusal", why, err)
		}
	})
}
