package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/bastion"
	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/krl"
)

// TestRevocationHTTPSLongPoll: two serve replicas on one real redis-server; a bastion agent
// without Redis long polls replica B over HTTPS (polling every 5 s would be its fallback, far
// slower than the target), while revocations are made through replica A. With real sshd and
// ssh: revoke-to-refusal over 50 revocations (p50/p99 reported; only a generous bound is
// asserted). Then: an agent following Redis and the HTTPS agent install byte-identical KRLs
// (and both are what GET /v1/krl serves on each replica); and 20 long polls waiting on B cost
// Redis no command of their own.
func TestRevocationHTTPSLongPoll(t *testing.T) {
	testenv.Need(t, "sshd", "/usr/sbin")
	testenv.Need(t, "ssh")
	r := testenv.StartRedis(t)
	idp := startIssuer(t, "sshca")
	cfg := serveConfig(t, r.Addr, identity.IssuerConfig{IssuerURL: idp.URL(), Audiences: []string{"sshca"}})
	baseA := startServe(t, cfg)
	baseB := startServe(t, cfg)
	dir := t.TempDir()
	frontURL, serverCA := tlsFront(t, baseB, dir)
	mint := minter(t, idp)
	flags := agentFlags{server: frontURL, serverCA: serverCA, krlPath: filepath.Join(dir, "https.krl"),
		userCA: filepath.Join(dir, "user_ca.pub"), health: "127.0.0.1:0", sshdLog: filepath.Join(dir, "sshd.log"), poll: 5 * time.Second}
	httpsAgent := startAgent(t, flags)
	redisDir := t.TempDir()
	redisFlags := agentFlags{redis: redisTarget{url: "redis://" + r.Addr}, krlPath: filepath.Join(redisDir, "redis.krl"),
		userCA: filepath.Join(redisDir, "user_ca.pub"), health: "127.0.0.1:0", poll: time.Second}
	redisAgent := startAgent(t, redisFlags)
	sshd, kh := startBastionSSHD(t, baseA, mint, dir, flags)

	userKey := keygen(t, dir, "alice")
	alice := func() string {
		return mint(map[string]any{"sub": "u-alice", "preferred_username": "alice", "email": "alice@example.com", "email_verified": true})
	}
	admin := mint(map[string]any{"sub": "admin", "preferred_username": "admin1", "email": "admin@example.com", "email_verified": true, "groups": []string{"sshca-admins"}})

	// When each agent installs each version, sampled every 2 ms: the install latency apart
	// from the ssh attempts (each takes a few hundred ms on a loaded machine).
	installs := newInstallSampler(t, httpsAgent.Status, redisAgent.Status)
	const n = 50
	var latencies, httpsInstall, redisInstall []time.Duration
	var lastRevoked, lastAnswered time.Time
	for i := range n {
		c := issue(t, baseA, "user", alice(), map[string]any{"public_key": readFile(t, userKey+".pub"), "ttl": "10m"})
		path := filepath.Join(dir, "c"+strconv.Itoa(i)+"-cert.pub")
		writeFile(t, path, c.Certificate+"\n")
		if out, err := sshd.SSH(userKey, path, kh, "true"); err != nil {
			t.Fatalf("round %d: login before revocation: %v\n%s", i, err, out)
		}
		had := httpsAgent.Status().KRLVersion
		start := time.Now()
		if code, out := call(t, http.MethodPost, baseA+"/v1/revocations", admin, map[string]any{"serial": c.Serial, "reason": "test"}); code != http.StatusOK {
			t.Fatalf("round %d: POST /v1/revocations on replica A = %d %s", i, code, out)
		}
		for {
			if _, err := sshd.SSH(userKey, path, kh, "true"); err != nil {
				break
			}
			if time.Since(start) > 10*time.Second {
				t.Fatalf("round %d: serial %s still accepted after 10s", i, c.Serial)
			}
		}
		lastRevoked, lastAnswered = start, time.Now()
		latencies = append(latencies, time.Since(start))
		httpsInstall = append(httpsInstall, installs.after(t, 0, had, start))
		redisInstall = append(redisInstall, installs.after(t, 1, had, start))
	}
	for _, m := range []struct {
		name string
		d    []time.Duration
	}{{"HTTPS agent (long poll on B)", httpsInstall}, {"Redis agent", redisInstall}} {
		sort.Slice(m.d, func(i, j int) bool { return m.d[i] < m.d[j] })
		t.Logf("revoke answered on A to KRL installed by the %s over %d revocations: p50 %s, p99 %s", m.name, n, m.d[n/2], m.d[(n*99-1)/100])
		fmt.Printf("REVOKE-TO-INSTALL %s n=%d p50=%s p99=%s\n", m.name, n, m.d[n/2], m.d[(n*99-1)/100])
	}
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	p50, p99 := latencies[n/2], latencies[(n*99-1)/100]
	t.Logf("HTTPS long poll, revoke on replica A, agent on replica B: revoke-to-refusal over %d revocations by real ssh: p50 %s, p99 %s, max %s", n, p50, p99, latencies[n-1])
	fmt.Printf("REVOCATION LATENCY HTTPS n=%d p50=%s p99=%s max=%s\n", n, p50, p99, latencies[n-1])
	if p99 >= 2*time.Second {
		t.Errorf("p99 revoke-to-refusal %s over HTTPS, want well under 2s (target 0.5s)", p99)
	}

	// A host certificate revoked: its scope is the host CA key's, which is in neither agent's
	// KRL (the user KRL's version does not move), only in GET /v1/krl/host.
	userVersion := httpsAgent.Status().KRLVersion
	hostKey := keygen(t, dir, "web1")
	hc := issue(t, baseA, "host", mint(map[string]any{"sub": "ci", "groups": []string{"ci"}}), map[string]any{
		"public_key": readFile(t, hostKey+".pub"), "hostnames": []string{"127.0.0.1"}})
	if code, out := call(t, http.MethodPost, baseA+"/v1/revocations", admin, map[string]any{"serial": hc.Serial, "reason": "test"}); code != http.StatusOK {
		t.Fatalf("revoke a host certificate = %d %s", code, out)
	}
	_, hostKRL := call(t, http.MethodGet, baseB+"/v1/krl/host", "", nil)
	if hk, err := krl.Parse(hostKRL); err != nil || !hk.IsRevoked(parseCert(t, hc.Certificate)) {
		t.Fatalf("the host KRL does not revoke the host certificate (%v)", err)
	}
	time.Sleep(time.Second) // time for a (wrong) change to reach the agents
	for name, a := range map[string]*bastion.Agent{"HTTPS": httpsAgent, "Redis": redisAgent} {
		if v := a.Status().KRLVersion; v != userVersion {
			t.Errorf("the %s agent's KRL moved from version %d to %d on a host certificate's revocation: the host CA's scope is in the user KRL", name, userVersion, v)
		}
	}

	// Byte-identical KRLs: the Redis agent, the HTTPS agent, and GET /v1/krl of each replica.
	waitFor(t, 10*time.Second, "both agents have the same KRL version", func() bool {
		return httpsAgent.Status().KRLVersion == redisAgent.Status().KRLVersion && httpsAgent.Status().KRLVersion > 0
	})
	httpsKRL, err := os.ReadFile(flags.krlPath)
	if err != nil {
		t.Fatal(err)
	}
	redisKRL, err := os.ReadFile(redisFlags.krlPath)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(httpsKRL, redisKRL) {
		t.Errorf("the HTTPS agent's KRL (%d bytes) and the Redis agent's (%d bytes) differ for the same state", len(httpsKRL), len(redisKRL))
	}
	// Its date is the state's newest change (the last revocation), not when it was encoded.
	if k, err := krl.Parse(redisKRL); err != nil || k.GeneratedDate.Before(lastRevoked.Truncate(time.Second)) || k.GeneratedDate.After(lastAnswered) {
		t.Errorf("KRL generated %v, want the last change's time (between %v and %v); err %v", k.GeneratedDate, lastRevoked, lastAnswered, err)
	}
	for _, base := range []string{baseA, baseB} {
		if code, body := call(t, http.MethodGet, base+"/v1/krl", "", nil); code != http.StatusOK || !bytes.Equal(body, redisKRL) {
			t.Errorf("GET %s/v1/krl = %d, %d bytes: not the Redis agent's KRL (%d bytes)", base, code, len(body), len(redisKRL))
		}
	}

	// Waiting agents cost Redis nothing of their own: 20 long polls on B for 3 s.
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	resp, err := http.Get(baseB + "/v1/krl")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	etag := resp.Header.Get("ETag")
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	const waiters = 20
	for range waiters {
		wg.Go(func() {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, baseB+"/v1/krl?wait=20s", nil)
			req.Header.Set("If-None-Match", etag)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		})
	}
	time.Sleep(500 * time.Millisecond) // every poll has arrived and made its one read
	before := redisCommands(t, rdb)
	time.Sleep(3 * time.Second)
	during := redisCommands(t, rdb) - before - 1 // the INFO itself
	cancel()
	wg.Wait()
	t.Logf("Redis commands in 3 s with %d long polls waiting (two replicas, two agents): %d", waiters, during)
	if during >= waiters {
		t.Errorf("%d Redis commands in 3 s with %d long polls waiting: a command per waiting agent?", during, waiters)
	}
}

