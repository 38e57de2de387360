package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"gopkg.in/yaml.v3"

	"github.com/sshca/sshca/internal/bodylimit"
	"github.com/sshca/sshca/kms"
	"github.com/sshca/sshca/policies"
	"github.com/sshca/sshca/store"
)

// checkReport is what `sshca serve --check-config` found: problems (the service would not
// start, or would run without its durability guarantees) and notes (what was not checked, or
// is worth knowing). Every check runs; nothing stops at the first problem.
type checkReport struct {
	problems, notes []string
}

func (r *checkReport) problem(format string, args ...any) {
	r.problems = append(r.problems, fmt.Sprintf(format, args...))
}

func (r *checkReport) note(format string, args ...any) {
	r.notes = append(r.notes, fmt.Sprintf(format, args...))
}

// write prints the report: one line per problem, then the notes, then a summary line.
func (r *checkReport) write(w io.Writer, path string) {
	for _, p := range r.problems {
		fmt.Fprintf(w, "problem: %s\n", p)
	}
	for _, n := range r.notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	if len(r.problems) == 0 {
		fmt.Fprintf(w, "%s: OK\n", path)
		return
	}
	fmt.Fprintf(w, "%s: %d problem(s)\n", path, len(r.problems))
}

// runCheckConfig is sshca serve --check-config: the report on w, an error when it holds a
// problem (exit status 1).
func runCheckConfig(ctx context.Context, w io.Writer, path string, offline bool) error {
	r := checkConfig(ctx, path, offline)
	r.write(w, path)
	if len(r.problems) > 0 {
		return fmt.Errorf("config %s: %d problem(s)", path, len(r.problems))
	}
	return nil
}

// checkTimeout bounds each network check (Redis, an identity provider, a bundle server).
const checkTimeout = 5 * time.Second

