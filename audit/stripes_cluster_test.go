package audit_test

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
)

// TestStripesOnCluster: on a Redis Cluster of three masters, every script and read of a
// striped log keeps to one slot at a time (a cross-slot one fails with CROSSSLOT): the stripe
// count raised, appends with marks in three stripes, checkpoints read across the slots,
// Verify with its checkpoint checks, Archive and its trims, VerifyAfter. The stripes' tags
// land on more than one master.
func TestStripesOnCluster(t *testing.T) {
	ctx := context.Background()
	c := testenv.StartRedisCluster(t, 3)
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs})
	t.Cleanup(func() { cc.Close() })
	key := []byte("0123456789abcdef0123456789abcdef")
	st := store.NewRedis(cc, store.RedisOptions{AuditStripes: 3})
	var logs []*audit.Log
	for i := range 3 {
		logs = append(logs, audit.New(cc, audit.Options{Key: key, Stripes: 3, Home: new(i), Marks: st}))
	}
	for round := range 2 {
		for i, l := range logs {
			if err := l.Append(ctx, record(i*10+round)); err != nil {
				t.Fatalf("append: %v", err)
			}
		}
	}
	for _, l := range logs {
		if err := l.Checkpoint(ctx); err != nil {
			t.Fatalf("checkpoint: %v", err)
		}
	}
	if err := st.CheckState(ctx); err != nil {
		t.Fatalf("store state: %v", err)
	}
	masters := map[string]bool{}
	for i := range 3 {
		m, err := cc.MasterForKey(ctx, store.Keys{}.AuditStripeHead(i))
		if err != nil {
			t.Fatal(err)
		}
		masters[m.Options().Addr] = true
	}
	if len(masters) < 2 {
		t.Errorf("the three stripes' tags all hash to one master: %v", masters)
	}
	reader := audit.New(cc, audit.Options{Key: key})
	rep, err := reader.Verify(ctx, nil)
	if err != nil || rep.Records != 6 || rep.Checkpoints != 3 {
		t.Fatalf("verify: %+v %v", rep, err)
	}
	var file bytes.Buffer
	if _, err := reader.Archive(ctx, &file, nil); err != nil {
		t.Fatalf("archive: %v", err)
	}
	ar, err := reader.VerifyArchive(strings.NewReader(file.String()), nil)
	if err != nil || ar.Records != 6 {
		t.Fatalf("verify archive: %+v %v", ar, err)
	}
	if _, err := reader.VerifyAfter(ctx, ar, nil); err != nil {
		t.Fatalf("verify after: %v", err)
	}
}
