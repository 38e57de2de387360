package services

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sshca/sshca/ca"
)

// PolicyFaults observes the Authority's policy faults (decisions it refused to sign because
// sshd would refuse or misread the certificate): it counts them by field in
// sshca_policy_faults_total{field} and remembers the last one for /readyz details, which say
// when and in which field, never the value (that is in the error log).
type PolicyFaults struct {
	total *prometheus.CounterVec
	now   func() time.Time

	mu    sync.Mutex
	last  time.Time
	field string
}

var _ ca.FaultObserver = (*PolicyFaults)(nil)

// NewPolicyFaults registers sshca_policy_faults_total with reg; now is the clock for the time
// of the last fault.
func NewPolicyFaults(reg prometheus.Registerer, now func() time.Time) *PolicyFaults {
	p := &PolicyFaults{
		total: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sshca_policy_faults_total",
			Help: "Allowed decisions the service refused to sign because sshd would refuse or misread the certificate, by field (principals, ttl_seconds, extensions, critical_options, critical_options.source-address, critical_options.force-command).",
		}, []string{"field"}),
		now: now,
	}
	for _, f := range []string{"principals", "ttl_seconds", "extensions", "critical_options", "critical_options.source-address", "critical_options.force-command"} {
		p.total.WithLabelValues(f) // exported at 0 before the first fault, so an alert on it can fire
	}
	reg.MustRegister(p.total)
	return p
}

// PolicyFault counts f and remembers when it happened and in which field.
func (p *PolicyFaults) PolicyFault(f ca.PolicyFault) {
	p.total.WithLabelValues(f.Field).Inc()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.last, p.field = p.now(), f.Field
}

// Details are /readyz details: {"policy_last_fault": "<RFC3339 time> in <field>"} once a fault
// happened, else nothing. A fault does not make the service unready: the policy needs fixing,
// and every other request is still served.
func (p *PolicyFaults) Details() map[string]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.last.IsZero() {
		return map[string]string{}
	}
	return map[string]string{"policy_last_fault": p.last.UTC().Format(time.RFC3339) + " in " + p.field}
}
