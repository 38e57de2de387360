package main

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sshca/sshca/bastion"
)

// agentHealthPart is an optional part of the bastion agent (scheduled discovery, the check of
// recorded accounts' start-up files) as /healthz and /metrics show it: its collectors, read at
// scrape time, and its /healthz detail under name, with the problems that turn /healthz 503.
type agentHealthPart interface {
	collectors() []prometheus.Collector
	health() (name string, detail any, problems []string)
}

// discoveryHealth shows the discovery schedule. A failed report is no problem for /healthz:
// the KRL, which /healthz is about, does not depend on it; the metrics say so.
type discoveryHealth struct{ s *bastion.DiscoverySchedule }

func (d discoveryHealth) collectors() []prometheus.Collector {
	st := func(f func(bastion.DiscoveryStatus) float64) func() float64 {
		return func() float64 { return f(d.s.Status()) }
	}
	return []prometheus.Collector{
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "sshca_bastion_discovery_reports_total", Help: "Discovery reports the CA accepted since the agent started (--discover)."},
			st(func(s bastion.DiscoveryStatus) float64 { return float64(s.Sent) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "sshca_bastion_discovery_failures_total", Help: "Discovery reports that could not be made or sent since the agent started (--discover)."},
			st(func(s bastion.DiscoveryStatus) float64 { return float64(s.Failed) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sshca_bastion_discovery_last_report_timestamp_seconds", Help: "Unix time of the last discovery report the CA accepted; 0 before the first."},
			st(func(s bastion.DiscoveryStatus) float64 {
				if s.LastSent.IsZero() {
					return 0
				}
				return float64(s.LastSent.UnixNano()) / 1e9
			})),
	}
}

func (d discoveryHealth) health() (string, any, []string) {
	s := d.s.Status()
	detail := map[string]any{"every": s.Every.String(), "sent": s.Sent, "failed": s.Failed}
	if !s.LastSent.IsZero() {
		detail["last_report"] = s.LastSent.UTC().Format(time.RFC3339)
	}
	if !s.Next.IsZero() {
		detail["next"] = s.Next.UTC().Format(time.RFC3339)
	}
	if s.LastError != "" {
		detail["last_error"] = s.LastError
	}
	return "discovery", detail, nil
}
