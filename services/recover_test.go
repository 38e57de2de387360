package services_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sshca/sshca/client"
	"github.com/sshca/sshca/services"
)

// lockedBuffer is a log sink that handlers on several goroutines write to.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// panicLines are the "handler panicked" lines of a JSON log.
func panicLines(t *testing.T, logs string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if m["msg"] == "handler panicked" {
			out = append(out, m)
		}
	}
	return out
}

// TestRecover: on a real server, with serve's order (Recover outermost, as newHTTPServer puts
// it, then InstrumentHTTP and RequestID), a handler that panics before writing gets a 500 that
// names its request ID, one log line with that ID, the panic's type and the stack, and no header
// (the bearer token stays out); one that panics after its answer began is cut off (the client
// cannot take the truncated body for a whole one), logged too; a deliberate
// http.ErrAbortHandler is not logged as a fault. Each counts as a 500 in the HTTP metrics, none
// as a 200, net/http logs nothing of its own, and the server goes on serving.
func TestRecover(t *testing.T) {
	for _, order := range []string{"recover outermost", "recover inside the metrics"} {
		t.Run(order, func(t *testing.T) {
			var logs, serverLog lockedBuffer
			logger := slog.New(slog.NewJSONHandler(&logs, nil))
			m := services.NewMetrics(prometheus.NewRegistry())
			mux := http.NewServeMux()
			mux.HandleFunc("GET /before", func(http.ResponseWriter, *http.Request) { panic("boom before") })
			mux.HandleFunc("GET /after", func(w http.ResponseWriter, _ *http.Request) {
				_, _ = w.Write([]byte(`{"certificates": [`))
				http.NewResponseController(w).Flush()
				panic("boom after")
			})
			mux.HandleFunc("GET /abort", func(http.ResponseWriter, *http.Request) { panic(http.ErrAbortHandler) })
			mux.HandleFunc("GET /hijacked", func(w http.ResponseWriter, _ *http.Request) {
				// Taken over, nothing written: no 500 may go onto a connection net/http no longer owns.
				if _, _, err := http.NewResponseController(w).Hijack(); err != nil {
					t.Errorf("hijack: %v", err)
				}
				panic("boom hijacked")
			})
			mux.HandleFunc("GET /ok", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
			var h http.Handler
			if order == "recover outermost" {
				h = services.Recover(logger, m.InstrumentHTTP(mux, services.RequestID(nil, mux)))
			} else {
				h = m.InstrumentHTTP(mux, services.RequestID(nil, services.Recover(logger, mux)))
			}
			srv := httptest.NewUnstartedServer(h)
			srv.Config.ErrorLog = log.New(&serverLog, "", 0)
			srv.Start()
			defer srv.Close()
			const token = "eyJhbGciOiJFUzI1NiJ9.secret-token-part"
			get := func(path string) (*http.Response, []byte, error) {
				req, _ := http.NewRequest(http.MethodGet, srv.URL+path, nil)
				req.Header.Set("Authorization", "Bearer "+token)
				c := srv.Client()
				c.Timeout = 20 * time.Second // a connection left open fails the test, not hangs it
				resp, err := c.Do(req)
				if err != nil {
					return nil, nil, err
				}
				defer resp.Body.Close()
				body, err := io.ReadAll(resp.Body)
				return resp, body, err
			}

			resp, body, err := get("/before")
			if err != nil {
				t.Fatalf("panic before writing: %v, want a 500", err)
			}
			id := resp.Header.Get(services.RequestIDHeader)
			var eb client.ErrorBody
			if resp.StatusCode != http.StatusInternalServerError || json.Unmarshal(body, &eb) != nil || id == "" ||
				eb.Error != "internal error (request ID "+id+")" {
				t.Errorf("panic before writing: %d %q (request ID %q), want 500 naming the request ID", resp.StatusCode, body, id)
			}
			if _, body, err := get("/after"); err == nil {
				t.Errorf("panic after writing: whole body %q, want the answer cut off", body)
			}
			if _, _, err := get("/abort"); err == nil {
				t.Error("deliberate abort: an answer, want the connection cut")
			}
			if resp, body, err := get("/hijacked"); err == nil {
				t.Errorf("panic after a hijack: answered %d %q, want the connection closed", resp.StatusCode, body)
			}
			// The server goes on serving, on new connections and old.
			for range 3 {
				if resp, body, err := get("/ok"); err != nil || resp.StatusCode != http.StatusOK || string(body) != "ok" {
					t.Fatalf("after the panics: %v %v %q", resp, err, body)
				}
			}

			for _, tt := range []struct {
				endpoint, code string
				want           float64
			}{{"GET /before", "500", 1}, {"GET /after", "500", 1}, {"GET /after", "200", 0}, {"GET /abort", "500", 1}, {"GET /hijacked", "500", 1}, {"GET /ok", "200", 3}} {
				// A connection cut (abort, hijack) reaches the client before the handler's
				// deferred instrumentation has counted it: wait a little for the count.
				got := testutil.ToFloat64(m.HTTPRequests.WithLabelValues(tt.endpoint, tt.code))
				for deadline := time.Now().Add(5 * time.Second); got < tt.want && time.Now().Before(deadline); {
					time.Sleep(time.Millisecond)
					got = testutil.ToFloat64(m.HTTPRequests.WithLabelValues(tt.endpoint, tt.code))
				}
				if got != tt.want {
					t.Errorf("requests{%s,%s} = %v, want %v", tt.endpoint, tt.code, got, tt.want)
				}
			}
			lines := panicLines(t, logs.String())
			if len(lines) != 3 {
				t.Fatalf("%d panic lines, want 3 (before, after, hijacked; not the deliberate abort):\n%s", len(lines), logs.String())
			}
			for i, want := range []struct {
				path, panic string
				begun       bool
			}{{"/before", "boom before", false}, {"/after", "boom after", true}, {"/hijacked", "boom hijacked", true}} {
				l := lines[i]
				p, _ := l["panic"].(map[string]any)
				if l["level"] != "ERROR" || l["path"] != want.path || p["type"] != "string" || l["answer_begun"] != want.begun ||
					l["request_id"] == "" || l["request_id"] == nil {
					t.Errorf("line %d: %v", i, l)
				}
				if s, _ := p["stack"].(string); !strings.Contains(s, "recover_test.go") {
					t.Errorf("line %d: no stack through the handler: %q", i, s)
				}
				if strings.Contains(logs.String(), want.panic) {
					t.Errorf("the log holds the panic's string %q (it may carry a request's secret)", want.panic)
				}
			}
			if lines[0]["request_id"] != id {
				t.Errorf("logged request ID %v, answered %q", lines[0]["request_id"], id)
			}
			if strings.Contains(logs.String(), "secret-token-part") {
				t.Error("the log holds the bearer token")
			}
			if s := serverLog.String(); s != "" {
				t.Errorf("net/http logged: %s", s)
			}
		})
	}
}

// fakeRuntimeError claims to be the runtime's (runtime.Error's method is exported) while its
// text is whatever its maker put there.
type fakeRuntimeError struct{ msg string }

func (e fakeRuntimeError) Error() string { return e.msg }
func (fakeRuntimeError) RuntimeError()   {}

// secretStringer renders a secret when printed with %v.
type secretStringer struct{ token string }

func (s secretStringer) String() string { return "credentials " + s.token }

// TestRecoverKeepsSecretsOut: a handler that panics with a value carrying a bearer token (a
// string, an error wrapping a request's text, a Stringer, a type posing as a runtime error, the
// token passed down as an argument of the frame that panicked) gets a 500 whose body and log
// line hold neither the token nor its tail; the log names the value's type and the stack. The
// runtime's own panics (nil map write, index out of range) keep their text, which names no data.
func TestRecoverKeepsSecretsOut(t *testing.T) {
	const token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2VjcmV0LXNpZ25hdHVyZS1ieXRlcw"
	const tail = "c2VjcmV0LXNpZ25hdHVyZS1ieXRlcw"
	var logs lockedBuffer
	logger := slog.New(slog.NewJSONHandler(&logs, nil))
	mux := http.NewServeMux()
	bearer := func(r *http.Request) string { return strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ") }
	mux.HandleFunc("GET /string", func(_ http.ResponseWriter, r *http.Request) { panic("bad token " + bearer(r)) })
	mux.HandleFunc("GET /error", func(_ http.ResponseWriter, r *http.Request) {
		panic(fmt.Errorf("decode body %q: %w", `{"token":"`+bearer(r)+`"}`, errors.New("unexpected EOF")))
	})
	mux.HandleFunc("GET /stringer", func(_ http.ResponseWriter, r *http.Request) { panic(secretStringer{bearer(r)}) })
	mux.HandleFunc("GET /fake-runtime", func(_ http.ResponseWriter, r *http.Request) { panic(fakeRuntimeError{"index " + bearer(r)}) })
	mux.HandleFunc("GET /argument", func(_ http.ResponseWriter, r *http.Request) { panicWith(bearer(r)) })
	mux.HandleFunc("GET /index", func(_ http.ResponseWriter, r *http.Request) {
		s := []string{bearer(r)}
		i := len(r.URL.Path) // 6: out of range
		_ = s[i]
	})
	mux.HandleFunc("GET /nil-map", func(_ http.ResponseWriter, r *http.Request) {
		var m map[string]string
		m["token"] = bearer(r)
	})
	srv := httptest.NewServer(services.Recover(logger, services.RequestID(nil, mux)))
	defer srv.Close()
	for _, tt := range []struct{ path, typ, value string }{
		{"/string", "string", ""},
		{"/error", "*fmt.wrapError", ""},
		{"/stringer", "services_test.secretStringer", ""},
		{"/fake-runtime", "services_test.fakeRuntimeError", ""},
		{"/argument", "string", ""},
		{"/index", "runtime.boundsError", "runtime error: index out of range [6] with length 1"},
		{"/nil-map", "runtime.plainError", "assignment to entry in nil map"},
	} {
		t.Run(tt.path, func(t *testing.T) {
			before := len(logs.String())
			req, _ := http.NewRequest(http.MethodGet, srv.URL+tt.path, nil)
			req.Header.Set("Authorization", "Bearer "+token)
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusInternalServerError || strings.Contains(string(body), tail) {
				t.Errorf("answer %d %s, want 500 without the token", resp.StatusCode, body)
			}
			logged := logs.String()[before:]
			if strings.Contains(logged, tail) {
				t.Errorf("the log line holds the token: %s", logged)
			}
			lines := panicLines(t, logged)
			if len(lines) != 1 {
				t.Fatalf("%d panic lines, want 1: %s", len(lines), logged)
			}
			p, _ := lines[0]["panic"].(map[string]any)
			value, _ := p["value"].(string)
			stack, _ := p["stack"].(string)
			if p["type"] != tt.typ || value != tt.value || !strings.Contains(stack, "recover_test.go") {
				t.Errorf("logged panic %v, want type %q, value %q and a stack through the handler", p, tt.typ, tt.value)
			}
		})
	}
}

// panicWith panics in a frame whose argument is the token: the stack shows the argument as
// words (pointer, length), never the string's bytes.
//
//go:noinline
func panicWith(token string) { panic("with " + token) }

// TestRecoverBoundsTheStack: a panic at the bottom of a deep recursion logs a stack cut at a
// bound, not every frame.
func TestRecoverBoundsTheStack(t *testing.T) {
	var logs lockedBuffer
	logger := slog.New(slog.NewJSONHandler(&logs, nil))
	var deep func(int)
	deep = func(n int) {
		if n == 0 {
			panic("deep")
		}
		deep(n - 1)
	}
	srv := httptest.NewServer(services.Recover(logger, http.HandlerFunc(func(http.ResponseWriter, *http.Request) { deep(2000) })))
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	lines := panicLines(t, logs.String())
	if len(lines) != 1 {
		t.Fatalf("%d panic lines, want 1", len(lines))
	}
	p, _ := lines[0]["panic"].(map[string]any)
	stack, _ := p["stack"].(string)
	if len(stack) > 9<<10 || !strings.HasSuffix(stack, "(cut)") || !strings.Contains(stack, "recover_test.go") {
		t.Errorf("stack of %d bytes (want at most about 8 KiB, cut, starting at the panic): %.200q", len(stack), stack)
	}
}