// redisCommands is the number of commands the server has processed.
func redisCommands(t *testing.T, rdb *redis.Client) int {
	t.Helper()
	info, err := rdb.Info(context.Background(), "stats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "total_commands_processed:"); ok {
			n, err := strconv.Atoi(v)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no total_commands_processed in INFO stats")
	return 0
}

// installSampler records when each agent first reports each KRL version.
type installSampler struct {
	mu   sync.Mutex
	seen []map[uint64]time.Time // by agent, version → first seen
}

func newInstallSampler(t *testing.T, agents ...func() bastion.Status) *installSampler {
	s := &installSampler{seen: make([]map[uint64]time.Time, len(agents))}
	for i := range agents {
		s.seen[i] = map[uint64]time.Time{}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			now := time.Now()
			s.mu.Lock()
			for i, st := range agents {
				if v := st().KRLVersion; s.seen[i][v].IsZero() {
					s.seen[i][v] = now
				}
			}
			s.mu.Unlock()
		}
	}()
	return s
}

// after is how long after start agent i first reported a version above had.
func (s *installSampler) after(t *testing.T, i int, had uint64, start time.Time) time.Duration {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		s.mu.Lock()
		var first time.Time
		for v, at := range s.seen[i] {
			if v > had && (first.IsZero() || at.Before(first)) {
				first = at
			}
		}
		s.mu.Unlock()
		if !first.IsZero() {
			return first.Sub(start)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("agent %d did not install a version above %d within 10s", i, had)
	return 0
}

// TestServeShutdownEndsLongPolls: a replica shutting down answers its waiting long polls at
// once (304) and stops well within the drain bound, instead of waiting out their waits.
func TestServeShutdownEndsLongPolls(t *testing.T) {
	r := testenv.StartRedis(t)
	idp := startIssuer(t, "sshca")
	base, stop := startServeStoppable(t, serveConfig(t, r.Addr, identity.IssuerConfig{IssuerURL: idp.URL(), Audiences: []string{"sshca"}}))
	resp, err := http.Get(base + "/v1/krl")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	codes := make(chan int, 3)
	for range 3 {
		go func() {
			req, _ := http.NewRequest(http.MethodGet, base+"/v1/krl?wait=25s", nil)
			req.Header.Set("If-None-Match", resp.Header.Get("ETag"))
			r, err := http.DefaultClient.Do(req)
			if err != nil {
				codes <- 0
				return
			}
			r.Body.Close()
			codes <- r.StatusCode
		}()
	}
	time.Sleep(500 * time.Millisecond) // waiting
	begin := time.Now()
	stop()
	took := time.Since(begin)
	for range 3 {
		if c := <-codes; c != http.StatusNotModified {
			t.Errorf("a long poll at shutdown got %d, want 304", c)
		}
	}
	t.Logf("serve stopped %s after shutdown began, with 3 long polls of 25s waiting", took)
	if took > 5*time.Second {
		t.Errorf("shutdown took %s with long polls waiting: the drain waited for them", took)
	}
}

// TestServeCapsLongPolls: `sshca serve` on a real redis-server with limits.rate.krl_long_polls
// 3. Three long polls of GET /v1/krl (from one address, within its own cap) wait; a fourth is
// shed at once with 503 and Retry-After, counted in sshca_requests_limited_total; a pull
// without wait is served meanwhile; the three waiting ones answer 304 when their wait ends;
// then a new long poll is admitted and waits its wait.
func TestServeCapsLongPolls(t *testing.T) {
	r := testenv.StartRedis(t)
	idp := startIssuer(t, "sshca")
	cfg := serveConfig(t, r.Addr, identity.IssuerConfig{IssuerURL: idp.URL(), Audiences: []string{"sshca"}})
	const capKRL = 3
	cfg.Limits.Rate.KRLLongPolls = capKRL
	base, stop := startServeStoppable(t, cfg)
	defer stop()
	c := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 0}, Timeout: 20 * time.Second}
	defer c.CloseIdleConnections()
	resp, err := c.Get(base + "/v1/krl")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	etag := resp.Header.Get("ETag")
	poll := func(wait string) (*http.Response, error) {
		req, _ := http.NewRequest(http.MethodGet, base+"/v1/krl?wait="+wait, nil)
		req.Header.Set("If-None-Match", etag)
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		return resp, err
	}
	metric := func(name string) string {
		resp, err := c.Get(base + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, name+" "); ok {
				return v
			}
		}
		return ""
	}
	codes := make(chan int, capKRL)
	for range capKRL {
		go func() {
			resp, err := poll("3s")
			if err != nil {
				t.Error(err)
				codes <- 0
				return
			}
			codes <- resp.StatusCode
		}()
	}
	deadline := time.Now().Add(5 * time.Second)
	for metric(`sshca_long_polls_open{kind="krl"}`) != strconv.Itoa(capKRL) {
		if time.Now().After(deadline) {
			t.Fatalf("the %d long polls are not all waiting: open %q", capKRL, metric(`sshca_long_polls_open{kind="krl"}`))
		}
		time.Sleep(10 * time.Millisecond)
	}
	began := time.Now()
	resp, err = poll("3s")
	if err != nil || resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || time.Since(began) > time.Second {
		t.Fatalf("long poll %d: %v %v after %s, want 503 with Retry-After at once", capKRL+1, resp, err, time.Since(began))
	}
	if v := metric(`sshca_requests_limited_total{limit="krl_long_polls"}`); v != "1" {
		t.Errorf(`sshca_requests_limited_total{limit="krl_long_polls"} = %q, want 1`, v)
	}
	if resp, err := c.Get(base + "/v1/krl"); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("a pull without wait while the long polls are full: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	for range capKRL {
		if code := <-codes; code != http.StatusNotModified {
			t.Errorf("a waiting long poll answered %d, want 304 at the end of its wait", code)
		}
	}
	began = time.Now()
	resp, err = poll("1s")
	if err != nil || resp.StatusCode != http.StatusNotModified || time.Since(began) < 900*time.Millisecond {
		t.Errorf("a long poll after the others ended: %v %v after %s, want 304 after its wait", resp, err, time.Since(began))
	}
}
