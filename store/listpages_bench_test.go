package store_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
)

// BenchmarkListPages reads the lists paged in stop 16 on a real redis-server holding n
// entries of each: "page" is a first page of 1,000 (GET /v1/revocations, /v1/requests,
// /v1/discovery with limit=1000), "all" the whole list (what the endpoint read before it was
// paged: State, ListRequests, Discoveries). A page costs the same whatever n; all grows with n.
// Since stop 17 a first page of requests also checks the creation order against the KeepUntil
// index (one ZSCORE a kept request, in Lua): it grows with n, a later page ("next-page") does
// not.
func BenchmarkListPages(b *testing.B) {
	r := testenv.StartRedis(b)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	ctx := context.Background()
	now := time.Now().Truncate(time.Second)
	s := store.NewRedis(rdb, store.RedisOptions{Now: func() time.Time { return now }})
	caKey := testenv.PublicKey(b)
	keys := store.Keys{}
	filled := 0
	for _, n := range []int{10_000, 50_000} {
		// Revocations through the store, 1,000 entries a call; requests and reports written
		// as the store writes them, in pipelines (one CreateRequest a round trip would take
		// minutes at 50,000).
		for filled < n {
			var es []ca.RevocationEntry
			reqs := rdb.Pipeline()
			for range 1000 {
				filled++
				es = append(es, ca.RevocationEntry{Kind: ca.RevokedKeyID, Value: "bench@example.com#" + strconv.Itoa(filled),
					Expiry: now.Add(time.Hour + time.Duration(filled)*time.Millisecond)})
				req := ca.AccessRequest{ID: fmt.Sprintf("req_%016d", filled), Requester: ca.Identity{Issuer: "https://idp", Subject: "u" + strconv.Itoa(filled%500)},
					Principals: []string{"root"}, TTLSeconds: 1800, Reason: "bench", CreatedAt: now, PendingUntil: now.Add(time.Hour + time.Duration(filled)*time.Millisecond),
					ApprovalsRequired: 1, Status: ca.RequestPending}
				rb, _ := json.Marshal(req)
				reqs.Set(ctx, keys.Request(req.ID), rb, 0)
				reqs.ZAdd(ctx, keys.Requests(), redis.Z{Score: float64(req.KeepUntil().UnixMilli()), Member: req.ID})
				reqs.ZAdd(ctx, keys.RequestOrder(), redis.Z{Score: float64(req.CreatedAt.UnixMilli()), Member: req.ID})
				host := fmt.Sprintf("web-%06d.prod.example.com", filled)
				db, _ := json.Marshal(ca.DiscoveryRecord{Host: host, Received: now, Report: json.RawMessage(`{"host":"` + host + `","keys":[]}`)})
				reqs.HSet(ctx, keys.Discovery(), host, db)
				reqs.ZAdd(ctx, keys.DiscoveryHosts(), redis.Z{Member: host})
			}
			if _, err := reqs.Exec(ctx); err != nil {
				b.Fatal(err)
			}
			if _, err := s.Revoke(ctx, caKey, es); err != nil {
				b.Fatal(err)
			}
		}
		run := func(name string, f func() (int, bool, error), want int, more bool) {
			b.Run(fmt.Sprintf("%s/n=%d", name, n), func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					got, next, err := f()
					if err != nil || got != want || next != more {
						b.Fatal(got, next, err)
					}
				}
			})
		}
		run("revocations/page", func() (int, bool, error) {
			st, next, err := s.StatePage(ctx, caKey, ca.EntryCursor{}, 1000)
			return len(st.Entries), !next.IsZero(), err
		}, 1000, true)
		run("revocations/all", func() (int, bool, error) {
			st, err := s.State(ctx, caKey)
			return len(st.Entries), false, err
		}, n, false)
		run("requests/page", func() (int, bool, error) {
			page, next, err := s.RequestsPage(ctx, ca.RequestCursor{}, 1000)
			return len(page), !next.IsZero(), err
		}, 1000, true)
		// A later page of the same listing: no sync of the order (requestsSyncScript), which
		// only a listing's first page runs.
		_, second, err := s.RequestsPage(ctx, ca.RequestCursor{}, 1000)
		if err != nil {
			b.Fatal(err)
		}
		run("requests/next-page", func() (int, bool, error) {
			page, next, err := s.RequestsPage(ctx, second, 1000)
			return len(page), !next.IsZero(), err
		}, 1000, true)
		run("requests/all", func() (int, bool, error) {
			all, err := s.ListRequests(ctx)
			return len(all), false, err
		}, n, false)
		run("discovery/page", func() (int, bool, error) {
			page, next, err := s.DiscoveryPage(ctx, "", 1000)
			return len(page), next != "", err
		}, 1000, true)
		run("discovery/all", func() (int, bool, error) {
			all, err := s.Discoveries(ctx)
			return len(all), false, err
		}, n, false)
	}
}
