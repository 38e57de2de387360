package services_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/services"
)

// TestRequestDeadline: every request's context carries the deadline; exempt requests do not.
func TestRequestDeadline(t *testing.T) {
	var got time.Duration
	var has bool
	h := services.RequestDeadline(300*time.Millisecond, func(r *http.Request) bool { return r.URL.Path == "/poll" },
		http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
			var d time.Time
			d, has = r.Context().Deadline()
			got = time.Until(d)
		}))
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/v1/krl", nil))
	if !has || got <= 200*time.Millisecond || got > 300*time.Millisecond {
		t.Errorf("deadline in %v (set %v), want about 300ms", got, has)
	}
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/poll", nil))
	if has {
		t.Error("an exempt request got a deadline")
	}
	services.RequestDeadline(0, nil, http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		var d time.Time
		d, has = r.Context().Deadline()
		got = time.Until(d)
	})).ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/", nil))
	if !has || got > services.DefaultRequestTimeout || got < services.DefaultRequestTimeout-time.Second {
		t.Errorf("default deadline in %v, want about %v", got, services.DefaultRequestTimeout)
	}
}

type checkFunc func(context.Context) error

func (f checkFunc) Check(ctx context.Context) error { return f(ctx) }

// TestReadyzParallelUnderOneDeadline: /readyz answers within about one ReadyTimeout however
// its checks behave (one ignores its context and hangs; two take most of the deadline each,
// which only fits if they run in parallel) and names each failure.
func TestReadyzParallelUnderOneDeadline(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	slow := func(ctx context.Context) error {
		select {
		case <-time.After(services.ReadyTimeout * 6 / 10):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for _, tt := range []struct {
		name   string
		checks map[string]ca.Checker
		code   int
		want   map[string]string // check name → prefix of its status
	}{
		{"parallel", map[string]ca.Checker{"a": checkFunc(slow), "b": checkFunc(slow), "c": checkFunc(slow)}, http.StatusOK,
			map[string]string{"a": "ok", "b": "ok", "c": "ok"}},
		{"one hangs", map[string]ca.Checker{
			"hangs":  checkFunc(func(context.Context) error { <-release; return nil }),
			"fails":  checkFunc(func(context.Context) error { return errors.New("probe write refused") }),
			"slowok": checkFunc(slow),
		}, http.StatusServiceUnavailable,
			map[string]string{"hangs": "unavailable: no answer in time", "fails": "unavailable: probe write refused", "slowok": "ok"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := services.NewHTTPHandler(services.Endpoints{}, services.HTTPOptions{Ready: services.Checks(tt.checks)})
			begin := time.Now()
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
			took := time.Since(begin)
			if took > services.ReadyTimeout+200*time.Millisecond {
				t.Errorf("/readyz took %v, want at most about %v", took, services.ReadyTimeout)
			}
			if rec.Code != tt.code {
				t.Errorf("/readyz = %d %s, want %d", rec.Code, rec.Body, tt.code)
			}
			var body struct{ Checks map[string]string }
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
				t.Fatal(err)
			}
			for name, prefix := range tt.want {
				if !strings.HasPrefix(body.Checks[name], prefix) {
					t.Errorf("check %s = %q, want %q...", name, body.Checks[name], prefix)
				}
			}
			t.Logf("/readyz %s: %d in %v", tt.name, rec.Code, took)
		})
	}
}

// TestReadyzReadyThatIgnoresDeadline: a Ready function that does not return in time is itself
// reported, within the deadline.
func TestReadyzReadyThatIgnoresDeadline(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	h := services.NewHTTPHandler(services.Endpoints{}, services.HTTPOptions{Ready: func(context.Context) map[string]error {
		<-release
		return nil
	}})
	begin := time.Now()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	if took := time.Since(begin); took > services.ReadyTimeout+300*time.Millisecond || rec.Code != http.StatusServiceUnavailable ||
		!strings.Contains(rec.Body.String(), "did not answer") {
		t.Errorf("/readyz = %d %s in %v", rec.Code, rec.Body, took)
	}
}
