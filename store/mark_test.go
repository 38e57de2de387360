package store_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/revocation"
	"github.com/sshca/sshca/store"
)

func serialEntry(n int, exp time.Time) []ca.RevocationEntry {
	return []ca.RevocationEntry{{Kind: ca.RevokedSerial, Value: strconv.Itoa(n), Expiry: exp}}
}

// TestMarkDetectsLostState: a store emptied behind the back of a process that wrote to it is
// noticed by that process's witness on every path issuance and KRLs depend on, while
// revocations are still written; a second process that never saw the store cannot tell.
func TestMarkDetectsLostState(t *testing.T) {
	srv := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	ctx := context.Background()
	s := store.NewRedis(rdb, store.RedisOptions{})
	caKey, key := testenv.PublicKey(t), testenv.PublicKey(t)
	exp := time.Now().Add(time.Hour)
	for i := 1; i <= 3; i++ {
		if _, err := s.Revoke(ctx, caKey, serialEntry(i, exp)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.BlockIdentity(ctx, "https://idp|bob", exp); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateKeyring(ctx, func(*ca.Keyring) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if err := s.CheckState(ctx, caKey); err != nil {
		t.Fatalf("intact store: %v", err)
	}
	if why, err := s.Refused(ctx, caKey, []string{"https://idp|alice"}, key); err != nil || why != "" {
		t.Fatalf("intact store refuses: %q %v", why, err)
	}
	marks := map[string]string{}
	for _, tag := range []string{store.TagCA(fingerprint(caKey)), store.TagInventory, store.TagKeyring} {
		n, err := rdb.HGet(ctx, store.Keys{}.Mark(tag), "n").Result()
		if err != nil {
			t.Fatalf("mark of %s: %v", tag, err)
		}
		marks[tag] = n
	}
	if marks[store.TagCA(fingerprint(caKey))] != "3" || marks[store.TagInventory] != "1" || marks[store.TagKeyring] != "1" {
		t.Fatalf("marks after 3 revocations, 1 block, 1 keyring change: %v", marks)
	}

	rdb.FlushAll(ctx) // the store comes back empty

	if err := s.CheckState(ctx, caKey); !errors.Is(err, store.ErrStateLost) {
		t.Fatalf("readiness on an emptied store: %v, want ErrStateLost", err)
	}
	if _, err := s.Refused(ctx, caKey, nil, key); !errors.Is(err, store.ErrStateLost) {
		t.Fatalf("issuance check on an emptied store: %v", err)
	}
	var ce *ca.Error
	if _, err := s.Refused(ctx, caKey, nil, key); !errors.As(err, &ce) || ce.Kind != ca.KindUnavailable {
		t.Fatalf("the lost state is not a ca unavailable error: %#v", err)
	}
	if _, _, err := s.Snapshot(ctx, fingerprint(caKey)); !errors.Is(err, store.ErrStateLost) {
		t.Fatalf("snapshot (KRL) on an emptied store: %v", err)
	}
	// Revocations are still accepted and written; the mark is left as found (missing), so the
	// loss stays visible.
	if _, err := s.Revoke(ctx, caKey, serialEntry(4, exp)); err != nil {
		t.Fatalf("revoke on a lost store: %v", err)
	}
	if err := s.BlockIdentity(ctx, "https://idp|carol", exp); err != nil {
		t.Fatalf("block on a lost store: %v", err)
	}
	if n, _ := rdb.ZCard(ctx, store.Keys{}.ScopeEntries(fingerprint(caKey))).Result(); n != 1 {
		t.Fatalf("the revocation on the lost store was not written: %d entries", n)
	}
	if n, _ := rdb.Exists(ctx, store.Keys{}.Mark(store.TagCA(fingerprint(caKey)))).Result(); n != 0 {
		t.Fatal("a write on the lost store re-created the scope's mark")
	}
	if err := s.CheckState(ctx, caKey); !errors.Is(err, store.ErrStateLost) {
		t.Fatalf("lost state forgotten after writes: %v", err)
	}

	// A process that never saw the store has no witness of its own: it starts over. That is
	// what the bastions' KRL versions are for.
	fresh := store.NewRedis(rdb, store.RedisOptions{})
	if err := fresh.CheckState(ctx, caKey); err != nil {
		t.Fatalf("a fresh process: %v", err)
	}
}

// TestMarkRollback: a store restored to an older copy of itself (same generation, smaller
// counters) is noticed; a newer generation (a rebuild) is adopted and clears the loss.
func TestMarkRollback(t *testing.T) {
	srv := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	ctx := context.Background()
	s := store.NewRedis(rdb, store.RedisOptions{})
	caKey, key := testenv.PublicKey(t), testenv.PublicKey(t)
	exp := time.Now().Add(time.Hour)
	v1, err := s.Revoke(ctx, caKey, serialEntry(1, exp))
	if err != nil {
		t.Fatal(err)
	}
	markKey := store.Keys{}.Mark(store.TagCA(fingerprint(caKey)))
	old, err := rdb.Dump(ctx, markKey).Result()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Revoke(ctx, caKey, serialEntry(2, exp)); err != nil {
		t.Fatal(err)
	}
	if err := rdb.RestoreReplace(ctx, markKey, 0, old).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Refused(ctx, caKey, nil, key); !errors.Is(err, store.ErrStateLost) {
		t.Fatalf("rolled-back mark: %v", err)
	}

	// A rebuild: a newer generation on the record and the marks.
	gen := store.Keys{}.Generation()
	id, _ := rdb.HGet(ctx, gen, "id").Result()
	rdb.HSet(ctx, gen, "id", id+"r", "epoch", 1)
	rdb.HSet(ctx, markKey, "id", id+"r", "epoch", 1, "n", 0)
	if err := s.CheckState(ctx, caKey); err != nil {
		t.Fatalf("after a rebuild: %v", err)
	}
	v, err := s.Revoke(ctx, caKey, serialEntry(3, exp))
	if err != nil {
		t.Fatal(err)
	}
	if g, _ := revocation.SplitVersion(v); g != 1 || v <= v1 {
		t.Fatalf("version after the rebuild %d (generation %d), before %d", v, g, v1)
	}
	st, _, err := s.Snapshot(ctx, fingerprint(caKey))
	if err != nil || st.Version != v {
		t.Fatalf("snapshot version %d (%v), revoke said %d", st.Version, err, v)
	}
	changes, err := s.Changes(ctx, fingerprint(caKey), "0-0", -1)
	if err != nil || len(changes) == 0 || changes[len(changes)-1].Version != v {
		t.Fatalf("feed after the rebuild: %+v %v, want last version %d", changes, err, v)
	}
}

// TestMarkConcurrentNoFalseLoss: writes and reads racing in one process never look like a
// rollback (a read compares only with what completed before it was sent).
func TestMarkConcurrentNoFalseLoss(t *testing.T) {
	srv := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: 32})
	defer rdb.Close()
	ctx := context.Background()
	s := store.NewRedis(rdb, store.RedisOptions{})
	caKey, key := testenv.PublicKey(t), testenv.PublicKey(t)
	exp := time.Now().Add(time.Hour)
	var wg sync.WaitGroup
	errc := make(chan error, 1000)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 40 {
				var err error
				switch (w + i) % 4 {
				case 0:
					_, err = s.Revoke(ctx, caKey, serialEntry(w*1000+i+1, exp))
				case 1:
					err = s.BlockIdentity(ctx, "id"+strconv.Itoa(i), exp)
				case 2:
					_, err = s.Refused(ctx, caKey, []string{"x"}, key)
				case 3:
					err = s.CheckState(ctx, caKey)
				}
				if err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
}

func fingerprint(k ssh.PublicKey) string { return ssh.FingerprintSHA256(k) }