// checkConfig checks the configuration file at path as `sshca serve` would use it, and
// reports every problem at once. Offline, it does only what needs neither the network nor key
// material: the YAML against the configuration struct, every value, the policy (loaded,
// compiled and its Rego tests run, unless it comes from a bundle server). Otherwise it also
// opens both CA keys through their KMS, loads the TLS key pair, reaches Redis (settings that
// break durability, what the ACL user may do) and fetches every identity provider's discovery
// document and key set.
func checkConfig(ctx context.Context, path string, offline bool) *checkReport {
	r := &checkReport{}
	b, err := os.ReadFile(path)
	if err != nil {
		r.problem("%v", err)
		return r
	}
	c := Config{DiagListen: DefaultDiagListen}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		// Each key the decoder refused, on its own line; the values are not checked then,
		// since a misspelt key leaves its setting at its default.
		var te *yaml.TypeError
		if errors.As(err, &te) {
			for _, e := range te.Errors {
				r.problem("%s", strings.Replace(e, "in type main.Config", "(not a configuration key)", 1))
			}
			return r
		}
		r.problem("%v", err)
		return r
	}
	if err := c.validate(!offline); err != nil {
		for _, line := range strings.Split(err.Error(), "\n") {
			if line = strings.TrimPrefix(strings.TrimSpace(line), "- "); line != "" {
				r.problem("%s", line)
			}
		}
	}
	checkPolicy(ctx, c.Policy, offline, r)
	if offline {
		r.note("offline: not checked: the CA keys (KMS), the TLS key pair, redis.password_file, audit.key_file, Redis and the identity providers")
		return r
	}
	for _, k := range []struct {
		name string
		ref  KeyConfig
	}{{"user_ca", c.UserCA}, {"host_ca", c.HostCA}} {
		if k.ref.KMS == "" || k.ref.Key == "" {
			continue // reported by validate
		}
		key, err := kms.Open(ctx, kms.KeyRef{KMS: k.ref.KMS, Key: k.ref.Key})
		if err != nil {
			r.problem("%s: cannot open the key: %v", k.name, err)
			continue
		}
		key.Close()
	}
	if c.TLS.CertFile != "" && c.TLS.KeyFile != "" && exists(c.TLS.CertFile) && exists(c.TLS.KeyFile) { // else reported by validate
		if pair, err := tls.LoadX509KeyPair(c.TLS.CertFile, c.TLS.KeyFile); err != nil {
			r.problem("tls: %v", err)
		} else if pair.Leaf != nil && time.Now().After(pair.Leaf.NotAfter) {
			r.problem("tls.cert_file: the certificate expired on %s", pair.Leaf.NotAfter.UTC().Format(time.RFC3339))
		}
	}
	if c.Redis.PasswordFile == "" || exists(c.Redis.PasswordFile) { // else reported by validate
		checkRedis(ctx, c.Redis, redisProbe{auditStripes: c.Audit.Stripes, inventoryShards: c.Inventory.Shards}, r)
	} else {
		r.note("redis: not reached without its password_file")
	}
	if rc := c.Recordings.Redis; len(rc.Addrs) > 0 && (rc.PasswordFile == "" || exists(rc.PasswordFile)) {
		checkRecordingsRedis(ctx, rc, r)
	}
	for i, is := range c.OIDC.Issuers {
		if err := checkIssuer(ctx, is.IssuerURL); err != nil {
			r.problem("oidc.issuers[%d] %s: %v", i, is.IssuerURL, err)
		}
	}
	return r
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// checkPolicy loads the policy the service would run (compiled and tested as at start).
func checkPolicy(ctx context.Context, pc PolicyConfig, offline bool, r *checkReport) {
	evaluator, err := policies.ParseEvaluator(pc.Evaluator)
	if err != nil {
		return // reported by validate
	}
	if pc.BundleURL != "" {
		if offline {
			r.note("offline: the policy bundle at %s was not fetched", pc.BundleURL)
			return
		}
		ctx, cancel := context.WithTimeout(ctx, 2*checkTimeout)
		defer cancel()
		if _, err := policies.NewBundleReloader(ctx, pc.BundleURL, nil, policies.WithLoadOptions(policies.WithEvaluator(evaluator))); err != nil {
			r.problem("policy.bundle_url: %v", err)
		}
		return
	}
	if pc.Dir != "" {
		if st, err := os.Stat(pc.Dir); err != nil || !st.IsDir() {
			return // reported by validate
		}
	}
	if pc.DataFile != "" {
		if _, err := os.Stat(pc.DataFile); err != nil {
			return // reported by validate
		}
	}
	if _, err := loadPolicy(ctx, pc, policies.WithEvaluator(evaluator)); err != nil {
		r.problem("%v", err)
	}
}

// checkRecordingsRedis reaches the recordings' Redis as the service would and checks the kind
// of deployment it is, as serve does at start (checkServeRedis).
func checkRecordingsRedis(ctx context.Context, rc RedisConfig, r *checkReport) {
	opts, err := rc.UniversalOptions()
	if err != nil {
		r.problem("recordings.redis: %v", err)
		return
	}
	rdb, ctx, done := reachForCheck(ctx, opts, "recordings.redis", rc, r)
	defer done()
	if rdb == nil {
		return
	}
	if err := (&redisTarget{name: "recordings.redis", section: "recordings.redis"}).checkMode(ctx, rdb, rc); err != nil {
		r.problem("%v", err)
	}
}

// reachForCheck connects to the Redis of the configuration key section (options opts, made
// from rc) with the check's timeouts and pings it, under a context of its own bounded to four
// timeouts: nil, the problem reported, when it does not answer. done closes the client and
// ends the context.
func reachForCheck(ctx context.Context, opts *redis.UniversalOptions, section string, rc RedisConfig, r *checkReport) (rdb redis.UniversalClient, _ context.Context, done func()) {
	opts.DialTimeout, opts.ReadTimeout, opts.WriteTimeout, opts.MaxRetries = checkTimeout, checkTimeout, checkTimeout, -1
	rdb = newUniversalClient(opts)
	ctx, cancel := context.WithTimeout(ctx, 4*checkTimeout)
	done = func() { cancel(); rdb.Close() }
	if err := rdb.Ping(ctx).Err(); err != nil {
		if rc.MasterName != "" && sentinelsRefused(err) {
			r.problem("%v", sentinelsRefusedConfig(section, section, err))
		} else {
			r.problem("%s: cannot reach %s: %v", section, strings.Join(rc.Addrs, ", "), err)
		}
		done()
		return nil, ctx, func() {}
	}
	return rdb, ctx, done
}

