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

// KeyAdminMiddleware decorates a KeyAdmin. A nil KeyAdmin (no key administration) stays nil.
type KeyAdminMiddleware func(KeyAdmin) KeyAdmin

// LoggingMiddleware logs every call of the Service with its outcome and duration, at info
// level: a 5xx is logged at error level, with its cause, by the transport (encodeResponse),
// once. It never logs the token or the key, only the key's fingerprint through the
// authority's own records.
func LoggingMiddleware(log *slog.Logger) Middleware {
	return func(next Service) Service { return logging{next, log} }
}

type logging struct {
	Service
	log *slog.Logger
}

// logCall logs one call: msg, its outcome (the error's kind, or ok) and duration.
func logCall(ctx context.Context, log *slog.Logger, msg string, begin time.Time, err error, attrs ...any) {
	attrs = append(attrs, "took", time.Since(begin))
	if err != nil {
		log.InfoContext(ctx, msg, append(attrs, "result", ca.KindOf(err).String(), "err", err)...)
		return
	}
	log.InfoContext(ctx, msg, append(attrs, "result", "ok")...)
}

// IssueRequest and Renew write the one info line of a certificate decision ("issue",
// "renew"): what an operator needs to find the certificate and its request, without the
// authority's own line (at debug level) or the audit record's (at debug level; the audit log
// itself is the durable trace). A refusal carries the error's kind and its message.
func (m logging) IssueRequest(ctx context.Context, token string, req ca.CertRequest) (issued ca.Issued, err error) {
	defer func(begin time.Time) {
		logIssued(ctx, m.log, "issue", begin, issued.Record, err, slog.String("kind", string(req.Kind)), slog.String("source_ip", req.SourceIP))
	}(time.Now())
	return m.Service.IssueRequest(ctx, token, req)
}

func (m logging) Renew(ctx context.Context, token string) (issued ca.Issued, err error) {
	defer func(begin time.Time) { logIssued(ctx, m.log, "renew", begin, issued.Record, err) }(time.Now())
	return m.Service.Renew(ctx, token)
}

// logIssued logs one certificate decision: on success the record's identity, serial, key ID,
// principals, validity end (RFC 3339), ticket, reason, access request and policy revision; on
// failure the error. took is the time since begin. The attributes are typed (slog.Attr), so
// that none is boxed into an interface.
func logIssued(ctx context.Context, log *slog.Logger, msg string, begin time.Time, rec ca.Certificate, err error, attrs ...slog.Attr) {
	if !log.Enabled(ctx, slog.LevelInfo) {
		return
	}
	attrs = append(attrs, slog.Duration("took", time.Since(begin)))
	if err != nil {
		log.LogAttrs(ctx, slog.LevelInfo, msg, append(attrs, slog.String("result", ca.KindOf(err).String()), slog.Any("err", err))...)
		return
	}
	attrs = append(attrs, slog.String("result", "issued"), slog.String("identity", rec.Identity), slog.Uint64("serial", rec.Serial),
		slog.String("key_id", rec.KeyID), slog.Any("principals", rec.Principals), slog.Time("valid_before", rec.ValidBefore))
	for _, a := range [...]struct{ k, v string }{{"ticket", rec.Ticket}, {"reason", rec.Reason}, {"access_request", rec.AccessRequest}} {
		if a.v != "" {
			attrs = append(attrs, slog.String(a.k, a.v))
		}
	}
	log.LogAttrs(ctx, slog.LevelInfo, msg, append(attrs, slog.String("policy", rec.PolicyRevision))...)
}

func (m logging) Revoke(ctx context.Context, token string, req ca.RevokeRequest) (res ca.RevokeResult, err error) {
	defer func(begin time.Time) { logCall(ctx, m.log, "revoke", begin, err, "entries", len(res.Revoked)) }(time.Now())
	return m.Service.Revoke(ctx, token, req)
}

func (m logging) Unrevoke(ctx context.Context, token string, req ca.UnrevokeRequest) (res ca.UnrevokeResult, err error) {
	defer func(begin time.Time) { logCall(ctx, m.log, "unrevoke", begin, err, "lifted", res.Lifted) }(time.Now())
	return m.Service.Unrevoke(ctx, token, req)
}

func (m logging) RevocationsPage(ctx context.Context, token string, after ca.RevocationCursor, limit int) (page ca.RevocationPage, err error) {
	defer func(begin time.Time) {
		logCall(ctx, m.log, "revocations", begin, err, "entries", len(page.User.Entries)+len(page.Host.Entries), "more", !page.Next.IsZero())
	}(time.Now())
	return m.Service.RevocationsPage(ctx, token, after, limit)
}

func (m logging) ListCertificates(ctx context.Context, token string, q ca.CertQuery) (page ca.CertPage, err error) {
	defer func(begin time.Time) {
		logCall(ctx, m.log, "inventory", begin, err, "certificates", len(page.Certificates), "more", !page.Next.IsZero())
	}(time.Now())
	return m.Service.ListCertificates(ctx, token, q)
}

