package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
)

// TestServeInventoryShards: a `sshca serve` replica with inventory.shards 3 and one left at 1
// (a lowered setting) on one redis-server, which they found empty (layout 2). Certificates issued by the first spread over the
// shards (the count and the store's layout raised to 3); the second lists every one of them
// (GET /v1/certs) and revokes identities by name, which finds their certificates in whichever
// shard they are (each serial in GET /v1/revocations) and blocks them in every shard, so the
// first refuses them new certificates (403); /readyz probes every shard's tag.
func TestServeInventoryShards(t *testing.T) {
	srv := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	idp := startIssuer(t, "sshca")
	cfgA := serveConfig(t, srv.Addr, identity.IssuerConfig{IssuerURL: idp.URL(), Audiences: []string{"sshca"}})
	cfgA.Inventory.Shards = 3
	cfgB := *cfgA
	cfgB.Inventory.Shards = 1
	baseA, baseB := startServe(t, cfgA), startServe(t, &cfgB)
	// The replica of three shards, started first, created the store at layout 3: no replica
	// of layout 2 can have seen it (below 3 every certificate would stay in shard 0 until
	// sshca store migrate).
	if v := rdb.Get(ctx, store.Keys{}.StoreLayout()).Val(); v != "3" {
		t.Fatalf("a store created by a replica of three shards is at layout %q, want 3", v)
	}
	mint := minter(t, idp)
	admin := mint(map[string]any{"sub": "sre", "preferred_username": "sre", "groups": []string{"sshca-admins"}})
	dir := t.TempDir()
	body := map[string]any{"public_key": readFile(t, keygen(t, dir, "k")+".pub")}
	user := func(i int) string {
		return mint(map[string]any{"sub": fmt.Sprintf("u-%d", i), "preferred_username": fmt.Sprintf("user%d", i),
			"email": fmt.Sprintf("user%d@example.com", i), "email_verified": true})
	}
	const users = 8
	serials := map[int]string{}
	for i := range users {
		serials[i] = issue(t, baseA, "user", user(i), body).Serial
	}
	keys := store.Keys{}
	if v := rdb.Get(ctx, keys.InventoryShards()).Val(); v != "3" {
		t.Errorf("shard count %q, want 3", v)
	}
	if v := rdb.Get(ctx, keys.StoreLayout()).Val(); v != "3" {
		t.Errorf("store layout %q, want 3", v)
	}
	used := 0
	for s := range 3 {
		if rdb.ZCard(ctx, keys.ShardLiveCerts(s)).Val() > 0 {
			used++
		}
	}
	if used < 2 {
		t.Fatalf("%d users' certificates in %d shard(s)", users, used)
	}
	code, out := call(t, http.MethodGet, baseB+"/v1/certs", admin, nil)
	for i, s := range serials {
		if code != http.StatusOK || !strings.Contains(string(out), `"serial":"`+s+`"`) {
			t.Errorf("GET /v1/certs on the one-shard replica = %d, misses user%d's serial %s", code, i, s)
		}
	}
	for i := range users {
		if code, out := call(t, http.MethodPost, baseB+"/v1/revocations", admin, map[string]any{"identity": fmt.Sprintf("user%d@example.com", i), "reason": "shards"}); code != http.StatusOK {
			t.Fatalf("revoke user%d on the one-shard replica = %d %s", i, code, out)
		}
	}
	code, out = call(t, http.MethodGet, baseA+"/v1/revocations", admin, nil)
	for i, s := range serials {
		if code != http.StatusOK || !strings.Contains(string(out), `"value":"`+s+`"`) {
			t.Errorf("user%d's serial %s is not revoked: %d", i, s, code)
		}
	}
	for i := range users {
		if code, out := call(t, http.MethodPost, baseA+"/v1/certs/user", user(i), body); code != http.StatusForbidden {
			t.Errorf("user%d, revoked, got %d %s on the sharded replica", i, code, out)
		}
	}
	if code, out := getBody(t, baseA+"/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz = %d %s", code, out)
	}
	for s := 1; s < 3; s++ {
		if n, _ := rdb.Exists(ctx, keys.Probe(store.TagInventoryShard(s))).Result(); n != 1 {
			t.Errorf("/readyz did not probe shard %d's tag", s)
		}
	}
}
