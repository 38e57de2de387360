package revocation_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jonboulle/clockwork"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/revocation"
	"github.com/sshca/sshca/store"
)

// crossSlot is a feed as Redis Cluster answers it: a read of several scopes' streams at once
// fails (they sit in different slots).
type crossSlot struct {
	*store.Memory
	reads atomic.Int64
}

func (c *crossSlot) Follow(ctx context.Context, after map[string]string, block time.Duration) (map[string][]revocation.Change, error) {
	c.reads.Add(1)
	if len(after) > 1 {
		return nil, errors.New("CROSSSLOT Keys in request don't hash to the same slot")
	}
	return c.Memory.Follow(ctx, after, block)
}

// TestFollowerWakes: the follower wakes its waiters on a change of any scope and on a new
// scope, reading the feed in one loop however many wait; where one read of every scope fails
// (Redis Cluster), it follows them one at a time and still wakes them.
func TestFollowerWakes(t *testing.T) {
	for _, cluster := range []bool{false, true} {
		name := "one read"
		if cluster {
			name = "cluster"
		}
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			mem := store.NewMemory(nil)
			var feed revocation.FollowFeed = mem
			cs := &crossSlot{Memory: mem}
			if cluster {
				feed = cs
			}
			a, b, c := testenv.PublicKey(t), testenv.PublicKey(t), testenv.PublicKey(t)
			for _, k := range []ssh.PublicKey{a, b} {
				if err := mem.RegisterCA(ctx, k); err != nil {
					t.Fatal(err)
				}
			}
			f := revocation.NewFollower(feed, nil)
			f.Block = 300 * time.Millisecond
			done := make(chan struct{})
			go func() { f.Run(ctx); close(done) }()
			defer func() { cancel(); <-done }()
			time.Sleep(100 * time.Millisecond) // following

			wakes := func(what string, change func()) {
				t.Helper()
				waiters := make([]<-chan struct{}, 20)
				for i := range waiters {
					waiters[i] = f.Changed()
				}
				begin := time.Now()
				change()
				for _, w := range waiters {
					select {
					case <-w:
					case <-time.After(2 * time.Second):
						t.Fatalf("%s: a waiter was not woken within 2s", what)
					}
				}
				t.Logf("%s: woken after %s", what, time.Since(begin))
			}
			entry := []ca.RevocationEntry{{Kind: ca.RevokedSerial, Value: "5", Expiry: time.Now().Add(time.Hour)}}
			wakes("a change of scope b", func() {
				if _, err := mem.Revoke(ctx, b, entry); err != nil {
					t.Fatal(err)
				}
			})
			wakes("a change of scope a", func() {
				if _, err := mem.Revoke(ctx, a, entry); err != nil {
					t.Fatal(err)
				}
			})
			wakes("a new scope", func() {
				if err := mem.RegisterCA(ctx, c); err != nil {
					t.Fatal(err)
				}
			})
			states, err := f.States(ctx)
			if err != nil || len(states) != 3 {
				t.Fatalf("States = %d states, %v; want 3", len(states), err)
			}
			for _, st := range states {
				if st.CA == nil {
					t.Error("a state without its CA key")
				}
			}
			if cluster && cs.reads.Load() < 3 {
				t.Errorf("%d reads on the cluster feed", cs.reads.Load())
			}
		})
	}
}

// flakyFeed is a memory feed whose CAs fails while down, recording the follower's clock at
// each call.
type flakyFeed struct {
	*store.Memory
	clk  clockwork.Clock
	mu   sync.Mutex
	down bool
	at   []time.Time // when each call came
	fail []int       // the calls that failed
}

func (f *flakyFeed) CAs(ctx context.Context) ([]ssh.PublicKey, error) {
	f.mu.Lock()
	f.at = append(f.at, f.clk.Now())
	down := f.down
	if down {
		f.fail = append(f.fail, len(f.at)-1)
	}
	f.mu.Unlock()
	if down {
		return nil, errors.New("dial tcp 127.0.0.1:6379: connect: connection refused")
	}
	return f.Memory.CAs(ctx)
}

