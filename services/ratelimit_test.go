package services_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/services"
)

// clock is a settable clock for the limiters.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// countingService counts the calls that reach the service, where the token is verified. With
// release set it is slow: each call says it entered, then waits for release to close.
type countingService struct {
	*fakeService
	calls            atomic.Int64
	entered, release chan struct{}
	mu               sync.Mutex // fakeService is not safe for concurrent use
}

func (c *countingService) IssueRequest(ctx context.Context, token string, req ca.CertRequest) (ca.Issued, error) {
	c.calls.Add(1)
	if c.release != nil {
		c.entered <- struct{}{}
		<-c.release
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.fakeService.IssueRequest(ctx, token, req)
}

// limitedAPI is the HTTP API of a fake service behind a RateLimiter with limits l.
func limitedAPI(t *testing.T, l services.RateLimits) (http.Handler, *countingService, *services.RateLimiter) {
	return limitedService(t, l, &countingService{})
}

// limitedService is limitedAPI with svc, given a CA key.
func limitedService(t *testing.T, l services.RateLimits, svc *countingService) (http.Handler, *countingService, *services.RateLimiter) {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	key, _ := ssh.NewSignerFromKey(priv)
	svc.fakeService = &fakeService{key: key}
	rl := services.NewRateLimiter(l, nil)
	h := services.NewHTTPHandler(services.MakeEndpoints(svc), services.HTTPOptions{
		RenderKRL: func(...ca.RevocationState) ([]byte, error) { return []byte("KRL"), nil },
	})
	return rl.Handler(h), svc, rl
}

func certBody(t *testing.T) string {
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	sshPub, _ := ssh.NewPublicKey(pub)
	return `{"public_key":"` + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub))) + `"}`
}

// do serves one request from addr (host:port) and returns the recorder.
func do(h http.Handler, method, path, addr, body string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, path, strings.NewReader(body))
	r.RemoteAddr = addr
	r.Header.Set("Authorization", "Bearer tok")
	r.Header.Set("Content-Type", "application/json")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// retryAfter checks that w carries a Retry-After of whole seconds in [min, max] and returns it.
func retryAfter(t *testing.T, w *httptest.ResponseRecorder, lo, hi int) {
	t.Helper()
	s := w.Header().Get("Retry-After")
	n, err := strconv.Atoi(s)
	if err != nil || n < lo || n > hi {
		t.Errorf("Retry-After %q, want whole seconds in [%d, %d]", s, lo, hi)
	}
}

// TestRateLimitPerAddress: a burst beyond an address's limit gets 429 with Retry-After and an
// error naming the wait, without reaching the service (no token verified); another address
// is served meanwhile; the address is served again once its bucket refills.
func TestRateLimitPerAddress(t *testing.T) {
	clk := &clock{t: time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)}
	h, svc, _ := limitedAPI(t, services.RateLimits{PerAddress: 0.5, Burst: 3, Now: clk.now})
	body := certBody(t)
	for i := range 3 {
		if w := do(h, "POST", "/v1/certs/user", "192.0.2.1:4000", body); w.Code != 200 {
			t.Fatalf("request %d within the burst: %d %s", i+1, w.Code, w.Body)
		}
	}
	for range 5 {
		w := do(h, "POST", "/v1/certs/user", "192.0.2.1:4001", body)
		if w.Code != http.StatusTooManyRequests {
			t.Fatalf("request beyond the burst: %d %s, want 429", w.Code, w.Body)
		}
		retryAfter(t, w, 2, 2) // one token every 2s
		if !strings.Contains(w.Body.String(), "retry in 2s") {
			t.Errorf("body %s does not say when to retry", w.Body)
		}
	}
	if n := svc.calls.Load(); n != 3 {
		t.Errorf("the service (token verification) was reached %d times, want 3: limited requests must stop before it", n)
	}
	if w := do(h, "POST", "/v1/certs/user", "192.0.2.2:4000", body); w.Code != 200 {
		t.Errorf("another address while the first is limited: %d %s", w.Code, w.Body)
	}
	clk.add(2 * time.Second)
	if w := do(h, "POST", "/v1/certs/user", "192.0.2.1:4002", body); w.Code != 200 {
		t.Errorf("after the bucket refilled: %d %s", w.Code, w.Body)
	}
}

