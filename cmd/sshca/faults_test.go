package main

import (
	"context"
	"encoding/json"

	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/services"
)

// faultRedis runs redis-server with the shipped configuration (its ACL users, noeviction), plus
// an admin user for the test alone, and serve against it as the shipped sshca user.
func faultRedis(t *testing.T) (r *testenv.ConfiguredRedis, admin *redis.Client, pid int) {
	t.Helper()
	r = testenv.StartRedisConfig(t, filepath.Join("..", "..", "deploy", "redis", "redis.conf"),
		"--user", "test-admin", "on", ">test-admin-pw", "~*", "&*", "+@all")
	admin = redis.NewClient(&redis.Options{Addr: r.Addr, Username: "test-admin", Password: "test-admin-pw"})
	t.Cleanup(func() { admin.Close() })
	info, err := admin.Info(context.Background(), "server").Result()
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`process_id:(\d+)`).FindStringSubmatch(info)
	if m == nil {
		t.Fatalf("no process_id in INFO server")
	}
	pid, _ = strconv.Atoi(m[1])
	return r, admin, pid
}

// faultServe is serve on a faultRedis, as the shipped sshca ACL user, with an issuer whose
// tokens name alice, after one certificate was issued (JWKS fetched, scripts loaded).
type faultServe struct {
	admin *redis.Client
	pid   int
	cfg   *Config
	base  string
	body  map[string]any
	mint  func() string
}

