package policies_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/policies"
)

func copyPolicy(t *testing.T) string {
	dir := t.TempDir()
	for _, f := range []string{"sshca.rego", "sshca_test.rego", "data.json"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testenv.Eventually(t, 10*time.Second, what, cond)
}

// TestHotReload: a changed data file is picked up; a broken policy, or one whose Rego tests
// fail, is refused and the last good one stays in force, visibly.
func TestHotReload(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := copyPolicy(t)
	reg := prometheus.NewRegistry()
	r, err := policies.NewReloader(ctx, dir, nil, policies.WithMetrics(reg))
	if err != nil {
		t.Fatal(err)
	}
	go r.Watch(ctx)
	time.Sleep(100 * time.Millisecond) // the watcher is set up
	in := userInput([]string{"dba"}, "postgres")
	grants := func() bool { d, err := r.Decide(ctx, in); return err == nil && d.Allow }
	if grants() {
		t.Fatal("postgres granted before the change")
	}
	first := r.Revision()

	data, _ := os.ReadFile(filepath.Join(dir, "data.json"))
	changed := strings.Replace(string(data), `"admins": ["admin"],`, `"admins": ["admin"], "dba": ["postgres"],`, 1)
	if err := os.WriteFile(filepath.Join(dir, "data.json"), []byte(changed), 0o600); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the new data is in force", grants)
	second := r.Revision()
	if second == first {
		t.Error("revision unchanged")
	}

	// Broken Rego: refused.
	if err := os.WriteFile(filepath.Join(dir, "broken.rego"), []byte("package sshca\n\nimport rego.v1\n\nx := {"), 0o600); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the broken policy is refused", func() bool { _, err := r.Status(); return err != nil })
	if !grants() || r.Revision() != second {
		t.Fatal("the last good policy is not in force")
	}
	if got := testutil.ToFloat64(prometheusGauge(t, reg, "sshca_policy_reload_failing")); got != 1 {
		t.Errorf("sshca_policy_reload_failing = %v", got)
	}
	os.Remove(filepath.Join(dir, "broken.rego"))
	eventually(t, "the fixed policy is back", func() bool { _, err := r.Status(); return err == nil })

	// Valid Rego whose tests fail: refused too.
	bad := strings.Replace(readOrFail(t, filepath.Join(dir, "sshca.rego")), `"allow": count(deny) == 0,`, `"allow": true,`, 1)
	if err := os.WriteFile(filepath.Join(dir, "sshca.rego"), []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a policy failing its tests is refused", func() bool {
		_, err := r.Status()
		return err != nil && strings.Contains(err.Error(), "Rego tests failed")
	})
	if d, _ := r.Decide(ctx, userInput(nil, "root")); d.Allow {
		t.Fatal("the refused allow-all policy is in force")
	}
}

func readOrFail(t *testing.T, p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func prometheusGauge(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			g := prometheus.NewGauge(prometheus.GaugeOpts{Name: name})
			g.Set(mf.GetMetric()[0].GetGauge().GetValue())
			return g
		}
	}
	t.Fatalf("metric %s not found", name)
	return nil
}

// TestWatchReloadsOnItsClock: a changed file is put in force reloadDebounce (200 ms) after its
// event on the reloader's clock (a clockwork.FakeClock that only the test moves), not before,
// however much real time passes.
func TestWatchReloadsOnItsClock(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// A policy of one rule: a reload of the shipped one (its Rego tests, the self-check) takes
	// seconds on a loaded machine, and what is tested here is when it starts.
	dir := t.TempDir()
	for name, content := range map[string]string{
		"sshca.rego": "package sshca\n\nimport rego.v1\n\ndecision := {\"allow\": false, \"reasons\": [data.reason]}\n",
		"data.json":  `{"reason": "first"}`,
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	r, clk := clockedReloader(t, ctx, dir)
	startWatch(t, ctx, cancel, r)
	first := r.Revision()
	changed := `{"reason": "second"}`
	// Renamed into place: one event for data.json (the temporary's name is ignored). Again
	// until the watch, set up in the background, sees one and arms its timer.
	replace := func() {
		tmp := filepath.Join(dir, ".data.json.tmp")
		if err := os.WriteFile(tmp, []byte(changed), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "data.json")); err != nil {
			t.Fatal(err)
		}
	}
	armed := func() bool {
		wctx, wcancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer wcancel()
		return clk.BlockUntilContext(wctx, 1) == nil
	}
	deadline := time.Now().Add(10 * time.Second)
	for replace(); !armed(); replace() {
		if time.Now().After(deadline) {
			t.Fatal("Watch armed no timer on its clock after the data file changed")
		}
	}
	time.Sleep(100 * time.Millisecond) // real time passes: nothing may happen
	clk.Advance(199 * time.Millisecond)
	time.Sleep(100 * time.Millisecond)
	if r.Revision() != first {
		t.Fatal("reloaded before 200 ms had passed on the reloader's clock")
	}
	clk.Advance(time.Millisecond)
	eventually(t, "the new data is in force 200 ms after the change", func() bool { return r.Revision() != first })
	if d, err := r.Decide(ctx, userInput(nil, "root")); err != nil || !slices.Equal(d.Reasons, []string{"second"}) {
		t.Errorf("decision after the reload: %+v %v, want the new data's reason", d, err)
	}
}

