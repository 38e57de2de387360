package store_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
)

// BenchmarkRefusedRedis is the check before signing on a real redis-server (one round trip),
// for an identity with two aliases: on a store at the current layout, and on one still at
// layout 1 (a rolling upgrade), where it also reads the legacy blocks and the store's layout.
func BenchmarkRefusedRedis(b *testing.B) {
	r := testenv.StartRedis(b)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	ctx := context.Background()
	caKey, key := testenv.PublicKey(b), testenv.PublicKey(b)
	names := []string{"https://idp|alice", "email:alice@example.com", "username:alice"}
	for _, layout1 := range []bool{false, true} {
		name := "current layout"
		if layout1 {
			name = "store at layout 1"
		}
		b.Run(name, func(b *testing.B) {
			rdb.FlushAll(ctx)
			if layout1 {
				rdb.ZAdd(ctx, store.Keys{}.LegacyBlocked(), redis.Z{Score: float64(time.Now().Add(time.Hour).UnixMilli()), Member: "https://idp|bob"})
			}
			s := store.NewRedis(rdb, store.RedisOptions{})
			for b.Loop() {
				if why, err := s.Refused(ctx, caKey, names, key); err != nil || why != "" {
					b.Fatal(why, err)
				}
			}
		})
	}
}

// BenchmarkRefusedAuditStripes is the check before signing with the audit log in 1 and in 4
// stripes (RedisOptions.AuditStripes): what reading the mark of each stripe beyond the first
// costs every certificate, on a real redis-server.
func BenchmarkRefusedAuditStripes(b *testing.B) {
	r := testenv.StartRedis(b)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	ctx := context.Background()
	caKey, key := testenv.PublicKey(b), testenv.PublicKey(b)
	names := []string{"https://idp|alice", "email:alice@example.com", "username:alice"}
	for _, stripes := range []int{1, 4} {
		b.Run(fmt.Sprintf("stripes=%d", stripes), func(b *testing.B) {
			rdb.FlushAll(ctx)
			s := store.NewRedis(rdb, store.RedisOptions{AuditStripes: stripes})
			for b.Loop() {
				if why, err := s.Refused(ctx, caKey, names, key); err != nil || why != "" {
					b.Fatal(why, err)
				}
			}
		})
	}
}
