package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/revocation"
	"github.com/sshca/sshca/store"
)

// TestStoreRebuildStripesInTimeOrder: `sshca store rebuild` restores the records of a striped
// audit chain in time order, not in the order the stripes are walked: a ban kept in stripe 1
// and its lift, a minute later, kept in stripe 0 (walked first) leave the key unbanned. The
// control: the same two records with the ban the later one leave it banned, so the order is
// the records' time.
func TestStoreRebuildStripesInTimeOrder(t *testing.T) {
	e := newRebuildEnv(t)
	rdb, key, userKey := e.rdb, e.key, e.userKey
	ctx := context.Background()

	for _, banLater := range []bool{false, true} {
		rdb.FlushAll(ctx)
		banned := testenv.PublicKey(t)
		fp := ssh.FingerprintSHA256(banned)
		t0 := time.Now().Add(-time.Hour).UTC()
		banAt, liftAt := t0, t0.Add(time.Minute)
		if banLater {
			banAt, liftAt = liftAt, banAt
		}
		ban := ca.AuditRecord{Time: banAt, Action: ca.ActionRevoke, Outcome: "allowed", Identity: "admin", Reason: "r",
			Target: "public_key:" + fp, PublicKey: revocation.KeyEntry(banned)}
		lift := ca.AuditRecord{Time: liftAt, Action: ca.ActionRevoke, Outcome: "allowed", Identity: "admin", Reason: "r",
			Target: "unrevoke public_key:" + fp}
		if err := audit.New(rdb, audit.Options{Key: key, Stripes: 2, Home: new(1)}).Append(ctx, ban); err != nil {
			t.Fatal(err)
		}
		if err := audit.New(rdb, audit.Options{Key: key, Stripes: 2, Home: new(0)}).Append(ctx, lift); err != nil {
			t.Fatal(err)
		}
		out, err := e.rebuild()
		if err != nil {
			t.Fatalf("rebuild: %v\n%s", err, out)
		}
		why, err := store.NewRedis(rdb, store.RedisOptions{}).Refused(ctx, userKey, nil, banned)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case !banLater && (why != "" || !strings.Contains(out, "1 ban lifted")):
			t.Errorf("the lift a minute after the ban (other stripe): refused %q; want the key unbanned:\n%s", why, out)
		case banLater && why == "":
			t.Errorf("the ban a minute after the lift: the key is not refused; want it banned:\n%s", out)
		}
	}
}

// TestCountConfigRanges: audit.stripes and inventory.shards outside 0 to their maximum are
// refused, naming the field and what to set; the limits themselves pass.
func TestCountConfigRanges(t *testing.T) {
	for _, c := range []struct {
		field, fix string
		max        int
		set        func(*Config, int)
	}{
		{"audit.stripes", "number of CA replicas", audit.MaxStripes, func(c *Config, n int) { c.Audit.Stripes = n }},
		{"inventory.shards", "number of masters", store.MaxInventoryShards, func(c *Config, n int) { c.Inventory.Shards = n }},
	} {
		for _, n := range []int{-1, c.max + 1} {
			var cfg Config
			c.set(&cfg, n)
			err := cfg.validate(false)
			if err == nil || !strings.Contains(err.Error(), c.field) || !strings.Contains(err.Error(), c.fix) {
				t.Errorf("%s %d: %v; want it refused with the fix", c.field, n, err)
			}
		}
		for _, n := range []int{0, 1, 3, c.max} {
			var cfg Config
			c.set(&cfg, n)
			if err := cfg.validate(false); err != nil && strings.Contains(err.Error(), c.field) {
				t.Errorf("%s %d refused: %v", c.field, n, err)
			}
		}
	}
}

