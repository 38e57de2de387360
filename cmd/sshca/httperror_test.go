package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestStatusErrors: every error the CLI makes of an HTTP status names the endpoint, carries the
// service's message and reasons, ends its first line with "(HTTP NNN)" (revoke matches on
// 409), and says on the next what to do.
func TestStatusErrors(t *testing.T) {
	type answer struct {
		code    int
		body    any
		retryIn string
	}
	answers := map[string]answer{
		"/v1/certs/user":       {403, map[string]any{"error": "policy denied the request", "reasons": []string{"principal root is not granted", "ttl too long"}}, ""},
		"/v1/certs/host":       {401, map[string]any{"error": "token already used"}, ""},
		"/v1/keys/generate":    {404, "404 page not found", ""},
		"/v1/revocations":      {409, map[string]any{"error": "alice names several identities"}, ""},
		"/v1/certs/host/renew": {429, map[string]any{"error": "rate limited"}, "7"},
		"/v1/login/config":     {503, map[string]any{"error": "store unavailable"}, ""},
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a := answers[r.URL.Path]
		if a.retryIn != "" {
			w.Header().Set("Retry-After", a.retryIn)
		}
		if s, ok := a.body.(string); ok {
			w.WriteHeader(a.code)
			_, _ = w.Write([]byte(s))
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(a.code)
		_ = json.NewEncoder(w).Encode(a.body)
	}))
	defer srv.Close()
	tests := []struct {
		method, path string
		first, hint  string
	}{
		{"POST", "/v1/certs/user", "POST /v1/certs/user: policy denied the request: principal root is not granted; ttl too long (HTTP 403)", "the policy refused for the reasons above"},
		{"POST", "/v1/certs/host", "POST /v1/certs/host: token already used (HTTP 401)", "sign in again (sshca login) or get a new token"},
		{"POST", "/v1/keys/generate", "POST /v1/keys/generate: no error message in the answer (HTTP 404)", "check --server"},
		{"POST", "/v1/revocations", "POST /v1/revocations: alice names several identities (HTTP 409)", ""},
		{"POST", "/v1/certs/host/renew", "POST /v1/certs/host/renew: rate limited (HTTP 429)", "retry in 7s"},
		{"GET", "/v1/login/config", "GET /v1/login/config: store unavailable (HTTP 503)", "retry later"},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			var reply map[string]any
			var err error
			if tt.method == "GET" {
				err = getJSON(context.Background(), srv.URL+tt.path, &reply)
			} else {
				err = postJSON(context.Background(), srv.URL+tt.path, "tok", map[string]any{}, &reply)
			}
			if err == nil {
				t.Fatal("no error")
			}
			first, hint, _ := strings.Cut(err.Error(), "\n")
			if first != tt.first {
				t.Errorf("first line\n got %q\nwant %q", first, tt.first)
			}
			if tt.hint == "" && hint != "" || !strings.Contains(hint, tt.hint) {
				t.Errorf("hint %q, want one containing %q", hint, tt.hint)
			}
		})
	}
}
