package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
)

// TestStoreMigrateCLI: `sshca store migrate` on a store that replicas of layout 1 wrote (a
// block in force, one ended) copies the block in force and moves the store to the current
// layout; run again, it changes nothing; without --redis it says what is missing.
func TestStoreMigrateCLI(t *testing.T) {
	ctx := context.Background()
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	keys := store.Keys{}
	rdb.ZAdd(ctx, keys.LegacyBlocked(),
		redis.Z{Score: float64(time.Now().Add(time.Hour).UnixMilli()), Member: "https://idp|mallory"},
		redis.Z{Score: float64(time.Now().Add(-time.Hour).UnixMilli()), Member: "https://idp|ended"})

	out, err := runCLI(t, "", "store", "migrate", "--redis", "redis://"+r.Addr)
	if err != nil || !strings.Contains(out, "store layout 1 → 2: 1 identity blocks in force copied") {
		t.Fatalf("migrate: %v\n%s", err, out)
	}
	if s, err := rdb.ZScore(ctx, keys.Blocked(), "https://idp|mallory").Result(); err != nil || s < float64(time.Now().UnixMilli()) {
		t.Errorf("the block in force was not copied: %v %v", s, err)
	}
	if v, _ := rdb.Get(ctx, keys.StoreLayout()).Result(); v != "2" {
		t.Errorf("store layout %q after migrate", v)
	}
	out, err = runCLI(t, "", "store", "migrate", "--redis", "redis://"+r.Addr)
	if err != nil || !strings.Contains(out, "at layout 2 already") {
		t.Errorf("second migrate: %v\n%s", err, out)
	}
	t.Setenv("SSHCA_REDIS_URL", "")
	if out, err := runCLI(t, "", "store", "migrate"); err == nil || !strings.Contains(err.Error(), "--redis URL") {
		t.Errorf("migrate without --redis: %v\n%s", err, out)
	}
}