// TestServeAuditStripes: two `sshca serve` replicas with audit.stripes 3 on one redis-server
// keep their records in the stripes (the count raised to 3, each stripe under its own tag),
// /readyz probes every stripe's tag, and a replica that stops writes a last checkpoint.
// `sshca audit verify` then walks every stripe and checks the checkpoints, `sshca audit
// archive` archives and trims every stripe to one file, and `verify --archive` with --redis
// checks the chain in Redis goes on from it.
func TestServeAuditStripes(t *testing.T) {
	srv := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	idp := startIssuer(t, "sshca")
	cfgA := serveConfig(t, srv.Addr, identity.IssuerConfig{IssuerURL: idp.URL(), Audiences: []string{"sshca"}})
	cfgA.Audit.Stripes = 3
	cfgB := *cfgA
	baseA, stopA := startServeStoppable(t, cfgA)
	baseB, stopB := startServeStoppable(t, &cfgB)
	mint := minter(t, idp)
	dir := t.TempDir()
	body := map[string]any{"public_key": readFile(t, keygen(t, dir, "alice")+".pub")}
	serials := map[string]bool{}
	for i := range 6 {
		base := baseA
		if i%2 == 1 {
			base = baseB
		}
		serials[issue(t, base, "user", mint(map[string]any{"sub": "u-alice", "preferred_username": "alice"}), body).Serial] = true
	}
	if v := rdb.Get(ctx, "sshca:{audit}:stripes").Val(); v != "3" {
		t.Errorf("stripe count %q, want 3", v)
	}
	if code, out := getBody(t, baseA+"/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz = %d %s", code, out)
	}
	for i := 1; i < 3; i++ {
		if n, _ := rdb.Exists(ctx, fmt.Sprintf("sshca:{audit:%d}:probe", i)).Result(); n != 1 {
			t.Errorf("/readyz did not probe stripe %d's tag", i)
		}
	}
	stopA()
	stopB()
	// Each replica wrote a last checkpoint after its drain: every stripe with records ends
	// with one, however the ticks fell. (Stripe 0 holds the striped mark whatever the
	// replicas settled on: that alone is no record.)
	for i := range 3 {
		all, err := rdb.XRange(ctx, store.Keys{}.AuditStripeLog(i), "-", "+").Result()
		if err != nil {
			t.Fatal(err)
		}
		records := 0
		for _, m := range all {
			if rec, _ := m.Values["rec"].(string); !strings.HasPrefix(rec, `{"checkpoint":`) && !strings.HasPrefix(rec, `{"striped":`) {
				records++
			}
		}
		if records == 0 {
			continue
		}
		if rec, _ := all[len(all)-1].Values["rec"].(string); !strings.HasPrefix(rec, `{"checkpoint":`) {
			t.Errorf("stripe %d ends with %.80s, not with the replica's last checkpoint", i, rec)
		}
	}

	key, err := readAuditKey(cfgA.Audit.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	kept := map[string]bool{}
	rep, err := audit.New(rdb, audit.Options{Key: key}).Verify(ctx, func(e audit.Entry) {
		if e.Record.Serial != 0 {
			kept[strconv.FormatUint(e.Record.Serial, 10)] = true
		}
	})
	if err != nil || len(rep.Stripes) != 3 || rep.Checkpoints == 0 {
		t.Fatalf("verify: %+v %v; want 3 stripes and the replicas' last checkpoints", rep, err)
	}
	for s := range serials {
		if !kept[s] {
			t.Errorf("serial %s has no audit record", s)
		}
	}
	redisURL := "redis://" + srv.Addr
	out, err := runCLI(t, "", "audit", "verify", "--redis", redisURL, "--key-file", cfgA.Audit.KeyFile)
	if err != nil || !strings.Contains(out, "3 stripes") {
		t.Fatalf("audit verify: %v\n%s", err, out)
	}
	// The replicas' home stripes are random: one record more in stripe 2 makes sure the
	// archive holds a stripe beyond 0, whichever they settled on.
	if err := audit.New(rdb, audit.Options{Key: key, Stripes: 3, Home: new(2)}).Append(ctx, ca.AuditRecord{Time: time.Now(), Action: ca.ActionAdmin, Outcome: "allowed", Identity: "test"}); err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(dir, "audit.archive")
	if out, err := runCLI(t, "", "audit", "archive", "--redis", redisURL, "--key-file", cfgA.Audit.KeyFile, "--out", archive); err != nil || !strings.Contains(out, "stripe 2 from record") {
		t.Fatalf("audit archive: %v\n%s", err, out)
	}
	for i := range 3 {
		want := int64(0)
		if i == 0 {
			want = 1 // the striped mark, appended again after the trim (audit/striped.go)
		}
		if n, _ := rdb.XLen(ctx, store.Keys{}.AuditStripeLog(i)).Result(); n != want {
			t.Errorf("stripe %d holds %d entries after the archive, want %d", i, n, want)
		}
	}
	out, err = runCLI(t, "", "audit", "verify", "--redis", redisURL, "--key-file", cfgA.Audit.KeyFile, "--archive", archive)
	if err != nil || !strings.Contains(out, "stripe 2: records") {
		t.Fatalf("audit verify --archive: %v\n%s", err, out)
	}
}

// rebuildEnv is what the rebuild tests of a striped chain share: a redis-server, a client of
// it, an audit key (and its file, 0600) and the user and host CA public keys' files.
type rebuildEnv struct {
	srv                     *testenv.Redis
	rdb                     *redis.Client
	key                     []byte
	keyFile, userCA, hostCA string
	userKey, hostKey        ssh.PublicKey
}

func newRebuildEnv(t *testing.T) *rebuildEnv {
	t.Helper()
	e := &rebuildEnv{srv: testenv.StartRedis(t), key: []byte("0123456789abcdef0123456789abcdef")}
	e.rdb = redis.NewClient(&redis.Options{Addr: e.srv.Addr})
	t.Cleanup(func() { e.rdb.Close() })
	dir := t.TempDir()
	e.keyFile = filepath.Join(dir, "audit.key")
	writeFileMode(t, e.keyFile, hex.EncodeToString(e.key)+"\n", 0o600)
	e.userCA, e.hostCA = filepath.Join(dir, "user_ca.pub"), filepath.Join(dir, "host_ca.pub")
	e.userKey, e.hostKey = testenv.PublicKey(t), testenv.PublicKey(t)
	writeFile(t, e.userCA, string(ssh.MarshalAuthorizedKey(e.userKey)))
	writeFile(t, e.hostCA, string(ssh.MarshalAuthorizedKey(e.hostKey)))
	return e
}

// rebuild runs `sshca store rebuild` against the env's Redis (lost: --lost-stripe), and
// answers what it printed.
func (e *rebuildEnv) rebuild(lost ...int) (string, error) {
	var out bytes.Buffer
	err := runRebuild(context.Background(), rebuildFlags{redis: redisTarget{url: "redis://" + e.srv.Addr}, auditKey: e.keyFile, userCA: e.userCA, hostCA: e.hostCA,
		identityBlock: time.Hour, tokenLifetime: 10 * time.Minute, lostStripes: lost}, nil, &out, time.Now)
	return out.String(), err
}
