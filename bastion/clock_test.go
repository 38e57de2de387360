package bastion_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jonboulle/clockwork"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/bastion"
	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/revocation"
)

// The tests in this file run the agent on a clockwork.FakeClock: every wait (backoff, polling,
// the file guard's, the CA re-read's and the drift check's intervals) must be on the agent's
// clock, so nothing happens until the test advances it. Had a loop read the real clock, the
// test would wait for a waiter that is never registered, or for an effect that never comes,
// and fail at its deadline.

// clockDeadline bounds every wait for the agent to react to an advance of its clock.
const clockDeadline = 10 * time.Second

// blockUntil waits until clk has n waiters (timers and tickers), failing the test after
// clockDeadline: a loop that waits on the real clock never registers its waiter.
func blockUntil(t *testing.T, clk *clockwork.FakeClock, n int, what string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clockDeadline)
	defer cancel()
	if err := clk.BlockUntilContext(ctx, n); err != nil {
		t.Fatalf("%s: the agent did not wait on its clock (%d waiters expected): %v", what, n, err)
	}
}

// runAgent starts a with Run and stops it at the end of the test.
func runAgent(t *testing.T, a *bastion.Agent) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(clockDeadline):
			t.Error("Run did not return after its context ended")
		}
	})
}

// callTimes records the clock's time at each call.
type callTimes struct {
	clk clockwork.Clock
	mu  sync.Mutex
	at  []time.Time
}

func (c *callTimes) record() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.at = append(c.at, c.clk.Now())
}

func (c *callTimes) count() int { c.mu.Lock(); defer c.mu.Unlock(); return len(c.at) }

// gaps returns the time between consecutive calls.
func (c *callTimes) gaps() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return testenv.Gaps(c.at)
}

// stepUntil advances clk by step, each time once the agent waits again (n waiters), until
// calls has want entries.
func stepUntil(t *testing.T, clk *clockwork.FakeClock, n int, step time.Duration, calls *callTimes, want int) {
	t.Helper()
	testenv.Step(t, clk, n, step, func() bool { return calls.count() >= want })
}

// downFeed is a Redis feed whose every read fails, as with Redis down.
type downFeed struct{ calls *callTimes }

var errDown = errors.New("dial tcp 127.0.0.1:6379: connect: connection refused")

func (f downFeed) TrustedCAs(context.Context) ([]ssh.PublicKey, error) {
	f.calls.record()
	return nil, errDown
}
func (downFeed) CAs(context.Context) ([]ssh.PublicKey, error) { return nil, errDown }
func (downFeed) Snapshot(context.Context, string) (ca.RevocationState, string, error) {
	return ca.RevocationState{}, "", errDown
}
func (downFeed) Follow(context.Context, map[string]string, time.Duration) (map[string][]revocation.Change, error) {
	return nil, errDown
}

// TestAgentBacksOffOnItsClock: with Redis down and no HTTPS fallback, the agent tries again
// after a backoff of 100 ms, doubling up to 5 s, on its clock, each pause drawn between half
// the backoff and the backoff: advanced 50 ms at a time, the tries are 50–100, 100–200,
// 200–400, 400–800, 800–1600, 1600–3200, 2500–5000 and 2500–5000 ms apart. Status says the
// source is lost meanwhile.
func TestAgentBacksOffOnItsClock(t *testing.T) {
	clk := clockwork.NewFakeClockAt(time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC))
	calls := &callTimes{clk: clk}
	a, err := bastion.NewAgent(bastion.Options{KRLPath: filepath.Join(t.TempDir(), "sshca.krl"), Feed: downFeed{calls},
		GuardEvery: time.Hour, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	runAgent(t, a)
	// Two waiters while it pauses: the file guard's ticker and the backoff.
	stepUntil(t, clk, 2, 50*time.Millisecond, calls, 9)
	backoffs := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond,
		1600 * time.Millisecond, 3200 * time.Millisecond, 5 * time.Second, 5 * time.Second}
	gaps := calls.gaps()
	if len(gaps) != len(backoffs) {
		t.Fatalf("%d pauses, want %d: %v", len(gaps), len(backoffs), gaps)
	}
	for i, b := range backoffs {
		if gaps[i] < b/2 || gaps[i] > b {
			t.Errorf("pause %d between tries on the agent's clock: %s, want between %s and %s (all: %v)", i+1, gaps[i], b/2, b, gaps)
		}
	}
	if st := a.Status(); st.Connected || st.Source != "redis" || !strings.Contains(st.LastError, "connection refused") {
		t.Errorf("status while Redis is down: %+v", st)
	}
}

