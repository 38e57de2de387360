package services

import (
	"bufio"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/revocation"
)

// extra are the collectors of Metrics beyond the per-method calls: every one is created with
// its known label values at zero, so a series exists (and an alert on it can fire) before
// its first event.
type extra struct {
	// Stages times every dependency call of the authority by stage (ca.Stages); StageErrors
	// counts those that failed on the dependency's side (unavailable or internal, not a
	// refused token or a policy denial).
	Stages      *prometheus.HistogramVec
	StageErrors *prometheus.CounterVec
	// KMSErrors counts signatures the CA key did not make (IsKMSError of a failed sign stage).
	KMSErrors prometheus.Counter
	// IsKMSError says whether a failed sign stage is the key's (KMS) failure rather than the
	// serial's reservation in the store; cmd/sshca sets it (signer.KeyError). Nil: none is.
	IsKMSError func(error) bool
	// Revocations counts entries newly revoked, by entry kind (serial, key_id, key).
	Revocations *prometheus.CounterVec
	// TokenReturns counts single-use tokens that a refusal of the server's own tried to give
	// back, by outcome (ca.TokenReturnOutcomes).
	TokenReturns *prometheus.CounterVec
	// KRLVersion is the version of the KRL last served, by CA role (user: /v1/krl, host:
	// /v1/krl/host and known_hosts).
	KRLVersion *prometheus.GaugeVec
	// HTTPRequests and HTTPDuration are every HTTP request by route pattern (endpoint) and
	// status code (InstrumentHTTP).
	HTTPRequests *prometheus.CounterVec
	HTTPDuration *prometheus.HistogramVec

	// stageTime and stageFailed are the series of ca.Stages, looked up once (ObserveStage runs
	// six times per certificate).
	stageTime   map[ca.Stage]prometheus.Observer
	stageFailed map[ca.Stage]prometheus.Counter
}

func newExtra(buckets []float64) extra {
	e := extra{
		Stages: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "sshca_stage_duration_seconds",
			Help:    "Time of one dependency call of the authority, by stage: authenticate (token verification), policy, store (inventory, revocations, token ledger), sign (serial reservation and the KMS signature), audit.",
			Buckets: append([]float64{.00005, .0001, .00025}, buckets...),
		}, []string{"stage"}),
		StageErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sshca_stage_errors_total",
			Help: "Dependency calls of the authority that failed on the dependency's side (unavailable or internal), by stage.",
		}, []string{"stage"}),
		KMSErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sshca_kms_errors_total",
			Help: "Signatures the CA key (its KMS) failed to make.",
		}),
		Revocations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sshca_revocations_total",
			Help: "Revocation entries newly added through this replica, by kind (serial, key_id, key).",
		}, []string{"kind"}),
		TokenReturns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sshca_token_returns_total",
			Help: "Single-use tokens spent by a request that then failed for a fault of the server's before any KMS signature was attempted (a 503; a failed signature keeps its token spent, uncounted), by what became of them: given_back (usable once more), spent (no record of that spend left: the token expired), unknown (the store did not answer the return: counted as spent).",
		}, []string{"outcome"}),
		KRLVersion: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sshca_krl_version",
			Help: "Version of the KRL this replica last served, by CA role (user: /v1/krl; host: /v1/krl/host, known_hosts); 0 until the first.",
		}, []string{"ca"}),
		HTTPRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sshca_http_requests_total",
			Help: "HTTP requests by endpoint (the route pattern, \"other\" when none matches) and status code (\"hijacked\" when the handler took the connection over without one; 500 when it panicked), limited and shed ones included.",
		}, []string{"endpoint", "code"}),
		HTTPDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "sshca_http_request_duration_seconds",
			Help:    "Time to answer an HTTP request, by endpoint (the route pattern).",
			Buckets: buckets,
		}, []string{"endpoint"}),
	}
	e.stageTime, e.stageFailed = map[ca.Stage]prometheus.Observer{}, map[ca.Stage]prometheus.Counter{}
	for _, s := range ca.Stages {
		e.stageTime[s] = e.Stages.WithLabelValues(string(s))
		e.stageFailed[s] = e.StageErrors.WithLabelValues(string(s))
	}
	for _, k := range []ca.EntryKind{ca.RevokedSerial, ca.RevokedKeyID, ca.RevokedKey} {
		e.Revocations.WithLabelValues(string(k))
	}
	for _, r := range []string{"user", "host"} {
		e.KRLVersion.WithLabelValues(r)
	}
	for _, o := range ca.TokenReturnOutcomes {
		e.TokenReturns.WithLabelValues(string(o))
	}
	return e
}

