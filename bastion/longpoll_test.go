package bastion_test

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/sshca/sshca/bastion"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/krl"
)

// longPollServer answers GET /v1/krl?wait= as the CA service does (services' long poll): at
// once when the ETag differs, else when the KRL changes or the wait ends (304), with
// X-KRL-Wait on every answer to a long poll.
type longPollServer struct {
	krlServer
	changed  chan struct{}
	requests atomic.Int64
}

func (s *longPollServer) set(b []byte, ver int) {
	s.krlServer.set(b, ver)
	s.mu.Lock()
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

func (s *longPollServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.requests.Add(1)
	if r.URL.Path != "/v1/krl" || !r.URL.Query().Has("wait") {
		s.krlServer.ServeHTTP(w, r)
		return
	}
	wait, err := time.ParseDuration(r.URL.Query().Get("wait"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("X-KRL-Wait", wait.String())
	s.mu.Lock()
	etag, changed := `"`+strconv.Itoa(s.ver)+`"`, s.changed
	s.mu.Unlock()
	if r.Header.Get("If-None-Match") == etag {
		select {
		case <-changed:
		case <-time.After(wait):
		case <-r.Context().Done():
			return
		}
	}
	s.krlServer.ServeHTTP(w, r)
}

func encodeKRL(t *testing.T, version uint64, serials ...uint64) []byte {
	t.Helper()
	k := &krl.KRL{Version: version}
	k.RevokeSerials(testenv.PublicKey(t), serials...)
	b, err := k.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func startHTTPAgent(t *testing.T, h http.Handler, poll time.Duration) string {
	t.Helper()
	src, _ := tlsSource(t, h)
	krlPath := filepath.Join(t.TempDir(), "sshca.krl")
	a, err := bastion.NewAgent(bastion.Options{KRLPath: krlPath, HTTP: src, PollEvery: poll, LongPollWait: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	runAgent(t, a)
	return krlPath
}

// TestAgentHTTPLongPoll: against a server that long polls, the agent installs a new KRL as
// soon as the server answers, though its polling interval is an hour; it asks again at once
// after each answer, and waits (no busy loop) while nothing changes.
func TestAgentHTTPLongPoll(t *testing.T) {
	srv := &longPollServer{changed: make(chan struct{})}
	srv.krlServer.set(encodeKRL(t, 1, 1), 1)
	krlPath := startHTTPAgent(t, srv, time.Hour)
	waitUntil(t, "version 1 is installed", func() bool { k := installedKRL(t, krlPath); return k != nil && k.Version == 1 })
	for v := 2; v <= 4; v++ {
		time.Sleep(100 * time.Millisecond) // the agent waits in its long poll
		set := time.Now()
		srv.set(encodeKRL(t, uint64(v), 1, uint64(v)), v)
		for {
			if k := installedKRL(t, krlPath); k != nil && k.Version == uint64(v) {
				break
			}
			if time.Since(set) > time.Second {
				t.Fatalf("version %d not installed 1s after the server had it (polling every hour: the long poll is not used)", v)
			}
			time.Sleep(2 * time.Millisecond)
		}
		t.Logf("version %d installed %s after the server had it", v, time.Since(set))
	}
	before := srv.requests.Load()
	time.Sleep(time.Second)
	if n := srv.requests.Load() - before; n > 2 {
		t.Errorf("%d requests in 1s without a change (long polls of 2s): a busy loop", n)
	}
}

// TestAgentHTTPPollsOldServer: a server without the long poll (no X-KRL-Wait; it answers at
// once) is polled every PollEvery, not asked again and again.
func TestAgentHTTPPollsOldServer(t *testing.T) {
	srv := &longPollServer{changed: make(chan struct{})}
	srv.krlServer.set(encodeKRL(t, 1, 1), 1)
	var requests atomic.Int64
	old := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		srv.krlServer.ServeHTTP(w, r) // ignores wait
	})
	krlPath := startHTTPAgent(t, old, 200*time.Millisecond)
	waitUntil(t, "version 1 is installed", func() bool { k := installedKRL(t, krlPath); return k != nil && k.Version == 1 })
	srv.krlServer.set(encodeKRL(t, 2, 1, 2), 2)
	waitUntil(t, "version 2 is installed by polling", func() bool { return installedKRL(t, krlPath).Version == 2 })
	before := requests.Load()
	time.Sleep(time.Second)
	if n := requests.Load() - before; n > 8 {
		t.Errorf("%d requests in 1s polling every 200ms", n)
	}
}

// TestAgentHTTPReadsCAKeysEveryCARefresh: over HTTPS the agent reads the user CA keys once per
// CARefresh, not before every long poll: after a revocation every agent of a fleet asks again
// at once, and a second request each would double what a revocation costs the CA. Once
// CARefresh has passed, the next poll reads them again (a rotated key still arrives).
func TestAgentHTTPReadsCAKeysEveryCARefresh(t *testing.T) {
	srv := &longPollServer{changed: make(chan struct{})}
	srv.krlServer.set(encodeKRL(t, 1, 1), 1)
	var caReads atomic.Int64
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/ca/user.pub" {
			caReads.Add(1)
		}
		srv.ServeHTTP(w, r)
	})
	src, _ := tlsSource(t, h)
	dir := t.TempDir()
	krlPath, userCA := filepath.Join(dir, "sshca.krl"), filepath.Join(dir, "user_ca.pub")
	clock := clockwork.NewFakeClock()
	a, err := bastion.NewAgent(bastion.Options{KRLPath: krlPath, UserCAPath: userCA, HTTP: src, PollEvery: time.Hour,
		LongPollWait: 20 * time.Second, CARefresh: time.Minute, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	runAgent(t, a)
	waitUntil(t, "version 1 is installed", func() bool { k := installedKRL(t, krlPath); return k != nil && k.Version == 1 })
	if b, err := os.ReadFile(userCA); err != nil || !strings.HasPrefix(string(b), "ssh-ed25519 ") {
		t.Fatalf("the user CA keys were not written: %q %v", b, err)
	}
	for v := 2; v <= 4; v++ {
		srv.set(encodeKRL(t, uint64(v), 1, uint64(v)), v)
		waitUntil(t, "version "+strconv.Itoa(v)+" is installed", func() bool { return installedKRL(t, krlPath).Version == uint64(v) })
	}
	if n := caReads.Load(); n != 1 {
		t.Errorf("%d reads of /v1/ca/user.pub for 4 KRLs within CARefresh, want 1", n)
	}
	clock.Advance(time.Minute)
	srv.set(encodeKRL(t, 5, 1, 5), 5) // ends the long poll under way; the next poll is due a read
	waitUntil(t, "the CA keys are read again once CARefresh has passed", func() bool { return caReads.Load() == 2 })
}

// TestAgentHTTPNewCAKeyWithinCARefresh: over HTTPS a new CA key reaches TrustedUserCAKeys within
// CARefresh even while the KRL does not change, though each long poll may wait 20 s: a key is
// generated, then trusted (two steps), and neither step is a revocation change that ends a
// long poll early, so a poll that waited its whole wait would bring the key up to that late.
func TestAgentHTTPNewCAKeyWithinCARefresh(t *testing.T) {
	srv := &longPollServer{changed: make(chan struct{})}
	srv.krlServer.set(encodeKRL(t, 1, 1), 1)
	const first, next = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl sshca-user-ca\n",
		"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIL7JvK0kUWPcMhpFxZfO4zL1RZ5bD3xLfO9pK4lqK8QN sshca-user-ca-next\n"
	var caKeys atomic.Value
	caKeys.Store(first)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/ca/user.pub" {
			_, _ = w.Write([]byte(caKeys.Load().(string)))
			return
		}
		srv.ServeHTTP(w, r)
	})
	src, _ := tlsSource(t, h)
	dir := t.TempDir()
	krlPath, userCA := filepath.Join(dir, "sshca.krl"), filepath.Join(dir, "user_ca.pub")
	a, err := bastion.NewAgent(bastion.Options{KRLPath: krlPath, UserCAPath: userCA, HTTP: src, PollEvery: time.Hour,
		LongPollWait: 20 * time.Second, CARefresh: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	runAgent(t, a)
	waitUntil(t, "version 1 is installed", func() bool { k := installedKRL(t, krlPath); return k != nil && k.Version == 1 })
	time.Sleep(100 * time.Millisecond) // the agent is in its long poll now
	caKeys.Store(first + next)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if b, _ := os.ReadFile(userCA); strings.Contains(string(b), "sshca-user-ca-next") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the new CA key did not reach the CA file within 5 s (CARefresh 300 ms) while the KRL did not change")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pausedWaiters is how many waiters an agent in HTTPS mode has on its clock while it pauses
// between requests: the file guard's ticker (GuardEvery), always there, and the pause. Waiting
// for one only waited for the guard, so the test advanced the clock before the pause was
// registered, under load, and the agent then slept past the test's deadline.
const pausedWaiters = 2

// TestAgentHTTPBacksOffOnRetryAfter: a server that turns the agent away with 503 and
// Retry-After (a replica holding as many long polls as it may) is not asked again before that
// pause (on the agent's clock), nor later than half as much again; one without Retry-After is
// asked again after PollEvery. Once it admits the poll, the KRL is installed.
func TestAgentHTTPBacksOffOnRetryAfter(t *testing.T) {
	srv := &longPollServer{changed: make(chan struct{})}
	srv.krlServer.set(encodeKRL(t, 1, 1), 1)
	var refuse atomic.Value
	refuse.Store("7")
	var asked atomic.Int64
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		if ra := refuse.Load().(string); ra != "ok" {
			if ra != "" {
				w.Header().Set("Retry-After", ra)
			}
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		srv.ServeHTTP(w, r)
	})
	src, _ := tlsSource(t, h)
	krlPath := filepath.Join(t.TempDir(), "sshca.krl")
	clock := clockwork.NewFakeClock()
	a, err := bastion.NewAgent(bastion.Options{KRLPath: krlPath, HTTP: src, PollEvery: time.Second, LongPollWait: 20 * time.Second, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	runAgent(t, a)
	// asks waits until the agent has asked n times and sleeps on its clock again.
	asks := func(n int64) {
		t.Helper()
		waitUntil(t, "the agent asks "+strconv.FormatInt(n, 10)+" times", func() bool { return asked.Load() == n })
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := clock.BlockUntilContext(ctx, pausedWaiters); err != nil {
			t.Fatalf("the agent does not pause after %d answers: %v", n, err)
		}
	}
	asks(1)
	clock.Advance(7*time.Second - time.Millisecond)
	time.Sleep(50 * time.Millisecond)
	if n := asked.Load(); n != 1 {
		t.Fatalf("asked again %d times before Retry-After (7 s) passed", n-1)
	}
	clock.Advance(3500 * time.Millisecond) // 7 s plus half of it, at most
	asks(2)
	refuse.Store("") // no Retry-After: PollEvery
	clock.Advance(11 * time.Second)
	asks(3)
	clock.Advance(time.Second)
	asks(4)
	refuse.Store("ok")
	clock.Advance(time.Second)
	waitUntil(t, "version 1 is installed", func() bool { k := installedKRL(t, krlPath); return k != nil && k.Version == 1 })
}

// TestAgentPullsAfterShedLongPoll: a replica whose long poll slots stay full (503 with
// Retry-After: 5 to every GET /v1/krl?wait=, as limits.rate.krl_long_polls does while the
// agents holding the slots ask again the instant each poll ends) still serves pulls without
// wait. An agent turned away pulls the KRL without wait once the Retry-After pause is over,
// and so installs each new KRL within the pause plus PollEvery, where it asked to long poll
// again and again and installed none; it tries the long poll again after PollEvery. A 503
// to a pull (no long poll) is not followed by another pull at once.
func TestAgentPullsAfterShedLongPoll(t *testing.T) {
	srv := &longPollServer{changed: make(chan struct{})}
	srv.krlServer.set(encodeKRL(t, 1, 1), 1)
	var polls, pulls atomic.Int64
	var down atomic.Bool // every request refused, pulls too
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Has("wait") {
			polls.Add(1)
			w.Header().Set("Retry-After", "5")
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		pulls.Add(1)
		if down.Load() {
			w.Header().Set("Retry-After", "5")
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		srv.ServeHTTP(w, r)
	})
	src, _ := tlsSource(t, h)
	krlPath := filepath.Join(t.TempDir(), "sshca.krl")
	clock := clockwork.NewFakeClock()
	a, err := bastion.NewAgent(bastion.Options{KRLPath: krlPath, HTTP: src, PollEvery: time.Second, LongPollWait: 20 * time.Second, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	runAgent(t, a)
	sleeps := func(what string, cond func() bool) {
		t.Helper()
		waitUntil(t, what, cond)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := clock.BlockUntilContext(ctx, pausedWaiters); err != nil {
			t.Fatalf("the agent does not pause after %s: %v", what, err)
		}
	}
	sleeps("a long poll is refused", func() bool { return polls.Load() == 1 })
	if pulls.Load() != 0 {
		t.Fatalf("%d pulls before the Retry-After pause", pulls.Load())
	}
	clock.Advance(7500 * time.Millisecond) // Retry-After plus half of it, at most
	waitUntil(t, "version 1 is installed by a pull without wait", func() bool { k := installedKRL(t, krlPath); return k != nil && k.Version == 1 })
	sleeps("the pull", func() bool { return pulls.Load() == 1 })
	clock.Advance(time.Second) // PollEvery: a long poll again
	sleeps("a second long poll is refused", func() bool { return polls.Load() == 2 })
	srv.set(encodeKRL(t, 2, 1, 2), 2)
	clock.Advance(7500 * time.Millisecond)
	waitUntil(t, "version 2 is installed", func() bool { k := installedKRL(t, krlPath); return k != nil && k.Version == 2 })
	sleeps("the second pull", func() bool { return pulls.Load() == 2 })
	// A refused pull is not a shed long poll: the agent goes back to long polling.
	down.Store(true)
	clock.Advance(time.Second)
	sleeps("a third long poll is refused", func() bool { return polls.Load() == 3 })
	clock.Advance(7500 * time.Millisecond)
	sleeps("the refused pull", func() bool { return pulls.Load() == 3 })
	clock.Advance(7500 * time.Millisecond)
	sleeps("a fourth long poll", func() bool { return polls.Load() == 4 })
	if n := pulls.Load(); n != 3 {
		t.Errorf("%d pulls, want 3: a refused pull is followed by a long poll", n)
	}
}
