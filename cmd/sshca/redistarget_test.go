package main

import (
	"context"
	"encoding/hex"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/internal/testenv"
)

// TestCommandsRefusePlainClusterNode: every command that reads or rewrites the store, given a
// plain --redis URL that names a node of a Redis Cluster, refuses before it reads anything,
// naming the flag to add (--cluster): a single-server client there sees one master's share of
// the keys and would verify, archive, report or rebuild that part as the whole. The archive
// file is not created. The same commands with --cluster get past the check (they reach the
// store; what they then find is the other tests' business).
func TestCommandsRefusePlainClusterNode(t *testing.T) {
	c := testenv.StartRedisCluster(t, 3)
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "audit.key")
	writeFileMode(t, keyFile, hex.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))+"\n", 0o600)
	userCA, hostCA := filepath.Join(dir, "user_ca.pub"), filepath.Join(dir, "host_ca.pub")
	writeFile(t, userCA, string(ssh.MarshalAuthorizedKey(testenv.PublicKey(t))))
	writeFile(t, hostCA, string(ssh.MarshalAuthorizedKey(testenv.PublicKey(t))))
	archive := filepath.Join(dir, "audit.archive")
	node := "redis://" + c.Addrs[1]
	commands := map[string][]string{
		"store rebuild":  {"store", "rebuild", "--redis", node, "--audit-key", keyFile, "--user-ca", userCA, "--host-ca", hostCA},
		"store migrate":  {"store", "migrate", "--redis", node},
		"audit verify":   {"audit", "verify", "--redis", node, "--key-file", keyFile},
		"audit archive":  {"audit", "archive", "--redis", node, "--key-file", keyFile, "--out", archive},
		"audit report":   {"audit", "report", "--redis", node, "--key-file", keyFile},
		"sessions audit": nil, // below: sessions verify reads a recording first
	}
	for name, args := range commands {
		if args == nil {
			continue
		}
		out, err := runCLI(t, "", args...)
		if err == nil || !strings.Contains(err.Error(), "add --cluster") || !strings.Contains(err.Error(), "Redis Cluster") {
			t.Errorf("%s with a plain URL of a Cluster node: %v\n%s; want a refusal that says to add --cluster", name, err, out)
		}
		if _, err := os.Stat(archive); err == nil {
			t.Fatalf("%s created the archive file before refusing", name)
		}
	}
	ctx := context.Background()
	av := auditVerifyFlags{redis: redisTarget{prefix: "audit-", url: node}, keyFile: keyFile}
	if err := verifySessionAudit(ctx, os.Stdout, os.Stderr, av, nil); err == nil || !strings.Contains(err.Error(), "add --audit-cluster") {
		t.Errorf("sessions verify --audit-redis of a Cluster node: %v; want a refusal naming --audit-cluster", err)
	}
	agentCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	err := runAgent(agentCtx, agentFlags{redis: redisTarget{url: node}, krlPath: filepath.Join(dir, "sshca.krl"), userCA: filepath.Join(dir, "user_ca_agent.pub"),
		health: "127.0.0.1:0"}, testLog(t), nil)
	if err == nil || !strings.Contains(err.Error(), "add --cluster") {
		t.Errorf("bastion agent --redis of a Cluster node: %v; want a refusal naming --cluster", err)
	}

	// The same URL with --cluster passes the check: migrate reaches every slot (an empty
	// store is created at this layout), and verify finds an empty chain.
	if out, err := runCLI(t, "", "store", "migrate", "--redis", node, "--cluster"); err != nil {
		t.Errorf("store migrate --cluster: %v\n%s", err, out)
	}
	if out, err := runCLI(t, "", "audit", "verify", "--redis", node, "--cluster", "--key-file", keyFile); err != nil {
		t.Errorf("audit verify --cluster: %v\n%s", err, out)
	}
	// --config with the Cluster's addresses reaches it as serve does; the same section with
	// one address and no cluster_mode is refused, naming the key to set.
	cfg := serveConfig(t, c.Addrs[0])
	for _, tc := range []struct {
		redis RedisConfig
		want  string // "" passes
	}{
		{RedisConfig{Addrs: c.Addrs}, ""},
		{RedisConfig{Addrs: c.Addrs[:1], ClusterMode: true}, ""},
		{RedisConfig{Addrs: c.Addrs[:1]}, "redis.cluster_mode: true"},
	} {
		cfg.Redis = tc.redis
		path := writeConfig(t, cfg)
		out, err := runCLI(t, "", "audit", "verify", "--config", path, "--key-file", keyFile)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("audit verify --config with redis %+v: %v\n%s", tc.redis, err, out)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("audit verify --config with redis %+v: %v; want a refusal naming %s", tc.redis, err, tc.want)
		}
	}
	// serve itself refuses to start on the single-address section that names a Cluster node.
	cfg.Redis = RedisConfig{Addrs: c.Addrs[:1]}
	if err := serve(ctx, cfg, testLog(t), nil); err == nil || !strings.Contains(err.Error(), "redis.cluster_mode: true") {
		t.Errorf("serve with redis.addrs of one Cluster node and no cluster_mode: %v; want a refusal naming redis.cluster_mode", err)
	}
	// And sshca serve --check-config says so among its problems.
	if out, problems, _ := checkCLI(t, writeConfig(t, cfg), false); !slices.ContainsFunc(problems, func(p string) bool { return strings.Contains(p, "redis.cluster_mode: true") }) {
		t.Errorf("serve --check-config with redis.addrs of one Cluster node: problems %q; want one naming redis.cluster_mode\n%s", problems, out)
	}
	recordingsRedisModeChecked(t, c)
	if _, err := runCLI(t, "", "audit", "verify", "--config", "x.yaml", "--redis", node); err == nil || !strings.Contains(err.Error(), "give it alone") {
		t.Errorf("--config with --redis: %v; want a refusal", err)
	}
	if _, err := runCLI(t, "", "audit", "verify", "--redis", node, "--cluster", "--sentinel-master", "m"); err == nil || !strings.Contains(err.Error(), "give one") {
		t.Errorf("--cluster with --sentinel-master: %v; want a refusal", err)
	}
}