func startFaultServe(t *testing.T, tweak func(*Config)) faultServe {
	t.Helper()
	_, admin, pid := faultRedis(t)
	iss := startIssuer(t, "sshca")
	cfg := serveConfig(t, admin.Options().Addr, identity.IssuerConfig{IssuerURL: iss.URL(), Audiences: []string{"sshca"}})
	cfg.Redis.Username, cfg.Redis.Password = "sshca", "CHANGE-ME-sshca"
	if tweak != nil {
		tweak(cfg)
	}
	f := faultServe{admin: admin, pid: pid, cfg: cfg, base: startServe(t, cfg)}
	f.body = map[string]any{"public_key": readFile(t, keygen(t, t.TempDir(), "user")+".pub")}
	f.mint = func() string {
		tok, err := iss.Mint(map[string]any{"sub": "alice", "preferred_username": "alice"})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	issue(t, f.base, "user", f.mint(), f.body)
	return f
}

// stall stops redis-server (SIGSTOP: connections stay open, nothing answers) until the returned
// func or the end of the test continues it.
func stall(t *testing.T, pid int) (resume func()) {
	t.Helper()
	var once sync.Once
	resume = func() { once.Do(func() { _ = syscall.Kill(pid, syscall.SIGCONT) }) }
	t.Cleanup(resume)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	return resume
}

func timedCall(t *testing.T, method, url, token string, body any) (int, string, time.Duration) {
	t.Helper()
	begin := time.Now()
	code, out := call(t, method, url, token, body)
	return code, string(out), time.Since(begin)
}

// TestFaultsStalledRedis: with redis-server stopped (SIGSTOP), an issue request is a 503
// within the request deadline (+0.5 s), /readyz a 503 within 1.5 s; under load across a stall,
// every certificate in the inventory has an audit record and every issued audit record its
// inventory record, and every certificate a client received is in both.
func TestFaultsStalledRedis(t *testing.T) {
	f := startFaultServe(t, nil) // works as the shipped sshca user; JWKS fetched
	admin, pid, base, body, mint := f.admin, f.pid, f.base, f.body, f.mint
	deadline := f.cfg.requestTimeout()
	if code, out := call(t, http.MethodGet, base+"/readyz", "", nil); code != http.StatusOK {
		t.Fatalf("/readyz before the stall = %d %s", code, out)
	}

	t.Run("answers within the deadline", func(t *testing.T) {
		resume := stall(t, pid)
		defer resume()
		code, out, took := timedCall(t, http.MethodPost, base+"/v1/certs/user", mint(), body)
		t.Logf("issue under a stall: %d in %v (deadline %v)", code, took, deadline)
		if code != http.StatusServiceUnavailable || took > deadline+500*time.Millisecond {
			t.Errorf("issue under a stall = %d %s in %v, want 503 within %v", code, out, took, deadline+500*time.Millisecond)
		}
		code, out, took = timedCall(t, http.MethodGet, base+"/readyz", "", nil)
		t.Logf("/readyz under a stall: %d in %v", code, took)
		if code != http.StatusServiceUnavailable || took > 1500*time.Millisecond || !strings.Contains(out, `"redis":"unavailable`) {
			t.Errorf("/readyz under a stall = %d %s in %v, want 503 naming redis within 1.5s", code, out, took)
		}
		resume()
		waitFor(t, 5*time.Second, "/readyz is 200 after SIGCONT", func() bool {
			code, _ := call(t, http.MethodGet, base+"/readyz", "", nil)
			return code == http.StatusOK
		})
	})

	t.Run("inventory and audit agree across a stall under load", func(t *testing.T) {
		var (
			mu       sync.Mutex
			received []string
			codes    = map[int]int{}
		)
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					code, out := call(t, http.MethodPost, base+"/v1/certs/user", mint(), body)
					mu.Lock()
					codes[code]++
					if code == http.StatusOK {
						var c issuedCert
						if err := json.Unmarshal(out, &c); err != nil {
							t.Error(err)
						}
						received = append(received, c.Serial)
					}
					mu.Unlock()
				}
			}()
		}
		time.Sleep(500 * time.Millisecond)
		resume := stall(t, pid)
		time.Sleep(3 * time.Second)
		resume()
		time.Sleep(500 * time.Millisecond)
		close(stop)
		wg.Wait()
		t.Logf("answers across the stall: %v", codes)
		if codes[http.StatusOK] == 0 || codes[http.StatusServiceUnavailable] == 0 {
			t.Errorf("want both 200s and 503s across the stall, got %v", codes)
		}
		for code := range codes {
			if code != http.StatusOK && code != http.StatusServiceUnavailable {
				t.Errorf("answer %d across a stall (%v), want only 200 and 503", code, codes)
			}
		}
		// Writes that timed out in the client land now, and the records of certificates signed
		// but not handed out are retried until kept: wait for the two to agree.
		var inventory, audited, issued map[string]bool
		var issuedTimes map[string]int
		agree := func() bool {
			inventory, audited, issued, issuedTimes = faultState(t, admin)
			for s := range inventory {
				if !audited[s] {
					return false
				}
			}
			return true
		}
		begin := time.Now()
		for !agree() && time.Since(begin) < 10*time.Second {
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("inventory and audit agreed %v after the load stopped", time.Since(begin))
		for s := range inventory {
			if !audited[s] {
				t.Errorf("serial %s is in the inventory without an audit record", s)
			}
		}
		for s, n := range issuedTimes {
			if n > 1 {
				t.Errorf("serial %s has %d audit records of its issuance, want one", s, n)
			}
		}
		for s := range issued {
			if !inventory[s] {
				t.Errorf("serial %s is audited as issued but not in the inventory", s)
			}
		}
		for _, s := range received {
			if !inventory[s] || !issued[s] {
				t.Errorf("serial %s was received by a client: inventory %v, audited issued %v", s, inventory[s], issued[s])
			}
		}
		t.Logf("inventory %d, audited serials %d, issued records %d, received %d", len(inventory), len(audited), len(issued), len(received))
	})
}

// faultState reads the inventory's serials and the audit log's records straight from Redis.
// issuedTimes counts the "issued" records of each serial.
func faultState(t *testing.T, admin *redis.Client) (inventory, audited, issued map[string]bool, issuedTimes map[string]int) {
	t.Helper()
	ctx := context.Background()
	inventory, audited, issued, issuedTimes = map[string]bool{}, map[string]bool{}, map[string]bool{}, map[string]int{}
	keys, err := admin.Keys(ctx, "sshca:{inventory}:cert:*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		inventory[strings.TrimPrefix(k, "sshca:{inventory}:cert:")] = true
	}
	msgs, err := admin.XRange(ctx, "sshca:{audit}:log", "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		var rec ca.AuditRecord
		if err := json.Unmarshal([]byte(m.Values["rec"].(string)), &rec); err != nil {
			t.Fatal(err)
		}
		if rec.Serial == 0 {
			continue
		}
		s := strconv.FormatUint(rec.Serial, 10)
		audited[s] = true
		if rec.Outcome == "issued" {
			issued[s] = true
			issuedTimes[s]++
		}
	}
	return inventory, audited, issued, issuedTimes
}

