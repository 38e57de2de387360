package revocation_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
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
			a, b, c := caKey(t), caKey(t), caKey(t)
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