// recordingsRedisModeChecked: serve's recordings Redis (recordings.redis) gets the mode check
// of its store: one address of a Cluster node without cluster_mode is refused at start and by
// --check-config, naming recordings.redis.cluster_mode (not the store's redis.cluster_mode);
// the same node with cluster_mode: true, or every node listed, gets past it and serve builds.
func recordingsRedisModeChecked(t *testing.T, c *testenv.RedisCluster) {
	ctx := context.Background()
	iss := startIssuer(t, "sshca")
	cfg := serveConfig(t, testenv.StartRedis(t).Addr, identity.IssuerConfig{IssuerURL: iss.URL(), Audiences: []string{"sshca"}})
	for _, tc := range []struct {
		rec  RedisConfig
		want string // "" builds
	}{
		{RedisConfig{Addrs: c.Addrs[:1]}, "recordings.redis.cluster_mode: true"},
		{RedisConfig{Addrs: c.Addrs[:1], ClusterMode: true}, ""},
		{RedisConfig{Addrs: c.Addrs}, ""},
	} {
		cfg.Recordings.Redis = tc.rec
		s, err := buildServer(ctx, cfg, testLog(t))
		if err == nil {
			s.close()
		}
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("serve with recordings.redis %+v: %v", tc.rec, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), " redis.cluster_mode")):
			t.Errorf("serve with recordings.redis %+v: %v; want a refusal naming %s", tc.rec, err, tc.want)
		}
		_, problems, _ := checkCLI(t, writeConfig(t, cfg), false)
		named := slices.ContainsFunc(problems, func(p string) bool { return strings.Contains(p, "recordings.redis") && strings.Contains(p, "Cluster") })
		if named != (tc.want != "") {
			t.Errorf("serve --check-config with recordings.redis %+v: problems %q; want one naming recordings.redis: %t", tc.rec, problems, tc.want != "")
		}
	}
}

// TestRedisModeWithShippedACL: the mode check works for the users of the shipped ACL, the
// bastion's read-only one included (HELLO needs only @connection; INFO is @dangerous, which
// the bastion user lacks), so a bastion agent given a plain URL of a Cluster node is refused
// rather than let through as "could not tell".
func TestRedisModeWithShippedACL(t *testing.T) {
	srv := testenv.StartRedisConfig(t, filepath.Join("..", "..", "deploy", "redis", "redis.conf"), "--appendonly", "no", "--save", "")
	for _, user := range []string{"sshca", "bastion"} {
		rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, Username: user, Password: "CHANGE-ME-" + user})
		mode, err := redisMode(context.Background(), rdb)
		rdb.Close()
		if err != nil || mode != "standalone" {
			t.Errorf("the %s user: mode %q, %v; want standalone", user, mode, err)
		}
	}
}

// TestShippedACLOnCluster: with the users of the shipped deploy/redis/users.acl on every node
// of a Redis Cluster, the commands reach the store with --cluster: a Cluster client learns
// the slots (CLUSTER SLOTS, which the users were first refused: NOPERM), `sshca store
// migrate` writes as the sshca user and `sshca audit verify` reads, and the bastion user reads
// keys of three hash tags, on whichever master, and still may not write.
func TestShippedACLOnCluster(t *testing.T) {
	c := testenv.StartRedisCluster(t, 3)
	ctx := context.Background()
	acl, err := os.ReadFile(filepath.Join("..", "..", "deploy", "redis", "users.acl"))
	if err != nil {
		t.Fatal(err)
	}
	for _, addr := range c.Addrs {
		node := redis.NewClient(&redis.Options{Addr: addr})
		for _, line := range strings.Split(strings.TrimSpace(string(acl)), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 || f[0] != "user" || f[1] == "default" {
				continue // the default user stays on here: the test's own admin connection
			}
			args := []any{"ACL", "SETUSER"}
			for _, a := range f[1:] {
				args = append(args, a)
			}
			if err := node.Do(ctx, args...).Err(); err != nil {
				t.Fatalf("%s: ACL SETUSER %s: %v", addr, f[1], err)
			}
		}
		node.Close()
	}
	node := "redis://sshca:CHANGE-ME-sshca@" + c.Addrs[1]
	if out, err := runCLI(t, "", "store", "migrate", "--redis", node, "--cluster"); err != nil {
		t.Errorf("store migrate --cluster as the shipped sshca user: %v\n%s", err, out)
	}
	if out, err := runCLI(t, "", "audit", "verify", "--redis", node, "--cluster"); err != nil {
		t.Errorf("audit verify --cluster as the shipped sshca user: %v\n%s", err, out)
	}
	bastion := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs[:1], Username: "bastion", Password: "CHANGE-ME-bastion"})
	defer bastion.Close()
	for _, k := range []string{"sshca:{audit}:stripes", "sshca:{inventory:1}:live", "sshca:{inventory:2}:live"} {
		if err := bastion.Get(ctx, k).Err(); err != nil && err != redis.Nil {
			t.Errorf("the shipped bastion user reads %s on the Cluster: %v", k, err)
		}
	}
	if err := bastion.Set(ctx, "sshca:{inventory:1}:x", "1", 0).Err(); err == nil || !strings.Contains(err.Error(), "NOPERM") {
		t.Errorf("the shipped bastion user wrote on the Cluster: %v; want NOPERM", err)
	}
}
