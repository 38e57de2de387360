package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/internal/testenv"
)

// sample is one line of the Prometheus text format.
type sample struct {
	name   string
	labels map[string]string
	value  float64
}

var (
	sampleLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$`)
	labelPair  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)
)

// scrape reads every sample of a /metrics page.
func scrape(t *testing.T, url string) []sample {
	t.Helper()
	code, body := getBody(t, url)
	if code != http.StatusOK {
		t.Fatalf("GET %s = %d", url, code)
	}
	var out []sample
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		m := sampleLine.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("%s: unreadable line %q", url, line)
		}
		v, err := strconv.ParseFloat(m[3], 64)
		if err != nil {
			t.Fatalf("%s: value of %q: %v", url, line, err)
		}
		s := sample{name: m[1], labels: map[string]string{}, value: v}
		for _, p := range labelPair.FindAllStringSubmatch(m[2], -1) {
			s.labels[p[1]] = p[2]
		}
		out = append(out, s)
	}
	return out
}

// value is the sum of the samples of name whose labels include want.
func value(samples []sample, name string, want map[string]string) (float64, bool) {
	var sum float64
	found := false
next:
	for _, s := range samples {
		if s.name != name {
			continue
		}
		for k, v := range want {
			if s.labels[k] != v {
				continue next
			}
		}
		sum += s.value
		found = true
	}
	return sum, found
}

// TestServeMetrics: against real redis-server, the diagnostics listener's /metrics counts a
// certificate at every stage of its pipeline, the HTTP request by route and status, the
// revocation by kind and the KRL version served; Redis going away shows as Redis errors and
// failed store stages. No label names or carries the identity, its address, the serial, the
// key ID or the key (the metrics are read by more people than the audit log).
func TestServeMetrics(t *testing.T) {
	r := testenv.StartRedis(t)
	idp := startIssuer(t, "sshca")
	cfg := serveConfig(t, r.Addr, identity.IssuerConfig{IssuerURL: idp.URL(), Audiences: []string{"sshca"}})
	cfg.DiagListen = fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	base := startServe(t, cfg)
	metrics := "http://" + cfg.DiagListen + "/metrics"
	mint := minter(t, idp)

	before := scrape(t, metrics)
	for _, name := range []string{"sshca_stage_duration_seconds_count", "sshca_stage_errors_total", "sshca_kms_errors_total",
		"sshca_redis_errors_total", "sshca_revocations_total", "sshca_krl_version", "sshca_requests_limited_total", "sshca_token_returns_total"} {
		if _, ok := value(before, name, nil); !ok {
			t.Errorf("%s is not exported before its first event: an alert on it could not fire", name)
		}
	}

	keyFile := keygen(t, t.TempDir(), "alice")
	pub := readFile(t, keyFile+".pub")
	c := issue(t, base, "user", mint(map[string]any{"sub": "u-alice", "preferred_username": "alice", "email": "alice@example.com", "email_verified": true}), map[string]any{"public_key": pub})
	admin := mint(map[string]any{"sub": "admin", "preferred_username": "admin1", "email": "admin@example.com", "email_verified": true, "groups": []string{"sshca-admins"}})
	if code, out := call(t, http.MethodPost, base+"/v1/revocations", admin, map[string]any{"serial": c.Serial, "reason": "metrics test"}); code != http.StatusOK {
		t.Fatalf("revoke = %d %s", code, out)
	}
	resp, err := http.Get(base + "/v1/krl")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	krlVersion, _ := strconv.ParseFloat(resp.Header.Get("X-KRL-Version"), 64)

	after := scrape(t, metrics)
	for _, stage := range []string{"authenticate", "policy", "store", "sign", "audit"} {
		if n, _ := value(after, "sshca_stage_duration_seconds_count", map[string]string{"stage": stage}); n < 1 {
			t.Errorf("stage %s observed %v times, want at least once", stage, n)
		}
	}
	for _, tt := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"sshca_issue_requests_total", map[string]string{"kind": "user", "result": "issued"}, 1},
		{"sshca_http_requests_total", map[string]string{"endpoint": "POST /v1/certs/user", "code": "200"}, 1},
		{"sshca_http_requests_total", map[string]string{"endpoint": "POST /v1/revocations", "code": "200"}, 1},
		{"sshca_http_requests_total", map[string]string{"endpoint": "GET /v1/krl", "code": "200"}, 1},
		{"sshca_revocations_total", map[string]string{"kind": "serial"}, 1},
		{"sshca_krl_version", map[string]string{"ca": "user"}, krlVersion},
		{"sshca_stage_errors_total", nil, 0},
		{"sshca_redis_errors_total", nil, 0},
		{"sshca_kms_errors_total", nil, 0},
	} {
		if got, _ := value(after, tt.name, tt.labels); got != tt.want {
			t.Errorf("%s%v = %v, want %v", tt.name, tt.labels, got, tt.want)
		}
	}
	if krlVersion == 0 {
		t.Errorf("X-KRL-Version after a revocation = %q", resp.Header.Get("X-KRL-Version"))
	}

	// Redis gone: the next request fails at the store and says so in the metrics.
	r.Stop()
	code, _ := call(t, http.MethodPost, base+"/v1/certs/user", mint(map[string]any{"sub": "u-bob", "preferred_username": "bob"}), map[string]any{"public_key": pub})
	if code != http.StatusServiceUnavailable {
		t.Errorf("issue with Redis down = %d, want 503", code)
	}
	down := scrape(t, metrics)
	if n, _ := value(down, "sshca_redis_errors_total", nil); n < 1 {
		t.Errorf("sshca_redis_errors_total = %v with Redis down, want > 0", n)
	}
	if n, _ := value(down, "sshca_stage_errors_total", map[string]string{"stage": "store"}); n < 1 {
		t.Errorf("store stage errors = %v with Redis down, want > 0", n)
	}
	if n, _ := value(down, "sshca_http_requests_total", map[string]string{"endpoint": "POST /v1/certs/user", "code": "503"}); n != 1 {
		t.Errorf("503s of POST /v1/certs/user = %v, want 1", n)
	}

	// Nothing that names who asked, from where, or for which certificate.
	pk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(pub))
	if err != nil {
		t.Fatal(err)
	}
	secrets := []string{"alice", "u-alice", "bob", "admin1", "example.com", c.Serial, c.KeyID, "127.0.0.1", ssh.FingerprintSHA256(pk), idp.URL()}
	forbidden := regexp.MustCompile(`(?i)ident|subject|user(name)?$|email|addr|ip$|source|serial|key_?id|fingerprint|principal|token|host_?name`)
	assertNoIdentity(t, append(after, down...), secrets, forbidden, time.Now())
}

// assertNoIdentity fails on a label whose name looks like an identity, address or serial, and
// on any label value holding one of secrets.
func assertNoIdentity(t *testing.T, samples []sample, secrets []string, forbidden *regexp.Regexp, _ time.Time) {
	t.Helper()
	for _, s := range samples {
		for k, v := range s.labels {
			if forbidden.MatchString(k) && k != "ca" {
				t.Errorf("%s has a label %s=%q: metrics carry no identity, address or serial", s.name, k, v)
			}
			for _, secret := range secrets {
				if secret != "" && strings.Contains(v, secret) {
					t.Errorf("%s{%s=%q} carries %q", s.name, k, v, secret)
				}
			}
		}
	}
}

// TestRedisErrorsSkipHandshake: the CLIENT subcommands go-redis sends on every new connection
// (SETINFO, MAINT_NOTIFICATIONS), refused by Redis 7.0, are not counted as Redis errors; any
// other refused CLIENT subcommand is, and so is any command that merely names one.
func TestRedisErrorsSkipHandshake(t *testing.T) {
	refused := errors.New("ERR unknown subcommand")
	for _, tt := range []struct {
		args []any
		err  error
		want bool
	}{
		{[]any{"client", "setinfo", "lib-name", "go-redis"}, refused, false},
		{[]any{"client", "maint_notifications", "on", "moving-endpoint-type", "internal-ip"}, refused, false},
		{[]any{"CLIENT", "MAINT_NOTIFICATIONS", "on"}, refused, false},
		{[]any{"client", "list"}, refused, true},
		{[]any{"client", "kill", "maint_notifications"}, refused, true},
		{[]any{"get", "maint_notifications"}, refused, true},
	} {
		cmd := redis.NewCmd(context.Background(), tt.args...)
		if got := failed(cmd, tt.err); got != tt.want {
			t.Errorf("failed(%v, %v) = %v, want %v", tt.args, tt.err, got, tt.want)
		}
	}
}
