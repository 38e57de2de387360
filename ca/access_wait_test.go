package ca_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/sshca/sshca/ca"
)

// fakeTimers is an injected After: each call's channel fires only when the test fires its
// duration.
type fakeTimers struct {
	mu      sync.Mutex
	pending map[time.Duration][]chan time.Time
	asked   chan time.Duration // every duration asked for, in order
}

func newFakeTimers() *fakeTimers {
	return &fakeTimers{pending: map[time.Duration][]chan time.Time{}, asked: make(chan time.Duration, 100)}
}

func (f *fakeTimers) After(d time.Duration) <-chan time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	ch := make(chan time.Time, 1)
	f.pending[d] = append(f.pending[d], ch)
	f.asked <- d
	return ch
}

func (f *fakeTimers) fire(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, ch := range f.pending[d] {
		ch <- time.Time{}
	}
	delete(f.pending, d)
}

// waitAsked blocks until the waiting call has asked for a timer of d (it is then waiting).
func (f *fakeTimers) waitAsked(t *testing.T, d time.Duration) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case got := <-f.asked:
			if got == d {
				return
			}
		case <-timeout:
			t.Fatalf("the wait never asked for a %s timer", d)
		}
	}
}

type waitResult struct {
	r   ca.AccessRequest
	err error
}

// TestWaitAccessRequest: a requester's wait (the long poll of `sshca request create`) answers
// at once when the request is no longer as the client saw it; otherwise it waits, and answers
// at once when this replica approves it (no poll tick needed), at the next poll tick when
// another replica does, with the request unchanged when its wait ends, and never to someone
// who may not see the request.
func TestWaitAccessRequest(t *testing.T) {
	r := newAccessRig(t)
	timers := newFakeTimers()
	cfg := r.config
	cfg.After = timers.After
	waiter, err := ca.New(cfg) // the replica the requester waits on
	if err != nil {
		t.Fatal(err)
	}
	start := func(req ca.AccessRequest, seen string) chan waitResult {
		out := make(chan waitResult, 1)
		go func() {
			got, err := waiter.WaitAccessRequest(context.Background(), "token-alice", req.ID, 25*time.Second, seen)
			out <- waitResult{got, err}
		}()
		return out
	}
	get := func(ch chan waitResult) waitResult {
		t.Helper()
		select {
		case res := <-ch:
			return res
		case <-time.After(10 * time.Second):
			t.Fatal("the wait did not answer")
			return waitResult{}
		}
	}
	none := func(ch chan waitResult, what string) {
		t.Helper()
		select {
		case res := <-ch:
			t.Fatalf("%s: the wait answered %s, %v; want it still waiting", what, res.r.WaitTag(r.clock()), res.err)
		case <-time.After(200 * time.Millisecond):
		}
	}

	// Already changed since the client saw it: at once, no timer needed.
	req := r.create("alice", []string{"prod-db"}, "30m", "OPS-1234 disk full") // two approvals
	if _, err := r.approve("lead", req); err != nil {
		t.Fatal(err)
	}
	if res := get(start(req, "pending/0")); res.err != nil || res.r.WaitTag(r.clock()) != "pending/1" {
		t.Fatalf("wait with an old tag: %s, %v; want pending/1 at once", res.r.WaitTag(r.clock()), res.err)
	}

	// The wait ends with the request unchanged.
	ch := start(req, "pending/1")
	timers.waitAsked(t, ca.AccessWaitPoll)
	none(ch, "before any change")
	timers.fire(25 * time.Second)
	if res := get(ch); res.err != nil || res.r.WaitTag(r.clock()) != "pending/1" {
		t.Fatalf("wait that ended: %s, %v", res.r.WaitTag(r.clock()), res.err)
	}

	// Approved on another replica (r.a): seen at the next poll tick, not before.
	ch = start(req, "pending/1")
	timers.waitAsked(t, ca.AccessWaitPoll)
	if _, err := r.approve("lead2", req); err != nil {
		t.Fatal(err)
	}
	none(ch, "approved elsewhere, before the tick")
	timers.fire(ca.AccessWaitPoll)
	if res := get(ch); res.err != nil || res.r.StateAt(r.clock()) != ca.RequestApproved {
		t.Fatalf("approved elsewhere: %s, %v; want approved", res.r.WaitTag(r.clock()), res.err)
	}

	// Approved on the replica the requester waits on: at once, no tick fired.
	req2 := r.create("alice", []string{"root"}, "30m", "OPS-1234 disk full")
	ch = start(req2, "")
	timers.waitAsked(t, ca.AccessWaitPoll)
	if _, err := waiter.DecideAccessRequest(context.Background(), "token-lead", req2.ID, ca.AccessDecision{Approve: true, ContentHash: req2.ContentHash()}); err != nil {
		t.Fatal(err)
	}
	if res := get(ch); res.err != nil || res.r.StateAt(r.clock()) != ca.RequestApproved {
		t.Fatalf("approved here: %s, %v; want approved at once", res.r.WaitTag(r.clock()), res.err)
	}

	// Someone who may not see it is told it does not exist, without waiting.
	if _, err := waiter.WaitAccessRequest(context.Background(), "token-bob", req2.ID, 25*time.Second, ""); ca.KindOf(err) != ca.KindNotFound {
		t.Errorf("bob waiting on alice's request: %v, want not found", err)
	}
}
