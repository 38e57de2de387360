package store_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
)

// TestWitnessSeededFromRecord: what Witnessed reads (an audit archive keeps it) seeds the
// witness of a process that never saw the store: the intact store, and one that went on
// after it, pass; a store whose scope mark is restored from an older copy, or whose generation
// record is gone, has lost state; a rebuilt store (a newer generation) passes.
func TestWitnessSeededFromRecord(t *testing.T) {
	srv := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	ctx := context.Background()
	s := store.NewRedis(rdb, store.RedisOptions{})
	caKey := testenv.PublicKey(t)
	exp := time.Now().Add(time.Hour)
	if _, err := s.Revoke(ctx, caKey, serialEntry(1, exp)); err != nil {
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
	w, err := s.Witnessed(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if w.Marks[store.TagCA(fingerprint(caKey))] != 2 || w.Generation == "" {
		t.Fatalf("witnessed %+v, want the scope's mark at 2", w)
	}
	seeded := func() error {
		fresh := store.NewRedis(rdb, store.RedisOptions{})
		if err := fresh.Witness().Seed(w); err != nil {
			t.Fatal(err)
		}
		return fresh.CheckState(ctx)
	}
	if err := seeded(); err != nil {
		t.Fatalf("intact store against its own record: %v", err)
	}
	if _, err := s.Revoke(ctx, caKey, serialEntry(3, exp)); err != nil {
		t.Fatal(err)
	}
	if err := seeded(); err != nil {
		t.Fatalf("a store that went on after the record: %v", err)
	}
	if err := rdb.RestoreReplace(ctx, markKey, 0, old).Err(); err != nil {
		t.Fatal(err)
	}
	if err := seeded(); !errors.Is(err, store.ErrStateLost) {
		t.Fatalf("a scope restored from before the record: %v, want ErrStateLost", err)
	}
	gen, _ := rdb.HGetAll(ctx, store.Keys{}.Generation()).Result()
	rdb.Del(ctx, store.Keys{}.Generation())
	if err := seeded(); !errors.Is(err, store.ErrStateLost) {
		t.Fatalf("generation record gone: %v, want ErrStateLost", err)
	}
	rdb.HSet(ctx, store.Keys{}.Generation(), "id", gen["id"], "epoch", gen["epoch"])
	g, err := s.NextGeneration(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SwitchGeneration(ctx, g, caKey); err != nil {
		t.Fatal(err)
	}
	if err := seeded(); err != nil {
		t.Fatalf("a rebuilt store against an older record: %v", err)
	}
}
