package store_test

import (
	"context"
	"slices"
	"testing"
	"time"
)

// TestOutboxContract: the notification outbox on every backend: each event goes to one
// consumer; an acknowledged event is gone; one taken and not acknowledged is taken over by
// another consumer once idle for the claim time, marked as delivered before.
func TestOutboxContract(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newStore newStore) {
		ctx := context.Background()
		t0 := time.Now().UTC()
		c := &clock{t: t0}
		s := newStore(t, c)
		start := time.Now()
		if got, err := s.TakeEvents(ctx, "a", 10, 100*time.Millisecond, time.Minute); err != nil || len(got) != 0 {
			t.Fatalf("empty outbox: %v %v", got, err)
		}
		if d := time.Since(start); d < 80*time.Millisecond {
			t.Errorf("an empty take returned after %s, not waiting its block", d)
		}
		for _, e := range []string{`{"n":1}`, `{"n":2}`, `{"n":3}`} {
			if err := s.AppendEvent(ctx, []byte(e)); err != nil {
				t.Fatal(err)
			}
		}
		a, err := s.TakeEvents(ctx, "a", 2, 0, time.Minute)
		if err != nil || len(a) != 2 || string(a[0].Event) != `{"n":1}` || a[0].Deliveries != 0 {
			t.Fatalf("a takes %+v %v", a, err)
		}
		b, err := s.TakeEvents(ctx, "b", 10, 100*time.Millisecond, time.Minute)
		if err != nil || len(b) != 1 || string(b[0].Event) != `{"n":3}` {
			t.Fatalf("b takes %+v %v, want only the event a did not take", b, err)
		}
		if err := s.AckEvent(ctx, a[0].ID); err != nil {
			t.Fatal(err)
		}
		if err := s.AckEvent(ctx, b[0].ID); err != nil {
			t.Fatal(err)
		}
		// a's second event is neither acknowledged nor idle long enough: nobody gets it yet.
		if got, _ := s.TakeEvents(ctx, "b", 10, 50*time.Millisecond, time.Second); len(got) != 0 {
			t.Fatalf("b took over a fresh event of a's: %+v", got)
		}
		time.Sleep(1100 * time.Millisecond) // Redis measures idle time on its own clock
		c.Set(t0.Add(2 * time.Second))
		got, err := s.TakeEvents(ctx, "b", 10, 0, time.Second)
		if err != nil || len(got) != 1 || got[0].ID != a[1].ID || got[0].Deliveries == 0 {
			t.Fatalf("b takes over a's idle event: %+v %v", got, err)
		}
		if err := s.AckEvent(ctx, got[0].ID); err != nil {
			t.Fatal(err)
		}
		if left, _ := s.TakeEvents(ctx, "c", 10, 50*time.Millisecond, 0); len(left) != 0 {
			ids := []string{}
			for _, e := range left {
				ids = append(ids, e.ID)
			}
			t.Errorf("acknowledged events handed out again: %v", slices.Clip(ids))
		}
	})
}
