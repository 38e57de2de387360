package services

import (
	"net/netip"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

// TestBucketsBounded: 100k distinct addresses never hold more than MaxEntries entries, the
// most recent of them kept; entries idle past Idle are dropped as time moves on.
func TestBucketsBounded(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	b := newBuckets(rate.Limit(1), 2, 1000, 10*time.Minute)
	base := netip.MustParseAddr("10.0.0.0")
	a := base
	for i := range 100_000 {
		if ok, _ := b.take(AddressKey(a.String()), now.Add(time.Duration(i)*time.Millisecond)); !ok {
			t.Fatalf("address %d refused on its first request", i)
		}
		if n := b.len(); n > 1000 {
			t.Fatalf("after %d addresses the map holds %d entries, want at most 1000", i+1, n)
		}
		a = a.Next()
	}
	if n := b.len(); n != 1000 {
		t.Errorf("map holds %d entries, want 1000", n)
	}
	last := a.Prev().String()
	b.mu.Lock()
	_, kept := b.byKey[last]
	_, first := b.byKey[base.String()]
	b.mu.Unlock()
	if !kept || first {
		t.Errorf("most recent kept %v, oldest kept %v: want the least recently used dropped", kept, first)
	}
	// Ten minutes after the last request, the next one finds every other entry idle.
	if ok, _ := b.take("192.0.2.1", now.Add(100*time.Second+10*time.Minute)); !ok {
		t.Fatal("refused")
	}
	if n := b.len(); n != 1 {
		t.Errorf("after 10 idle minutes the map holds %d entries, want 1", n)
	}
}

// TestBucketsIdleNotBeforeRefill: an entry is not dropped as idle before its bucket would have
// refilled, so dropping it never hands out a fresh burst early.
func TestBucketsIdleNotBeforeRefill(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	b := newBuckets(rate.Limit(0.005), 3, 10, time.Minute) // a token every 200s; full in 600s
	for range 3 {
		b.take("k", now)
	}
	if ok, _ := b.take("k", now.Add(2*time.Minute)); ok {
		t.Error("an emptied bucket came back full after 2 minutes of idleness, before its 10 minutes of refill")
	}
}
