package policies_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sshca/sshca/policies"
)

// TestTimedObservesByEvaluator: each decision is one sample of sshca_policy_decision_seconds
// under its evaluator's label (compiled, or interpreted for topdown), the series is exported
// at zero before the first decision, and the decision itself passes through unchanged.
func TestTimedObservesByEvaluator(t *testing.T) {
	ctx := context.Background()
	for _, tt := range []struct {
		label string
		opts  []policies.Option
	}{{"compiled", nil}, {"interpreted", []policies.Option{policies.Interpreted()}}} {
		e, err := policies.LoadFS(ctx, policies.Embedded, tt.opts...)
		if err != nil {
			t.Fatal(err)
		}
		reg := prometheus.NewPedanticRegistry()
		p := policies.Timed(e, reg)
		count := func(want uint64) {
			t.Helper()
			mfs, err := reg.Gather()
			if err != nil {
				t.Fatal(err)
			}
			var seen []string
			for _, mf := range mfs {
				for _, m := range mf.GetMetric() {
					l := m.GetLabel()[0]
					seen = append(seen, fmt.Sprintf("%s{%s=%q} %d", mf.GetName(), l.GetName(), l.GetValue(), m.GetHistogram().GetSampleCount()))
				}
			}
			w := fmt.Sprintf("sshca_policy_decision_seconds{evaluator=%q} %d", tt.label, want)
			if len(seen) != 1 || seen[0] != w {
				t.Errorf("samples %q, want [%s]", seen, w)
			}
		}
		count(0)
		want, err := e.Decide(ctx, userInput(nil))
		if err != nil {
			t.Fatal(err)
		}
		got, err := p.Decide(ctx, userInput(nil))
		if err != nil || !got.Allow || got.Revision != want.Revision || strings.Join(got.Principals, ",") != strings.Join(want.Principals, ",") {
			t.Errorf("%s: timed decision %+v, %v; want %+v", tt.label, got, err, want)
		}
		count(1)
		if p.Revision() != e.Revision() || p.Mode() != e.Mode() {
			t.Errorf("%s: Timed hides the policy's revision or mode", tt.label)
		}
		if n := testutil.CollectAndCount(reg, "sshca_policy_decision_seconds"); n != 1 {
			t.Errorf("%s: %d series, want 1", tt.label, n)
		}
	}
}
