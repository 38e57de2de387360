package audit_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
)

// TestAppendSurvivesLostReply: when the answer to an append's script is lost (go-redis sends
// the script again, as serve's client does after a read timeout), the second run finds the
// head that the first one wrote, this very batch's: the record is in the chain once, not
// appended a second time after it. The records before and after it are kept once each, and
// the chain verifies. Against redis-server behind a proxy that drops that one answer.
func TestAppendSurvivesLostReply(t *testing.T) {
	ctx := context.Background()
	srv := testenv.StartRedis(t)
	proxy := testenv.DropReply(t, srv.Addr)
	rdb := proxy.RetryingClient(t)
	key := []byte("0123456789abcdef0123456789abcdef")
	for _, marked := range []bool{false, true} {
		prefix := fmt.Sprintf("lost%v", marked)
		o := audit.Options{Key: key, Prefix: prefix}
		var st *store.Redis
		if marked { // serve's: each append checks and bumps the {audit} generation mark
			st = store.NewRedis(rdb, store.RedisOptions{Prefix: prefix})
			o.Marks = st
		}
		l := audit.New(rdb, o)
		ids := []string{prefix + "-before@idp", prefix + "-lost-reply@idp", prefix + "-after@idp"}
		for i, id := range ids {
			if i == 1 {
				proxy.Arm(id)
			}
			if err := l.Append(ctx, ca.AuditRecord{Action: "issue", Outcome: "issued", Identity: id}); err != nil {
				t.Fatalf("append %s: %v", id, err)
			}
			if i == 1 && proxy.Armed() {
				t.Fatal("the proxy dropped no answer: the test does not test the retry")
			}
		}
		seen := map[string]int{}
		rep, err := audit.New(rdb, audit.Options{Key: key, Prefix: prefix}).Verify(ctx, func(e audit.Entry) { seen[e.Record.Identity]++ })
		if err != nil {
			t.Fatalf("verify: %+v %v", rep, err)
		}
		for _, id := range ids {
			if seen[id] != 1 {
				t.Errorf("%s is in the chain %d times, want once", id, seen[id])
			}
		}
		if st != nil {
			if err := st.CheckState(ctx); err != nil {
				t.Errorf("store state after the lost answer: %v", err)
			}
		}
	}
}
