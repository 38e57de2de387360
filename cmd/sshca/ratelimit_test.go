package main

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/services"
)

// testRates are limits that tests which load the service (from one address, as one identity)
// never reach; serveConfig sets them, and the tests of the limits set their own.
var testRates = RateConfig{PerAddress: 1e6, Burst: 1e6, PerIdentity: 1e6, IdentityBurst: 1e6,
	KRLPerAddress: 1e6, KRLBurst: 1e6, InFlight: 1e5, KRLInFlight: 1e5}

// TestServeRateLimits runs `sshca serve` (redis-server, a real OIDC issuer) behind a trusted
// proxy with small limits. One identity asking from two addresses shares one bucket: its third
// request is 429 with Retry-After while another identity from the same address is served. An
// address over its limit gets 429 before its token is looked at, while KRL and CA key pulls
// from it are still served.
func TestServeRateLimits(t *testing.T) {
	r := testenv.StartRedis(t)
	iss := startIssuer(t, "sshca")
	cfg := serveConfig(t, r.Addr, identity.IssuerConfig{IssuerURL: iss.URL(), Audiences: []string{"sshca"}})
	cfg.BehindTLSProxy, cfg.TrustedProxies = true, []string{"127.0.0.1"}
	cfg.Limits.Rate = RateConfig{PerAddress: 0.01, Burst: 4, PerIdentity: 0.01, IdentityBurst: 2}
	base := startServe(t, cfg)
	body := `{"public_key":"` + strings.TrimSpace(readFile(t, keygen(t, t.TempDir(), "user")+".pub")) + `"}`
	mint := func(user string) string {
		tok, err := iss.Mint(map[string]any{"sub": user, "preferred_username": user})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	send := func(method, path, from, token, body string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		req.Header.Set("X-Forwarded-For", from)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		resp.Body = io.NopCloser(strings.NewReader(string(b)))
		return resp
	}
	expect := func(resp *http.Response, code int, what string) string {
		t.Helper()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != code {
			t.Fatalf("%s: %d %s, want %d", what, resp.StatusCode, b, code)
		}
		if code == http.StatusTooManyRequests {
			if n, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || n < 1 || n > 100 {
				t.Errorf("%s: Retry-After %q, want whole seconds in [1, 100]", what, resp.Header.Get("Retry-After"))
			}
		}
		return string(b)
	}

	expect(send("POST", "/v1/certs/user", "203.0.113.1", mint("alice"), body), 200, "alice from .1")
	expect(send("POST", "/v1/certs/user", "203.0.113.2", mint("alice"), body), 200, "alice from .2")
	msg := expect(send("POST", "/v1/certs/user", "203.0.113.3", mint("alice"), body), 429, "alice's third request, from .3")
	if !strings.Contains(msg, "this identity") {
		t.Errorf("the refusal does not say the identity is limited: %s", msg)
	}
	expect(send("POST", "/v1/certs/user", "203.0.113.3", mint("bob"), body), 200, "bob from .3 while alice is limited")

	// An address uses up its burst with tokens that do not verify; then even a good token is
	// refused at the door.
	for i := range 4 {
		expect(send("POST", "/v1/certs/user", "198.51.100.9", "not-a-token", body), 401, "bad token "+strconv.Itoa(i+1))
	}
	msg = expect(send("POST", "/v1/certs/user", "198.51.100.9", mint("carol"), body), 429, "the address beyond its burst")
	if !strings.Contains(msg, "this address") {
		t.Errorf("the refusal does not say the address is limited: %s", msg)
	}
	for _, p := range []string{"/v1/krl", "/v1/krl/host", "/v1/ca/user.pub", "/v1/ca/known_hosts"} {
		expect(send("GET", p, "198.51.100.9", "", ""), 200, "GET "+p+" from the limited address")
	}
	expect(send("POST", "/v1/certs/user", "198.51.100.10", mint("carol"), body), 200, "another address")
}

// TestRateConfigValidated: every value of limits.rate out of range is reported, named by its
// key; unset values take the defaults.
func TestRateConfigValidated(t *testing.T) {
	cfg := serveConfig(t, "127.0.0.1:6379")
	cfg.Limits.Rate = RateConfig{PerAddress: -1, Burst: -2, PerIdentity: 1, KRLInFlight: -3, Idle: -time.Minute}
	err := cfg.Validate()
	if err == nil {
		t.Fatal("negative limits accepted")
	}
	for _, want := range []string{"limits.rate.per_address: -1", "limits.rate.burst: -2", "limits.rate.krl_in_flight: -3", "limits.rate.idle: -1m0s"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not report %q:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "per_identity") {
		t.Errorf("a valid per_identity reported:\n%v", err)
	}
	got := RateConfig{PerIdentity: 0.5}.rateLimits()
	if got.PerIdentity != 0.5 || got.PerAddress != 0 {
		t.Errorf("rateLimits: %+v, want per_identity 0.5 and the rest unset (defaults)", got)
	}
}

// TestExampleRateIsDefault: the limits.rate block of deploy/config.example.yaml shows exactly
// the defaults the service applies when it is left out.
func TestExampleRateIsDefault(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "config.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var c Config
	if err := yaml.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	d := services.DefaultRateLimits
	want := RateConfig{PerAddress: d.PerAddress, Burst: d.Burst, PerIdentity: d.PerIdentity, IdentityBurst: d.IdentityBurst,
		KRLPerAddress: d.KRLPerAddress, KRLBurst: d.KRLBurst, InFlight: d.InFlight, KRLInFlight: d.KRLInFlight,
		LongPollsPerAddress: d.LongPollsPerAddress, KRLLongPolls: d.KRLLongPolls, RequestLongPolls: d.RequestLongPolls,
		MaxEntries: d.MaxEntries, Idle: d.Idle}
	if c.Limits.Rate != want {
		t.Errorf("config.example.yaml limits.rate = %+v, want the defaults %+v", c.Limits.Rate, want)
	}
}
