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

// shipperHealth shows the recording shipper (--ship-recordings). A CA that does not take the
// recordings is no problem for /healthz, which is about the KRL: the agent fails static (the
// recordings stay on the host and are sent when the CA is back) and says so here and in the
// metrics, with how far behind it is.
type shipperHealth struct{ s *bastion.RecordShipper }

func (h shipperHealth) collectors() []prometheus.Collector {
	st := func(f func(bastion.ShipperStatus) float64) func() float64 {
		return func() float64 { return f(h.s.Status()) }
	}
	return []prometheus.Collector{
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "sshca_bastion_recording_batches_shipped_total", Help: "Batches of recorded lines the CA took since the agent started (--ship-recordings)."},
			st(func(s bastion.ShipperStatus) float64 { return float64(s.Shipped) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "sshca_bastion_recording_ship_failures_total", Help: "Rounds in which shipping a recording failed, since the agent started (--ship-recordings); the recording stays and is retried."},
			st(func(s bastion.ShipperStatus) float64 { return float64(s.Failed) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sshca_bastion_recording_backlog_bytes", Help: "Bytes of recordings the CA does not have yet, as of the shipper's last round."},
			st(func(s bastion.ShipperStatus) float64 { return float64(s.Backlog) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sshca_bastion_recordings_refused", Help: "Recordings the CA refused (their content); they stay on this host only."},
			st(func(s bastion.ShipperStatus) float64 { return float64(s.Refused) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sshca_bastion_recording_last_shipped_timestamp_seconds", Help: "Unix time the CA last took a batch of recorded lines; 0 not since the agent started."},
			st(func(s bastion.ShipperStatus) float64 {
				if s.LastShipped.IsZero() {
					return 0
				}
				return float64(s.LastShipped.UnixNano()) / 1e9
			})),
	}
}

func (h shipperHealth) health() (string, any, []string) {
	s := h.s.Status()
	detail := map[string]any{"shipped": s.Shipped, "failed": s.Failed, "refused": s.Refused,
		"backlog_bytes": s.Backlog, "backlog_recordings": s.BacklogRecordings}
	for name, t := range map[string]time.Time{"last_shipped": s.LastShipped, "last_round": s.LastRound} {
		if !t.IsZero() {
			detail[name] = t.UTC().Format(time.RFC3339)
		}
	}
	if s.LastError != "" {
		detail["last_error"] = s.LastError
		detail["state"] = "failing: the recordings stay on this host and are shipped when the CA takes them again"
	}
	return "recording_shipper", detail, nil
}
