package audit_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/ca"
)

// TestInTimeOrder: entries of several stripes are merged by record time, each stripe keeping
// its chain order even where its times go backwards (a replica's clock stepped back), and one
// stripe's entries come back untouched.
func TestInTimeOrder(t *testing.T) {
	at := func(stripe int, seq uint64, sec int64) audit.Entry {
		return audit.Entry{Stripe: stripe, Seq: seq, Record: ca.AuditRecord{Time: time.Unix(sec, 0)}}
	}
	in := []audit.Entry{
		at(0, 1, 10), at(0, 2, 30), at(0, 3, 25), at(0, 4, 40), // 25 after 30: the chain's order stands
		at(1, 1, 5), at(1, 2, 30), at(1, 3, 35),
		at(2, 1, 50),
	}
	got := audit.InTimeOrder(in)
	var ids []string
	for _, e := range got {
		ids = append(ids, fmt.Sprintf("%d:%d", e.Stripe, e.Seq))
	}
	want := "[1:1 0:1 0:2 0:3 1:2 1:3 0:4 2:1]"
	if fmt.Sprint(ids) != want {
		t.Errorf("order %v, want %s", ids, want)
	}
	one := []audit.Entry{at(3, 1, 9), at(3, 2, 1)}
	if got := audit.InTimeOrder(one); got[0].Seq != 1 || got[1].Seq != 2 {
		t.Errorf("one stripe reordered: %+v", got)
	}
}
