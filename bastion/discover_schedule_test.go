package bastion

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jonboulle/clockwork"
)

// scheduleRun starts s on a fake clock and returns the clock, a channel of the clock's time
// at each Send, and a function that stops Run and waits for it.
func scheduleRun(t *testing.T, s *DiscoverySchedule, results func(n int) (DiscoverySent, error)) (*clockwork.FakeClock, chan time.Time, func()) {
	t.Helper()
	clk := clockwork.NewFakeClockAt(time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC))
	s.Clock = clk
	sends := make(chan time.Time, 100)
	n := 0
	s.Send = func(context.Context) (DiscoverySent, error) {
		n++
		sends <- clk.Now()
		return results(n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return clk, sends, stop
}

// advanceTo moves the fake clock forward in steps of step until the schedule has sent want
// reports or until limit, and returns the times the reports were sent at.
func advanceTo(t *testing.T, clk *clockwork.FakeClock, sends chan time.Time, step, limit time.Duration, want int) []time.Time {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var at []time.Time
	wait := func() {
		// Between sends the schedule waits on exactly one timer.
		if err := clk.BlockUntilContext(ctx, 1); err != nil {
			t.Fatalf("the schedule never waited again (after %d sends): %v", len(at), err)
		}
	}
	for end := clk.Now().Add(limit); clk.Now().Before(end) && len(at) < want; {
		wait()
		clk.Advance(step)
		// A send the step set off is over once the schedule waits again.
		wait()
		select {
		case ts := <-sends:
			at = append(at, ts)
		default:
		}
	}
	return at
}

// TestDiscoveryScheduleSendsPerInterval: on a fake clock, one report per interval: the first
// within the jitter of the start, each next one Every ± Jitter after the one before, and no
// two in one interval over a simulated day.
func TestDiscoveryScheduleSendsPerInterval(t *testing.T) {
	const every, jitter = time.Hour, 6 * time.Minute
	s := &DiscoverySchedule{Every: every, Jitter: jitter}
	clk, sends, stop := scheduleRun(t, s, func(int) (DiscoverySent, error) { return DiscoverySent{Host: "h", Keys: 2}, nil })
	start := clk.Now()
	at := advanceTo(t, clk, sends, time.Minute, 24*time.Hour, 100)
	stop()
	if len(at) < 23 || len(at) > 25 {
		t.Fatalf("%d reports in a simulated day at a %v interval, want 24 ± 1: %v", len(at), every, at)
	}
	if first := at[0].Sub(start); first > jitter {
		t.Errorf("first report %v after start, want within the jitter %v", first, jitter)
	}
	// The clock moves in 1-minute steps, so a send is seen up to a minute after it was due.
	for i := 1; i < len(at); i++ {
		if gap := at[i].Sub(at[i-1]); gap < every-jitter-time.Minute || gap > every+jitter+time.Minute {
			t.Errorf("reports %d and %d are %v apart, want %v ± %v", i-1, i, gap, every, jitter)
		}
	}
	st := s.Status()
	if st.Sent != uint64(len(at)) || st.Failed != 0 || !st.LastSent.Equal(at[len(at)-1]) {
		t.Errorf("status %+v after %d reports, last at %v", st, len(at), at[len(at)-1])
	}
}

// TestDiscoveryScheduleJitter: the wait is Every plus (2r-1)·Jitter for the schedule's random
// draw r, so two hosts with other draws report at other times; the first waits r·Jitter.
func TestDiscoveryScheduleJitter(t *testing.T) {
	draws := []float64{0.5, 0, 0.999, 0.25}
	i := 0
	s := &DiscoverySchedule{Every: time.Hour, Jitter: 10 * time.Minute, Rand: func() float64 { r := draws[i%len(draws)]; i++; return r }}
	clk, sends, stop := scheduleRun(t, s, func(int) (DiscoverySent, error) { return DiscoverySent{}, nil })
	start := clk.Now()
	at := advanceTo(t, clk, sends, 10*time.Second, 4*time.Hour, 4)
	stop()
	var got []time.Duration
	for _, a := range at {
		got = append(got, a.Sub(start))
	}
	// 0.5·10m; then 1h - 10m later; then 1h + 9m58.8s later, seen at the next 10 s step; then 1h - 5m.
	want := []time.Duration{5 * time.Minute, 55 * time.Minute, 2*time.Hour + 5*time.Minute, 3 * time.Hour}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("report times since start (-want +got):\n%s", diff)
	}
}

// TestDiscoveryScheduleRetriesAndFollowsUp: a failed report is retried after RetryMin,
// doubling up to Every, not an interval later; a report answered with disable orders is
// followed by one after FollowUp; after a success the interval is Every again.
func TestDiscoveryScheduleRetriesAndFollowsUp(t *testing.T) {
	s := &DiscoverySchedule{Every: time.Hour, Jitter: time.Nanosecond, RetryMin: time.Minute, FollowUp: 2 * time.Minute,
		Rand: func() float64 { return 0.5 }}
	clk, sends, stop := scheduleRun(t, s, func(n int) (DiscoverySent, error) {
		switch {
		case n <= 3:
			return DiscoverySent{}, errors.New("sshca: 503 store unavailable")
		case n == 4:
			return DiscoverySent{Orders: 1}, nil
		}
		return DiscoverySent{}, nil
	})
	start := clk.Now()
	at := advanceTo(t, clk, sends, 30*time.Second, 3*time.Hour, 6)
	st := s.Status()
	stop()
	var gaps []time.Duration
	for i, a := range at {
		prev := start
		if i > 0 {
			prev = at[i-1]
		}
		gaps = append(gaps, a.Sub(prev).Round(time.Minute))
	}
	// first at ~0, failures retried after 1, 2, 4 min, the orders followed up after 2 min,
	// then a whole interval.
	want := []time.Duration{0, time.Minute, 2 * time.Minute, 4 * time.Minute, 2 * time.Minute, time.Hour}
	if diff := cmp.Diff(want, gaps); diff != "" {
		t.Errorf("gaps between attempts (-want +got):\n%s", diff)
	}
	if st.Failed != 3 || st.Sent != 3 || st.LastError != "" {
		t.Errorf("status %+v, want 3 failed, 3 sent, no error", st)
	}
}

// TestDiscoveryScheduleNeedsInterval: a schedule without an interval or a sender is refused,
// not run as a busy loop.
func TestDiscoveryScheduleNeedsInterval(t *testing.T) {
	for _, s := range []*DiscoverySchedule{{Send: func(context.Context) (DiscoverySent, error) { return DiscoverySent{}, nil }}, {Every: time.Hour}} {
		if err := s.Run(context.Background()); err == nil {
			t.Errorf("Run(%+v) = nil, want an error", s)
		}
	}
}
