package main

import (
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/internal/testenv"
)

// TestServeDiagListener: with diag_listen, /metrics and the /readyz details are served there
// and not on the public listener, whose /readyz still answers 200 or 503 (what the platform's
// probes read) without naming a dependency or an error.
func TestServeDiagListener(t *testing.T) {
	r := testenv.StartRedis(t)
	iss := startIssuer(t, "sshca")
	cfg := serveConfig(t, r.Addr, identity.IssuerConfig{IssuerURL: iss.URL(), Audiences: []string{"sshca"}})
	cfg.DiagListen = fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	base := startServe(t, cfg)
	diag := "http://" + cfg.DiagListen

	// One certificate, so the decision metrics have a sample.
	tok, err := iss.Mint(map[string]any{"sub": "alice", "preferred_username": "alice"})
	if err != nil {
		t.Fatal(err)
	}
	userKey := keygen(t, t.TempDir(), "user")
	issue(t, base, "user", tok, map[string]any{"public_key": readFile(t, userKey+".pub")})

	if code, out := getBody(t, base+"/metrics"); code == http.StatusOK || strings.Contains(out, "sshca_") {
		t.Errorf("public /metrics = %d %.200s, want no metrics", code, out)
	}
	if code, out := getBody(t, diag+"/metrics"); code != http.StatusOK || !strings.Contains(out, `sshca_policy_decision_seconds_count{evaluator="compiled"} 1`) {
		t.Errorf("diag /metrics = %d, want the decision timing:\n%.2000s", code, out)
	}
	for _, url := range []string{base + "/healthz", diag + "/healthz"} {
		if code, out := getBody(t, url); code != http.StatusOK {
			t.Errorf("%s = %d %s", url, code, out)
		}
	}
	details := []string{`"redis"`, "policy_revision", "policy_evaluator", "kms_user_ca", "store_state"}
	code, out := getBody(t, base+"/readyz")
	if code != http.StatusOK || !strings.Contains(out, `"status":"ready"`) {
		t.Errorf("public /readyz = %d %s, want 200 ready", code, out)
	}
	for _, d := range details {
		if strings.Contains(out, d) {
			t.Errorf("public /readyz shows %s: %s", d, out)
		}
	}
	code, out = getBody(t, diag+"/readyz")
	if code != http.StatusOK {
		t.Errorf("diag /readyz = %d %s, want 200", code, out)
	}
	for _, d := range details {
		if !strings.Contains(out, d) {
			t.Errorf("diag /readyz does not show %s: %s", d, out)
		}
	}

	// The profiler only with diag_pprof.
	for _, url := range []string{base + "/debug/pprof/cmdline", diag + "/debug/pprof/cmdline"} {
		if code, _ := getBody(t, url); code == http.StatusOK {
			t.Errorf("%s = %d without diag_pprof, want no profiler", url, code)
		}
	}

	// Redis down: both say 503; only the diagnostics say why.
	r.Stop()
	waitFor(t, 15*time.Second, "public /readyz 503 with Redis down", func() bool {
		code, _ := getBody(t, base+"/readyz")
		return code == http.StatusServiceUnavailable
	})
	code, out = getBody(t, base+"/readyz")
	if strings.Contains(out, "redis") || strings.Contains(out, r.Addr) || !strings.Contains(out, `"status":"not ready"`) {
		t.Errorf("public /readyz with Redis down = %d %s, want not ready without naming it", code, out)
	}
	code, out = getBody(t, diag+"/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(out, `"redis":"unavailable`) {
		t.Errorf("diag /readyz with Redis down = %d %s, want 503 naming redis", code, out)
	}
}

// TestConfigDiagListen: diag_listen defaults to loopback when absent, an explicit "" turns it
// off, and a bad value is named.
func TestConfigDiagListen(t *testing.T) {
	const valid = `
listen: 127.0.0.1:8443
user_ca: {kms: "softkms:", key: "softkms:path=/tmp/u.pem"}
host_ca: {kms: "softkms:", key: "softkms:path=/tmp/h.pem"}
redis: {addrs: ["127.0.0.1:6379"]}
oidc: {issuers: [{issuer_url: "https://issuer.example.com", audiences: [sshca]}]}
`
	for _, tt := range []struct {
		name, extra, want, err string
	}{
		{"absent", "", DefaultDiagListen, ""},
		{"off", `diag_listen: ""`, "", ""},
		{"all interfaces", "diag_listen: 0.0.0.0:9850", "0.0.0.0:9850", ""},
		{"no port", "diag_listen: 127.0.0.1", "", `diag_listen: "127.0.0.1" is not a host:port address`},
		{"the public listener", "diag_listen: 127.0.0.1:8443", "", `diag_listen: "127.0.0.1:8443" is also listen`},
		{"profiler", "diag_pprof: true", DefaultDiagListen, ""},
		{"profiler without diagnostics", "diag_listen: \"\"\ndiag_pprof: true", "", "diag_pprof: needs diag_listen"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "config.yaml")
			writeFile(t, path, valid+tt.extra+"\n")
			c, err := LoadConfig(path)
			switch {
			case tt.err != "":
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Errorf("err %v, want %q", err, tt.err)
				}
			case err != nil:
				t.Fatal(err)
			case c.DiagListen != tt.want:
				t.Errorf("diag_listen = %q, want %q", c.DiagListen, tt.want)
			}
		})
	}
}

// TestServeDiagPprof: with diag_pprof, Go's profiler answers on the diagnostics listener (a
// CPU profile of a second is a pprof file) and still not on the public one.
func TestServeDiagPprof(t *testing.T) {
	r := testenv.StartRedis(t)
	iss := startIssuer(t, "sshca")
	cfg := serveConfig(t, r.Addr, identity.IssuerConfig{IssuerURL: iss.URL(), Audiences: []string{"sshca"}})
	cfg.DiagListen = fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	cfg.DiagPprof = true
	base := startServe(t, cfg)
	diag := "http://" + cfg.DiagListen
	if code, _ := getBody(t, base+"/debug/pprof/cmdline"); code == http.StatusOK {
		t.Errorf("public /debug/pprof/cmdline = %d, want no profiler", code)
	}
	code, out := getBody(t, diag+"/debug/pprof/profile?seconds=1")
	// A CPU profile is gzip-compressed protobuf.
	if code != http.StatusOK || !strings.HasPrefix(out, "\x1f\x8b") {
		t.Errorf("diag CPU profile = %d %.40q, want a gzip'd profile", code, out)
	}
}
