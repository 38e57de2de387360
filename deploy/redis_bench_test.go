package deploy_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
)

// BenchmarkShippedRedisFsync measures the shipped redis.conf with appendfsync always (shipped)
// and everysec, through sshca's store code as one CA replica uses it:
//   - revoke: a revocation (the Lua script, then SADD of the CA key): 2 writes;
//   - issue: what an issuance writes: serial reservation (SET NX), spent token (SET NX),
//     inventory record (MULTI/EXEC), audit record (Lua, appends serialised per replica): 4 writes.
//
// Run: go test -run '^$' -bench ShippedRedisFsync -benchtime 3s ./deploy/
// "ops/s" is revocations or issuances per second; "writes/s" counts Redis writes.
func BenchmarkShippedRedisFsync(b *testing.B) {
	for _, fsync := range []string{"always", "everysec"} {
		for _, op := range []string{"revoke", "issue"} {
			for _, clients := range []int{1, 16} {
				name := "appendfsync=" + fsync + "/" + op + "/clients=" + strconv.Itoa(clients)
				b.Run(name, func(b *testing.B) { benchFsync(b, fsync, op, clients) })
			}
		}
	}
}

func benchFsync(b *testing.B, fsync, op string, clients int) {
	r := testenv.StartRedisConfig(b, shippedConf, "--appendfsync", fsync)
	rdb := client(r.Addr, svcUser, svcPass)
	defer rdb.Close()
	db := store.NewRedis(rdb, store.RedisOptions{})
	log := audit.New(rdb, audit.Options{Key: make([]byte, audit.KeySize)})
	w := newWorkload(b, r.Addr)
	exp := time.Now().Add(time.Hour)
	var next atomic.Uint64
	writes := map[string]float64{"revoke": 2, "issue": 4}[op]
	ctx := context.Background()
	one := func() error {
		serial := next.Add(1)
		id := "alice@example.com#" + strconv.FormatUint(serial, 10)
		if op == "revoke" {
			_, err := db.Revoke(ctx, w.caKey, []ca.RevocationEntry{{Kind: ca.RevokedSerial, Value: strconv.FormatUint(serial, 10), Expiry: exp}})
			return err
		}
		if _, err := db.ReserveSerial(ctx, serial, exp); err != nil {
			return err
		}
		if _, err := db.UseToken(ctx, "token-"+id, time.Time{}, exp); err != nil {
			return err
		}
		if err := db.Record(ctx, ca.Certificate{Serial: serial, KeyID: id, Kind: ca.UserCert, Identity: "alice@example.com", ValidBefore: exp}); err != nil {
			return err
		}
		return log.Append(ctx, auditRecord(serial, id))
	}
	if err := one(); err != nil { // load the scripts
		b.Fatal(err)
	}
	b.ResetTimer()
	start := time.Now()
	if clients == 1 {
		for range b.N {
			if err := one(); err != nil {
				b.Fatal(err)
			}
		}
	} else {
		b.SetParallelism((clients + 1) / 2) // GOMAXPROCS is 2 here: 16 goroutines
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := one(); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	s := time.Since(start).Seconds()
	b.ReportMetric(float64(b.N)/s, "ops/s")
	b.ReportMetric(writes*float64(b.N)/s, "writes/s")
}
