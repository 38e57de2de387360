package services_test

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/services"
)

var errKMS = errors.New("kms: device removed")

// TestObserveStage: a dependency's failure (unavailable, internal) counts as a stage error, a
// caller's (a refused token, a denial) does not; only a failed signature that IsKMSError
// recognises counts as a KMS error, not one of the serial's reservation.
func TestObserveStage(t *testing.T) {
	m := services.NewMetrics(prometheus.NewRegistry())
	m.IsKMSError = func(err error) bool { return errors.Is(err, errKMS) }
	m.ObserveStage(ca.StageAuthenticate, time.Millisecond, ca.Unauthenticated("bad token", nil))
	m.ObserveStage(ca.StagePolicy, time.Millisecond, ca.Denied("no"))
	m.ObserveStage(ca.StageStore, time.Millisecond, ca.Unavailable("store down", errors.New("dial")))
	m.ObserveStage(ca.StageSign, time.Millisecond, errors.New("signer: reserve serial: dial"))
	m.ObserveStage(ca.StageSign, time.Millisecond, ca.Unavailable("signing failed", errKMS))
	m.ObserveStage(ca.StageAudit, time.Millisecond, nil)
	for stage, want := range map[ca.Stage]float64{ca.StageAuthenticate: 0, ca.StagePolicy: 0, ca.StageStore: 1, ca.StageSign: 2, ca.StageAudit: 0} {
		if got := testutil.ToFloat64(m.StageErrors.WithLabelValues(string(stage))); got != want {
			t.Errorf("stage errors of %s = %v, want %v", stage, got, want)
		}
	}
	if got := testutil.ToFloat64(m.KMSErrors); got != 1 {
		t.Errorf("KMS errors = %v, want 1", got)
	}
	if got := testutil.CollectAndCount(m.Stages); got != len(ca.Stages) {
		t.Errorf("%d stage histograms, want %d", got, len(ca.Stages))
	}
}

// TestInstrumentHTTP: requests are counted by route pattern, never by path: two host names in
// the path are one series; a path no route matches is "other"; what an outer handler answers
// itself (a rate limit's 429) is counted too.
func TestInstrumentHTTP(t *testing.T) {
	m := services.NewMetrics(prometheus.NewRegistry())
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/hosts/{name}", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })
	limited := false
	h := m.InstrumentHTTP(mux, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if limited {
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		mux.ServeHTTP(w, r)
	}))
	for _, path := range []string{"/v1/hosts/web1.example.com", "/v1/hosts/db.example.com", "/nowhere/alice"} {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, path, nil))
	}
	limited = true
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/v1/hosts/web1.example.com", nil))
	for _, tt := range []struct {
		endpoint, code string
		want           float64
	}{{"GET /v1/hosts/{name}", "204", 2}, {"other", "404", 1}, {"GET /v1/hosts/{name}", "429", 1}} {
		if got := testutil.ToFloat64(m.HTTPRequests.WithLabelValues(tt.endpoint, tt.code)); got != tt.want {
			t.Errorf("requests{%s,%s} = %v, want %v", tt.endpoint, tt.code, got, tt.want)
		}
	}
	if n := testutil.CollectAndCount(m.HTTPRequests); n != 3 {
		t.Errorf("%d request series, want 3 (no path in a label)", n)
	}
}

// TestInstrumentHTTPStatus: the code label is the final status the client gets: 200 for a
// handler that writes a body without a status, or writes nothing; an interim 1xx is not it;
// the same route answering two codes is two series, each counted, and the route's histogram
// counts both.
func TestInstrumentHTTPStatus(t *testing.T) {
	m := services.NewMetrics(prometheus.NewRegistry())
	mux := http.NewServeMux()
	mux.HandleFunc("GET /body", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("x")) })
	mux.HandleFunc("GET /nothing", func(http.ResponseWriter, *http.Request) {})
	mux.HandleFunc("GET /hints", func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusEarlyHints)
		w.WriteHeader(http.StatusCreated)
	})
	code := http.StatusNoContent
	mux.HandleFunc("GET /varies", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(code) })
	h := m.InstrumentHTTP(mux, mux)
	for _, path := range []string{"/body", "/nothing", "/hints", "/varies", "/varies"} {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, path, nil))
	}
	code = http.StatusConflict
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/varies", nil))
	for _, tt := range []struct {
		endpoint, code string
		want           float64
	}{{"GET /body", "200", 1}, {"GET /nothing", "200", 1}, {"GET /hints", "201", 1}, {"GET /hints", "103", 0},
		{"GET /varies", "204", 2}, {"GET /varies", "409", 1}} {
		if got := testutil.ToFloat64(m.HTTPRequests.WithLabelValues(tt.endpoint, tt.code)); got != tt.want {
			t.Errorf("requests{%s,%s} = %v, want %v", tt.endpoint, tt.code, got, tt.want)
		}
	}
	if n := testutil.CollectAndCount(m.HTTPDuration); n != 4 {
		t.Errorf("%d duration series, want 4 (one per route)", n)
	}
	if got := histogramCount(t, m.HTTPDuration, "GET /varies"); got != 3 {
		t.Errorf("duration samples of GET /varies = %d, want 3", got)
	}
}

// histogramCount is the sample count of vec's series for endpoint.
func histogramCount(t *testing.T, vec *prometheus.HistogramVec, endpoint string) uint64 {
	t.Helper()
	var d dto.Metric
	if err := vec.WithLabelValues(endpoint).(prometheus.Histogram).Write(&d); err != nil {
		t.Fatal(err)
	}
	return d.GetHistogram().GetSampleCount()
}