// TestFaultsRedisAtMaxmemory: Redis at maxmemory (noeviction: every write refused, reads and
// PING fine) makes /readyz 503 naming the write probe, and issuance 503; reset, both recover.
func TestFaultsRedisAtMaxmemory(t *testing.T) {
	f := startFaultServe(t, nil)
	admin, base, body, mint := f.admin, f.base, f.body, f.mint
	ctx := context.Background()
	if err := admin.ConfigSet(ctx, "maxmemory", "1").Err(); err != nil {
		t.Fatal(err)
	}
	reset := func() { _ = admin.ConfigSet(ctx, "maxmemory", "0").Err() }
	t.Cleanup(reset)
	code, out, took := timedCall(t, http.MethodGet, base+"/readyz", "", nil)
	t.Logf("/readyz at maxmemory: %d in %v: %s", code, took, out)
	if code != http.StatusServiceUnavailable || !strings.Contains(out, "write probe") || !strings.Contains(out, "OOM") ||
		took > services.ReadyTimeout+500*time.Millisecond {
		t.Errorf("/readyz at maxmemory = %d %s in %v, want 503 naming the write probe", code, out, took)
	}
	code, out, took = timedCall(t, http.MethodPost, base+"/v1/certs/user", mint(), body)
	t.Logf("issue at maxmemory: %d in %v: %s", code, took, out)
	if code != http.StatusServiceUnavailable {
		t.Errorf("issue at maxmemory = %d %s, want 503", code, out)
	}
	reset()
	if code, out := call(t, http.MethodGet, base+"/readyz", "", nil); code != http.StatusOK {
		t.Errorf("/readyz after reset = %d %s", code, out)
	}
	issue(t, base, "user", mint(), body)
}

// TestFaultsLateWriteNotSentAgain: a command whose answer is late is not sent again. go-redis
// sent a command again after its read timeout (1 s then, half the deadline; set so here),
// when Redis had run the first and only its answer was late: the token ledger then found the
// request's own token spent, and a token used once got 401 "token already used" after a stall
// of 1.1 to 1.7 s (18 in the 10-minute soak; this test at 6048c61 with the retry: all four
// stalls). The stall must meet the admission's pipeline in flight: since the admission reads
// first (marks, generation), a stall may be absorbed by a read, which a retry repeats
// harmlessly, so with the retry back this test fails only when the stall lands on the
// pipeline (TestRedisBounds checks the setting itself). A late answer is an unknown outcome:
// 503, or 200 when a later step waited it out.
func TestFaultsLateWriteNotSentAgain(t *testing.T) {
	f := startFaultServe(t, func(c *Config) { c.Redis.ReadTimeout = time.Second })
	pid, base, body, mint := f.pid, f.base, f.body, f.mint
	for _, d := range []time.Duration{1100, 1300, 1500, 1700} {
		d *= time.Millisecond
		tok := mint()
		resume := stall(t, pid)
		type answer struct {
			code int
			out  string
		}
		done := make(chan answer, 1)
		go func() {
			code, out, _ := timedCall(t, http.MethodPost, base+"/v1/certs/user", tok, body)
			done <- answer{code, out}
		}()
		time.Sleep(d)
		resume()
		a := <-done
		t.Logf("stall of %v: %d %.120s", d, a.code, a.out)
		if a.code != http.StatusOK && a.code != http.StatusServiceUnavailable {
			t.Errorf("issue across a stall of %v = %d %s, want 200 or 503 (the token was used once)", d, a.code, a.out)
		}
		time.Sleep(300 * time.Millisecond)
	}
}
