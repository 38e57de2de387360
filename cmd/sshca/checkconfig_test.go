package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
	"gopkg.in/yaml.v3"

	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
)

// writeConfig writes cfg as the YAML file serve reads.
func writeConfig(t *testing.T, cfg *Config) string {
	t.Helper()
	b, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "config.yaml")
	writeFile(t, path, string(b))
	return path
}

// checkCLI runs sshca serve --check-config path [--offline] and returns its output and the
// problem lines.
func checkCLI(t *testing.T, path string, offline bool) (out string, problems []string, err error) {
	t.Helper()
	args := []string{"serve", "--check-config", path}
	if offline {
		args = append(args, "--offline")
	}
	out, err = runCLI(t, "", args...)
	for _, line := range strings.Split(out, "\n") {
		if p, ok := strings.CutPrefix(line, "problem: "); ok {
			problems = append(problems, p)
		}
	}
	return out, problems, err
}

func wantProblems(t *testing.T, out string, problems []string, want ...string) {
	t.Helper()
	if len(problems) != len(want) {
		t.Errorf("%d problems, want %d:\n%s", len(problems), len(want), out)
	}
	for _, w := range want {
		found := false
		for _, p := range problems {
			found = found || strings.Contains(p, w)
		}
		if !found {
			t.Errorf("no problem says %q:\n%s", w, out)
		}
	}
}

// TestCheckConfigRedis: against real redis-server, a server that would lose revocations
// (appendonly no, allkeys-lru, appendfsync no) is three problems, reported in one run with an
// identity provider that does not answer and a CA key that is not there; the shipped
// configuration (deploy/redis) with its ACL user passes, its appendfsync unread (the user may
// not run CONFIG) and said so; a user that may not run scripts is named.
func TestCheckConfigRedis(t *testing.T) {
	iss := startIssuer(t, "sshca")
	good := identity.IssuerConfig{IssuerURL: iss.URL(), Audiences: []string{"sshca"}}

	t.Run("wrong", func(t *testing.T) {
		r := testenv.StartRedisConfig(t, os.DevNull, "--save", "", "--appendonly", "no", "--maxmemory-policy", "allkeys-lru", "--appendfsync", "no")
		cfg := serveConfig(t, r.Addr, good, identity.IssuerConfig{IssuerURL: "http://127.0.0.1:1/gone", Audiences: []string{"sshca"}})
		cfg.HostCA.Key = "softkms:path=" + filepath.Join(t.TempDir(), "missing.pem")
		out, problems, err := checkCLI(t, writeConfig(t, cfg), false)
		if err == nil {
			t.Errorf("exit status 0 with problems:\n%s", out)
		}
		wantProblems(t, out, problems, "maxmemory-policy is allkeys-lru", "appendonly is no", "appendfsync is no",
			"oidc.issuers[1] http://127.0.0.1:1/gone", "host_ca: cannot open the key")
		// Offline: none of that needs checking, and nothing is reached.
		out, problems, err = checkCLI(t, writeConfig(t, cfg), true)
		if err != nil || len(problems) != 0 || !strings.Contains(out, "offline: not checked") {
			t.Errorf("offline: %v\n%s", err, out)
		}
	})

	t.Run("shipped", func(t *testing.T) {
		r := testenv.StartRedisConfig(t, filepath.Join("..", "..", "deploy", "redis", "redis.conf"))
		cfg := serveConfig(t, r.Addr, good)
		pw := filepath.Join(t.TempDir(), "password")
		writeFile(t, pw, "CHANGE-ME-sshca\n")
		cfg.Redis.Username, cfg.Redis.PasswordFile = "sshca", pw
		out, problems, err := checkCLI(t, writeConfig(t, cfg), false)
		if err != nil || len(problems) != 0 {
			t.Errorf("shipped Redis configuration: %v\n%s", err, out)
		}
		if !strings.Contains(out, "CONFIG GET is not allowed") || !strings.HasSuffix(out, ": OK\n") {
			t.Errorf("want a note that appendfsync was not read, and OK:\n%s", out)
		}
	})

	t.Run("inventory shards below layout 3", func(t *testing.T) {
		r := testenv.StartRedis(t)
		rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
		t.Cleanup(func() { rdb.Close() })
		ctx := context.Background()
		cfg := serveConfig(t, r.Addr, good)
		cfg.Inventory.Shards = 3
		said := func(shards int) string {
			cfg.Inventory.Shards = shards
			out, _, _ := checkCLI(t, writeConfig(t, cfg), false)
			return out
		}
		// An empty store: nothing to say (a replica of three shards creates it at layout 3).
		if out := said(3); strings.Contains(out, "is at layout") {
			t.Errorf("an empty store reported:\n%s", out)
		}
		// A generation record without a layout is a store of layout 1.
		rdb.HSet(ctx, store.Keys{}.Generation(), "id", "0123456789abcdef", "epoch", 0)
		for _, c := range []struct {
			layout string // "" for none
			shards int
			want   string // "" for nothing said of the layout
		}{
			{"", 3, "inventory.shards 3: the store is at layout 1"},
			{"", 1, ""},
			{"2", 3, "run sshca store migrate (layout 3)"},
			{"2", 1, ""},
			{"3", 3, ""},
			{"4", 3, "upgrade sshca"},
		} {
			if c.layout == "" {
				rdb.Del(ctx, store.Keys{}.StoreLayout())
			} else {
				rdb.Set(ctx, store.Keys{}.StoreLayout(), c.layout, 0)
			}
			out := said(c.shards)
			if c.want != "" && !strings.Contains(out, c.want) || c.want == "" && strings.Contains(out, "is at layout") {
				t.Errorf("store at layout %q, inventory.shards %d: want %q said:\n%s", c.layout, c.shards, c.want, out)
			}
		}
	})

	t.Run("user without scripting", func(t *testing.T) {
		r := testenv.StartRedisConfig(t, filepath.Join("..", "..", "deploy", "redis", "redis.conf"),
			"--user", "noscript", "on", ">pw", "~sshca:*", "resetchannels", "-@all", "+@read", "+@write", "+@transaction", "+@connection", "+ping", "+info")
		cfg := serveConfig(t, r.Addr, good)
		cfg.Redis.Username, cfg.Redis.Password = "noscript", "pw"
		out, problems, err := checkCLI(t, writeConfig(t, cfg), false)
		if err == nil {
			t.Errorf("exit status 0:\n%s", out)
		}
		wantProblems(t, out, problems, "a Lua script (EVAL) was refused")
		if !strings.Contains(out, "deploy/redis/users.acl") || strings.Contains(out, ">pw") {
			t.Errorf("want the ACL named and no password shown:\n%s", out)
		}
	})
}