// TestWatchReloadsChangeMadeBeforeIt: a file changed after the policy was loaded but before
// Watch set up its watch sends the watch no event; Watch still reloads it, reloadDebounce
// after it starts on the reloader's clock (as sshca serve, which starts watching once it is
// ready, must not lose a change written in between).
func TestWatchReloadsChangeMadeBeforeIt(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := copyPolicy(t)
	r, clk := clockedReloader(t, ctx, dir)
	if err := os.WriteFile(filepath.Join(dir, "broken.rego"), []byte("package sshca\n\ndecision := {"), 0o600); err != nil {
		t.Fatal(err)
	}
	startWatch(t, ctx, cancel, r)
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := clk.BlockUntilContext(wctx, 1); err != nil {
		t.Fatalf("Watch armed no reload for a change made before it started: %v", err)
	}
	clk.Advance(reloadDebounceForTest)
	testenv.Eventually(t, time.Minute, "the change made before the watch is refused", func() bool {
		_, err := r.Status()
		return err != nil
	})
}

// TestWatchNoChangeNoReload: without a change since the load, Watch arms nothing when it starts.
func TestWatchNoChangeNoReload(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := copyPolicy(t)
	r, clk := clockedReloader(t, ctx, dir)
	startWatch(t, ctx, cancel, r)
	wctx, wcancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer wcancel()
	if err := clk.BlockUntilContext(wctx, 1); err == nil {
		t.Fatal("Watch armed a reload with no change since the load")
	}
}

const reloadDebounceForTest = 200 * time.Millisecond

// clockedReloader loads the policy in dir into a reloader on a fake clock that only the test
// moves.
func clockedReloader(t *testing.T, ctx context.Context, dir string) (*policies.Reloader, *clockwork.FakeClock) {
	t.Helper()
	clk := clockwork.NewFakeClock()
	r, err := policies.NewReloader(ctx, dir, nil, policies.WithClock(clk))
	if err != nil {
		t.Fatal(err)
	}
	return r, clk
}

// startWatch runs r.Watch(ctx) until the end of the test, then cancels it and waits for it.
func startWatch(t *testing.T, ctx context.Context, cancel context.CancelFunc, r *policies.Reloader) {
	done := make(chan error, 1)
	go func() { done <- r.Watch(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// endlessPolicy writes a policy of one rule with two Rego tests: test_quick, which passes at
// once, and, when endless, test_forever, which would run for hours (10^10 steps of every,
// allocating nothing).
func endlessPolicy(t *testing.T, dir string, endless bool) {
	t.Helper()
	files := map[string]string{
		"sshca.rego":      "package sshca\n\nimport rego.v1\n\ndecision := {\"allow\": false, \"reasons\": [\"no\"]}\n",
		"sshca_test.rego": "package sshca\n\nimport rego.v1\n\ntest_quick if not decision.allow\n",
	}
	if endless {
		files["forever_test.rego"] = "package sshca\n\nimport rego.v1\n\ntest_forever if {\n\ts := numbers.range(1, 100000)\n\tevery a in s {\n\t\tevery b in s {\n\t\t\ta + b > 0\n\t\t}\n\t}\n}\n"
	} else {
		os.Remove(filepath.Join(dir, "forever_test.rego"))
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// TestReloadRefusesEndlessRegoTest: a policy with a Rego test that never ends is refused, at
// start and at reload, once the test has run for the bound on each test, with an error naming
// the test and the bound (not the test that passed); the policy in force stays. The same
// directory without that test is put in force.
func TestReloadRefusesEndlessRegoTest(t *testing.T) {
	ctx := context.Background()
	const bound = 300 * time.Millisecond
	dir := t.TempDir()
	endlessPolicy(t, dir, true)
	wantNamed := func(err error) {
		t.Helper()
		if err == nil {
			t.Fatal("a policy with an endless Rego test was accepted")
		}
		msg := err.Error()
		if !strings.Contains(msg, "data.sshca.test_forever: did not finish within 300ms") || strings.Contains(msg, "test_quick") {
			t.Errorf("error = %q, want it to name data.sshca.test_forever and the bound (300ms), not test_quick", msg)
		}
	}
	_, err := policies.NewReloader(ctx, dir, nil, policies.WithTestTimeout(bound))
	wantNamed(err)

	endlessPolicy(t, dir, false)
	r, err := policies.NewReloader(ctx, dir, nil, policies.WithTestTimeout(bound))
	if err != nil {
		t.Fatalf("without the endless test: %v", err)
	}
	good := r.Revision()
	endlessPolicy(t, dir, true)
	wantNamed(r.Reload(ctx))
	if r.Revision() != good {
		t.Error("the refused policy is in force")
	}
	endlessPolicy(t, dir, false)
	if err := r.Reload(ctx); err != nil {
		t.Errorf("reload without the endless test: %v", err)
	}
}

// TestTestWithinStopsWithContext: when ctx ends before every Rego test has run, the policy is
// not tested: an error, not the silence of OPA's runner (which skips the tests left, so that a
// run stopped early had no failures, or "no tests", which a reload lets pass).
func TestTestWithinStopsWithContext(t *testing.T) {
	dir := t.TempDir()
	endlessPolicy(t, dir, true)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err := policies.TestWithin(ctx, dir, time.Hour)
	if err == nil || !strings.Contains(err.Error(), "before all had run") {
		t.Errorf("stopped while test_forever ran: %v, want an error saying not all tests ran", err)
	}
	done, cancelDone := context.WithCancel(context.Background())
	cancelDone()
	if err := policies.TestWithin(done, dir, time.Hour); err == nil || strings.Contains(err.Error(), "no Rego tests") {
		t.Errorf("with an ended context: %v, want an error saying not all tests ran", err)
	}
}
