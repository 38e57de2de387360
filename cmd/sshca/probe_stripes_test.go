package main

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/internal/testenv"
)

// TestProbesCoverAuditStripes: against a real redis-server whose ACL user may write every key
// of sshca but those of audit stripe 2 ({audit:2}, on a Cluster possibly a master of its own
// that refuses writes), the readiness probe of a replica configured with 3 stripes and
// `serve --check-config` with audit.stripes 3 both name that stripe's probe key; with 2
// stripes (the control: the ACL refuses nothing else) both pass.
func TestProbesCoverAuditStripes(t *testing.T) {
	ctx := context.Background()
	r := testenv.StartRedisConfig(t, filepath.Join("..", "..", "deploy", "redis", "redis.conf"),
		"--user", "nostripe2", "on", ">pw", "resetchannels", "+@all",
		"~sshca:{inventory}*", "~sshca:{audit}*", "~sshca:{audit:1}*", "~sshca:{identities}*", "~sshca:{keys}*",
		"~sshca:{keyring}*", "~sshca:{tokens}*", "~sshca:{gen}*", "~sshca:{ca:*", "~sshca:probe*", "~sshca:token:*")
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr, Username: "nostripe2", Password: "pw"})
	defer rdb.Close()

	for _, n := range []int{2, 3} {
		err := redisProbe{rdb: rdb, prefix: "sshca", auditStripes: n}.Check(ctx)
		switch {
		case n == 2 && err != nil:
			t.Errorf("readiness with 2 stripes: %v; want ready (the ACL refuses only stripe 2)", err)
		case n == 3 && (err == nil || !strings.Contains(err.Error(), "sshca:{audit:2}:probe")):
			t.Errorf("readiness with 3 stripes: %v; want stripe 2's probe key named", err)
		}
	}

	iss := startIssuer(t, "sshca")
	cfg := serveConfig(t, r.Addr, identity.IssuerConfig{IssuerURL: iss.URL(), Audiences: []string{"sshca"}})
	cfg.Redis.Username, cfg.Redis.Password = "nostripe2", "pw"
	cfg.Audit.Stripes = 2
	if out, problems, err := checkCLI(t, writeConfig(t, cfg), false); err != nil || len(problems) != 0 {
		t.Errorf("check-config with 2 stripes: %v\n%s", err, out)
	}
	cfg.Audit.Stripes = 3
	out, problems, err := checkCLI(t, writeConfig(t, cfg), false)
	if err == nil {
		t.Errorf("check-config with 3 stripes: exit status 0:\n%s", out)
	}
	wantProblems(t, out, problems, "sshca:{audit:2}:probe")
}
