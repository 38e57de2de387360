package policies

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sshca/sshca/ca"
)

// Loaded is what the server needs of a loaded policy: decisions, a readiness check, the
// revision in force and the evaluator mode ("compiled" or "topdown", see ParseEvaluator).
type Loaded interface {
	ca.Policy
	ca.Checker
	Revision() string
	Mode() string
}

var (
	_ Loaded = (*Engine)(nil)
	_ Loaded = (*Reloader)(nil)
)

// Timed is p with the time of each decision observed in the histogram
// sshca_policy_decision_seconds (seconds, label evaluator: "compiled", or "interpreted" for
// OPA's topdown), registered with reg; reg panics if it is registered twice. The series of
// p's current evaluator is exported at zero before the first decision, so dashboards see it.
func Timed(p Loaded, reg prometheus.Registerer) Loaded {
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "sshca_policy_decision_seconds",
		Help:    "Time to evaluate the policy for one request, by evaluator (compiled, or interpreted by OPA's topdown).",
		Buckets: []float64{.00001, .000025, .00005, .0001, .00025, .0005, .001, .0025, .01},
	}, []string{"evaluator"})
	reg.MustRegister(h)
	h.WithLabelValues(evaluatorLabel(p.Mode()))
	return timed{p, h}
}

// timed observes how long each decision takes, by evaluator.
type timed struct {
	Loaded
	seconds *prometheus.HistogramVec
}

// evaluatorLabel is the evaluator label of a policy mode: compiled, or interpreted (topdown).
func evaluatorLabel(mode string) string {
	if mode == "compiled" {
		return mode
	}
	return "interpreted"
}

func (t timed) Decide(ctx context.Context, in ca.PolicyInput) (ca.Decision, error) {
	begin := time.Now()
	d, err := t.Loaded.Decide(ctx, in)
	// Labelled after the decision: a reload may have changed the evaluator meanwhile.
	t.seconds.WithLabelValues(evaluatorLabel(t.Mode())).Observe(time.Since(begin).Seconds())
	return d, err
}
