package services_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"regexp"
	"strings"
	"testing"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/services"
)

var generatedID = regexp.MustCompile(`^[0-9a-f]{32}$`)

// TestRequestIDKeptOnlyFromTrustedProxies: an incoming X-Request-ID is kept only from a trusted
// peer and only when well-formed; otherwise the answer carries a new random ID. The handler
// sees the same ID in its context as the answer carries, error answers included.
func TestRequestIDKeptOnlyFromTrustedProxies(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	for _, tt := range []struct {
		name   string
		peer   string
		values []string
		keep   bool
	}{
		{"trusted, well-formed", "10.1.2.3:5000", []string{"trace-01.AB_cd"}, true},
		{"trusted, one character", "10.1.2.3:5000", []string{"x"}, true},
		{"trusted, 64 characters", "10.1.2.3:5000", []string{strings.Repeat("a", 64)}, true},
		{"trusted, IPv4-mapped peer", "[::ffff:10.1.2.3]:5000", []string{"mapped"}, true},
		{"untrusted peer", "192.0.2.7:5000", []string{"trace-01"}, false},
		{"trusted, 65 characters", "10.1.2.3:5000", []string{strings.Repeat("a", 65)}, false},
		{"trusted, a space", "10.1.2.3:5000", []string{"trace 01"}, false},
		{"trusted, a newline", "10.1.2.3:5000", []string{"trace\n01"}, false},
		{"trusted, a colon", "10.1.2.3:5000", []string{"trace:01"}, false},
		{"trusted, empty", "10.1.2.3:5000", []string{""}, false},
		{"trusted, two values", "10.1.2.3:5000", []string{"a", "b"}, false},
		{"trusted, none", "10.1.2.3:5000", nil, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var seen string
			h := services.RequestID(trusted, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				seen = ca.RequestID(r.Context())
				http.Error(w, "no such thing", http.StatusNotFound)
			}))
			req := httptest.NewRequest(http.MethodGet, "/v1/nothing", nil)
			req.RemoteAddr = tt.peer
			for _, v := range tt.values {
				req.Header.Add(services.RequestIDHeader, v)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			got := rec.Header().Get(services.RequestIDHeader)
			if rec.Code != http.StatusNotFound || got == "" {
				t.Fatalf("answer %d with X-Request-ID %q", rec.Code, got)
			}
			if got != seen {
				t.Errorf("answer carries %q, the handler saw %q", got, seen)
			}
			switch {
			case tt.keep && got != tt.values[0]:
				t.Errorf("X-Request-ID = %q, want the incoming %q", got, tt.values[0])
			case !tt.keep && !generatedID.MatchString(got):
				t.Errorf("X-Request-ID = %q, want a new random ID (32 hex digits)", got)
			}
		})
	}
}

// TestRequestIDNewPerRequest: generated IDs differ between requests, and an outer RequestID's
// ID is kept by an inner one.
func TestRequestIDNewPerRequest(t *testing.T) {
	var inner string
	h := services.RequestID(nil, services.RequestID(nil, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inner = ca.RequestID(r.Context())
	})))
	seen := map[string]bool{}
	for range 3 {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
		id := rec.Header().Get(services.RequestIDHeader)
		if id != inner || seen[id] {
			t.Fatalf("ID %q (inner %q) repeated or not passed through", id, inner)
		}
		seen[id] = true
	}
}

// TestLogRequestIDs: lines logged with a context that carries an ID name it once, also through
// WithAttrs and a second wrapping; other lines are unchanged.
func TestLogRequestIDs(t *testing.T) {
	var buf bytes.Buffer
	log := services.LogRequestIDs(services.LogRequestIDs(slog.New(slog.NewJSONHandler(&buf, nil)))).With("component", "test")
	ctx := ca.WithRequestID(context.Background(), "req-1")
	log.InfoContext(ctx, "with")
	log.InfoContext(context.Background(), "without")
	log.Info("no context")
	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("%v: %s", err, l)
		}
		lines = append(lines, m)
	}
	if len(lines) != 3 || lines[0]["request_id"] != "req-1" || lines[0]["component"] != "test" {
		t.Fatalf("lines: %v", lines)
	}
	if strings.Count(buf.String(), "request_id") != 1 {
		t.Errorf("request_id not exactly once:\n%s", buf.String())
	}
	if services.LogRequestIDs(nil) != nil {
		t.Error("LogRequestIDs(nil) is not nil")
	}
}