// TestRateLimitCounted: refusals are counted by limit, with no address or identity label.
func TestRateLimitCounted(t *testing.T) {
	reg := prometheus.NewRegistry()
	rl := services.NewRateLimiter(services.RateLimits{PerAddress: 0.001, Burst: 1, PerIdentity: 0.001, IdentityBurst: 1}, reg)
	h := rl.Handler(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
	for range 3 {
		do(h, "GET", "/v1/revocations", "192.0.2.1:1", "")
		rl.Allow("https://idp|alice")
	}
	got := map[string]float64{}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "sshca_requests_limited_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) != 1 {
				t.Errorf("labels %v, want only limit", m.GetLabel())
			}
			got[m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
		}
	}
	if got["address"] != 2 || got["identity"] != 2 {
		t.Errorf("sshca_requests_limited_total = %v, want address 2 and identity 2", got)
	}
}

// TestRateLimitIPv6By64: IPv6 addresses in one /64 share a bucket; another /64 has its own; an
// IPv4-mapped IPv6 address is its IPv4 address.
func TestRateLimitIPv6By64(t *testing.T) {
	clk := &clock{t: time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)}
	h, _, _ := limitedAPI(t, services.RateLimits{PerAddress: 0.1, Burst: 1, Now: clk.now})
	body := certBody(t)
	for _, tt := range []struct {
		addr string
		code int
	}{
		{"[2001:db8:1:2::1]:4000", 200},
		{"[2001:db8:1:2:ffff:ffff:ffff:fffe]:4000", 429}, // same /64
		{"[2001:db8:1:3::1]:4000", 200},                  // next /64
		{"192.0.2.7:4000", 200},
		{"[::ffff:192.0.2.7]:4000", 429}, // the same IPv4 address
	} {
		if w := do(h, "POST", "/v1/certs/user", tt.addr, body); w.Code != tt.code {
			t.Errorf("%s: %d, want %d", tt.addr, w.Code, tt.code)
		}
	}
	for in, want := range map[string]string{
		"2001:db8:1:2:aaaa::1": "2001:db8:1:2::/64",
		"fe80::1%eth0":         "fe80::/64",
		"::ffff:10.1.2.3":      "10.1.2.3",
		"10.1.2.3":             "10.1.2.3",
		"not-an-ip":            "not-an-ip",
	} {
		if got := services.AddressKey(in); got != want {
			t.Errorf("AddressKey(%q) = %q, want %q", in, got, want)
		}
	}
	// Every request computes it: an IPv4 address is its own key, with no string built.
	if n := testing.AllocsPerRun(100, func() { _ = services.AddressKey("192.0.2.7") }); n != 0 {
		t.Errorf("AddressKey of an IPv4 address: %v allocations, want 0", n)
	}
}

// TestRateLimitPerIdentity: an identity's bucket is shared by all its requests whatever their
// addresses; another identity has its own; the wait is when the next token comes.
func TestRateLimitPerIdentity(t *testing.T) {
	clk := &clock{t: time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)}
	rl := services.NewRateLimiter(services.RateLimits{PerIdentity: 0.25, IdentityBurst: 2, Now: clk.now}, nil)
	var _ ca.IdentityLimiter = rl
	alice := ca.Identity{Issuer: "https://idp", Subject: "alice"}.Name()
	bob := ca.Identity{Issuer: "https://idp", Subject: "bob"}.Name()
	for i := range 2 {
		if ok, _ := rl.Allow(alice); !ok {
			t.Fatalf("alice's request %d within the burst refused", i+1)
		}
	}
	if ok, wait := rl.Allow(alice); ok || wait != 4*time.Second {
		t.Fatalf("alice beyond the burst: ok %v wait %s, want refused for 4s", ok, wait)
	}
	if ok, _ := rl.Allow(bob); !ok {
		t.Error("bob refused while alice is limited")
	}
	clk.add(4 * time.Second)
	if ok, _ := rl.Allow(alice); !ok {
		t.Error("alice refused after her bucket refilled")
	}
}

