package audit_test

import (
	"bytes"
	"context"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/internal/testenv"
)

// BenchmarkVerifyArchive is VerifyArchive of one archive of a log of 3 stripes, 1,000 records
// each with a checkpoint every 100, as `sshca audit verify --archive` and `store rebuild` run
// it: what checking the checkpoints (and the seal) the file holds adds to the walk of its
// chains.
func BenchmarkVerifyArchive(b *testing.B) {
	r := testenv.StartRedis(b)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	b.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	key := []byte("0123456789abcdef0123456789abcdef")
	var logs []*audit.Log
	for s := range 3 {
		logs = append(logs, audit.New(rdb, audit.Options{Key: key, Stripes: 3, Home: new(s)}))
	}
	for i := range 1000 {
		for s, l := range logs {
			if err := l.Append(ctx, record(s*10000+i)); err != nil {
				b.Fatal(err)
			}
			if i%100 == 99 {
				if err := l.Checkpoint(ctx); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	reader := audit.New(rdb, audit.Options{Key: key})
	var file bytes.Buffer
	if _, err := reader.Archive(ctx, &file, nil); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(file.Len()))
	b.ResetTimer()
	for b.Loop() {
		if ar, err := reader.VerifyArchive(bytes.NewReader(file.Bytes()), nil); err != nil || ar.Records != 3000 {
			b.Fatal(ar, err)
		}
	}
}
