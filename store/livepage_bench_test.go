package store_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
)

// BenchmarkLivePage reads the inventory on a real redis-server holding n live certificates:
// "page" is the first page of 1,000 (GET /v1/certs?limit=1000), "all" every certificate at once
// (what GET /v1/certs read before it was paged). A page costs the same whatever n; all grows
// with n.
func BenchmarkLivePage(b *testing.B) {
	r := testenv.StartRedis(b)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	ctx := context.Background()
	now := time.Now().Truncate(time.Second)
	s := store.NewRedis(rdb, store.RedisOptions{Now: func() time.Time { return now }})
	recorded := 0
	for _, n := range []int{10_000, 50_000} {
		for ; recorded < n; recorded++ {
			c := ca.Certificate{Serial: uint64(recorded + 1), KeyID: "bench#" + strconv.Itoa(recorded+1), Kind: ca.UserCert,
				Identity: fmt.Sprintf("https://idp|u%d", recorded%500), Principals: []string{"p"}, KeyFingerprint: "SHA256:k",
				CAFingerprint: "SHA256:ca", ValidAfter: now, ValidBefore: now.Add(time.Hour + time.Duration(recorded/7)*time.Millisecond)}
			if err := s.Record(ctx, c); err != nil {
				b.Fatal(err)
			}
		}
		b.Run(fmt.Sprintf("page/n=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				page, next, err := s.LivePage(ctx, now, ca.CertCursor{}, 1000)
				if err != nil || len(page) != 1000 || next.IsZero() {
					b.Fatal(len(page), next, err)
				}
			}
		})
		b.Run(fmt.Sprintf("all/n=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				all, err := s.AllLive(ctx, now)
				if err != nil || len(all) != n {
					b.Fatal(len(all), err)
				}
			}
		})
	}
}

// BenchmarkPageAfterOneSecond reads a page of 10 after a position whose member is not in the
// index, among n members of the same score: what every page after the first costs in each
// inventory shard but the cursor's (a certificate's ValidBefore is in whole seconds, so the
// certificates issued in one second share a score: n is a second's issuance), and what a
// made-up cursor costs anyone. Measured on the recordings index, which the same script reads.
func BenchmarkPageAfterOneSecond(b *testing.B) {
	r := testenv.StartRedis(b)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	ctx := context.Background()
	st := store.NewRecordings(rdb, "", nil)
	const score = 1_700_000_000_000
	added := 0
	for _, n := range []int{2_000, 20_000} {
		var zs []redis.Z
		for ; added < n; added++ {
			zs = append(zs, redis.Z{Score: score, Member: fmt.Sprintf("%024x", 2*added)})
		}
		if err := rdb.ZAdd(ctx, store.Keys{}.RecordingIndex(), zs...).Err(); err != nil {
			b.Fatal(err)
		}
		after := ca.RecordingCursor{Start: score, ID: fmt.Sprintf("%024x", n-1)} // between two members
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			for b.Loop() {
				if _, next, err := st.SessionRecordings(ctx, time.Time{}, after, 10); err != nil || next.ID != fmt.Sprintf("%024x", n+18) {
					b.Fatal(next, err)
				}
			}
		})
	}
}

// BenchmarkIdentityPage reads one identity's certificates on a real redis-server when it holds
// 20,000 (a workload identity's issuance of some seconds): "page" a page of 1,000 from its own
// index (GET /v1/certs?identity=X&limit=1000 now), "all" every one (what each such page read
// before, to page them in memory).
func BenchmarkIdentityPage(b *testing.B) {
	r := testenv.StartRedis(b)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	ctx := context.Background()
	now := time.Now().Truncate(time.Second)
	s := store.NewRedis(rdb, store.RedisOptions{Now: func() time.Time { return now }})
	const n, id = 20_000, "https://idp|workload"
	for i := range n {
		c := ca.Certificate{Serial: uint64(i + 1), KeyID: "bench#" + strconv.Itoa(i+1), Kind: ca.UserCert, Identity: id,
			Principals: []string{"p"}, KeyFingerprint: "SHA256:k", CAFingerprint: "SHA256:ca", ValidAfter: now,
			ValidBefore: now.Add(time.Hour + time.Duration(i/2000)*time.Second)}
		if err := s.Record(ctx, c); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("page", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if page, next, err := s.LivePageOf(ctx, id, now, ca.CertCursor{}, 1000); err != nil || len(page) != 1000 || next.IsZero() {
				b.Fatal(len(page), next, err)
			}
		}
	})
	b.Run("all", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if all, err := s.Live(ctx, id, now); err != nil || len(all) != n {
				b.Fatal(len(all), err)
			}
		}
	})
}
