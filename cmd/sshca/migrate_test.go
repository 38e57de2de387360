package main

import (
	"context"
	"fmt"
	"strconv"
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

// TestStoreMigrateOnCluster: `sshca store migrate --cluster` moves a store on a Redis Cluster
// from layout 2 to 3 (the step that lets replicas keep certificates beyond the first inventory
// shard) whichever node --redis names, and without --cluster a node that does not hold the
// layout's slot makes it say to add --cluster.
func TestStoreMigrateOnCluster(t *testing.T) {
	ctx := context.Background()
	c := testenv.StartRedisCluster(t, 3)
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs})
	defer cc.Close()
	keys := store.Keys{}
	if err := cc.Set(ctx, keys.StoreLayout(), "2", 0).Err(); err != nil {
		t.Fatal(err)
	}
	holder, err := cc.MasterForKey(ctx, keys.StoreLayout())
	if err != nil {
		t.Fatal(err)
	}
	other := ""
	for _, a := range c.Addrs {
		if a != holder.Options().Addr {
			other = a
		}
	}
	if other == "" {
		t.Fatalf("no master of %v other than %s", c.Addrs, holder.Options().Addr)
	}
	if out, err := runCLI(t, "", "store", "migrate", "--redis", "redis://"+other); err == nil || !strings.Contains(err.Error(), "add --cluster") {
		t.Errorf("migrate on a Cluster node without --cluster: %v\n%s", err, out)
	}
	out, err := runCLI(t, "", "store", "migrate", "--redis", "redis://"+other, "--cluster")
	if err != nil || !strings.Contains(out, fmt.Sprintf("store layout 2 → %d", store.LayoutVersion)) {
		t.Fatalf("migrate --cluster: %v\n%s", err, out)
	}
	if v, _ := cc.Get(ctx, keys.StoreLayout()).Result(); v != strconv.Itoa(store.LayoutVersion) {
		t.Errorf("store layout %q after migrate --cluster", v)
	}
}