// checkRedis reaches Redis as the service would, reads the settings that keep what sshca
// writes (revocations, serials, spent tokens, the audit chain) across a crash and under memory
// pressure, and tries what the service's ACL user must be allowed to do.
func checkRedis(ctx context.Context, rc RedisConfig, durable redisProbe, r *checkReport) {
	if len(rc.Addrs) == 0 {
		return // reported by validate
	}
	opts, err := rc.UniversalOptions()
	if err != nil {
		r.problem("%v", err)
		return
	}
	rdb, ctx, done := reachForCheck(ctx, opts, "redis", rc, r)
	defer done()
	if rdb == nil {
		return
	}
	// The kind of deployment, as serve and the commands check it at start (checkMode).
	if err := (&redisTarget{name: "redis"}).checkMode(ctx, rdb, rc); err != nil {
		r.problem("%v", err)
		return
	}

	settings := map[string]string{}
	if vals, err := rdb.ConfigGet(ctx, "*").Result(); err == nil {
		settings = vals
	} else {
		// The shipped ACL user may not run CONFIG (-@dangerous); INFO says two of the three.
		info, ierr := rdb.Info(ctx, "persistence", "memory").Result()
		if ierr != nil {
			r.problem("redis: neither CONFIG GET (%v) nor INFO (%v) is allowed: the durability settings cannot be checked", err, ierr)
		}
		for _, line := range strings.Split(info, "\n") {
			k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
			switch {
			case !ok:
			case k == "aof_enabled":
				settings["appendonly"] = map[string]string{"1": "yes", "0": "no"}[v]
			case k == "maxmemory_policy":
				settings["maxmemory-policy"] = v
			}
		}
		r.note("redis: CONFIG GET is not allowed for this user; appendfsync was not read (deploy/redis/redis.conf sets always)")
	}
	if v, ok := settings["maxmemory-policy"]; ok && v != "noeviction" {
		r.problem("redis: maxmemory-policy is %s: under memory pressure Redis would evict sshca's keys (revocations, reserved serials, spent tokens); set maxmemory-policy noeviction", v)
	}
	if v, ok := settings["appendonly"]; ok && v != "yes" {
		r.problem("redis: appendonly is %s: a crash or kill -9 loses every write since the last snapshot (revocations among them); set appendonly yes", v)
	}
	switch v := settings["appendfsync"]; v {
	case "", "always":
	case "everysec":
		r.note("redis: appendfsync everysec: a power failure may lose the last second of writes; deploy/redis/redis.conf sets always")
	default:
		r.problem("redis: appendfsync is %s: the operating system decides when writes reach the disk; set appendfsync always (or everysec)", v)
	}

	// What the service does, on its own probe keys: writes in every hash tag of durable state
	// (the readiness probe), a transaction, a script.
	durable.rdb, durable.prefix = rdb, "sshca"
	if err := durable.Check(ctx); err != nil {
		r.problem("redis: %v%s", err, aclHint(err))
	}
	keys := store.Keys{Prefix: "sshca"}
	if layout, err := store.ReadLayout(ctx, rdb, keys); err != nil {
		r.problem("redis: %v", err)
	} else if inUse, _ := rdb.Exists(ctx, keys.Generation()).Result(); layout < store.LayoutStripes && inUse > 0 {
		if durable.auditStripes > 1 {
			r.note("redis: the store is at layout %d: audit.stripes is %d, but the replicas append to stripe 0 alone until `sshca store migrate` moves it to layout %d (run it once every replica and audit tool is upgraded)", layout, durable.auditStripes, store.LayoutStripes)
		}
		if durable.inventoryShards > 1 {
			// Replicas of layout 2 read the first shard alone (store/layout.go).
			r.note("redis: inventory.shards %d: the store is at layout %d, so every certificate is kept in the first shard, where replicas of older releases read; once every CA replica runs this release, run sshca store migrate (layout %d) to use the shards", durable.inventoryShards, layout, store.LayoutVersion)
		}
	}
	// The store's number of inventory shards, which serve holds this replica to at start.
	if n, err := store.NewRedis(rdb, store.RedisOptions{Prefix: "sshca"}).Shards(ctx); err != nil {
		r.problem("redis: %v", err)
	} else if want := max(durable.inventoryShards, 1); n != 0 && n != want {
		r.problem("redis: serve refuses to start: %v", &store.ShardCountError{Configured: want, Store: n, Key: keys.ShardsAgreed()})
	}
	probe := "sshca:probe:check-config"
	if _, err := rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, probe, "1", 5*time.Second)
		return nil
	}); err != nil {
		r.problem("redis: MULTI/EXEC refused: %v%s", err, aclHint(err))
	}
	if err := rdb.Eval(ctx, "return redis.call('SET', KEYS[1], '1', 'EX', 5)", []string{probe}).Err(); err != nil {
		r.problem("redis: a Lua script (EVAL) was refused: %v%s", err, aclHint(err))
	}
	if v, err := rdb.Info(ctx, "server").Result(); err == nil {
		if ver := infoField(v, "redis_version"); ver != "" && versionBelow(ver, 6, 2) {
			r.problem("redis: version %s; sshca needs Redis 6.2 or later", ver)
		}
	}
}

