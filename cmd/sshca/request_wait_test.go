package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sshca/sshca/client"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/services"
)

// TestAccessRequestLongPoll: GET /v1/requests/{id}?wait=... through `sshca dev` holds until
// the request changes: an approval on the server answers a waiting call at once; a wait longer
// than the request deadline (2 s) with no change answers 200 with the request as it was, not
// 503; a wait past the server's bound is shortened; bad wait and seen values get 400 naming
// them. `sshca request create` waits this way: with --poll 1h it still sees the approval at
// once and prints its progress line.
func TestAccessRequestLongPoll(t *testing.T) {
	base, _ := startDev(t)
	alice := func() string {
		return devToken(t, base, map[string]any{"sub": "u-alice", "preferred_username": "alice", "email": "alice@example.com",
			"email_verified": true, "groups": []string{"developers"}, "amr": []string{"mfa"}, "auth_time": time.Now().Unix()})
	}
	lead := func() string {
		return devToken(t, base, map[string]any{"sub": "u-lead", "preferred_username": "lead", "email": "lead@example.com",
			"email_verified": true, "groups": []string{"sre-leads"}, "amr": []string{"hwk"}, "auth_time": time.Now().Unix()})
	}
	create := func() client.AccessRequest {
		t.Helper()
		code, body := call(t, http.MethodPost, base+"/v1/requests", alice(), map[string]any{"principals": []string{"root"}, "ttl": "30m", "reason": "OPS-1 disk"})
		var r client.AccessRequest
		if code != http.StatusOK || json.Unmarshal(body, &r) != nil {
			t.Fatalf("create: %d %s", code, body)
		}
		return r
	}
	type answer struct {
		code int
		r    client.AccessRequest
		body string
		took time.Duration
	}
	wait := func(id, query string) chan answer {
		out := make(chan answer, 1)
		tok := alice()
		go func() {
			begin := time.Now()
			req, _ := http.NewRequest(http.MethodGet, base+"/v1/requests/"+id+"?"+query, nil)
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				out <- answer{body: err.Error()}
				return
			}
			defer resp.Body.Close()
			var b bytes.Buffer
			_, _ = b.ReadFrom(resp.Body)
			var r client.AccessRequest
			_ = json.Unmarshal(b.Bytes(), &r)
			out <- answer{resp.StatusCode, r, b.String(), time.Since(begin)}
		}()
		return out
	}

	// Waiting, then approved: answered at once, approved.
	r := create()
	ch := wait(r.ID, "wait=25s&seen="+r.WaitTag())
	select {
	case a := <-ch:
		t.Fatalf("the wait answered before any change: %d %s", a.code, a.body)
	case <-time.After(500 * time.Millisecond):
	}
	approved := time.Now()
	if code, body := call(t, http.MethodPost, base+"/v1/requests/"+r.ID+"/approve", lead(), map[string]any{"content_hash": r.Hash()}); code != http.StatusOK {
		t.Fatalf("approve: %d %s", code, body)
	}
	select {
	case a := <-ch:
		if a.code != http.StatusOK || a.r.State != "approved" || len(a.r.Approvals) != 1 {
			t.Fatalf("the wait after the approval: %d %s", a.code, a.body)
		}
		t.Logf("approval seen by the waiting call %s after it was made", time.Since(approved).Round(time.Millisecond))
	case <-time.After(5 * time.Second):
		t.Fatal("the waiting call did not see the approval within 5 s")
	}

	// No change, a wait beyond the request deadline (2 s): 200, after the wait.
	r2 := create()
	a := <-wait(r2.ID, "wait=3s&seen="+r2.WaitTag())
	if a.code != http.StatusOK || a.r.State != "pending" || a.took < 3*time.Second {
		t.Fatalf("an unchanged wait of 3s: %d after %s: %s", a.code, a.took, a.body)
	}
	// An answer that already differs from seen comes at once.
	if a := <-wait(r.ID, "wait=25s&seen=pending/0"); a.code != http.StatusOK || a.r.State != "approved" || a.took > 2*time.Second {
		t.Fatalf("a wait with an outdated seen: %d after %s: %s", a.code, a.took, a.body)
	}
	for _, bad := range []struct{ query, word string }{
		{"wait=soon", "wait"}, {"wait=-3s", "wait"}, {"wait=5s&seen=maybe", "seen"}, {"wait=5s&seen=pending/x", "seen"},
	} {
		if a := <-wait(r2.ID, bad.query); a.code != http.StatusBadRequest || !strings.Contains(a.body, bad.word) {
			t.Errorf("GET ?%s = %d %s, want 400 naming %s", bad.query, a.code, a.body, bad.word)
		}
	}

	// The CLI: with --poll 1h it would never ask again in time; it sees the approval through
	// its long poll.
	var out testenv.SyncBuffer
	cmd := newRootCommand()
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs([]string{"request", "create", "--principal", "root", "--ttl", "30m", "--reason", "OPS-2 logs", "--poll", "1h", "--server", base})
	t.Setenv("SSHCA_TOKEN", alice())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	idRE := regexp.MustCompile(`(?m)^(req_[a-z2-7]{16})$`)
	var id string
	waitFor(t, 10*time.Second, "request create prints its ID and progress line", func() bool {
		m := idRE.FindStringSubmatch(out.String())
		if m != nil {
			id = m[1]
		}
		return m != nil && strings.Contains(out.String(), "waiting for approval: 0 of 1")
	})
	time.Sleep(300 * time.Millisecond) // the CLI is in its long poll
	if code, body := call(t, http.MethodGet, base+"/v1/requests/"+id, lead(), nil); code != http.StatusOK {
		t.Fatalf("show: %d %s", code, body)
	}
	var shown client.AccessRequest
	_, body := call(t, http.MethodGet, base+"/v1/requests/"+id, lead(), nil)
	_ = json.Unmarshal(body, &shown)
	if code, body := call(t, http.MethodPost, base+"/v1/requests/"+id+"/approve", lead(), map[string]any{"content_hash": shown.Hash()}); code != http.StatusOK {
		t.Fatalf("approve: %d %s", code, body)
	}
	select {
	case err := <-done:
		if err != nil || !strings.Contains(out.String(), "approved by lead@example.com") {
			t.Fatalf("request create: %v\n%s", err, out.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("request create did not see the approval (it polls instead of waiting?):\n%s", out.String())
	}
}

// TestAccessRequestRoutesLoggedAndCounted: every /v1/requests route goes through the same
// logging and metrics middleware as the rest of the API: one info line per call naming the
// call, its result and the X-Request-ID, and a count in sshca_api_calls_total by method; no
// token in any line.
func TestAccessRequestRoutesLoggedAndCounted(t *testing.T) {
	var logs testenv.SyncBuffer
	state := t.TempDir()
	base, _, _ := startDevLogging(t, state, slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo})))
	devSecrets.Store(base, readDevSecretT(t, state))
	claims := func(who string, groups ...string) map[string]any {
		return map[string]any{"sub": "u-" + who, "preferred_username": who, "email": who + "@example.com", "email_verified": true,
			"groups": groups, "amr": []string{"mfa"}, "auth_time": time.Now().Unix()}
	}
	var tokens []string
	tok := func(who string, groups ...string) string {
		s := devToken(t, base, claims(who, groups...))
		tokens = append(tokens, s)
		return s
	}
	// do calls the API and returns the X-Request-ID the server gave the call, and the body.
	do := func(method, path, token string, body any, wantCode int) (string, []byte) {
		t.Helper()
		var rd io.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		req, err := http.NewRequest(method, base+path, rd)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != wantCode {
			t.Fatalf("%s %s = %d %s, want %d", method, path, resp.StatusCode, out, wantCode)
		}
		rid := resp.Header.Get(services.RequestIDHeader)
		if rid == "" {
			t.Fatalf("%s %s: no %s in the answer", method, path, services.RequestIDHeader)
		}
		return rid, out
	}
	var created client.AccessRequest
	ridCreate, body := do(http.MethodPost, "/v1/requests", tok("alice", "developers"), map[string]any{"principals": []string{"root"}, "ttl": "30m", "reason": "OPS-1 disk full"}, 200)
	_ = json.Unmarshal(body, &created)
	id := created.ID
	var glass client.AccessRequest
	_, body = do(http.MethodPost, "/v1/requests", tok("oncall", "oncall"), map[string]any{"principals": []string{"root"}, "ttl": "20m", "reason": "INC-9 down", "break_glass": true}, 200)
	_ = json.Unmarshal(body, &glass)
	routes := []struct {
		op, rid string
	}{{"create", ridCreate}}
	add := func(op, method, path, token string, body any, code int) {
		rid, _ := do(method, path, token, body, code)
		routes = append(routes, struct{ op, rid string }{op, rid})
	}
	add("get", http.MethodGet, "/v1/requests/"+id, tok("alice", "developers"), nil, 200)
	add("wait", http.MethodGet, "/v1/requests/"+id+"?wait=1s&seen=pending/0", tok("alice", "developers"), nil, 200)
	add("list", http.MethodGet, "/v1/requests?pending=true", tok("lead", "sre-leads"), nil, 200)
	add("approve", http.MethodPost, "/v1/requests/"+id+"/approve", tok("lead", "sre-leads"), map[string]any{"content_hash": created.Hash()}, 200)
	add("cancel", http.MethodPost, "/v1/requests/"+id+"/cancel", tok("alice", "developers"), map[string]any{"reason": "done"}, 200)
	add("review", http.MethodPost, "/v1/requests/"+glass.ID+"/review", tok("lead", "sre-leads"), map[string]any{"reason": "fine"}, 200)
	var other client.AccessRequest
	_, body = do(http.MethodPost, "/v1/requests", tok("alice", "developers"), map[string]any{"principals": []string{"root"}, "ttl": "30m", "reason": "OPS-2 x"}, 200)
	_ = json.Unmarshal(body, &other)
	add("deny", http.MethodPost, "/v1/requests/"+other.ID+"/deny", tok("lead", "sre-leads"), map[string]any{"reason": "no"}, 200)
	add("approve", http.MethodPost, "/v1/requests/"+other.ID+"/approve", "not-a-token", map[string]any{"content_hash": "x"}, 401)

	waitFor(t, 5*time.Second, "every call's log line", func() bool { return strings.Contains(logs.String(), routes[len(routes)-1].rid) })
	type line struct {
		Msg, Result, RequestID string
	}
	var lines []line
	for _, l := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) != nil {
			continue
		}
		s := func(k string) string { v, _ := m[k].(string); return v }
		lines = append(lines, line{s("msg"), s("result"), s("request_id")})
	}
	for _, rt := range routes {
		found := false
		for _, l := range lines {
			found = found || (l.RequestID == rt.rid && l.Msg == "access request "+rt.op && l.Result != "")
		}
		if !found {
			t.Errorf("no \"access request %s\" line with result and request_id %s", rt.op, rt.rid)
		}
	}
	for _, secret := range tokens {
		if strings.Contains(logs.String(), secret) {
			t.Errorf("the log holds %.20q…", secret)
		}
	}

	_, metrics := getBody(t, base+"/metrics")
	for _, want := range []string{
		`sshca_api_calls_total{method="request_create",result="ok"} 3`,
		`sshca_api_calls_total{method="request_get",result="ok"} 1`,
		`sshca_api_calls_total{method="request_wait",result="ok"} 1`,
		`sshca_api_calls_total{method="request_list",result="ok"} 1`,
		`sshca_api_calls_total{method="request_approve",result="ok"} 1`,
		`sshca_api_calls_total{method="request_approve",result="unauthenticated"} 1`,
		`sshca_api_calls_total{method="request_deny",result="ok"} 1`,
		`sshca_api_calls_total{method="request_cancel",result="ok"} 1`,
		`sshca_api_calls_total{method="request_review",result="ok"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// TestRequestWaitHonoursRetryAfter: `sshca request create` waiting for a decision, turned away
// with 503 and Retry-After (a replica holding as many waits as it may, limits.rate.
// request_long_polls), asks again no sooner than the Retry-After, though its --poll is shorter;
// without Retry-After, after --poll; then it sees the approval.
func TestRequestWaitHonoursRetryAfter(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch calls.Add(1) {
		case 1:
			w.Header().Set("Retry-After", "5")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(`{"error":"server busy: this replica holds as many long polls as it may"}`))
		case 2:
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(`{"error":"store unavailable"}`))
		default:
			_ = json.NewEncoder(w).Encode(client.AccessRequest{ID: "req_aaaaaaaaaaaaaaaa", State: "approved", ApprovalsRequired: 1})
		}
	}))
	defer srv.Close()
	var mu sync.Mutex
	var pauses []time.Duration
	w := requestWait{interval: 2 * time.Second, now: time.Now, after: func(d time.Duration) <-chan time.Time {
		mu.Lock()
		pauses = append(pauses, d)
		mu.Unlock()
		ch := make(chan time.Time, 1)
		ch <- time.Now()
		return ch
	}}
	var out testenv.SyncBuffer
	pending := client.AccessRequest{ID: "req_aaaaaaaaaaaaaaaa", State: "pending", ApprovalsRequired: 1}
	if err := waitForDecision(context.Background(), &out, client.New(srv.URL), "tok", pending, w); err != nil {
		t.Fatalf("waitForDecision: %v\n%s", err, out.String())
	}
	mu.Lock()
	defer mu.Unlock()
	if len(pauses) != 2 || pauses[0] < 5*time.Second || pauses[0] > 5*time.Second+time.Millisecond ||
		pauses[1] > 2*time.Second || pauses[1] < 2*time.Second-500*time.Millisecond {
		t.Errorf("pauses %v, want the Retry-After (5s) after the first refusal and --poll (2s) after the second", pauses)
	}
}
