package main

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/spf13/cobra"

	"github.com/sshca/sshca/bastion"
	"github.com/sshca/sshca/client"
)

// TestAgentDiscoveryOnSchedule: the agent (--discover) reports on its schedule, on a fake
// clock, one report per interval; an admin's disable order reaches the orders file with the
// next report, "sshca discover apply" (the disable unit) comments the key out, and the
// follow-up report a minute later shows it gone and empties the orders file.
func TestAgentDiscoveryOnSchedule(t *testing.T) {
	h := newDiscoveryHost(t, "")
	base, dir, hostKeyPath, passwd, cfg := h.base, h.dir, h.hostKey, h.passwd, h.sshdConfig
	akf := filepath.Join(h.home, ".ssh", "authorized_keys")
	writeFile(t, akf, readFile(t, h.userKey+".pub"))
	orders := filepath.Join(dir, "state", "orders.json")

	f := agentFlags{server: base, sshdConfig: cfg, discover: agentDiscoverFlags{on: true, every: time.Hour,
		hostKey: hostKeyPath, passwd: passwd, orders: orders}}
	s, err := agentDiscovery(f, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	clk := clockwork.NewFakeClock()
	s.Clock = clk
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()

	// advance moves the fake clock by d in minute steps, each time once the schedule waits
	// again (a report in flight has ended), and returns how many reports the CA accepted.
	advance := func(d time.Duration) uint64 {
		t.Helper()
		wctx, wcancel := context.WithTimeout(ctx, time.Minute)
		defer wcancel()
		for end := clk.Now().Add(d); clk.Now().Before(end); {
			if err := clk.BlockUntilContext(wctx, 1); err != nil {
				t.Fatalf("the schedule does not wait: %v (status %+v)", err, s.Status())
			}
			clk.Advance(time.Minute)
		}
		if err := clk.BlockUntilContext(wctx, 1); err != nil {
			t.Fatalf("the schedule does not wait: %v", err)
		}
		return s.Status().Sent
	}
	admin := devToken(t, base, map[string]any{"sub": "admin", "preferred_username": "admin1", "groups": []string{"sshca-admins"}})
	reported := func() client.DiscoveryReport {
		t.Helper()
		recs, err := apiClient(ctx, base).Discoveries(ctx, admin, 0, nil)
		if err != nil || len(recs) != 1 {
			t.Fatalf("reports at the CA: %v %+v", err, recs)
		}
		return recs[0].Report
	}

	if n := advance(6 * time.Minute); n != 1 { // the first report comes within the jitter
		t.Fatalf("%d reports within the first 6 minutes, want 1 (status %+v)", n, s.Status())
	}
	first := reported()
	if len(first.Keys) != 1 {
		t.Fatalf("reported keys %+v, want alice's one", first.Keys)
	}
	if _, err := os.Stat(orders); !os.IsNotExist(err) {
		t.Errorf("an orders file without orders: %v", err)
	}
	if n := advance(3 * time.Hour); n < 3 || n > 4 {
		t.Errorf("%d reports after 3 h 6 min at a 1 h interval, want 3 or 4", n)
	}
	fp := first.Keys[0].Fingerprint
	if err := apiClient(ctx, base).DisableDiscovered(ctx, admin, client.DiscoveryDisableRequest{Host: "web1.dev.internal", Fingerprint: fp, Reason: "alice left"}); err != nil {
		t.Fatal(err)
	}
	before := s.Status().Sent
	advance(66 * time.Minute)
	o, err := bastion.ReadDisableOrders(orders)
	if err != nil || len(o.Fingerprints) != 1 || o.Fingerprints[0] != fp || o.Host != "web1.dev.internal" {
		t.Fatalf("orders file after the order: %+v %v", o, err)
	}
	if strings.HasPrefix(readFile(t, akf), bastion.DisabledPrefix) {
		t.Fatal("the agent itself rewrote authorized_keys; the disable unit does")
	}
	var out bytes.Buffer
	cmd := &cobra.Command{}
	cmd.SetContext(ctx)
	if err := discoverApply(cmd, &out, discoverApplyFlags{orders: orders, stateDir: filepath.Join(dir, "state"), sshdConfig: cfg, passwd: passwd}); err != nil {
		t.Fatalf("apply: %v\n%s", err, out.String())
	}
	if !strings.HasPrefix(readFile(t, akf), bastion.DisabledPrefix) {
		t.Fatalf("after apply authorized_keys is %q (output %s)", readFile(t, akf), out.String())
	}
	// With an order pending, the next report comes after a minute, not an hour.
	sent := s.Status().Sent
	advance(2 * time.Minute)
	if s.Status().Sent <= sent {
		t.Errorf("no follow-up report within 2 minutes of one that carried orders (%d before the order)", before)
	}
	if got := reported(); len(got.Keys) != 0 {
		t.Errorf("the CA's last report still lists %+v", got.Keys)
	}
	if o, err := bastion.ReadDisableOrders(orders); err != nil || len(o.Fingerprints) != 0 {
		t.Errorf("orders file once the key is gone: %+v %v", o, err)
	}
	// Applying again changes nothing.
	out.Reset()
	if err := discoverApply(cmd, &out, discoverApplyFlags{orders: orders, stateDir: filepath.Join(dir, "state"), sshdConfig: cfg, passwd: passwd}); err != nil || !strings.Contains(out.String(), "no keys ordered") {
		t.Errorf("apply with no orders: %v %s", err, out.String())
	}
}

// TestAgentDiscoveryFlags: --discover without --server, or with an interval under a minute,
// is refused naming the flag.
func TestAgentDiscoveryFlags(t *testing.T) {
	for _, c := range []struct {
		f    agentFlags
		want string
	}{
		{agentFlags{discover: agentDiscoverFlags{on: true, every: time.Hour}}, "--server"},
		{agentFlags{server: "https://ca", discover: agentDiscoverFlags{on: true, every: time.Second}}, "--discover-every"},
	} {
		if _, err := agentDiscovery(c.f, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want an error naming %s", c.f.discover, err, c.want)
		}
	}
	if s, err := agentDiscovery(agentFlags{}, nil); s != nil || err != nil {
		t.Errorf("without --discover: %v %v", s, err)
	}
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("`--discover-every` \\(default ([0-9a-z]+)\\)").FindSubmatch(bytes.Join(bytes.Fields(readme), []byte(" ")))
	if m == nil {
		t.Fatal("README no longer gives the default of --discover-every")
	}
	if d, err := time.ParseDuration(string(m[1])); err != nil || d != DefaultDiscoverEvery {
		t.Errorf("README: --discover-every defaults to %s, DefaultDiscoverEvery is %v", m[1], DefaultDiscoverEvery)
	}
}
