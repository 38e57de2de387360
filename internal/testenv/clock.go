package testenv

import (
	"context"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
)

// Step moves clk on by step each time the code under test waits on it (holds at least
// waiters timers or tickers), until done says so. It fails the test when that code neither
// waits on clk nor gets done within 10 s of real time: a loop that waits on the real clock
// never registers a waiter. Between a timer firing and the next wait it does not move clk, so
// what the code records reading clk is exact.
func Step(t testing.TB, clk *clockwork.FakeClock, waiters int, step time.Duration, done func() bool) {
	t.Helper()
	for !done() {
		deadline := time.Now().Add(10 * time.Second)
		for !done() && !Waiting(clk, waiters) {
			if time.Now().After(deadline) {
				t.Fatalf("testenv: the code under test does not wait on its clock (%d waiters expected) and is not done", waiters)
			}
		}
		if !done() {
			clk.Advance(step)
		}
	}
}

// Waiting says whether clk holds at least waiters timers or tickers now.
func Waiting(clk *clockwork.FakeClock, waiters int) bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	return clk.BlockUntilContext(ctx, waiters) == nil
}

// Gaps returns the time from each instant of at to the next.
func Gaps(at []time.Time) []time.Duration {
	var ds []time.Duration
	for i := 1; i < len(at); i++ {
		ds = append(ds, at[i].Sub(at[i-1]))
	}
	return ds
}