// TestCheckConfigOffline: offline, the values, the YAML and the policy are checked, every
// problem at once; files that hold key material or passwords and exist only where the service
// runs are not looked at (the Kubernetes ConfigMap's case), while online they are problems.
func TestCheckConfigOffline(t *testing.T) {
	dir := t.TempDir()
	badPolicy := filepath.Join(dir, "policy")
	if err := os.Mkdir(badPolicy, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(badPolicy, "sshca.rego"), "package sshca\n\ndecision := {\"allow\": tru\n")
	config := filepath.Join(dir, "config.yaml")
	writeFile(t, config, `
listen: nope
diag_listen: 127.0.0.1:9850
tls: {cert_file: /run/secrets/tls.crt, key_file: /run/secrets/tls.key}
user_ca: {kms: "softkms:", key: "softkms:path=/run/secrets/user_ca.pem"}
host_ca: {kms: "softkms:", key: "softkms:path=/run/secrets/host_ca.pem"}
redis: {addrs: ["127.0.0.1:1"], username: sshca, password_file: /run/secrets/redis-password}
oidc: {issuers: [{issuer_url: "https://login.example.com", audiences: [sshca]}]}
policy: {dir: `+badPolicy+`, evaluator: fastest}
audit: {key_file: /run/secrets/audit.key}
limits: {rate: {burst: -1}}
`)
	out, problems, err := checkCLI(t, config, true)
	if err == nil {
		t.Errorf("exit status 0:\n%s", out)
	}
	wantProblems(t, out, problems, `listen: "nope" is not a host:port address`, `policy.evaluator: "fastest"`, "limits.rate.burst: -1")
	for _, secret := range []string{"tls.crt", "redis-password", "audit.key", "user_ca.pem"} {
		if strings.Contains(out, "problem: "+secret) || strings.Contains(strings.Join(problems, "\n"), secret) {
			t.Errorf("offline check looked at %s:\n%s", secret, out)
		}
	}

	// The evaluator fixed, the broken policy is the one problem left offline.
	writeFile(t, config, strings.Replace(readFile(t, config), "evaluator: fastest", "evaluator: auto", 1))
	writeFile(t, config, strings.Replace(readFile(t, config), "listen: nope", "listen: 0.0.0.0:8443", 1))
	writeFile(t, config, strings.Replace(readFile(t, config), "burst: -1", "burst: 10", 1))
	out, problems, _ = checkCLI(t, config, true)
	wantProblems(t, out, problems, "policy")

	// A good policy: offline OK; online, every secret file is missing and said so.
	writeFile(t, filepath.Join(badPolicy, "sshca.rego"), readFile(t, filepath.Join("..", "..", "policies", "sshca.rego")))
	writeFile(t, filepath.Join(badPolicy, "data.json"), readFile(t, filepath.Join("..", "..", "policies", "data.json")))
	out, problems, err = checkCLI(t, config, true)
	if err != nil || len(problems) != 0 {
		t.Errorf("offline with a good policy: %v\n%s", err, out)
	}
	out, problems, err = checkCLI(t, config, false)
	if err == nil {
		t.Errorf("online: exit status 0:\n%s", out)
	}
	wantProblems(t, out, problems, "tls: stat /run/secrets/tls.crt", "tls: stat /run/secrets/tls.key", "redis.password_file", "audit.key_file",
		"user_ca: cannot open the key", "host_ca: cannot open the key", "oidc.issuers[0]")

	// An unknown key: the decoder stops there, and says which.
	writeFile(t, config, readFile(t, config)+"diag_listn: 127.0.0.1:9851\n")
	out, problems, _ = checkCLI(t, config, true)
	wantProblems(t, out, problems, "line 12: field diag_listn not found (not a configuration key)")
}