// TestInFlightShedsAndKRLServed: with the in-flight bound reached by requests to a slow
// service, another API request is shed with 503 and Retry-After at once; KRL and CA key pulls,
// with bounds of their own, are still served, and so are they while the address is rate
// limited for the API.
func TestInFlightShedsAndKRLServed(t *testing.T) {
	clk := &clock{t: time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)}
	slow := &countingService{entered: make(chan struct{}, 8), release: make(chan struct{})}
	h, _, _ := limitedService(t, services.RateLimits{InFlight: 2, PerAddress: 1, Burst: 3, Now: clk.now}, slow)
	body := certBody(t)

	var wg sync.WaitGroup
	codes := make([]int, 2)
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i] = do(h, "POST", "/v1/certs/user", "192.0.2."+strconv.Itoa(10+i)+":1", body).Code
		}()
	}
	<-slow.entered
	<-slow.entered
	w := do(h, "POST", "/v1/certs/user", "192.0.2.20:1", body)
	if w.Code != http.StatusServiceUnavailable || !strings.Contains(w.Body.String(), "too many requests in flight") {
		t.Fatalf("third request in flight: %d %s, want 503", w.Code, w.Body)
	}
	retryAfter(t, w, 1, 1)
	for _, p := range []string{"/v1/krl", "/v1/krl/host", "/v1/ca/user.pub", "/v1/ca/known_hosts"} {
		if w := do(h, "GET", p, "192.0.2.20:1", ""); w.Code != 200 {
			t.Errorf("GET %s while the API sheds: %d %s", p, w.Code, w.Body)
		}
	}
	close(slow.release)
	wg.Wait()
	if codes[0] != 200 || codes[1] != 200 {
		t.Errorf("requests in flight: %v, want both 200", codes)
	}

	// The address uses up its API burst (the shed request took a token: 2 left).
	for range 2 {
		if w := do(h, "POST", "/v1/certs/user", "192.0.2.20:1", body); w.Code != 200 {
			t.Fatalf("within the burst: %d %s", w.Code, w.Body)
		}
	}
	if w := do(h, "POST", "/v1/certs/user", "192.0.2.20:1", body); w.Code != http.StatusTooManyRequests {
		t.Fatalf("beyond the burst: %d, want 429", w.Code)
	}
	for range 10 {
		if w := do(h, "GET", "/v1/krl", "192.0.2.20:1", ""); w.Code != 200 {
			t.Fatalf("GET /v1/krl while issuance is limited: %d", w.Code)
		}
	}
	for _, p := range []string{"/healthz", "/readyz"} {
		if w := do(h, "GET", p, "192.0.2.20:1", ""); w.Code != 200 {
			t.Errorf("probe %s limited: %d", p, w.Code)
		}
	}
}

// TestRateLimitedErrorIs429: the authority's per-identity refusal (ca.KindRateLimited) is 429
// with Retry-After rounded up to whole seconds and the caller-safe message.
func TestRateLimitedErrorIs429(t *testing.T) {
	srv := newServer(t, &fakeService{err: ca.RateLimited("too many certificate requests for this identity; retry in 3s", 2500*time.Millisecond)})
	resp, m := post(t, srv.URL+"/v1/certs/user", certBody(t), nil)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "3" ||
		m["error"] != "too many certificate requests for this identity; retry in 3s" {
		t.Errorf("%d Retry-After %q %v, want 429, 3 and the message", resp.StatusCode, resp.Header.Get("Retry-After"), m)
	}
}

