package revocation_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/revocation"
)

func pubKey(t testing.TB) ssh.PublicKey {
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestRevocationContract runs one contract against memory, redis-server and miniredis.
func TestRevocationContract(t *testing.T) {
	t.Run("memory", func(t *testing.T) {
		testRevocations(t, func(t *testing.T, c *clock) ca.RevocationStore { return revocation.NewMemory(c.Now) })
	})
	t.Run("redis-server", func(t *testing.T) {
		r := testenv.StartRedis(t)
		testRevocations(t, func(t *testing.T, c *clock) ca.RevocationStore {
			rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
			t.Cleanup(func() { rdb.FlushAll(context.Background()); rdb.Close() })
			return revocation.NewRedis(rdb, revocation.RedisOptions{Now: c.Now})
		})
	})
	t.Run("miniredis", func(t *testing.T) {
		testRevocations(t, func(t *testing.T, c *clock) ca.RevocationStore {
			mr := miniredis.RunT(t)
			rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
			t.Cleanup(func() { rdb.Close() })
			return revocation.NewRedis(rdb, revocation.RedisOptions{Now: c.Now})
		})
	})
}

func testRevocations(t *testing.T, newStore func(*testing.T, *clock) ca.RevocationStore) {
	ctx := context.Background()
	t0 := time.Now().UTC().Truncate(time.Second)
	caKey, otherCA, userKey := pubKey(t), pubKey(t), pubKey(t)

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
		if why, _ := s.Refused(ctx, pubKey(t), []string{"alice"}, userKey); !strings.Contains(why, "public key has been revoked") {
			t.Errorf("revoked key, asked of another CA key: %q", why)
		}
		if err := s.BlockIdentity(ctx, "bob", t0.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if why, _ := s.Refused(ctx, caKey, []string{"bob"}, pubKey(t)); !strings.Contains(why, "bob were revoked") {
			t.Errorf("blocked identity: %q", why)
		}
		c.Set(t0.Add(2 * time.Hour))
		if why, _ := s.Refused(ctx, caKey, []string{"bob"}, userKey); why != "" {
			t.Errorf("after expiry: %q", why)
		}
	})
}

// TestFollow: a consumer that snapshots and then follows the stream sees every change in
// order, and a version gap tells it that it must reload.
func TestFollow(t *testing.T) {
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	s := revocation.NewRedis(rdb, revocation.RedisOptions{})
	ctx := context.Background()
	caKey := pubKey(t)
	fp := ssh.FingerprintSHA256(caKey)
	if err := s.RegisterCA(ctx, caKey); err != nil {
		t.Fatal(err)
	}
	st, pos, err := s.Snapshot(ctx, fp)
	if err != nil || st.Version != 0 || pos != "0-0" || st.CA == nil {
		t.Fatalf("empty snapshot = %+v %q %v", st, pos, err)
	}
	exp := time.Now().Add(time.Hour)
	for i := range 3 {
		if _, err := s.Revoke(ctx, caKey, []ca.RevocationEntry{{Kind: ca.RevokedSerial, Value: string(rune('1' + i)), Expiry: exp}}); err != nil {
			t.Fatal(err)
		}
	}
	changes, err := s.Changes(ctx, fp, pos, 100*time.Millisecond)
	if err != nil || len(changes) != 3 {
		t.Fatalf("changes = %+v, %v", changes, err)
	}
	for i, c := range changes {
		if c.Version != uint64(i+1) || len(c.Entries) != 1 || c.Entries[0].Value != string(rune('1'+i)) {
			t.Errorf("change %d = %+v", i, c)
		}
	}
	if more, _ := s.Changes(ctx, fp, changes[2].ID, 50*time.Millisecond); len(more) != 0 {
		t.Errorf("changes after the last one: %+v", more)
	}
	cas, err := s.CAs(ctx)
	if err != nil || len(cas) != 1 {
		t.Fatalf("CAs = %v %v", cas, err)
	}
}

// TestTokenLedgerContract: a token is accepted once, on every store.
func TestTokenLedgerContract(t *testing.T) {
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	mr := miniredis.RunT(t)
	mrdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer mrdb.Close()
	ctx := context.Background()
	for name, s := range map[string]ca.TokenLedger{
		"memory":       revocation.NewMemory(time.Now),
		"redis-server": revocation.NewRedis(rdb, revocation.RedisOptions{}),
		"miniredis":    revocation.NewRedis(mrdb, revocation.RedisOptions{}),
	} {
		t.Run(name, func(t *testing.T) {
			exp := time.Now().Add(time.Minute)
			if ok, err := s.UseToken(ctx, "iss|jti-1", exp); err != nil || !ok {
				t.Fatalf("first use = %v %v", ok, err)
			}
			if ok, _ := s.UseToken(ctx, "iss|jti-1", exp); ok {
				t.Fatal("second use accepted")
			}
			if ok, _ := s.UseToken(ctx, "other|jti-1", exp); !ok {
				t.Fatal("the same jti from another issuer was refused")
			}
			if ok, _ := s.UseToken(ctx, "iss|expired", time.Now().Add(-time.Second)); ok {
				t.Fatal("an expired token was accepted")
			}
		})
	}
}

// TestKeyringStore: concurrent updates are all kept, with the version bumped for each.
func TestKeyringStore(t *testing.T) {
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	s := revocation.NewRedis(rdb, revocation.RedisOptions{})
	ctx := context.Background()
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
	_, err := s.UpdateKeyring(ctx, func(k *ca.Keyring) error { return ca.Invalid("no") })
	if ca.KindOf(err) != ca.KindInvalid {
		t.Errorf("an error from fn: %v", err)
	}
}
