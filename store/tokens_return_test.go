package store_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
)

// TestTokenReturnContract: ReturnToken gives back only the spend it names
// (ca.Admission.ReturnToken), on every backend: a spend that is not the token's record returns
// nothing and the token stays spent; the admission's own spend returns once, and the token is
// fresh again, with a new spend; a late return of the earlier spend, after another request
// spent the token legitimately, leaves that request's record; a token never spent, or not
// single-use, returns nothing.
func TestTokenReturnContract(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newStore newStore) {
		testTokenReturn(t, newStore(t, &clock{t: time.Now()}), "iss|jti-r")
	})
}

// TestTokenReturnOnCluster: TestTokenReturnContract on a real Redis Cluster of 3 masters, with
// the token ledger in 3 shards: the return is one script on the token's own key, whatever slot
// and master it falls on.
func TestTokenReturnOnCluster(t *testing.T) {
	c := testenv.StartRedisCluster(t, 3)
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs})
	t.Cleanup(func() { cc.Close() })
	for i := range 3 {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			testTokenReturn(t, store.NewRedis(cc, store.RedisOptions{Prefix: fmt.Sprintf("c%d", i), InventoryShards: 3}), fmt.Sprintf("iss|jti-%d", i))
		})
	}
}

// testTokenReturn is the return's contract on s, for the token named id.
func testTokenReturn(t *testing.T, s interface {
	ca.Admission
	ca.TokenLedger
}, id string) {
	ctx := context.Background()
	now := time.Now()
	caKey, key := testenv.PublicKey(t), testenv.PublicKey(t)
	tok := ca.TokenUse{SingleUse: true, ID: id, IssuedAt: now, Expiry: now.Add(time.Minute)}
	admit := func(tok ca.TokenUse) ca.Admitted {
		t.Helper()
		res, err := s.Admit(ctx, ca.AdmissionRequest{CAKey: caKey, Identities: []string{"alice@idp"}, Key: key, Token: tok})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	giveBack := func(tok ca.TokenUse, spent string) bool {
		t.Helper()
		ok, err := s.ReturnToken(ctx, tok, spent)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	first := admit(tok)
	if !first.Fresh || first.Spent == "" {
		t.Fatalf("first admission %+v, want fresh with its spend named", first)
	}
	if giveBack(tok, "0123456789abcdef") {
		t.Fatal("a spend that is not the token's record gave it back")
	}
	if res := admit(tok); res.Fresh {
		t.Fatal("the token is fresh after a return of another spend")
	}
	if !giveBack(tok, first.Spent) {
		t.Fatal("the admission's own spend was not given back")
	}
	if giveBack(tok, first.Spent) {
		t.Fatal("one spend given back twice")
	}
	second := admit(tok)
	if !second.Fresh || second.Spent == "" || second.Spent == first.Spent {
		t.Fatalf("admission after the return %+v, want fresh with a spend of its own (first %q)", second, first.Spent)
	}
	// The first request's return arrives late, after the second spent the token.
	if giveBack(tok, first.Spent) {
		t.Fatal("a late return freed the token another request spent")
	}
	if ok, _ := s.UseToken(ctx, tok.ID, now, tok.Expiry); ok {
		t.Fatal("the token is free after a late return of an earlier spend")
	}
	never := ca.TokenUse{SingleUse: true, ID: "iss|never", IssuedAt: now, Expiry: now.Add(time.Minute)}
	if giveBack(never, second.Spent) {
		t.Fatal("a token never spent was given back")
	}
	if giveBack(ca.TokenUse{ID: tok.ID}, second.Spent) {
		t.Fatal("a token that is not single-use was given back")
	}
	if giveBack(tok, "") {
		t.Fatal("no spend named, and the token was given back")
	}
}

// TestTokenReturnAfterExpiry: a return that comes after the token's ledger entry expired
// gives nothing back (false, not an error), and writes nothing: against a real redis-server,
// where the entry expires with the token (PEXPIRE stands for the wait), and memory on its clock.
func TestTokenReturnAfterExpiry(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	tok := ca.TokenUse{SingleUse: true, ID: "iss|jti-exp", IssuedAt: now, Expiry: now.Add(time.Minute)}
	admit := func(t *testing.T, s ca.Admission) string {
		res, err := s.Admit(ctx, ca.AdmissionRequest{CAKey: testenv.PublicKey(t), Identities: []string{"alice@idp"}, Key: testenv.PublicKey(t), Token: tok})
		if err != nil || res.Spent == "" {
			t.Fatalf("admission %+v %v", res, err)
		}
		return res.Spent
	}
	t.Run("redis-server", func(t *testing.T) {
		srv := testenv.StartRedis(t)
		rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
		t.Cleanup(func() { rdb.Close() })
		s := store.NewRedis(rdb, store.RedisOptions{})
		spent := admit(t, s)
		sum := sha256.Sum256([]byte(tok.ID))
		k := store.Keys{}.Token(hex.EncodeToString(sum[:]))
		if err := rdb.PExpire(ctx, k, time.Millisecond).Err(); err != nil {
			t.Fatal(err)
		}
		for rdb.Exists(ctx, k).Val() != 0 {
			time.Sleep(time.Millisecond)
		}
		if ok, err := s.ReturnToken(ctx, tok, spent); ok || err != nil {
			t.Fatalf("return after the entry expired: %v %v, want false", ok, err)
		}
		if n := rdb.Exists(ctx, k).Val(); n != 0 {
			t.Fatal("the return wrote the token's entry")
		}
	})
	t.Run("memory", func(t *testing.T) {
		c := &clock{t: now}
		s := store.NewMemory(c.Now)
		spent := admit(t, s)
		c.Set(tok.Expiry.Add(time.Second))
		if ok, err := s.ReturnToken(ctx, tok, spent); ok || err != nil {
			t.Fatalf("return after the entry expired: %v %v, want false", ok, err)
		}
	})
}