// TestLongPollCapsPerKind: a replica holds at most KRLLongPolls long polls of GET /v1/krl and
// RequestLongPolls of GET /v1/requests/{id} at once, whatever their addresses: one more of a
// kind is shed with 503, Retry-After and the config key to raise, counted in
// sshca_requests_limited_total{limit}, and leaves no count behind (its address polls again
// afterwards); a second poll from one address meets the address's cap (429) first; KRL pulls
// without wait and probes are served meanwhile; once the polls end, new ones are admitted.
// sshca_long_polls_open{kind} follows.
func TestLongPollCapsPerKind(t *testing.T) {
	reg := prometheus.NewRegistry()
	rl := services.NewRateLimiter(services.RateLimits{KRLLongPolls: 2, RequestLongPolls: 1, LongPollsPerAddress: 1}, reg)
	release := make(chan struct{})
	entered := make(chan string, 8)
	h := rl.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if services.IsLongPoll(r) {
			entered <- r.URL.Path
			<-release
		}
		w.WriteHeader(http.StatusOK)
	}))
	gauge := func(kind string) float64 {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				if mf.GetName() == "sshca_long_polls_open" && m.GetLabel()[0].GetValue() == kind {
					return m.GetGauge().GetValue()
				}
			}
		}
		t.Fatalf("no sshca_long_polls_open{kind=%q}", kind)
		return 0
	}
	const krl, req = "/v1/krl?wait=25s", "/v1/requests/req_AAAAAAAAAAAAAAAA?wait=25s"
	var wg sync.WaitGroup
	hold := func(path, addr string) {
		wg.Go(func() {
			if w := do(h, "GET", path, addr, ""); w.Code != http.StatusOK {
				t.Errorf("held %s from %s answered %d %s", path, addr, w.Code, w.Body)
			}
		})
		<-entered
	}
	hold(krl, "192.0.2.1:1")
	hold(krl, "192.0.2.2:1")
	hold(req, "192.0.2.3:1")
	for _, tt := range []struct{ path, key string }{{krl, "limits.rate.krl_long_polls"}, {req, "limits.rate.request_long_polls"}} {
		w := do(h, "GET", tt.path, "192.0.2.9:1", "")
		if w.Code != http.StatusServiceUnavailable || !strings.Contains(w.Body.String(), tt.key) {
			t.Errorf("one more long poll %s: %d %s, want 503 naming %s", tt.path, w.Code, w.Body, tt.key)
		}
		retryAfter(t, w, 5, 5)
	}
	// The address's own cap (1) refuses first.
	if w := do(h, "GET", req, "192.0.2.1:1", ""); w.Code != http.StatusTooManyRequests {
		t.Errorf("a second long poll from one address: %d %s, want 429 (its address's cap before the replica's)", w.Code, w.Body)
	}
	if g := gauge("krl"); g != 2 {
		t.Fatalf("krl polls open %v, want 2", g)
	}
	// A wait of zero answers at once: a plain pull, not a long poll (IsLongPoll).
	for _, p := range []string{"/v1/krl", "/v1/krl/host", "/healthz", "/v1/krl?wait=0"} {
		if w := do(h, "GET", p, "192.0.2.9:1", ""); w.Code != http.StatusOK {
			t.Errorf("GET %s while the long polls are full: %d", p, w.Code)
		}
	}
	if g := gauge("request"); g != 1 {
		t.Errorf("request polls open %v, want 1", g)
	}
	close(release)
	wg.Wait()
	if g, r := gauge("krl"), gauge("request"); g != 0 || r != 0 {
		t.Errorf("polls open after they ended: krl %v request %v", g, r)
	}
	release = make(chan struct{})
	close(release)
	for _, p := range []string{krl, req} {
		if w := do(h, "GET", p, "192.0.2.9:1", ""); w.Code != http.StatusOK {
			t.Errorf("a long poll %s after the others ended: %d %s", p, w.Code, w.Body)
		}
		<-entered
	}
	got := map[string]float64{}
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "sshca_requests_limited_total" {
			for _, m := range mf.GetMetric() {
				got[m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
			}
		}
	}
	if got["krl_long_polls"] != 1 || got["request_long_polls"] != 1 {
		t.Errorf("sshca_requests_limited_total = %v, want krl_long_polls 1 and request_long_polls 1", got)
	}
}