// aclHint is advice for a refusal by Redis's ACL.
func aclHint(err error) string {
	if strings.Contains(err.Error(), "NOPERM") {
		return " (the ACL user lacks a permission: see deploy/redis/users.acl, user sshca)"
	}
	return ""
}

func infoField(info, key string) string {
	for _, line := range strings.Split(info, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok && k == key {
			return v
		}
	}
	return ""
}

// versionBelow reports whether a "major.minor.patch" version is below major.minor.
func versionBelow(v string, major, minor int) bool {
	parts := strings.SplitN(v, ".", 3)
	if len(parts) < 2 {
		return false
	}
	ma, err1 := strconv.Atoi(parts[0])
	mi, err2 := strconv.Atoi(parts[1])
	if err1 != nil || err2 != nil {
		return false
	}
	return ma < major || ma == major && mi < minor
}

// checkIssuer fetches an issuer's OpenID discovery document and its key set, as the token
// verifier will.
func checkIssuer(ctx context.Context, issuer string) error {
	client := &http.Client{Timeout: checkTimeout}
	getJSON := func(url string, into any) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: HTTP %d", url, resp.StatusCode)
		}
		if err := json.NewDecoder(bodylimit.Reader(req, resp.Body, bodylimit.Issuer)).Decode(into); err != nil {
			return fmt.Errorf("GET %s: not JSON: %w", url, err)
		}
		return nil
	}
	var doc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := getJSON(strings.TrimRight(issuer, "/")+"/.well-known/openid-configuration", &doc); err != nil {
		return fmt.Errorf("discovery: %w", err)
	}
	if strings.TrimRight(doc.Issuer, "/") != strings.TrimRight(issuer, "/") {
		return fmt.Errorf("discovery names the issuer %q: tokens from it would be refused; give that URL as issuer_url", doc.Issuer)
	}
	if doc.JWKSURI == "" {
		return errors.New("discovery has no jwks_uri")
	}
	var jwks struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := getJSON(doc.JWKSURI, &jwks); err != nil {
		return fmt.Errorf("key set: %w", err)
	}
	if len(jwks.Keys) == 0 {
		return fmt.Errorf("key set at %s holds no keys", doc.JWKSURI)
	}
	return nil
}