// UserRevocationStates (GET /v1/krl, polled by every bastion) is logged only when it fails.
func (m logging) UserRevocationStates(ctx context.Context) (states []ca.RevocationState, err error) {
	defer func(begin time.Time) {
		if err != nil {
			logCall(ctx, m.log, "krl", begin, err)
		}
	}(time.Now())
	return m.Service.UserRevocationStates(ctx)
}

// HostRevocationStates (GET /v1/krl/host and /v1/ca/known_hosts, read at every login) is
// logged only when it fails.
func (m logging) HostRevocationStates(ctx context.Context) (states []ca.RevocationState, err error) {
	defer func(begin time.Time) {
		if err != nil {
			logCall(ctx, m.log, "host revocations", begin, err)
		}
	}(time.Now())
	return m.Service.HostRevocationStates(ctx)
}

// LoggingKeyAdmin logs every key administration call as LoggingMiddleware does.
func LoggingKeyAdmin(log *slog.Logger) KeyAdminMiddleware {
	return func(next KeyAdmin) KeyAdmin {
		if next == nil {
			return nil
		}
		return keyLogging{next, log}
	}
}

type keyLogging struct {
	next KeyAdmin
	log  *slog.Logger
}

func (m keyLogging) Keys(ctx context.Context, token string) (r ca.Keyring, err error) {
	defer func(begin time.Time) { logCall(ctx, m.log, "keys list", begin, err) }(time.Now())
	return m.next.Keys(ctx, token)
}

func (m keyLogging) GenerateKey(ctx context.Context, token string, kind ca.CertKind, keyType string) (k ca.CAKey, err error) {
	defer func(begin time.Time) {
		logCall(ctx, m.log, "keys generate", begin, err, "ca", kind, "fingerprint", k.Fingerprint)
	}(time.Now())
	return m.next.GenerateKey(ctx, token, kind, keyType)
}

func (m keyLogging) PromoteKey(ctx context.Context, token string, kind ca.CertKind, force bool) (k ca.CAKey, err error) {
	defer func(begin time.Time) {
		logCall(ctx, m.log, "keys promote", begin, err, "ca", kind, "force", force, "fingerprint", k.Fingerprint)
	}(time.Now())
	return m.next.PromoteKey(ctx, token, kind, force)
}

func (m keyLogging) RetireKey(ctx context.Context, token, fingerprint string, force bool) (k ca.CAKey, err error) {
	defer func(begin time.Time) {
		logCall(ctx, m.log, "keys retire", begin, err, "fingerprint", fingerprint, "force", force)
	}(time.Now())
	return m.next.RetireKey(ctx, token, fingerprint, force)
}

func (m keyLogging) CompromisedKey(ctx context.Context, token, fingerprint string) (k ca.CAKey, err error) {
	defer func(begin time.Time) { logCall(ctx, m.log, "keys compromised", begin, err, "fingerprint", fingerprint) }(time.Now())
	return m.next.CompromisedKey(ctx, token, fingerprint)
}

// Metrics are the service's Prometheus collectors. No label carries an identity, an address,
// a serial or a key: label values come from fixed sets (kinds, methods, results, stages, CA
// roles, route patterns, status codes), so the series stay few and the metrics say nothing
// about who asked (TestMetricsCarryNoIdentity).
type Metrics struct {
	// Requests and Duration are certificate requests (issue) by kind.
	Requests *prometheus.CounterVec
	Duration *prometheus.HistogramVec
	// Calls and CallDuration are every call of the API by method (issue_user, renew, revoke,
	// keys_promote, ...), issue included.
	Calls        *prometheus.CounterVec
	CallDuration *prometheus.HistogramVec
	// The rest are in metrics.go: stages, dependency errors, revocations, KRL versions and
	// the HTTP requests by route.
	extra
}

// NewMetrics registers the collectors with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	buckets := []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1}
	m := &Metrics{
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sshca_issue_requests_total",
			Help: "Certificate requests by kind and result (issued, invalid, unauthenticated, denied, unavailable, internal).",
		}, []string{"kind", "result"}),
		Duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "sshca_issue_duration_seconds",
			Help:    "Time to answer a certificate request.",
			Buckets: buckets,
		}, []string{"kind"}),
		Calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sshca_api_calls_total",
			Help: "Calls of the API by method and result (ok, invalid, unauthenticated, denied, not found, conflict, unavailable, internal).",
		}, []string{"method", "result"}),
		CallDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "sshca_api_call_duration_seconds",
			Help:    "Time to answer a call of the API, by method.",
			Buckets: buckets,
		}, []string{"method"}),
		extra: newExtra(buckets),
	}
	// Series that exist before the first request, for dashboards and alerts.
	for _, kind := range []ca.CertKind{ca.UserCert, ca.HostCert} {
		m.Requests.WithLabelValues(string(kind), "issued")
		m.Duration.WithLabelValues(string(kind))
	}
	for _, method := range apiMethods {
		m.Calls.WithLabelValues(method, "ok")
		m.CallDuration.WithLabelValues(method)
	}
	reg.MustRegister(m.Requests, m.Duration, m.Calls, m.CallDuration)
	m.extra.register(reg)
	return m
}

