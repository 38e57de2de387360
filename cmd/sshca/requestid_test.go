package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/services"
)

// startServeLogged runs `sshca serve` with cfg, its log (JSON, info level) into the returned
// buffer, and returns its base URL.
func startServeLogged(t *testing.T, cfg *Config) (string, *testenv.SyncBuffer) {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("config: %v", err)
	}
	buf := &testenv.SyncBuffer{}
	log := slog.New(slog.NewJSONHandler(io.MultiWriter(buf, testWriter{t}), nil))
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	errc := make(chan error, 1)
	go func() { errc <- serve(ctx, cfg, log, ready) }()
	select {
	case addr := <-ready:
		t.Cleanup(func() {
			cancel()
			<-errc
		})
		return "http://" + addr, buf
	case err := <-errc:
		cancel()
		t.Fatalf("serve: %v", err)
	case <-time.After(60 * time.Second):
		cancel()
		t.Fatal("serve did not start within 60s")
	}
	return "", nil
}

// send makes one request (a string body as is, anything else as JSON) with an optional X-Request-ID and returns the status and the answer's
// X-Request-ID.
func send(t *testing.T, method, url, token, requestID string, body any) (int, string) {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		j, _ := json.Marshal(b)
		rd = strings.NewReader(string(j))
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if requestID != "" {
		req.Header.Set(services.RequestIDHeader, requestID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, resp.Header.Get(services.RequestIDHeader)
}

// TestServeRequestID: through `sshca serve` on redis-server, every answer carries X-Request-ID
// (errors included); a well-formed ID from a trusted proxy is kept, anything else replaced; the
// log lines and the audit record of an issue request carry the answer's ID.
func TestServeRequestID(t *testing.T) {
	r := testenv.StartRedis(t)
	iss := startIssuer(t, "sshca")
	userKey := keygen(t, t.TempDir(), "user")
	body := map[string]any{"public_key": readFile(t, userKey+".pub")}
	generated := regexp.MustCompile(`^[0-9a-f]{32}$`)
	for _, tt := range []struct {
		name    string
		proxies []string // trusted_proxies; the test connects from 127.0.0.1
		trusted bool
	}{
		{"trusted proxy", []string{"127.0.0.0/8"}, true},
		{"untrusted peer", []string{"192.0.2.0/24"}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := serveConfig(t, r.Addr, identity.IssuerConfig{IssuerURL: iss.URL(), Audiences: []string{"sshca"}})
			cfg.Redis.DB = map[bool]int{true: 1, false: 2}[tt.trusted] // each server its own audit log
			cfg.BehindTLSProxy, cfg.TrustedProxies = true, tt.proxies
			base, logs := startServeLogged(t, cfg)

			// Malformed IDs are replaced even from a trusted proxy. (A newline cannot cross
			// the wire: Go's client refuses to send it; the unit test covers it.)
			for _, bad := range []string{strings.Repeat("a", 65), "trace 01", "a/b"} {
				if code, got := send(t, http.MethodGet, base+"/healthz", "", bad, nil); code != http.StatusOK || !generated.MatchString(got) {
					t.Errorf("X-Request-ID %q: answer %d with %q, want a new random ID", bad, code, got)
				}
			}
			// Error answers carry one: no token (401), bad JSON (400), no such path (404).
			for _, c := range []struct {
				method, path string
				body         any
				code         int
			}{
				{http.MethodPost, "/v1/certs/user", body, http.StatusUnauthorized},
				{http.MethodPost, "/v1/certs/user", "{", http.StatusBadRequest},
				{http.MethodGet, "/v1/nothing", nil, http.StatusNotFound},
			} {
				if code, got := send(t, c.method, base+c.path, "", "", c.body); code != c.code || !generated.MatchString(got) {
					t.Errorf("%s %s: answer %d with X-Request-ID %q, want %d with a new random ID", c.method, c.path, code, got, c.code)
				}
			}

			const incoming = "edge-7f3a.req_01"
			tok, err := iss.Mint(map[string]any{"sub": "alice", "preferred_username": "alice"})
			if err != nil {
				t.Fatal(err)
			}
			code, id := send(t, http.MethodPost, base+"/v1/certs/user", tok, incoming, body)
			if code != http.StatusOK {
				t.Fatalf("issue = %d", code)
			}
			switch {
			case tt.trusted && id != incoming:
				t.Fatalf("X-Request-ID = %q, want the proxy's %q", id, incoming)
			case !tt.trusted && !generated.MatchString(id):
				t.Fatalf("X-Request-ID = %q from an untrusted peer, want a new random ID", id)
			}

			// One info line per decision (issue 15): the logging middleware's "issue", which
			// carries what the authority's and the audit log's lines said (those are at debug
			// level), named by the request ID.
			var issueLines []map[string]any
			for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
				var m map[string]any
				if err := json.Unmarshal([]byte(line), &m); err != nil {
					t.Fatalf("log line is not JSON: %v: %s", err, line)
				}
				if m["request_id"] == id {
					issueLines = append(issueLines, m)
				}
				if m["request_id"] == incoming && !tt.trusted {
					t.Errorf("a log line carries the untrusted peer's ID: %s", line)
				}
			}
			if len(issueLines) != 1 {
				t.Fatalf("%d log lines with request_id %q, want one: %v", len(issueLines), id, issueLines)
			}
			l := issueLines[0]
			if l["msg"] != "issue" || l["result"] != "issued" || l["identity"] == nil || l["identity"] == "" ||
				l["serial"] == nil || l["key_id"] == nil || l["key_id"] == "" || l["took"] == nil || l["principals"] == nil {
				t.Errorf("the issue's line %v, want msg issue, result issued, identity, serial, key_id, principals, took", l)
			}

			// The audit record of the issue names the same ID.
			rdb := redis.NewClient(&redis.Options{Addr: r.Addr, DB: cfg.Redis.DB})
			defer rdb.Close()
			key, err := readAuditKey(cfg.Audit.KeyFile)
			if err != nil {
				t.Fatal(err)
			}
			var ids []string
			if _, err := audit.New(rdb, audit.Options{Key: key}).Verify(context.Background(), func(e audit.Entry) {
				if e.Record.Outcome == "issued" {
					ids = append(ids, e.Record.RequestID)
				}
			}); err != nil {
				t.Fatal(err)
			}
			if len(ids) != 1 || ids[0] != id {
				t.Errorf("audit records of the issue carry request IDs %q, want [%q]", ids, id)
			}
		})
	}
}
