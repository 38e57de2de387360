package monitoring

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

const repoRoot = "../.."

var (
	alertsFile    = filepath.Join(repoRoot, "deploy/prometheus/sshca-alerts.yml")
	dashboardFile = filepath.Join(repoRoot, "deploy/grafana/sshca-dashboard.json")
	promql        = parser.NewParser(parser.Options{})
)

// metricNames are the metric names an expression selects (every vector selector's name).
func metricNames(t *testing.T, expr string) []string {
	t.Helper()
	e, err := promql.ParseExpr(expr)
	if err != nil {
		t.Fatalf("PromQL %q: %v", expr, err)
	}
	var names []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			if vs.Name == "" {
				t.Errorf("PromQL %q selects by labels only: name the metric, so this test can check it", expr)
			}
			names = append(names, vs.Name)
		}
		return nil
	})
	if len(names) == 0 {
		t.Errorf("PromQL %q names no metric", expr)
	}
	return names
}

// ruleExprs are the alert rules of the rules file, parsed and validated as Prometheus does
// (strict YAML, PromQL, templates), by alert name.
func ruleExprs(t *testing.T) map[string]string {
	t.Helper()
	groups, errs := rulefmt.ParseFile(alertsFile, false, model.UTF8Validation, promql, slog.New(slog.DiscardHandler))
	for _, err := range errs {
		t.Errorf("rules: %v", err)
	}
	if groups == nil {
		t.FailNow()
	}
	out := map[string]string{}
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				t.Errorf("group %s: a recording rule %q; this file holds alerts", g.Name, r.Record)
				continue
			}
			if r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
				t.Errorf("alert %s: needs labels.severity and annotations.summary", r.Alert)
			}
			out[r.Alert] = r.Expr
		}
	}
	return out
}

// grafanaVars are the dashboard's variables as a query gets them, for the parser.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "6h", "$instance", ".*")

