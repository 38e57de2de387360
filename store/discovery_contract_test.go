package store_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
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

// TestDiscoveryPages: GET /v1/discovery's pages on every backend: 25 hosts read 4 at a time by
// host name; between pages a host is added after the position (listed), one before it (not),
// and a listed host reports again (not listed twice): each host reported throughout is listed
// once, in order, and every page but the last names its last host as the next position.
func TestDiscoveryPages(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newStore newStore) {
		ctx := context.Background()
		s := newStore(t, &clock{t: time.Now()})
		put := func(host string) {
			t.Helper()
			if err := s.PutDiscovery(ctx, ca.DiscoveryRecord{Host: host, Received: time.Now().UTC().Truncate(time.Second), Report: json.RawMessage(`{"host":"` + host + `"}`)}); err != nil {
				t.Fatal(err)
			}
		}
		var want []string
		for i := range 25 {
			h := fmt.Sprintf("web%02d.example.com", i)
			put(h)
			want = append(want, h)
		}
		var got []string
		after := ""
		for pages := 1; ; pages++ {
			page, next, err := s.DiscoveryPage(ctx, after, 4)
			if err != nil || len(page) > 4 || pages > 10 {
				t.Fatalf("page %d: %d, %v", pages, len(page), err)
			}
			for _, r := range page {
				got = append(got, r.Host)
			}
			if pages == 2 {
				put("zz.example.com")
				put("aa.example.com")
				put(page[0].Host)
			}
			if next == "" {
				break
			}
			if next != page[len(page)-1].Host {
				t.Fatalf("page %d: next %q, want its last host", pages, next)
			}
			after = next
		}
		if diff := cmp.Diff(append(want, "zz.example.com"), got); diff != "" {
			t.Errorf("hosts over the pages (-want +got):\n%s", diff)
		}
		if all, next, err := s.DiscoveryPage(ctx, "", 0); err != nil || next != "" || len(all) != 27 || all[0].Host != "aa.example.com" {
			t.Errorf("every host at once: %d, next %q, %v", len(all), next, err)
		}
	})
}

// TestDiscoveryIndexRebuilt: hosts that a replica without the index of names reported (in the
// hash alone) are listed by pages all the same: the index is filled from the hash when it
// holds fewer names.
func TestDiscoveryIndexRebuilt(t *testing.T) {
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	s := store.NewRedis(rdb, store.RedisOptions{})
	ctx := context.Background()
	keys := store.Keys{}
	for i := range 30 {
		h := fmt.Sprintf("old%02d", i)
		rdb.HSet(ctx, keys.Discovery(), h, `{"host":"`+h+`","received":"2026-11-30T00:00:00Z","report":{}}`)
	}
	if err := s.PutDiscovery(ctx, ca.DiscoveryRecord{Host: "new", Report: json.RawMessage(`{}`)}); err != nil {
		t.Fatal(err)
	}
	n, after := 0, ""
	for {
		page, next, err := s.DiscoveryPage(ctx, after, 7)
		if err != nil {
			t.Fatal(err)
		}
		n += len(page)
		if next == "" {
			break
		}
		after = next
	}
	if n != 31 {
		t.Errorf("%d hosts listed, want 31 (30 in the hash alone)", n)
	}
}
