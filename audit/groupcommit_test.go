package audit_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/internal/testenv"
)

// TestGroupCommit: records appended at the same time by many callers of two replicas share
// round trips (fewer scripts run than records are kept), every Append returns only once its
// own record is in the stream, and the result is one chain holding each record exactly once.
func TestGroupCommit(t *testing.T) {
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	key := []byte("0123456789abcdef0123456789abcdef")
	if err := rdb.ConfigResetStat(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	const replicas, callers, each = 2, 32, 5
	var wg sync.WaitGroup
	errs := make(chan error, replicas*callers)
	for rep := range replicas {
		l := audit.New(rdb, audit.Options{Key: key})
		for c := range callers {
			wg.Go(func() {
				for i := range each {
					rec := record(rep*10000 + c*100 + i)
					if err := l.Append(ctx, rec); err != nil {
						errs <- err
						return
					}
					// Kept before Append returned: the stream holds it now.
					msgs, err := rdb.XRevRangeN(ctx, "sshca:{audit}:log", "+", "-", int64(replicas*callers*each)).Result()
					if err != nil {
						errs <- err
						return
					}
					found := false
					for _, m := range msgs {
						if s, _ := m.Values["rec"].(string); strings.Contains(s, `"`+rec.Identity+`"`) {
							found = true
							break
						}
					}
					if !found {
						errs <- fmt.Errorf("Append of %s returned before its record was in the stream", rec.Identity)
						return
					}
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	seen := map[string]int{}
	rep, err := audit.New(rdb, audit.Options{Key: key}).Verify(ctx, func(e audit.Entry) { seen[e.Record.Identity]++ })
	if err != nil || rep.Records != replicas*callers*each {
		t.Fatalf("verify: %+v %v; want %d records in one chain", rep, err, replicas*callers*each)
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("%s kept %d times", id, n)
		}
	}
	if len(seen) != replicas*callers*each {
		t.Errorf("%d distinct records, want %d", len(seen), replicas*callers*each)
	}
	scripts := 0
	stats, err := rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(stats, "\n") {
		for _, cmd := range []string{"cmdstat_evalsha:calls=", "cmdstat_eval:calls="} {
			if rest, ok := strings.CutPrefix(strings.TrimSpace(line), cmd); ok {
				n, _ := strconv.Atoi(rest[:strings.IndexByte(rest, ',')])
				scripts += n
			}
		}
	}
	if scripts == 0 || scripts >= replicas*callers*each {
		t.Errorf("%d scripts ran for %d records: appends at the same time were not grouped", scripts, replicas*callers*each)
	}
	t.Logf("%d records in %d scripts", replicas*callers*each, scripts)
}
