package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
)

// TestRefusedFailsClosedOnAFailedRead: the signing-time check is one pipeline, and a pipeline
// answers its first failed command's error, which is redis.Nil whenever the requested key is
// not revoked (the first read, a ZSCORE, finds nothing). An error of a later read (here the
// identity blocks' ZMSCORE, refused by an ACL that lacks it; a reply cut off after the first
// read answers the same way) must still fail the check, not read as "not blocked": a blocked
// identity would otherwise be signed for, by Refused and by Admit with a token that is not
// single-use.
func TestRefusedFailsClosedOnAFailedRead(t *testing.T) {
	ctx := context.Background()
	r := testenv.StartRedis(t)
	admin := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { admin.Close() })
	if err := admin.Do(ctx, "ACL", "SETUSER", "partial", "on", ">pw", "~*", "+@all", "-zmscore").Err(); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	full := store.NewRedis(admin, store.RedisOptions{Now: func() time.Time { return now }})
	caKey, key := testenv.PublicKey(t), testenv.PublicKey(t)
	names := []string{"alice@idp", "alice@example.com"}
	// The store is initialised and the identity blocked through a client allowed everything.
	if _, err := full.Refused(ctx, caKey, names, key); err != nil {
		t.Fatal(err)
	}
	if err := full.BlockIdentity(ctx, "alice@example.com", now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if why, err := full.Refused(ctx, caKey, names, key); err != nil || why == "" {
		t.Fatalf("blocked identity through the full client = %q %v, want a refusal", why, err)
	}

	rdb := redis.NewClient(&redis.Options{Addr: r.Addr, Username: "partial", Password: "pw"})
	t.Cleanup(func() { rdb.Close() })
	s := store.NewRedis(rdb, store.RedisOptions{Now: func() time.Time { return now }})
	if why, err := s.Refused(ctx, caKey, names, key); err == nil && why == "" {
		t.Fatal("Refused with the identity blocks unreadable = not refused, no error: want an error (no certificate)")
	}
	reusable := ca.TokenUse{ID: "iss|session"}
	if got, err := s.Admit(ctx, ca.AdmissionRequest{CAKey: caKey, Identities: names, Key: key, Token: reusable}); err == nil && got.Refusal == "" {
		t.Fatalf("Admit with the identity blocks unreadable = not refused (%+v), no error: want an error (no certificate)", got)
	}
}