// TestAgentsLosingRedisTogetherRetryApart: agents that lose Redis at the same instant (a
// restart, a failover) do not retry in step, which would send a fleet's reconnections, each
// with a snapshot of every scope, to Redis at once: ten agents on one clock, advanced 50 ms at
// a time, make their sixth try (backoff 1.6 s, a pause of 0.8–1.6 s) at several different
// times.
func TestAgentsLosingRedisTogetherRetryApart(t *testing.T) {
	clk := clockwork.NewFakeClockAt(time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC))
	const agents = 10
	calls := make([]*callTimes, agents)
	for i := range calls {
		calls[i] = &callTimes{clk: clk}
		a, err := bastion.NewAgent(bastion.Options{KRLPath: filepath.Join(t.TempDir(), "sshca.krl"), Feed: downFeed{calls[i]},
			GuardEvery: time.Hour, Clock: clk})
		if err != nil {
			t.Fatal(err)
		}
		runAgent(t, a)
	}
	const tries = 6
	for {
		done := true
		for _, c := range calls {
			done = done && c.count() >= tries
		}
		if done {
			break
		}
		// Every agent waits on two timers: its file guard's and its pause (or, past its
		// sixth try, its next pause).
		blockUntil(t, clk, 2*agents, "between steps")
		clk.Advance(50 * time.Millisecond)
	}
	at := map[time.Time]int{}
	for _, c := range calls {
		c.mu.Lock()
		at[c.at[tries-1]]++
		c.mu.Unlock()
	}
	t.Logf("the ten agents' sixth tries fall at %d different times", len(at))
	if len(at) < 3 {
		t.Errorf("ten agents that lost Redis together made their sixth try at %d different times, want them spread (%v)", len(at), at)
	}
}

