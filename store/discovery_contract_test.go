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

		// Disable orders: per host, a set, dropped one at a time.
		for _, o := range [][2]string{{"web1", "SHA256:b"}, {"web1", "SHA256:a"}, {"web1", "SHA256:b"}, {"web2", "SHA256:c"}} {
			if err := s.OrderDisable(ctx, o[0], o[1]); err != nil {
				t.Fatal(err)
			}
		}
		if got, err := s.DisableOrders(ctx, "web1"); err != nil || !cmp.Equal(got, []string{"SHA256:a", "SHA256:b"}) {
			t.Errorf("web1 orders %v %v", got, err)
		}
		if err := s.DoneDisable(ctx, "web1", "SHA256:a"); err != nil {
			t.Fatal(err)
		}
		if got, _ := s.DisableOrders(ctx, "web1"); !cmp.Equal(got, []string{"SHA256:b"}) {
			t.Errorf("web1 orders after one done: %v", got)
		}
		if got, _ := s.DisableOrders(ctx, "web2"); !cmp.Equal(got, []string{"SHA256:c"}) {
			t.Errorf("web2 orders: %v", got)
		}
		if got, err := s.DisableOrders(ctx, "web3"); err != nil || len(got) != 0 {
			t.Errorf("a host without orders: %v %v", got, err)
		}
	})
}