func (e extra) register(reg prometheus.Registerer) {
	reg.MustRegister(e.Stages, e.StageErrors, e.KMSErrors, e.Revocations, e.TokenReturns, e.KRLVersion, e.HTTPRequests, e.HTTPDuration)
}

var _ ca.TokenReturns = (*Metrics)(nil)

// TokenReturn implements ca.TokenReturns (ca.Config.TokenReturns).
func (m *Metrics) TokenReturn(outcome ca.TokenReturnOutcome) {
	m.TokenReturns.WithLabelValues(string(outcome)).Inc()
}

var _ ca.StageObserver = (*Metrics)(nil)

// ObserveStage implements ca.StageObserver (ca.Config.Stages).
func (m *Metrics) ObserveStage(stage ca.Stage, took time.Duration, err error) {
	if o, ok := m.stageTime[stage]; ok {
		o.Observe(took.Seconds())
	} else {
		m.Stages.WithLabelValues(string(stage)).Observe(took.Seconds())
	}
	if err == nil {
		return
	}
	if k := ca.KindOf(err); k == ca.KindUnavailable || k == ca.KindInternal {
		if c, ok := m.stageFailed[stage]; ok {
			c.Inc()
		} else {
			m.StageErrors.WithLabelValues(string(stage)).Inc()
		}
	}
	if stage == ca.StageSign && m.IsKMSError != nil && m.IsKMSError(err) {
		m.KMSErrors.Inc()
	}
}

func (m *Metrics) revoked(entries []ca.RevocationEntry) {
	for _, e := range entries {
		m.Revocations.WithLabelValues(string(e.Kind)).Inc()
	}
}

func (m *Metrics) servedKRL(role string, states []ca.RevocationState, err error) {
	if err == nil && len(states) > 0 {
		m.KRLVersion.WithLabelValues(role).Set(float64(revocation.Version(states...)))
	}
}

// InstrumentHTTP counts and times every request that next answers by the route pattern that
// mux would serve it with ("GET /v1/krl", "POST /v1/certs/user"; "other" when none matches)
// and its status code: the endpoint is the pattern, never the path, so no host name, serial
// or identity in a URL becomes a label. Put it outermost, so requests that the rate limits
// refuse (429) or shed (503) are counted too.
//
// The series are sshca_http_requests_total{endpoint,code} and
// sshca_http_request_duration_seconds{endpoint}, as promhttp's InstrumentHandlerCounter and
// InstrumentHandlerDuration would give them (a handler that writes no status counts as 200; one
// that takes the connection over, a protocol upgrade, counts as the 101 it wrote through
// net/http or as "hijacked": what it sent on the connection itself is not seen; one that
// panics counts as 500, whatever it had written: its answer was cut off, or Recover answers 500),
// but the series of a route are looked up once and kept (httpSeries), and the request is
// passed on as it came: promhttp's label-from-context needs a copy of the request with the
// pattern in its context, a label map and a response writer wrapper per request, about 10 µs
// and 9 allocations (docs/performance.md, BenchmarkInstrumentHTTP).
func (m *Metrics) InstrumentHTTP(mux *http.ServeMux, next http.Handler) http.Handler {
	series := &httpSeries{m: m, duration: map[string]prometheus.Observer{}, requests: map[routeCode]prometheus.Counter{}}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		begin := time.Now()
		_, pattern := mux.Handler(r)
		if pattern == "" {
			pattern = "other"
		}
		// Recover, outermost, has wrapped w already: its writer records the same status, so
		// it is shared rather than wrapped twice (one allocation less per request).
		sw, ok := w.(*statusWriter)
		if !ok {
			sw = &statusWriter{ResponseWriter: w}
		}
		defer func() {
			if v := recover(); v != nil {
				// A panic that reaches here cut the answer off (Recover, outside, may still
				// answer it with a 500 when nothing was written): a server error either way.
				series.observe(pattern, http.StatusInternalServerError, time.Since(begin))
				panic(v)
			}
		}()
		next.ServeHTTP(sw, r)
		series.observe(pattern, sw.status(), time.Since(begin))
	})
}

