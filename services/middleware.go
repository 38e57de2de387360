package services

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sshca/sshca/ca"
)

// Middleware decorates a Service.
type Middleware func(Service) Service

// LoggingMiddleware logs every issue request with its outcome and duration. It never logs the
// token or the key, only the key's fingerprint through the authority's own records.
func LoggingMiddleware(log *slog.Logger) Middleware {
	return func(next Service) Service { return logging{next, log} }
}

type logging struct {
	Service
	log *slog.Logger
}

func (m logging) IssueRequest(ctx context.Context, token string, req ca.CertRequest) (issued ca.Issued, err error) {
	defer func(begin time.Time) {
		attrs := []any{"kind", req.Kind, "source_ip", req.SourceIP, "took", time.Since(begin)}
		if err != nil {
			m.log.InfoContext(ctx, "issue", append(attrs, "result", ca.KindOf(err).String(), "err", err)...)
			return
		}
		m.log.InfoContext(ctx, "issue", append(attrs, "result", "issued", "serial", issued.Record.Serial, "key_id", issued.Record.KeyID)...)
	}(time.Now())
	return m.Service.IssueRequest(ctx, token, req)
}

// Metrics are the service's Prometheus collectors.
type Metrics struct {
	Requests *prometheus.CounterVec
	Duration *prometheus.HistogramVec
}

// NewMetrics registers the collectors with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sshca_issue_requests_total",
			Help: "Certificate requests by kind and result (issued, invalid, unauthenticated, denied, unavailable, internal).",
		}, []string{"kind", "result"}),
		Duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "sshca_issue_duration_seconds",
			Help:    "Time to answer a certificate request.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
		}, []string{"kind"}),
	}
	reg.MustRegister(m.Requests, m.Duration)
	return m
}

// InstrumentingMiddleware counts and times issue requests.
func InstrumentingMiddleware(m *Metrics) Middleware {
	return func(next Service) Service { return instrumenting{next, m} }
}

type instrumenting struct {
	Service
	m *Metrics
}

func (mw instrumenting) IssueRequest(ctx context.Context, token string, req ca.CertRequest) (issued ca.Issued, err error) {
	defer func(begin time.Time) {
		result := "issued"
		if err != nil {
			result = ca.KindOf(err).String()
		}
		mw.m.Requests.WithLabelValues(string(req.Kind), result).Inc()
		mw.m.Duration.WithLabelValues(string(req.Kind)).Observe(time.Since(begin).Seconds())
	}(time.Now())
	return mw.Service.IssueRequest(ctx, token, req)
}