// TestInstrumentHTTPResponseController: a handler under InstrumentHTTP, on a real server, can
// still set its write deadline (the long poll does) and flush through http.ResponseController.
func TestInstrumentHTTPResponseController(t *testing.T) {
	m := services.NewMetrics(prometheus.NewRegistry())
	mux := http.NewServeMux()
	errs := make(chan error, 2)
	mux.HandleFunc("GET /poll", func(w http.ResponseWriter, _ *http.Request) {
		rc := http.NewResponseController(w)
		errs <- rc.SetWriteDeadline(time.Now().Add(time.Minute))
		_, _ = w.Write([]byte("x"))
		errs <- rc.Flush()
	})
	srv := httptest.NewServer(m.InstrumentHTTP(mux, mux))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/poll")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for range 2 {
		if err := <-errs; err != nil {
			t.Errorf("through InstrumentHTTP: %v", err)
		}
	}
}

// TestInstrumentHTTPHijack: a handler that takes the connection over (a protocol upgrade,
// found through http.ResponseController or by asserting http.Hijacker as websocket libraries
// do) is counted as "hijacked", or as the 101 it wrote through net/http before taking it, never
// as a 200 that net/http did not send; a hijack that fails (a writer that cannot) leaves the
// answer net/http's, counted by the status it then gets, and a write after the hijack does
// not turn the count into a 200.
func TestInstrumentHTTPHijack(t *testing.T) {
	m := services.NewMetrics(prometheus.NewRegistry())
	mux := http.NewServeMux()
	upgrade := func(conn net.Conn, brw *bufio.ReadWriter, err error) {
		if err != nil {
			t.Errorf("hijack: %v", err)
			return
		}
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: test\r\nConnection: Upgrade\r\n\r\n")
		_ = brw.Flush()
	}
	mux.HandleFunc("GET /controller", func(w http.ResponseWriter, _ *http.Request) {
		upgrade(http.NewResponseController(w).Hijack())
		if _, err := w.Write([]byte("late")); err == nil {
			t.Error("a write after the hijack succeeded")
		}
	})
	mux.HandleFunc("GET /asserted", func(w http.ResponseWriter, _ *http.Request) {
		h, ok := w.(http.Hijacker)
		if !ok {
			t.Error("the writer under InstrumentHTTP is not an http.Hijacker")
			w.WriteHeader(http.StatusNotImplemented)
			return
		}
		upgrade(h.Hijack())
	})
	mux.HandleFunc("GET /switch", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Upgrade", "test")
		w.Header().Set("Connection", "Upgrade")
		w.WriteHeader(http.StatusSwitchingProtocols)
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("hijack after 101: %v", err)
			return
		}
		conn.Close()
	})
	mux.HandleFunc("GET /cannot", func(w http.ResponseWriter, _ *http.Request) {
		if _, _, err := http.NewResponseController(w).Hijack(); err == nil {
			t.Error("a recorder was hijacked")
		}
		w.WriteHeader(http.StatusNotImplemented)
	})
	h := m.InstrumentHTTP(mux, mux)
	done := make(chan struct{}, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r)
		done <- struct{}{} // counted: InstrumentHTTP has returned
	}))
	defer srv.Close()
	for _, path := range []string{"/controller", "/asserted", "/switch"} {
		conn, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: sshca\r\n\r\n", path)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if resp.StatusCode != http.StatusSwitchingProtocols {
			t.Errorf("%s: client got %d, want 101", path, resp.StatusCode)
		}
		conn.Close()
		<-done
	}
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/cannot", nil))
	for _, tt := range []struct {
		endpoint, code string
		want           float64
	}{{"GET /controller", "hijacked", 1}, {"GET /controller", "200", 0}, {"GET /asserted", "hijacked", 1}, {"GET /asserted", "200", 0},
		{"GET /switch", "101", 1}, {"GET /switch", "200", 0}, {"GET /switch", "hijacked", 0},
		{"GET /cannot", "501", 1}, {"GET /cannot", "hijacked", 0}} {
		if got := testutil.ToFloat64(m.HTTPRequests.WithLabelValues(tt.endpoint, tt.code)); got != tt.want {
			t.Errorf("requests{%s,%s} = %v, want %v", tt.endpoint, tt.code, got, tt.want)
		}
	}
}

// BenchmarkObserveStage is the cost of one stage observation (six per issued certificate).
func BenchmarkObserveStage(b *testing.B) {
	m := services.NewMetrics(prometheus.NewRegistry())
	for b.Loop() {
		m.ObserveStage(ca.StageStore, 50*time.Microsecond, nil)
	}
}

// BenchmarkInstrumentHTTP is the cost InstrumentHTTP adds to a request (route lookup, counter,
// histogram), over the same handler called directly.
func BenchmarkInstrumentHTTP(b *testing.B) {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/certs/{kind}", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	req := httptest.NewRequest(http.MethodPost, "/v1/certs/user", nil)
	for _, bc := range []struct {
		name string
		h    http.Handler
	}{{"bare", mux}, {"instrumented", services.NewMetrics(prometheus.NewRegistry()).InstrumentHTTP(mux, mux)}} {
		b.Run(bc.name, func(b *testing.B) {
			w := httptest.NewRecorder()
			for b.Loop() {
				bc.h.ServeHTTP(w, req)
			}
		})
	}
}