// TestAgentPollsOnItsClock: against a server without the long poll, the agent asks for the
// KRL every PollEvery of its clock (30 s here, advanced 10 s at a time), and installs a new
// KRL at the first poll after the server has it, not before.
func TestAgentPollsOnItsClock(t *testing.T) {
	clk := clockwork.NewFakeClockAt(time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC))
	calls := &callTimes{clk: clk}
	srv := &krlServer{}
	srv.set(encodeKRL(t, 1, 1), 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/krl" {
			calls.record()
		}
		srv.ServeHTTP(w, r) // answers at once, without X-KRL-Wait: an old server
	})
	src, _ := tlsSource(t, h)
	krlPath := filepath.Join(t.TempDir(), "sshca.krl")
	a, err := bastion.NewAgent(bastion.Options{KRLPath: krlPath, HTTP: src, PollEvery: 30 * time.Second,
		LongPollWait: -1, GuardEvery: time.Hour, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	runAgent(t, a)
	// Two waiters between polls: the file guard's ticker and the polling pause.
	blockUntil(t, clk, 2, "after the first poll")
	if k := installedKRL(t, krlPath); k == nil || k.Version != 1 || calls.count() != 1 {
		t.Fatalf("after the first poll: KRL %v, %d requests", k, calls.count())
	}
	srv.set(encodeKRL(t, 2, 1, 2), 2)
	clk.Advance(20 * time.Second)
	blockUntil(t, clk, 2, "20 s into the pause")
	if k := installedKRL(t, krlPath); k.Version != 1 || calls.count() != 1 {
		t.Fatalf("20 s into a 30 s pause: KRL version %d, %d requests", k.Version, calls.count())
	}
	stepUntil(t, clk, 2, 10*time.Second, calls, 4)
	if diff := cmp.Diff([]time.Duration{30 * time.Second, 30 * time.Second, 30 * time.Second}, calls.gaps()); diff != "" {
		t.Errorf("time between polls on the agent's clock (-want +got):\n%s", diff)
	}
	if k := installedKRL(t, krlPath); k.Version != 2 {
		t.Errorf("KRL version %d after the polls, want 2", k.Version)
	}
	if st := a.Status(); !st.LastSync.Equal(clk.Now()) && !st.LastSync.Equal(clk.Now().Add(-10*time.Second)) {
		t.Errorf("LastSync %v is not the agent's clock at the last poll (now %v)", st.LastSync, clk.Now())
	}
}

// TestAgentGuardRecheckOnItsClock: with the directory watch off, a truncated KRL is put back
// by the periodic re-check, when the agent's clock reaches GuardEvery, and not before.
func TestAgentGuardRecheckOnItsClock(t *testing.T) {
	h := newGuardedHost(t)
	clk := clockwork.NewFakeClockAt(time.Now())
	a, err := bastion.NewAgent(bastion.WithoutWatch(bastion.Options{KRLPath: h.krl, UserCAPath: h.userCA, Feed: h.mem,
		CARefresh: time.Hour, GuardEvery: time.Minute, Clock: clk}))
	if err != nil {
		t.Fatal(err)
	}
	runAgent(t, a)
	waitUntil(t, "the KRL is installed", func() bool { k := installedKRL(t, h.krl); return k != nil && k.Version == 1 })
	want, _ := os.ReadFile(h.krl)
	blockUntil(t, clk, 2, "after the start") // the guard's ticker and the CA re-read's
	if err := os.Truncate(h.krl, 0); err != nil {
		t.Fatal(err)
	}
	clk.Advance(59 * time.Second)
	time.Sleep(200 * time.Millisecond) // room for a re-check that should not run
	if b, _ := os.ReadFile(h.krl); len(b) != 0 {
		t.Fatal("the KRL was put back before GuardEvery had passed on the agent's clock")
	}
	clk.Advance(time.Second)
	waitUntil(t, "the re-check at GuardEvery puts the KRL back", func() bool {
		b, _ := os.ReadFile(h.krl)
		return bytes.Equal(b, want)
	})
	if n := a.Status().FilesRestored; n != 1 {
		t.Errorf("FilesRestored %d, want 1", n)
	}
}

// TestAgentRereadsCAsOnItsClock: a CA key registered while the agent runs reaches sshd's
// TrustedUserCAKeys at the next CARefresh of the agent's clock, and not before.
func TestAgentRereadsCAsOnItsClock(t *testing.T) {
	h := newGuardedHost(t)
	clk := clockwork.NewFakeClockAt(time.Now())
	a, err := bastion.NewAgent(bastion.Options{KRLPath: h.krl, UserCAPath: h.userCA, Feed: h.mem,
		CARefresh: time.Minute, GuardEvery: time.Hour, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	runAgent(t, a)
	waitUntil(t, "the CA file is written", func() bool { b, _ := os.ReadFile(h.userCA); return len(b) > 0 })
	blockUntil(t, clk, 2, "after the start") // the guard's ticker and the CA re-read's
	newCA := testenv.PublicKey(t)
	if err := h.mem.RegisterCA(context.Background(), newCA); err != nil {
		t.Fatal(err)
	}
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(newCA)))
	has := func() bool { b, _ := os.ReadFile(h.userCA); return strings.Contains(string(b), line) }
	clk.Advance(59 * time.Second)
	time.Sleep(200 * time.Millisecond) // room for a re-read that should not run
	if has() {
		t.Fatal("the new CA key was trusted before CARefresh had passed on the agent's clock")
	}
	clk.Advance(time.Second)
	waitUntil(t, "the new CA key is trusted at CARefresh", has)
}

// TestAgentDriftRecheckOnItsClock: with a real sshd -T, drift added after the first check is
// reported at the next check, DriftCheck.Every later on the agent's clock, with that clock's
// time in SSHDChecked; not before.
func TestAgentDriftRecheckOnItsClock(t *testing.T) {
	b := newBastionHost(t)
	sshd, path := b.write(t, nil)
	dropin := b.path("10-loose.conf")
	rendered, _ := os.ReadFile(path)
	if err := os.WriteFile(path, append([]byte("Include "+dropin+"\n"), rendered...), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dropin, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	base, err := bastion.Baseline(b.opts)
	if err != nil {
		t.Fatal(err)
	}
	g := newGuardedHost(t)
	start := time.Now().Truncate(time.Second)
	clk := clockwork.NewFakeClockAt(start)
	a, err := bastion.NewAgent(bastion.Options{KRLPath: g.krl, Feed: g.mem, CARefresh: time.Hour, GuardEvery: time.Hour, Clock: clk,
		Drift: &bastion.DriftCheck{SSHD: bastion.SSHDEffective{Bin: sshd, Config: path}, Baseline: base, Every: time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	runAgent(t, a)
	waitUntil(t, "the first check at start", func() bool { return a.Status().SSHDChecked.Equal(start) })
	if st := a.Status(); len(st.SSHDDrift) != 0 || st.SSHDCheckError != "" {
		t.Fatalf("drift before the drop-in: %q %s", st.SSHDDrift, st.SSHDCheckError)
	}
	blockUntil(t, clk, 3, "after the first check") // the guard's, the CA re-read's and the drift check's tickers
	if err := os.WriteFile(dropin, []byte("Match User root\n\tPermitRootLogin yes\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	clk.Advance(59 * time.Second)
	time.Sleep(300 * time.Millisecond) // room for a check that should not run
	if st := a.Status(); len(st.SSHDDrift) != 0 || !st.SSHDChecked.Equal(start) {
		t.Fatalf("checked again before Every had passed on the agent's clock: checked %v, drift %q", st.SSHDChecked, st.SSHDDrift)
	}
	clk.Advance(time.Second)
	waitUntil(t, "the check at Every reports the drift", func() bool { return len(a.Status().SSHDDrift) > 0 })
	if got := a.Status().SSHDChecked; !got.Equal(start.Add(time.Minute)) {
		t.Errorf("SSHDChecked %v, want the agent's clock %v", got, start.Add(time.Minute))
	}
}
