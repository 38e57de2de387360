package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
)

// TestCommandsOnCluster: two `sshca serve` replicas with audit.stripes 3 and inventory.shards
// 3 on a Redis Cluster of three masters issue certificates (to users spread over the shards,
// with records in at least two stripes) and revoke a serial and an identity. Then, with a
// --redis URL of one node and --cluster:
//   - `sshca audit verify` counts every record the replicas appended (counted independently,
//     stripe by stripe, with XRANGE through a Cluster client);
//   - `sshca audit archive` archives the same count and trims every stripe;
//   - after FLUSHALL on every master, `sshca store rebuild --archive` restores every shard's
//     live certificates, every identity block and the user CA's revocation entries as they
//     were before the flush;
//   - `sshca audit report` finds a ticketed grant kept in each of the three stripes.
//
// The control: a single-server client of the same node, as the commands built before, reads
// one master's share (an error naming MOVED, or fewer records).
func TestCommandsOnCluster(t *testing.T) {
	c := testenv.StartRedisCluster(t, 3)
	ctx := context.Background()
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs})
	t.Cleanup(func() { cc.Close() })
	idp := startIssuer(t, "sshca")
	cfgA := serveConfig(t, c.Addrs[0], identity.IssuerConfig{IssuerURL: idp.URL(), Audiences: []string{"sshca"}})
	cfgA.Redis = RedisConfig{Addrs: c.Addrs, ClusterMode: true, DialTimeout: time.Second, ReadTimeout: time.Second}
	cfgA.Audit.Stripes = 3
	cfgA.Inventory.Shards = 3
	cfgB := *cfgA
	baseA, stopA := startServeStoppable(t, cfgA)
	baseB, stopB := startServeStoppable(t, &cfgB)
	mint := minter(t, idp)
	dir := t.TempDir()
	body := map[string]any{"public_key": readFile(t, keygen(t, dir, "k")+".pub"), "ttl": "30m"}
	user := func(i int) string {
		return mint(map[string]any{"sub": fmt.Sprintf("u-%d", i), "preferred_username": fmt.Sprintf("user%d", i),
			"email": fmt.Sprintf("user%d@example.com", i), "email_verified": true})
	}
	keys := store.Keys{}
	auditKey, err := readAuditKey(cfgA.Audit.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	// entries counts the audit records (not checkpoints or striped marks) in each stripe.
	entries := func() (perStripe [3]int) {
		for i := range 3 {
			all, err := cc.XRange(ctx, keys.AuditStripeLog(i), "-", "+").Result()
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range all {
				if rec, _ := m.Values["rec"].(string); !strings.HasPrefix(rec, `{"checkpoint":`) && !strings.HasPrefix(rec, `{"striped":`) {
					perStripe[i]++
				}
			}
		}
		return perStripe
	}
	// Issue in rounds, both replicas at once, until the records are in two stripes or more
	// (each replica starts at a random stripe and moves on when another holds its head).
	issued := 0
	for round := 0; round < 10; round++ {
		var wg sync.WaitGroup
		for j := range 6 {
			base := baseA
			if j%2 == 1 {
				base = baseB
			}
			i := issued + j
			wg.Go(func() {
				if code, out := call(t, http.MethodPost, base+"/v1/certs/user", user(i), body); code != http.StatusOK {
					t.Errorf("issue to user%d = %d %s", i, code, out)
				}
			})
		}
		wg.Wait()
		issued += 6
		used := 0
		for _, n := range entries() {
			if n > 0 {
				used++
			}
		}
		if used >= 2 {
			break
		}
	}
	admin := mint(map[string]any{"sub": "sre", "preferred_username": "sre", "groups": []string{"sshca-admins"}})
	code, out := call(t, http.MethodGet, baseA+"/v1/certs?identity=user0@example.com", admin, nil)
	if code != http.StatusOK {
		t.Fatalf("GET /v1/certs = %d %s", code, out)
	}
	var listed struct {
		Certs []struct {
			Serial string `json:"serial"`
		} `json:"certificates"`
	}
	if err := json.Unmarshal(out, &listed); err != nil || len(listed.Certs) != 1 {
		t.Fatalf("user0's certificates: %v %s", err, out)
	}
	if code, out := call(t, http.MethodPost, baseA+"/v1/revocations", admin, map[string]any{"serial": listed.Certs[0].Serial, "reason": "cluster commands"}); code != http.StatusOK {
		t.Fatalf("revoke user0's serial = %d %s", code, out)
	}
	if code, out := call(t, http.MethodPost, baseB+"/v1/revocations", admin, map[string]any{"identity": "user1@example.com", "reason": "cluster commands"}); code != http.StatusOK {
		t.Fatalf("revoke user1 = %d %s", code, out)
	}
	_, userPub := getBody(t, baseA+"/v1/ca/user.pub")
	_, knownHosts := getBody(t, baseA+"/v1/ca/known_hosts")
	userCAFile, hostCAFile := filepath.Join(dir, "user-ca.pub"), filepath.Join(dir, "host-ca.pub")
	writeFile(t, userCAFile, userPub)
	writeFile(t, hostCAFile, strings.TrimPrefix(strings.SplitN(knownHosts, "\n", 2)[0], "@cert-authority * ")+"\n")
	stopA()
	stopB()

	perStripe := entries()
	want := perStripe[0] + perStripe[1] + perStripe[2]
	if used := len(slices.DeleteFunc(perStripe[:], func(n int) bool { return n == 0 })); used < 2 {
		t.Fatalf("after %d certificates the records are in %d stripe(s): %v", issued, used, perStripe)
	}
	t.Logf("%d certificates; audit records per stripe %v", issued, perStripe)

	node := "redis://" + c.Addrs[2]
	// The control: what a single-server client of one node sees.
	plain := redis.NewClient(&redis.Options{Addr: c.Addrs[2]})
	rep, perr := audit.New(plain, audit.Options{Key: auditKey}).Verify(ctx, func(audit.Entry) {})
	plain.Close()
	if perr == nil && rep.Records == want {
		t.Errorf("a single-server client of one Cluster node verified all %d records: the control shows nothing", want)
	}
	t.Logf("a single-server client of %s: %d of %d records, %v", c.Addrs[2], rep.Records, want, perr)

	out2, err := runCLI(t, "", "audit", "verify", "--redis", node, "--cluster", "--key-file", cfgA.Audit.KeyFile)
	if err != nil || !strings.Contains(out2, "OK: "+plural(want, "audit record")+",") || !strings.Contains(out2, "3 stripes") {
		t.Fatalf("audit verify --cluster: %v\n%s\nwant OK: %s over 3 stripes", err, out2, plural(want, "audit record"))
	}

	// The state the rebuild must give back.
	snapshot := func() map[string][]redis.Z {
		s := map[string][]redis.Z{}
		userKey, _, _, _, err := ssh.ParseAuthorizedKey([]byte(userPub))
		if err != nil {
			t.Fatal(err)
		}
		zs := []string{keys.ScopeEntries(ssh.FingerprintSHA256(userKey))}
		for i := range 3 {
			zs = append(zs, keys.ShardLiveCerts(i), keys.ShardBlocked(i))
		}
		for _, k := range zs {
			v, err := cc.ZRangeWithScores(ctx, k, 0, -1).Result()
			if err != nil {
				t.Fatal(err)
			}
			s[k] = v
		}
		return s
	}
	before := snapshot()
	shardsUsed := 0
	for i := range 3 {
		if len(before[keys.ShardLiveCerts(i)]) > 0 {
			shardsUsed++
		}
	}
	if shardsUsed < 2 {
		t.Fatalf("the live certificates are in %d shard(s): %v", shardsUsed, before)
	}
	for k, v := range before {
		if strings.HasSuffix(k, ":blocked") || strings.HasSuffix(k, ":entries") {
			if len(v) == 0 {
				t.Fatalf("%s is empty before the flush: the comparison would show nothing", k)
			}
		}
	}

	archive := filepath.Join(dir, "audit.archive")
	out2, err = runCLI(t, "", "audit", "archive", "--redis", node, "--cluster", "--key-file", cfgA.Audit.KeyFile, "--out", archive)
	// The archive holds the records counted, plus the record of the store's generation that
	// archive itself appends first.
	if err != nil || !strings.Contains(out2, "archived "+plural(want+1, "audit record")) {
		t.Fatalf("audit archive --cluster: %v\n%s\nwant archived %s", err, out2, plural(want+1, "audit record"))
	}
	if left := entries(); left != [3]int{} {
		t.Errorf("audit records left in the stripes after the archive: %v", left)
	}

	if err := cc.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { return m.FlushAll(ctx).Err() }); err != nil {
		t.Fatal(err)
	}
	out2, err = runCLI(t, "", "store", "rebuild", "--redis", node, "--cluster", "--audit-key", cfgA.Audit.KeyFile, "--archive", archive,
		"--user-ca", userCAFile, "--host-ca", hostCAFile, "--token-lifetime", "10m", "--inventory-shards", "3")
	if err != nil {
		t.Fatalf("store rebuild --cluster: %v\n%s", err, out2)
	}
	after := snapshot()
	for k, b := range before {
		if !slices.EqualFunc(b, after[k], func(x, y redis.Z) bool { return x.Member == y.Member && x.Score == y.Score }) {
			t.Errorf("%s before the flush: %v\nafter the rebuild: %v", k, b, after[k])
		}
	}

	// audit report reads every stripe: a ticketed grant kept in each.
	for i := range 3 {
		rec := ca.AuditRecord{Time: time.Now().UTC(), Action: ca.ActionUser, Outcome: "issued", Identity: fmt.Sprintf("report%d", i),
			Principals: []string{"root"}, Ticket: "T-" + strconv.Itoa(i), Serial: uint64(9000 + i)}
		if err := audit.New(cc, audit.Options{Key: auditKey, Stripes: 3, Home: new(i)}).Append(ctx, rec); err != nil {
			t.Fatal(err)
		}
	}
	out2, err = runCLI(t, "", "audit", "report", "--redis", node, "--cluster", "--key-file", cfgA.Audit.KeyFile, "--since", "1d", "--format", "json")
	if err != nil {
		t.Fatalf("audit report --cluster: %v\n%s", err, out2)
	}
	for i := range 3 {
		if !strings.Contains(out2, `"T-`+strconv.Itoa(i)+`"`) {
			t.Errorf("audit report --cluster lacks the grant kept in stripe %d (ticket T-%d):\n%s", i, i, out2)
		}
	}
}