func (f *flakyFeed) calls() int { f.mu.Lock(); defer f.mu.Unlock(); return len(f.at) }

func (f *flakyFeed) setDown(down bool) { f.mu.Lock(); f.down = down; f.mu.Unlock() }

// failedAfter returns the calls after call i that failed.
func (f *flakyFeed) failedAfter(i int) []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []int
	for _, c := range f.fail {
		if c > i {
			out = append(out, c)
		}
	}
	return out
}

// gaps returns the time between consecutive calls of CAs.
func (f *flakyFeed) gaps() []time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	return testenv.Gaps(f.at)
}

// runFollowerOn runs f until the end of the test and returns a function that advances clk by
// step, each time once Run waits on it again, until feed has had want calls.
func runFollowerOn(t *testing.T, f *revocation.Follower, clk *clockwork.FakeClock, feed *flakyFeed) func(step time.Duration, want int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return func(step time.Duration, want int) {
		t.Helper()
		testenv.Step(t, clk, 1, step, func() bool { return feed.calls() >= want })
	}
}

// TestFollowerBacksOffOnItsClock: with the store down, the follower tries again after 100 ms,
// doubling the pause up to 5 s, on its clock (a clockwork.FakeClock advanced 50 ms at a time):
// the tries are exactly 100, 200, 400, 800, 1600, 3200, 5000 and 5000 ms apart. Back, it wakes
// the waiters (they may have missed changes) and its next failure starts again at 100 ms.
func TestFollowerBacksOffOnItsClock(t *testing.T) {
	mem := store.NewMemory(nil)
	if err := mem.RegisterCA(context.Background(), testenv.PublicKey(t)); err != nil {
		t.Fatal(err)
	}
	clk := clockwork.NewFakeClockAt(time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC))
	feed := &flakyFeed{Memory: mem, clk: clk, down: true}
	f := revocation.NewFollower(feed, nil)
	f.Block, f.Clock = 20*time.Millisecond, clk // the memory feed's read blocks 20 ms of real time
	step := runFollowerOn(t, f, clk, feed)
	step(50*time.Millisecond, 9)
	want := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond,
		1600 * time.Millisecond, 3200 * time.Millisecond, 5 * time.Second, 5 * time.Second}
	if diff := cmp.Diff(want, feed.gaps()); diff != "" {
		t.Fatalf("pauses between tries on the follower's clock (-want +got):\n%s", diff)
	}
	woken := f.Changed()
	feed.setDown(false)
	step(50*time.Millisecond, 10) // the try 5 s later reaches the store
	select {
	case <-woken:
	case <-time.After(10 * time.Second):
		t.Fatal("the follower did not wake its waiters once the store was back")
	}
	if got := feed.gaps()[8]; got != 5*time.Second {
		t.Errorf("the try that reached the store came %v after the one before, want 5s", got)
	}
	feed.setDown(true)
	for len(feed.failedAfter(9)) < 2 { // the failure after a success, then the first retry
		step(50*time.Millisecond, feed.calls()+1)
	}
	if i := feed.failedAfter(9)[0]; feed.gaps()[i] != 100*time.Millisecond {
		t.Errorf("first pause after a success and a new failure: %v, want 100ms (the backoff starts again)", feed.gaps()[i])
	}
}

// TestFollowerLooksForAScopeOnItsClock: a store without CA keys yet is asked for them again
// every Block of the follower's clock, not in a busy loop and not on the real clock.
func TestFollowerLooksForAScopeOnItsClock(t *testing.T) {
	clk := clockwork.NewFakeClockAt(time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC))
	feed := &flakyFeed{Memory: store.NewMemory(nil), clk: clk}
	f := revocation.NewFollower(feed, nil)
	f.Block, f.Clock = time.Second, clk
	runFollowerOn(t, f, clk, feed)(250*time.Millisecond, 4)
	if diff := cmp.Diff([]time.Duration{time.Second, time.Second, time.Second}, feed.gaps()); diff != "" {
		t.Errorf("looks for a first scope on the follower's clock (-want +got):\n%s", diff)
	}
}
