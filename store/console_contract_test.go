package store_test

import (
	"bytes"
	"context"
	"testing"
	"time"
)

// TestConsoleSessionContract: the console's sessions on every backend: a value comes back as
// stored under its name only, a second put under the name replaces it, it is gone once its end
// has passed on the store's clock (also on miniredis, whose keys do not expire with real
// time), a put with an end already past stores nothing, and delete ends it (a missing name
// is no error).
func TestConsoleSessionContract(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newStore newStore) {
		ctx := context.Background()
		c := &clock{t: time.Now()}
		s := newStore(t, c)
		end := c.Now().Add(time.Hour)
		if err := s.PutConsoleSession(ctx, "a1", []byte("sealed-a"), end); err != nil {
			t.Fatal(err)
		}
		if got, ok, err := s.ConsoleSession(ctx, "a1"); err != nil || !ok || string(got) != "sealed-a" {
			t.Fatalf("get a1 = %q %v %v", got, ok, err)
		}
		if _, ok, err := s.ConsoleSession(ctx, "a2"); err != nil || ok {
			t.Fatalf("get of a name never stored = %v %v", ok, err)
		}
		if err := s.PutConsoleSession(ctx, "a1", []byte("sealed-b"), end); err != nil {
			t.Fatal(err)
		}
		if got, ok, _ := s.ConsoleSession(ctx, "a1"); !ok || string(got) != "sealed-b" {
			t.Fatalf("after a second put: %q %v", got, ok)
		}
		if err := s.PutConsoleSession(ctx, "past", []byte("x"), c.Now().Add(-time.Second)); err != nil {
			t.Fatal(err)
		}
		if _, ok, _ := s.ConsoleSession(ctx, "past"); ok {
			t.Error("a session stored with an end already past is there")
		}
		c.Set(end.Add(-time.Millisecond))
		if _, ok, _ := s.ConsoleSession(ctx, "a1"); !ok {
			t.Error("a1 gone before its end")
		}
		c.Set(end)
		if _, ok, _ := s.ConsoleSession(ctx, "a1"); ok {
			t.Error("a1 still there at its end")
		}
		c.Set(time.Now())
		if err := s.PutConsoleSession(ctx, "b1", []byte("sealed-c"), c.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteConsoleSession(ctx, "b1"); err != nil {
			t.Fatal(err)
		}
		if _, ok, _ := s.ConsoleSession(ctx, "b1"); ok {
			t.Error("b1 still there after delete")
		}
		if err := s.DeleteConsoleSession(ctx, "never"); err != nil {
			t.Errorf("delete of a missing name: %v", err)
		}
	})
}

// TestConsoleLoginContract: the console's login key is created once (32 bytes or more) and the
// same for every later call; a finished sign-in is spent once until its end on the store's
// clock (also on miniredis), then may be marked again; an end already past marks nothing.
func TestConsoleLoginContract(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newStore newStore) {
		ctx := context.Background()
		c := &clock{t: time.Now()}
		s := newStore(t, c)
		k1, err := s.ConsoleLoginKey(ctx)
		if err != nil || len(k1) < 32 {
			t.Fatalf("login key %d bytes, %v", len(k1), err)
		}
		k2, err := s.ConsoleLoginKey(ctx)
		if err != nil || !bytes.Equal(k1, k2) {
			t.Fatalf("a second call gave another key (%v)", err)
		}
		end := c.Now().Add(10 * time.Minute)
		if first, err := s.SpendConsoleLogin(ctx, "l1", end); err != nil || !first {
			t.Fatalf("first spend = %v %v", first, err)
		}
		if first, err := s.SpendConsoleLogin(ctx, "l1", end); err != nil || first {
			t.Fatalf("second spend = %v %v, want refused", first, err)
		}
		if first, _ := s.SpendConsoleLogin(ctx, "l2", end); !first {
			t.Fatal("another sign-in refused")
		}
		c.Set(end.Add(-time.Millisecond))
		if first, _ := s.SpendConsoleLogin(ctx, "l1", end); first {
			t.Fatal("spent again before its end")
		}
		c.Set(end)
		if first, _ := s.SpendConsoleLogin(ctx, "l1", end.Add(time.Minute)); !first {
			t.Fatal("a mark past its end still refuses")
		}
		if first, _ := s.SpendConsoleLogin(ctx, "l3", c.Now().Add(-time.Second)); first {
			t.Fatal("a spend with an end already past was taken")
		}
	})
}