// dashboardExprs are the PromQL expressions of the dashboard: every panel target and every
// label_values() variable query.
func dashboardExprs(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Title  string `json:"title"`
		UID    string `json:"uid"`
		Panels []struct {
			Type    string `json:"type"`
			Title   string `json:"title"`
			Targets []struct {
				Expr  string `json:"expr"`
				RefID string `json:"refId"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Name       string `json:"name"`
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	if d.Title == "" || d.UID == "" {
		t.Errorf("dashboard needs a title and a uid")
	}
	var exprs []string
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			exprs = append(exprs, grafanaVars.Replace(tg.Expr))
		}
	}
	labelValues := regexp.MustCompile(`^label_values\(([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*[a-zA-Z_]+\)$`)
	for _, v := range d.Templating.List {
		if v.Definition == "" {
			continue
		}
		m := labelValues.FindStringSubmatch(v.Definition)
		if m == nil {
			t.Errorf("variable %s: %q is not label_values(metric, label)", v.Name, v.Definition)
			continue
		}
		exprs = append(exprs, m[1])
	}
	return exprs
}

// TestRulesAndDashboardParse needs no running sshca: every rule and panel parses as
// PromQL, and a name that nothing exports is caught by missing (the check the next test
// relies on).
func TestRulesAndDashboardParse(t *testing.T) {
	rules := ruleExprs(t)
	for _, want := range []string{"SSHCABastionKRLStale", "SSHCARedisErrors", "SSHCAPolicyReloadRefused", "SSHCAHigh5xxRate"} {
		if rules[want] == "" {
			t.Errorf("no alert %s", want)
		}
	}
	for _, e := range rules {
		metricNames(t, e)
	}
	for _, e := range dashboardExprs(t) {
		metricNames(t, e)
	}
	exported := map[string]bool{"sshca_redis_errors_total": true}
	if got := missing([]string{"rate(sshca_redis_errors_total[5m]) / rate(sshca_redis_error_total[5m])"}, exported, t); !slices.Equal(got, []string{"sshca_redis_error_total"}) {
		t.Errorf("missing() = %v, want the misspelt name", got)
	}
}

// missing are the names exprs select that exported does not hold.
func missing(exprs []string, exported map[string]bool, t *testing.T) []string {
	var out []string
	for _, e := range exprs {
		for _, n := range metricNames(t, e) {
			if !exported[n] && !slices.Contains(out, n) {
				out = append(out, n)
			}
		}
	}
	slices.Sort(out)
	return out
}

// TestEveryNamedMetricIsExported builds sshca, runs `sshca serve` (diag_listen, a watched
// policy directory, real redis-server) and `sshca bastion agent` against the same Redis,
// scrapes both /metrics, and checks that every metric the alert rules and the dashboard name
// is exported by one of them before anything has gone wrong (an alert on a series that does
// not exist yet never fires).
func TestEveryNamedMetricIsExported(t *testing.T) {
	redisServer, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("SSHCA_REQUIRE_TOOLS") != "" {
			t.Fatal("redis-server not installed (go tool task deps)")
		}
		t.Skip("redis-server not installed (go tool task deps)")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "sshca")
	build := exec.Command("go", "build", "-o", bin, "./cmd/sshca")
	build.Dir = repoRoot
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/sshca: %v\n%s", err, out)
	}

	redisPort := freePort(t)
	start(t, "redis", exec.Command(redisServer, "--port", redisPort, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"))
	waitFor(t, "redis-server", func() bool {
		c, err := net.Dial("tcp", "127.0.0.1:"+redisPort)
		if err == nil {
			c.Close()
		}
		return err == nil
	})

	for _, name := range []string{"user_ca.pem", "host_ca.pem"} {
		writeKey(t, filepath.Join(dir, name))
	}
	policyDir := filepath.Join(dir, "policy")
	if err := os.Mkdir(policyDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"sshca.rego", "sshca_test.rego", "data.json"} {
		b, err := os.ReadFile(filepath.Join(repoRoot, "policies", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(policyDir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	listen, diag := "127.0.0.1:"+freePort(t), "127.0.0.1:"+freePort(t)
	config := filepath.Join(dir, "config.yaml")
	writeFile(t, config, fmt.Sprintf(`listen: %s
diag_listen: %s
user_ca: {kms: "softkms:", key: "softkms:path=%s/user_ca.pem"}
host_ca: {kms: "softkms:", key: "softkms:path=%s/host_ca.pem"}
redis: {addrs: ["127.0.0.1:%s"]}
oidc: {issuers: [{issuer_url: "http://127.0.0.1:1/unreachable", audiences: [sshca]}]}
policy: {dir: %s}
`, listen, diag, dir, dir, redisPort, policyDir))
	start(t, "serve", exec.Command(bin, "serve", "--config", config, "--log-format", "text"))
	waitFor(t, "sshca serve's diagnostics", func() bool { return get(t, "http://"+diag+"/healthz") == http.StatusOK })
	if code := get(t, "http://"+listen+"/v1/ca/user.pub"); code != http.StatusOK {
		t.Errorf("GET /v1/ca/user.pub = %d", code)
	}

	health := "127.0.0.1:" + freePort(t)
	start(t, "agent", exec.Command(bin, "bastion", "agent", "--redis", "redis://127.0.0.1:"+redisPort,
		"--krl", filepath.Join(dir, "sshca.krl"), "--user-ca", filepath.Join(dir, "user_ca.pub"), "--health", health,
		"--startup-check-user", "root"))
	waitFor(t, "the bastion agent's health", func() bool { return get(t, "http://"+health+"/healthz") == http.StatusOK })

	exported := map[string]bool{}
	for _, url := range []string{"http://" + diag + "/metrics", "http://" + health + "/metrics"} {
		for n := range scrapeNames(t, url) {
			exported[n] = true
		}
	}
	rules := ruleExprs(t)
	for alert, expr := range rules {
		if m := missing([]string{expr}, exported, t); len(m) > 0 {
			t.Errorf("alert %s names %v, which neither the server nor the agent exports", alert, m)
		}
	}
	if m := missing(dashboardExprs(t), exported, t); len(m) > 0 {
		t.Errorf("the dashboard names %v, which neither the server nor the agent exports", m)
	}
}

// scrapeNames are the metric names of a /metrics page: every sample's name (with _bucket,
// _sum, _count) and every family's.
func scrapeNames(t *testing.T, url string) map[string]bool {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s = %d", url, resp.StatusCode)
	}
	names := map[string]bool{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) >= 3 && f[0] == "#" && f[1] == "TYPE":
			names[f[2]] = true
		case len(f) >= 2 && f[0] != "#":
			name, _, _ := strings.Cut(f[0], "{")
			names[name] = true
		}
	}
	if len(names) == 0 {
		t.Fatalf("%s exports nothing", url)
	}
	return names
}

func writeKey(t *testing.T, path string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	return port
}

// syncBuffer collects a process's output for the failure message.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// start runs cmd until the test ends (SIGTERM, then SIGKILL after 10 s), and shows its output
// when the test failed.
func start(t *testing.T, name string, cmd *exec.Cmd) {
	t.Helper()
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", name, out.String())
		}
	})
}

func get(t *testing.T, url string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s not up within 60 s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
