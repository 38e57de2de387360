package store_test

import (
	"context"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/revocation"
)

// TestAdmissionContract: Admit answers what Refused, UseToken and ReserveSerial answer apart
// (ca.Admission), on every backend: a fresh single-use token once, a replay not fresh, a token
// that is not single-use always fresh and never recorded, a serial reserved once, a revoked
// key and a blocked identity or alias refused.
func TestAdmissionContract(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newStore newStore) {
		ctx := context.Background()
		now := time.Now()
		s := newStore(t, &clock{t: now})
		caKey, key, other := testenv.PublicKey(t), testenv.PublicKey(t), testenv.PublicKey(t)
		names := []string{"alice@idp", "alice@example.com"}
		tok := func(id string) ca.TokenUse {
			return ca.TokenUse{SingleUse: true, ID: "iss|" + id, IssuedAt: now, Expiry: now.Add(time.Minute)}
		}
		admit := func(k ssh.PublicKey, t ca.TokenUse, serial uint64) (ca.Admitted, error) {
			return s.Admit(ctx, ca.AdmissionRequest{CAKey: caKey, Identities: names, Key: k, Token: t, Serial: serial, SerialUntil: now.Add(time.Hour)})
		}

		if got, err := admit(key, tok("jti-1"), 7); err != nil || got != (ca.Admitted{Fresh: true, SerialReserved: true}) {
			t.Fatalf("first admission = %+v %v, want fresh, serial reserved, not refused", got, err)
		}
		if got, err := admit(key, tok("jti-1"), 8); err != nil || got.Refusal != "" || got.Fresh {
			t.Fatalf("replayed token = %+v %v, want not fresh", got, err)
		}
		if ok, _ := s.UseToken(ctx, "iss|jti-1", now, now.Add(time.Minute)); ok {
			t.Fatal("the ledger accepts a token that Admit spent")
		}
		if got, err := admit(key, tok("jti-5"), 7); err != nil || !got.Fresh || got.SerialReserved {
			t.Fatalf("serial reserved before = %+v %v, want fresh and the serial not reserved", got, err)
		}
		if ok, _ := s.ReserveSerial(ctx, 7, now.Add(time.Hour)); ok {
			t.Fatal("ReserveSerial takes a serial that Admit reserved")
		}
		if got, err := admit(key, tok("jti-6"), 0); err != nil || !got.Fresh || got.SerialReserved {
			t.Fatalf("no serial = %+v %v, want fresh, nothing reserved", got, err)
		}
		reusable := ca.TokenUse{ID: "iss|session"}
		for range 2 {
			if got, err := admit(key, reusable, 0); err != nil || got.Refusal != "" || !got.Fresh {
				t.Fatalf("token that is not single-use = %+v %v, want fresh every time", got, err)
			}
		}
		if ok, _ := s.UseToken(ctx, reusable.ID, now, now.Add(time.Minute)); !ok {
			t.Fatal("Admit recorded a token that is not single-use")
		}
		expired := ca.TokenUse{SingleUse: true, ID: "iss|old", IssuedAt: now.Add(-time.Hour), Expiry: now.Add(-time.Second)}
		if got, err := admit(key, expired, 0); err != nil || got.Fresh {
			t.Fatalf("expired token = %+v %v, want not fresh", got, err)
		}

		if _, err := s.Revoke(ctx, caKey, []ca.RevocationEntry{{Kind: ca.RevokedKey, Value: revocation.KeyEntry(key), Expiry: now.Add(time.Hour)}}); err != nil {
			t.Fatal(err)
		}
		if got, err := admit(key, tok("jti-2"), 0); err != nil || got.Refusal == "" {
			t.Fatalf("revoked key = %+v %v, want a refusal", got, err)
		}
		// The same names with another key: admitted.
		if got, err := admit(other, tok("jti-3"), 0); err != nil || got.Refusal != "" || !got.Fresh {
			t.Fatalf("another key = %+v %v, want admitted", got, err)
		}
		if err := s.BlockIdentity(ctx, "alice@example.com", now.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if got, err := admit(other, tok("jti-4"), 0); err != nil || got.Refusal == "" {
			t.Fatalf("blocked alias = %+v %v, want a refusal", got, err)
		}
	})
}
