package store_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
)

// BenchmarkRecordUnderRequest records certificates under approved access requests, one request
// per identity (2,000 of them, cycled: run with -benchtime 2000x so that each request takes one
// certificate), on a real redis-server, with one inventory shard and with three: what
// ca.Authority pays after signing a certificate under a request.
func BenchmarkRecordUnderRequest(b *testing.B) {
	r := testenv.StartRedis(b)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	ctx := context.Background()
	for _, shards := range []int{1, 3} {
		b.Run(fmt.Sprintf("shards=%d", shards), func(b *testing.B) {
			if err := rdb.FlushAll(ctx).Err(); err != nil {
				b.Fatal(err)
			}
			s := store.NewRedis(rdb, store.RedisOptions{InventoryShards: shards})
			now := time.Now().UTC().Truncate(time.Second)
			exp := now.Add(time.Hour)
			var reqs []ca.AccessRequest
			for i := range 2000 {
				req := ca.AccessRequest{ID: fmt.Sprintf("req_%016d", i), Requester: ca.Identity{Issuer: "https://idp", Subject: fmt.Sprintf("u%d", i)},
					Principals: []string{"root"}, TTLSeconds: 3600, Reason: "bench", CreatedAt: now, PendingUntil: exp,
					ApprovalsRequired: 1, Status: ca.RequestApproved, DecidedAt: now, NotAfter: exp}
				if err := s.CreateRequest(ctx, req); err != nil {
					b.Fatal(err)
				}
				reqs = append(reqs, req)
			}
			approved := func(r ca.AccessRequest) error {
				if r.Status != ca.RequestApproved {
					return ca.Denied("not approved")
				}
				return nil
			}
			b.ReportAllocs()
			serial := uint64(0)
			for b.Loop() {
				req := reqs[serial%uint64(len(reqs))]
				serial++
				c := ca.Certificate{Serial: serial, KeyID: fmt.Sprintf("%s#%d", req.Requester.Name(), serial), Kind: ca.UserCert,
					Identity: req.Requester.Name(), Principals: []string{"root"}, KeyFingerprint: "SHA256:k", CAFingerprint: "SHA256:ca",
					ValidAfter: now, ValidBefore: exp, AccessRequest: req.ID}
				if err := s.RecordUnderRequest(ctx, c, req.ID, approved); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
