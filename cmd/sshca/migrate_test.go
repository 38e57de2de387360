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
// layout; run again, it changes nothing; one at layout 2 (no blocks of layout 1 to copy, audit
// stripes not yet allowed) moves to 3 and says that the audit stripes start; without --redis
// it says what is missing.
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
	if err != nil || !strings.Contains(out, "store layout 1 → 3: 1 identity blocks in force copied") {
		t.Fatalf("migrate: %v\n%s", err, out)
	}
	if s, err := rdb.ZScore(ctx, keys.Blocked(), "https://idp|mallory").Result(); err != nil || s < float64(time.Now().UnixMilli()) {
		t.Errorf("the block in force was not copied: %v %v", s, err)
	}
	if v, _ := rdb.Get(ctx, keys.StoreLayout()).Result(); v != "3" {
		t.Errorf("store layout %q after migrate", v)
	}
	out, err = runCLI(t, "", "store", "migrate", "--redis", "redis://"+r.Addr)
	if err != nil || !strings.Contains(out, "at layout 3 already") {
		t.Errorf("second migrate: %v\n%s", err, out)
	}
	rdb.Set(ctx, keys.StoreLayout(), 2, 0)
	out, err = runCLI(t, "", "store", "migrate", "--redis", "redis://"+r.Addr)
	if err != nil || !strings.Contains(out, "store layout 2 → 3") || !strings.Contains(out, "audit stripes") || strings.Contains(out, "identity blocks") {
		t.Errorf("migrate from layout 2: %v\n%s", err, out)
	}
	if v, _ := rdb.Get(ctx, keys.StoreLayout()).Result(); v != "3" {
		t.Errorf("store layout %q after migrate from 2", v)
	}
	t.Setenv("SSHCA_REDIS_URL", "")
	if out, err := runCLI(t, "", "store", "migrate"); err == nil || !strings.Contains(err.Error(), "--redis URL") {
		t.Errorf("migrate without --redis: %v\n%s", err, out)
	}
}
