package store_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sshca/sshca/ca"
)

// TestDiscoveryContract: the last report of each host on every backend: a new report
// replaces the host's old one and leaves other hosts' alone; the list is by host name, with
// the report's bytes and the time received intact.
func TestDiscoveryContract(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newStore newStore) {
		ctx := context.Background()
		s := newStore(t, &clock{t: time.Now()})
		if got, err := s.Discoveries(ctx); err != nil || len(got) != 0 {
			t.Fatalf("empty store: %v %v", got, err)
		}
		t0 := time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)
		put := func(host string, at time.Time, report string) ca.DiscoveryRecord {
			r := ca.DiscoveryRecord{Host: host, Received: at, Report: json.RawMessage(report)}
			if err := s.PutDiscovery(ctx, r); err != nil {
				t.Fatal(err)
			}
			return r
		}
		put("web2", t0, `{"host":"web2","keys":[]}`)
		put("web1", t0, `{"host":"web1","keys":[{"account":"old"}]}`)
		w1 := put("web1", t0.Add(time.Hour), `{"host":"web1","keys":[{"account":"new"}]}`)
		w2 := ca.DiscoveryRecord{Host: "web2", Received: t0, Report: json.RawMessage(`{"host":"web2","keys":[]}`)}
		got, err := s.Discoveries(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]ca.DiscoveryRecord{w1, w2}, got); diff != "" {
			t.Errorf("(-want +got):\n%s", diff)
		}
	})
}