// apiMethods are the method labels of sshca_api_calls_total.
var apiMethods = []string{"issue_user", "issue_host", "renew", "revoke", "unrevoke", "revocations", "inventory", "krl", "host_revocations",
	"keys_list", "keys_generate", "keys_promote", "keys_retire", "keys_compromised",
	"request_create", "request_get", "request_wait", "request_list", "request_approve", "request_deny", "request_cancel", "request_review"}

// observe counts and times one call of method.
func (m *Metrics) observe(method string, begin time.Time, err error) {
	result := "ok"
	if err != nil {
		result = ca.KindOf(err).String()
	}
	m.Calls.WithLabelValues(method, result).Inc()
	m.CallDuration.WithLabelValues(method).Observe(time.Since(begin).Seconds())
}

// InstrumentingMiddleware counts and times every call of the Service.
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
		mw.m.observe("issue_"+string(req.Kind), begin, err)
	}(time.Now())
	return mw.Service.IssueRequest(ctx, token, req)
}

func (mw instrumenting) Renew(ctx context.Context, token string) (_ ca.Issued, err error) {
	defer func(begin time.Time) { mw.m.observe("renew", begin, err) }(time.Now())
	return mw.Service.Renew(ctx, token)
}

func (mw instrumenting) Revoke(ctx context.Context, token string, req ca.RevokeRequest) (res ca.RevokeResult, err error) {
	defer func(begin time.Time) {
		mw.m.observe("revoke", begin, err)
		mw.m.revoked(res.Revoked)
	}(time.Now())
	return mw.Service.Revoke(ctx, token, req)
}

func (mw instrumenting) Unrevoke(ctx context.Context, token string, req ca.UnrevokeRequest) (_ ca.UnrevokeResult, err error) {
	defer func(begin time.Time) { mw.m.observe("unrevoke", begin, err) }(time.Now())
	return mw.Service.Unrevoke(ctx, token, req)
}

func (mw instrumenting) RevocationsPage(ctx context.Context, token string, after ca.RevocationCursor, limit int) (_ ca.RevocationPage, err error) {
	defer func(begin time.Time) { mw.m.observe("revocations", begin, err) }(time.Now())
	return mw.Service.RevocationsPage(ctx, token, after, limit)
}

func (mw instrumenting) ListCertificates(ctx context.Context, token string, q ca.CertQuery) (_ ca.CertPage, err error) {
	defer func(begin time.Time) { mw.m.observe("inventory", begin, err) }(time.Now())
	return mw.Service.ListCertificates(ctx, token, q)
}

func (mw instrumenting) UserRevocationStates(ctx context.Context) (states []ca.RevocationState, err error) {
	defer func(begin time.Time) {
		mw.m.observe("krl", begin, err)
		mw.m.servedKRL("user", states, err)
	}(time.Now())
	return mw.Service.UserRevocationStates(ctx)
}

func (mw instrumenting) HostRevocationStates(ctx context.Context) (states []ca.RevocationState, err error) {
	defer func(begin time.Time) {
		mw.m.observe("host_revocations", begin, err)
		mw.m.servedKRL("host", states, err)
	}(time.Now())
	return mw.Service.HostRevocationStates(ctx)
}

// InstrumentingKeyAdmin counts and times every key administration call.
func InstrumentingKeyAdmin(m *Metrics) KeyAdminMiddleware {
	return func(next KeyAdmin) KeyAdmin {
		if next == nil {
			return nil
		}
		return keyInstrumenting{next, m}
	}
}

type keyInstrumenting struct {
	next KeyAdmin
	m    *Metrics
}

func (mw keyInstrumenting) Keys(ctx context.Context, token string) (_ ca.Keyring, err error) {
	defer func(begin time.Time) { mw.m.observe("keys_list", begin, err) }(time.Now())
	return mw.next.Keys(ctx, token)
}

func (mw keyInstrumenting) GenerateKey(ctx context.Context, token string, kind ca.CertKind, keyType string) (_ ca.CAKey, err error) {
	defer func(begin time.Time) { mw.m.observe("keys_generate", begin, err) }(time.Now())
	return mw.next.GenerateKey(ctx, token, kind, keyType)
}

func (mw keyInstrumenting) PromoteKey(ctx context.Context, token string, kind ca.CertKind, force bool) (_ ca.CAKey, err error) {
	defer func(begin time.Time) { mw.m.observe("keys_promote", begin, err) }(time.Now())
	return mw.next.PromoteKey(ctx, token, kind, force)
}

func (mw keyInstrumenting) RetireKey(ctx context.Context, token, fingerprint string, force bool) (_ ca.CAKey, err error) {
	defer func(begin time.Time) { mw.m.observe("keys_retire", begin, err) }(time.Now())
	return mw.next.RetireKey(ctx, token, fingerprint, force)
}

func (mw keyInstrumenting) CompromisedKey(ctx context.Context, token, fingerprint string) (_ ca.CAKey, err error) {
	defer func(begin time.Time) { mw.m.observe("keys_compromised", begin, err) }(time.Now())
	return mw.next.CompromisedKey(ctx, token, fingerprint)
}
