package store_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
)

// TestRequestOrderRollingUpgrade: a store that replicas of stop 16 wrote, or still write
// during a rolling upgrade, indexes access requests by KeepUntil alone (Keys.Requests). A
// replica of stop 17 pages Keys.RequestOrder: its listing's first page adds the requests the
// older replicas created (by their creation) and takes out those they pruned, so every request
// kept throughout is listed exactly once, in creation order, while the older replica creates,
// decides and prunes between the pages. On redis-server and miniredis (sshca dev).
func TestRequestOrderRollingUpgrade(t *testing.T) {
	t.Run("redis-server", func(t *testing.T) {
		r := testenv.StartRedis(t)
		rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
		t.Cleanup(func() { rdb.Close() })
		testRequestOrderUpgrade(t, rdb, 0)
		testRequestOrderUpgrade(t, rdb, 12)
	})
	t.Run("miniredis", func(t *testing.T) {
		mr := miniredis.RunT(t)
		rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
		t.Cleanup(func() { rdb.Close() })
		testRequestOrderUpgrade(t, rdb, 0)
		testRequestOrderUpgrade(t, rdb, 12)
	})
}

// testRequestOrderUpgrade runs the upgrade with the first old of the twelve requests written
// by the older replica (12: none): with 0, half of them; with 12, only the one it writes after
// pruning the one this replica created, so that both indexes hold as many members but not the
// same (the check that skips the look member by member must not be fooled by the counts).
func testRequestOrderUpgrade(t *testing.T, rdb *redis.Client, old int) {
	ctx := context.Background()
	if err := rdb.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now().UTC().Truncate(time.Second)
	c := &clock{t: t0}
	keys := store.Keys{}
	s := store.NewRedis(rdb, store.RedisOptions{Now: c.Now})
	alice := ca.Identity{Issuer: "https://idp.example", Subject: "u1", Email: "alice@example.com"}
	newRequest := func(n int, pendingHours int) ca.AccessRequest {
		at := t0.Add(time.Duration(n) * time.Second)
		return ca.AccessRequest{ID: fmt.Sprintf("req_aaaaaaaaaaaaa%03d", n), Requester: alice, Principals: []string{"root"},
			TTLSeconds: 1800, Reason: "OPS-1", CreatedAt: at, PendingUntil: t0.Add(time.Duration(pendingHours) * time.Hour),
			ApprovalsRequired: 1, Status: ca.RequestPending}
	}
	// What a replica of stop 16 writes (store/requests.go at d0f2750): the record, and the
	// KeepUntil index pruned up to its clock.
	oldWrite := func(r ca.AccessRequest) {
		t.Helper()
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.Set(ctx, keys.Request(r.ID), b, 0)
			p.PExpireAt(ctx, keys.Request(r.ID), r.KeepUntil())
			p.ZRemRangeByScore(ctx, keys.Requests(), "-inf", strconv.FormatInt(c.Now().UnixMilli(), 10))
			p.ZAdd(ctx, keys.Requests(), redis.Z{Score: float64(r.KeepUntil().UnixMilli()), Member: r.ID})
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	var kept []ca.AccessRequest // kept throughout, by creation
	for n := range 12 {
		r := newRequest(n, 3+(n*5)%7)
		if n >= old && n%2 == 0 { // before the upgrade, or on an older replica
			oldWrite(r)
		} else if err := s.CreateRequest(ctx, r); err != nil {
			t.Fatal(err)
		}
		kept = append(kept, r)
	}
	// Created by this replica, then pruned by an older one: left in the order alone.
	gone := newRequest(12, 1)
	if err := s.CreateRequest(ctx, gone); err != nil {
		t.Fatal(err)
	}
	c.Set(t0.Add(ca.AccessRequestRetention + 2*time.Hour))
	afterPage := newRequest(30, 9)
	oldWrite(afterPage) // prunes gone from Requests alone
	kept = append(kept, afterPage)

	seen := map[string]int{}
	var order []ca.AccessRequest
	var after ca.RequestCursor
	for pages := 1; ; pages++ {
		page, next, err := s.RequestsPage(ctx, after, 4)
		if err != nil || pages > 10 {
			t.Fatalf("page %d: %v", pages, err)
		}
		for _, r := range page {
			seen[r.ID]++
			order = append(order, r)
		}
		if pages == 1 {
			if n, err := rdb.ZCard(ctx, keys.RequestOrder()).Result(); err != nil || n != int64(len(kept)) {
				t.Errorf("after the first page the order holds %d requests (%v), want the %d kept", n, err, len(kept))
			}
			// The older replica decides a listed request and one not yet listed (each moves its
			// KeepUntil past the others), and creates one after the position.
			for _, r := range []ca.AccessRequest{page[0], kept[9]} {
				r.Status, r.DecidedAt, r.NotAfter = ca.RequestApproved, c.Now(), c.Now().Add(20*time.Hour)
				oldWrite(r)
			}
			late := newRequest(40, 9)
			late.CreatedAt = c.Now()
			oldWrite(late)
		}
		if next.IsZero() {
			break
		}
		after = next
	}
	for _, r := range kept {
		if seen[r.ID] != 1 {
			t.Errorf("%s, kept throughout, listed %d times", r.ID, seen[r.ID])
		}
	}
	if seen[gone.ID] != 0 {
		t.Errorf("a pruned request listed")
	}
	if !slices.IsSortedFunc(order, func(x, y ca.AccessRequest) int { return ca.RequestCursorOf(x).Compare(ca.RequestCursorOf(y)) }) {
		t.Errorf("not in creation order")
	}
	if err := rdb.ZScore(ctx, keys.RequestOrder(), gone.ID).Err(); err != redis.Nil {
		t.Errorf("the request an older replica pruned is still in the order: %v", err)
	}
}
