package services_test

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/services"
)

// TestPolicyFaults: faults are counted by field, every field exported at 0 before its first;
// the details name the time and field of the
// last one, never its value.
func TestPolicyFaults(t *testing.T) {
	now := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	reg := prometheus.NewRegistry()
	p := services.NewPolicyFaults(reg, func() time.Time { return now })
	if d := p.Details(); len(d) != 0 {
		t.Fatalf("details before any fault: %v", d)
	}
	p.PolicyFault(ca.PolicyFault{Field: "critical_options.source-address", Value: "10.0.0.1/8"})
	now = now.Add(time.Minute)
	p.PolicyFault(ca.PolicyFault{Field: "critical_options.source-address", Value: "10.0.0.1/8"})
	p.PolicyFault(ca.PolicyFault{Field: "principals", Value: "secret-looking-value"})
	want := `
# HELP sshca_policy_faults_total Allowed decisions the service refused to sign because sshd would refuse or misread the certificate, by field (principals, ttl_seconds, extensions, critical_options, critical_options.source-address, critical_options.force-command).
# TYPE sshca_policy_faults_total counter
sshca_policy_faults_total{field="critical_options"} 0
sshca_policy_faults_total{field="critical_options.force-command"} 0
sshca_policy_faults_total{field="critical_options.source-address"} 2
sshca_policy_faults_total{field="extensions"} 0
sshca_policy_faults_total{field="principals"} 1
sshca_policy_faults_total{field="ttl_seconds"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "sshca_policy_faults_total"); err != nil {
		t.Error(err)
	}
	d := p.Details()
	if d["policy_last_fault"] != "2026-11-25T10:01:00Z in principals" {
		t.Errorf("details %v", d)
	}
	for _, v := range d {
		if strings.Contains(v, "secret-looking-value") {
			t.Errorf("details show the value: %v", d)
		}
	}
}
