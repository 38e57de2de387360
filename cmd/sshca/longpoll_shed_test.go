package main

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/internal/testenv"
)

// TestShedAgentStillGetsRevocations: `sshca serve` on a real redis-server with
// limits.rate.krl_long_polls 1, behind TLS. Agent A holds the one long poll slot and asks again
// the instant each poll ends; agent B, started after it, is shed with 503 at every long poll.
// B still installs the KRL, and a revocation made meanwhile, within a few Retry-After pauses:
// after a shed long poll it pulls without wait, which no long poll cap counts. Before, B asked
// to long poll again after each pause, found A back in the slot, and never installed a KRL.
func TestShedAgentStillGetsRevocations(t *testing.T) {
	r := testenv.StartRedis(t)
	idp := startIssuer(t, "sshca")
	cfg := serveConfig(t, r.Addr, identity.IssuerConfig{IssuerURL: idp.URL(), Audiences: []string{"sshca"}})
	cfg.Limits.Rate.KRLLongPolls = 1
	base := startServe(t, cfg)
	dir := t.TempDir()
	frontURL, serverCA := tlsFront(t, base, dir)
	mint := minter(t, idp)
	agentAt := func(name string) agentFlags {
		d := filepath.Join(dir, name)
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		return agentFlags{server: frontURL, serverCA: serverCA, krlPath: filepath.Join(d, "sshca.krl"), userCA: filepath.Join(d, "user_ca.pub"),
			health: "127.0.0.1:0", poll: time.Second, caRefresh: time.Hour} // no CA re-read to leave A's slot free a moment
	}
	keyPath := keygen(t, dir, "alice")
	admin := mint(map[string]any{"sub": "admin", "preferred_username": "admin1", "email": "admin@example.com", "email_verified": true, "groups": []string{"sshca-admins"}})
	revoke := func() {
		t.Helper()
		c := issue(t, base, "user", mint(map[string]any{"sub": "u-alice", "preferred_username": "alice", "email": "alice@example.com", "email_verified": true}),
			map[string]any{"public_key": readFile(t, keyPath+".pub"), "ttl": "10m"})
		if code, out := call(t, http.MethodPost, base+"/v1/revocations", admin, map[string]any{"serial": c.Serial, "reason": "test"}); code != http.StatusOK {
			t.Fatalf("POST /v1/revocations = %d %s", code, out)
		}
	}
	revoke() // a KRL of version 1 or more, for the agents to install
	a := startAgent(t, agentAt("a"))
	waitFor(t, 10*time.Second, "agent A installs a KRL", func() bool { return a.Status().KRLVersion > 0 })
	waitFor(t, 10*time.Second, "agent A holds the long poll slot", func() bool {
		return scrapeMetric(t, base, `sshca_long_polls_open{kind="krl"}`) == "1"
	})
	b := startAgent(t, agentAt("b"))
	waitFor(t, 15*time.Second, "agent B, shed, installs the KRL agent A has", func() bool {
		return b.Status().KRLVersion > 0 && b.Status().KRLVersion == a.Status().KRLVersion
	})
	if v := scrapeMetric(t, base, `sshca_requests_limited_total{limit="krl_long_polls"}`); v == "0" || v == "" {
		t.Fatalf("sshca_requests_limited_total{limit=\"krl_long_polls\"} = %q: agent B was not shed, the test tests nothing", v)
	}
	had := a.Status().KRLVersion
	revoke()
	waitFor(t, 5*time.Second, "agent A installs the revocation", func() bool { return a.Status().KRLVersion > had })
	waitFor(t, 20*time.Second, "agent B, shed, installs the revocation", func() bool { return b.Status().KRLVersion >= a.Status().KRLVersion })
}

// scrapeMetric is the value of the sample name (with its labels) on base's /metrics, "" when
// absent.
func scrapeMetric(t *testing.T, base, name string) string {
	t.Helper()
	_, body := call(t, http.MethodGet, base+"/metrics", "", nil)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v
		}
	}
	return ""
}