// httpSeries are the HTTP series by route and status code, created on first use: the patterns
// are the mux's, a fixed set, and codes few, so the maps stay small.
type httpSeries struct {
	m *Metrics

	mu       sync.RWMutex
	duration map[string]prometheus.Observer
	requests map[routeCode]prometheus.Counter
}

type routeCode struct {
	pattern string
	code    int
}

func (s *httpSeries) observe(pattern string, code int, took time.Duration) {
	rc := routeCode{pattern, code}
	s.mu.RLock()
	d, okD := s.duration[pattern]
	c, okC := s.requests[rc]
	s.mu.RUnlock()
	if !okD || !okC {
		s.mu.Lock()
		if d, okD = s.duration[pattern]; !okD {
			d = s.m.HTTPDuration.WithLabelValues(pattern)
			s.duration[pattern] = d
		}
		if c, okC = s.requests[rc]; !okC {
			c = s.m.HTTPRequests.WithLabelValues(pattern, codeLabel(code))
			s.requests[rc] = c
		}
		s.mu.Unlock()
	}
	d.Observe(took.Seconds())
	c.Inc()
}

// statusWriter remembers the status code of the answer. Unwrap gives http.ResponseController
// the writer underneath (the long poll sets its write deadline through it), and Flush flushes
// it when it can. Hijack is its own, so that a connection taken over by its handler (a
// protocol upgrade) is counted as what it is, not as a 200 that net/http never sent.
type statusWriter struct {
	http.ResponseWriter
	code int // 0 until a status is written, codeHijacked for a connection taken over first
	// conn is the connection the handler took over (Hijack), which Recover closes when the
	// handler panics: net/http no longer owns it, and nothing else would.
	conn net.Conn
}

// codeHijacked is the code of a request whose handler took the connection over without
// writing a status through net/http first: what went over the connection then (a 101
// written by hand, anything at all) is out of sight. Its label is "hijacked".
const codeHijacked = -1

func (w *statusWriter) WriteHeader(code int) {
	// 1xx answers are interim, except 101 Switching Protocols: net/http sends it as the final
	// answer (a handler writes it, then hijacks the connection to speak the new protocol).
	if w.code == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(p)
}

func (w *statusWriter) Flush() {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Hijack takes the connection over through the writer underneath (http.ResponseController
// reaches it as well through Unwrap, but would find this method first). When it fails (HTTP/2,
// a recorder) nothing changed and the answer is still net/http's to send.
func (w *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, rw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err == nil {
		w.conn = conn
		if w.code == 0 {
			w.code = codeHijacked
		}
	}
	return conn, rw, err
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// status is the answer's status code: what the handler wrote; codeHijacked when it took the
// connection over before writing one; 200 when it wrote none (net/http sends 200).
func (w *statusWriter) status() int {
	if w.code == 0 {
		return http.StatusOK
	}
	return w.code
}

// codeLabel is the code label of a status: its number, or "hijacked".
func codeLabel(code int) string {
	if code == codeHijacked {
		return "hijacked"
	}
	return strconv.Itoa(code)
}
