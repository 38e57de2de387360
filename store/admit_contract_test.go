package store_test

import (
	"context"
	"slices"
	"strconv"
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
// key and a blocked identity or alias refused, the token spent by the refusal too.
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

		got, err := admit(key, tok("jti-1"), 7)
		if err != nil || got.Spent == "" {
			t.Fatalf("first admission = %+v %v, want its spend named", got, err)
		}
		if got.Spent = ""; got != (ca.Admitted{Fresh: true, SerialReserved: true}) {
			t.Fatalf("first admission = %+v %v, want fresh, serial reserved, not refused", got, err)
		}
		if got, err := admit(key, tok("jti-1"), 8); err != nil || got.Refusal != "" || got.Fresh || got.Spent != "" {
			t.Fatalf("replayed token = %+v %v, want not fresh and no spend named", got, err)
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
			if got, err := admit(key, reusable, 0); err != nil || got.Refusal != "" || !got.Fresh || got.Spent != "" {
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
		// The refusal spends the token too (the check and the spend are one step): the holder
		// of a revoked key loses a token it could not have used (ca.Admission).
		if ok, _ := s.UseToken(ctx, "iss|jti-2", now, now.Add(time.Minute)); ok {
			t.Fatal("a refused admission left its token unspent")
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

// TestAdmissionRecords: Admit with a record (ca.AdmissionRequest.Record) records it in the
// same step, on every backend: the record is in the inventory and among the identity's live
// certificates; the same record again (a pipeline sent twice) stays recorded; another record
// of a serial already recorded does not overwrite it; an identity or alias blocked is a refusal
// that records nothing. Unrecord withdraws a record, but never another certificate's of the
// same serial.
func TestAdmissionRecords(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newStore newStore) {
		ctx := context.Background()
		now := time.Now()
		s := newStore(t, &clock{t: now})
		adm, ok := s.(ca.Admission)
		if !ok {
			t.Fatalf("%T is not a ca.Admission", s)
		}
		caKey := testenv.PublicKey(t)
		cert := func(serial uint64, identity string, key ssh.PublicKey) *ca.Certificate {
			return &ca.Certificate{Serial: serial, KeyID: identity + "#" + strconv.FormatUint(serial, 10), Kind: ca.UserCert,
				Identity: identity, Principals: []string{"alice"}, KeyFingerprint: ssh.FingerprintSHA256(key),
				CAFingerprint: ssh.FingerprintSHA256(caKey), ValidAfter: now.Add(-30 * time.Second).Truncate(time.Second).UTC(),
				ValidBefore: now.Add(10 * time.Minute).Truncate(time.Second).UTC(), Aliases: []string{"email:alice@example.com"},
				IndexUntil: now.Add(time.Hour)}
		}
		admit := func(rec *ca.Certificate, token string) (ca.Admitted, error) {
			return adm.Admit(ctx, ca.AdmissionRequest{CAKey: caKey, Identities: append([]string{rec.Identity}, rec.Aliases...),
				Key: testenv.PublicKey(t), Token: ca.TokenUse{SingleUse: true, ID: "iss|" + token, IssuedAt: now, Expiry: now.Add(time.Minute)},
				Serial: rec.Serial, SerialUntil: now.Add(time.Hour), Record: rec})
		}
		live := func(identity string) []uint64 {
			t.Helper()
			cs, err := s.Live(ctx, identity, now)
			if err != nil {
				t.Fatal(err)
			}
			var serials []uint64
			for _, c := range cs {
				serials = append(serials, c.Serial)
			}
			return serials
		}
		mine := cert(11, "alice@idp", testenv.PublicKey(t))
		if got, err := admit(mine, "t1"); err != nil || !got.Recorded || !got.Fresh || got.Refusal != "" {
			t.Fatalf("admission with a record = %+v %v, want recorded", got, err)
		}
		if c, ok, err := s.Get(ctx, 11); err != nil || !ok || c.KeyID != mine.KeyID || !c.ValidBefore.Equal(mine.ValidBefore) {
			t.Fatalf("Get(11) = %+v %v %v, want the record", c, ok, err)
		}
		if got := live("alice@idp"); !slices.Equal(got, []uint64{11}) {
			t.Fatalf("live certificates of alice %v, want [11]", got)
		}
		if got, err := admit(mine, "t2"); err != nil || !got.Recorded {
			t.Fatalf("the same record again = %+v %v, want recorded", got, err)
		}
		theirs := cert(11, "mallory@idp", testenv.PublicKey(t))
		if got, err := admit(theirs, "t3"); err != nil || got.Recorded || got.SerialReserved {
			t.Fatalf("another record of serial 11 = %+v %v, want neither recorded nor reserved", got, err)
		}
		if c, _, _ := s.Get(ctx, 11); c.Identity != "alice@idp" {
			t.Fatalf("serial 11 is now %q's record, want alice's kept", c.Identity)
		}
		if err := adm.Unrecord(ctx, *theirs); err != nil {
			t.Fatal(err)
		}
		if _, ok, _ := s.Get(ctx, 11); !ok {
			t.Fatal("Unrecord of another record of serial 11 deleted alice's")
		}
		if err := adm.Unrecord(ctx, *mine); err != nil {
			t.Fatal(err)
		}
		if _, ok, _ := s.Get(ctx, 11); ok {
			t.Fatal("Unrecord left the record")
		}
		if got := live("alice@idp"); len(got) != 0 {
			t.Fatalf("live certificates of alice after Unrecord %v, want none", got)
		}

		if err := s.BlockIdentity(ctx, "email:alice@example.com", now.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		blocked := cert(12, "alice@idp", testenv.PublicKey(t))
		if got, err := admit(blocked, "t4"); err != nil || got.Refusal == "" || got.Recorded {
			t.Fatalf("blocked alias = %+v %v, want a refusal and no record", got, err)
		}
		if _, ok, _ := s.Get(ctx, 12); ok {
			t.Fatal("a blocked identity's certificate was recorded")
		}
	})
}
