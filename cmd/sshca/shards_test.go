package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
)

// TestServeInventoryShards: a `sshca serve` replica with inventory.shards 3 on a redis-server
// it found empty (so the store is created at layout 3 with 3 shards). Certificates it issues
// spread over the shards (the count and the store's layout raised to 3). A second replica
// configured with 1 (a drifted configuration) refuses to start, naming inventory.shards and the
// store's 3: it would reserve serials in other keys. After `sshca store migrate
// --inventory-shards 1` (a lowered setting) the running replica of three is not ready and
// refuses to issue (503), and the replica of one starts: it lists every certificate (GET
// /v1/certs) and revokes identities by name, which finds their certificates in whichever shard
// they are (each serial in GET /v1/revocations) and blocks them in every shard. Back at 3, the
// replica of three serves again and refuses those identities new certificates (403), while the
// replica of one is not ready; /readyz probes every shard's tag.
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
	baseA := startServe(t, cfgA)
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
	// The replica of one shard on the store of three: refused at start.
	err := serve(ctx, &cfgB, testLog(t), nil)
	var sc *store.ShardCountError
	if !errors.As(err, &sc) || sc.Store != 3 || sc.Configured != 1 || !strings.Contains(err.Error(), "inventory.shards") {
		t.Fatalf("serve with inventory.shards 1 on a store of 3: %v; want a refusal naming inventory.shards and 3", err)
	}
	if out, problems, _ := checkCLI(t, writeConfig(t, &cfgB), false); !slices.ContainsFunc(problems, func(p string) bool { return strings.Contains(p, "inventory.shards is 1") }) {
		t.Errorf("--check-config with inventory.shards 1 on a store of 3: problems %q\n%s", problems, out)
	}
	setShards := func(n int) {
		t.Helper()
		if out, err := runCLI(t, "", "store", "migrate", "--redis", "redis://"+srv.Addr, "--inventory-shards", strconv.Itoa(n)); err != nil || !strings.Contains(out, "→ "+strconv.Itoa(n)) {
			t.Fatalf("store migrate --inventory-shards %d: %v\n%s", n, err, out)
		}
	}
	setShards(1)
	if code, out := getBody(t, baseA+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(out, "inventory.shards") {
		t.Errorf("/readyz of the replica of three on a store of one = %d %s; want 503 naming inventory.shards", code, out)
	}
	if code, out := call(t, http.MethodPost, baseA+"/v1/certs/user", user(100), body); code != http.StatusServiceUnavailable {
		t.Errorf("issuance by the replica of three on a store of one = %d %s; want 503", code, out)
	}
	baseB := startServe(t, &cfgB)
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
	setShards(3)
	if code, out := getBody(t, baseB+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(out, "inventory.shards") {
		t.Errorf("/readyz of the replica of one on a store of three = %d %s; want 503 naming inventory.shards", code, out)
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
