package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestAccessRequestHTTPBadInput: /v1/requests through the real HTTP server (`sshca dev`): every
// malformed, unauthenticated or out-of-turn call gets its 4xx with a message that names the
// field and the fix, never a 500.
func TestAccessRequestHTTPBadInput(t *testing.T) {
	base, _ := startDev(t)
	alice := devToken(t, base, map[string]any{"sub": "u-alice", "preferred_username": "alice", "email": "alice@example.com",
		"email_verified": true, "groups": []string{"developers"}, "amr": []string{"mfa"}})
	lead := devToken(t, base, map[string]any{"sub": "u-lead", "preferred_username": "lead", "email": "lead@example.com",
		"email_verified": true, "groups": []string{"sre-leads"}, "amr": []string{"hwk"}})
	code, body := call(t, http.MethodPost, base+"/v1/requests", alice, map[string]any{"principals": []string{"root"}, "ttl": "30m", "reason": "OPS-1 disk"})
	var created struct {
		ID          string `json:"id"`
		ContentHash string `json:"content_hash"`
	}
	if code != http.StatusOK || json.Unmarshal(body, &created) != nil || created.ID == "" {
		t.Fatalf("create: %d %s", code, body)
	}
	id := created.ID
	for _, c := range []struct {
		method, path, token string
		body                any
		code                int
		msg                 string
	}{
		{"POST", "/v1/requests", "", map[string]any{"principals": []string{"root"}, "ttl": "30m", "reason": "OPS-1"}, 401, "missing bearer token"},
		{"POST", "/v1/requests", "not-a-token", map[string]any{"principals": []string{"root"}, "ttl": "30m", "reason": "OPS-1"}, 401, ""},
		{"POST", "/v1/requests", alice, `{"principals": "root", "ttl": "30m", "reason": "OPS-1"}`, 400, "principals"},
		{"POST", "/v1/requests", alice, `{"principals": ["root"], "ttl": "30m", "reason": "OPS-1", "approved": true}`, 400, "approved"},
		{"POST", "/v1/requests", alice, `{"principals": ["root"], "ttl": "30 minutes", "reason": "OPS-1"}`, 400, "ttl"},
		{"POST", "/v1/requests", alice, `{"principals": ["root"], "ttl": "30m"}`, 400, "reason is required"},
		{"POST", "/v1/requests", alice, `{"principals": [], "ttl": "30m", "reason": "OPS-1"}`, 400, "principals: name at least one"},
		{"POST", "/v1/requests", alice, `{"principals": ["root"], "ttl": "1000h", "reason": "OPS-1"}`, 400, "ttl"},
		{"POST", "/v1/requests", alice, `{"principals": ["root"], "ttl": "5h", "reason": "OPS-1"}`, 403, "exceeds the policy maximum"},
		{"POST", "/v1/requests", alice, strings.Repeat(" ", 70<<10), 413, ""},
		{"GET", "/v1/requests/req_nonexistentnonex", alice, nil, 404, "no access request"},
		{"GET", "/v1/requests/..%2f..%2fetc", alice, nil, 400, "not an access request ID"},
		{"GET", "/v1/requests/" + id, "", nil, 401, "missing bearer token"},
		{"POST", "/v1/requests/" + id + "/approve", lead, `{}`, 400, "content_hash is required"},
		{"POST", "/v1/requests/" + id + "/approve", lead, `{"content_hash": "00"}`, 409, "content_hash does not match"},
		{"POST", "/v1/requests/" + id + "/approve", alice, map[string]any{"content_hash": created.ContentHash}, 403, "your own access request"},
		{"POST", "/v1/requests/" + id + "/approve", lead, `not json`, 400, ""},
		{"POST", "/v1/requests/" + id + "/deny", lead, `{}`, 400, "reason is required to deny"},
		{"POST", "/v1/requests/" + id + "/cancel", lead, `{}`, 400, "reason is required"},
		{"POST", "/v1/requests/" + id + "/cancel", lead, `{"reason": "no"}`, 403, "may not revoke"},
		{"POST", "/v1/certs/user", alice, map[string]any{"public_key": "x", "access_request": id}, 400, ""},
		{"POST", "/v1/certs/host", alice, map[string]any{"public_key": "x", "hostnames": []string{"a"}, "access_request": id}, 400, "access_request is for user certificates only"},
	} {
		code, body := call(t, c.method, base+c.path, c.token, c.body)
		if code != c.code || !strings.Contains(string(body), c.msg) {
			t.Errorf("%s %s %v: %d %s, want %d with %q", c.method, c.path, c.body, code, body, c.code, c.msg)
		}
	}
	// The request is still pending and unchanged after all that.
	code, body = call(t, http.MethodGet, base+"/v1/requests/"+id, alice, nil)
	if code != http.StatusOK || !strings.Contains(string(body), `"state":"pending"`) || !strings.Contains(string(body), `"approvals":[]`) {
		t.Errorf("after the bad calls: %d %s", code, body)
	}
}

// TestLoginUnderRequest: `sshca login --request ID` gets root under alice's approved request
// (device flow against `sshca dev`), and not under someone else's.
func TestLoginUnderRequest(t *testing.T) {
	base, _ := startDev(t)
	t.Setenv("HOME", t.TempDir())
	aliceClaims := func() map[string]any {
		return map[string]any{"sub": "u-alice", "preferred_username": "alice", "email": "alice@example.com",
			"email_verified": true, "groups": []string{"developers"}, "amr": []string{"mfa"}, "auth_time": time.Now().Unix()}
	}
	leadClaims := map[string]any{"sub": "u-lead", "preferred_username": "lead", "email": "lead@example.com",
		"email_verified": true, "groups": []string{"sre-leads"}, "amr": []string{"hwk"}, "auth_time": time.Now().Unix()}
	code, body := call(t, http.MethodPost, base+"/v1/requests", devToken(t, base, aliceClaims()),
		map[string]any{"principals": []string{"root"}, "ttl": "30m", "reason": "OPS-1234 disk full"})
	var r struct {
		ID          string `json:"id"`
		ContentHash string `json:"content_hash"`
	}
	if code != http.StatusOK || json.Unmarshal(body, &r) != nil {
		t.Fatalf("create: %d %s", code, body)
	}
	if code, body := call(t, http.MethodPost, base+"/v1/requests/"+r.ID+"/approve", devToken(t, base, leadClaims),
		map[string]any{"content_hash": r.ContentHash}); code != http.StatusOK || !strings.Contains(string(body), `"state":"approved"`) {
		t.Fatalf("approve: %d %s", code, body)
	}
	out, err := login(t, base, loginFlags{request: r.ID, noAgent: true, ttl: "5m"}, approveAs(t, base, aliceClaims()))
	if err != nil || !strings.Contains(out, "principals root, valid until") {
		t.Fatalf("login --request: %v\n%s", err, out)
	}
	out, err = login(t, base, loginFlags{request: r.ID, noAgent: true, ttl: "5m"}, approveAs(t, base, leadClaims))
	if err == nil || !strings.Contains(err.Error(), "only its requester can use it") {
		t.Fatalf("lead logged in under alice's request: %v\n%s", err, out)
	}
}

// TestBreakGlassCLI: `sshca request create --break-glass` is granted at once for oncall, a
// certificate follows under it, reports show its review missing until an approver reviews it.
func TestBreakGlassCLI(t *testing.T) {
	base, _ := startDev(t)
	dir := t.TempDir()
	tokenFile := func(claims map[string]any) string {
		claims["auth_time"] = time.Now().Unix()
		path := filepath.Join(dir, fmt.Sprint(claims["sub"], time.Now().UnixNano(), ".token"))
		writeFile(t, path, devToken(t, base, claims))
		return path
	}
	oncall := func() string {
		return tokenFile(map[string]any{"sub": "u-oncall", "preferred_username": "oncall", "email": "oncall@example.com",
			"email_verified": true, "groups": []string{"oncall"}, "amr": []string{"mfa"}})
	}
	lead := func() string {
		return tokenFile(map[string]any{"sub": "u-lead", "preferred_username": "lead", "email": "lead@example.com",
			"email_verified": true, "groups": []string{"sre-leads"}, "amr": []string{"hwk"}})
	}
	out, err := runCLI(t, "", "request", "create", "--break-glass", "--principal", "root", "--ttl", "20m", "--reason", "INC-9 site down",
		"--server", base, "--token-file", oncall())
	if err != nil || !strings.Contains(out, "BREAK-GLASS access") {
		t.Fatalf("break-glass: %v\n%s", err, out)
	}
	id := strings.SplitN(out, "\n", 2)[0]
	userKey := keygen(t, dir, "oncall")
	out, err = runCLI(t, "", "cert", "user", "--key", userKey+".pub", "--request", id, "--ttl", "5m", "--server", base, "--token-file", oncall())
	if err != nil || !strings.Contains(out, "principals root") {
		t.Fatalf("certificate under break-glass: %v\n%s", err, out)
	}
	out, err = runCLI(t, "", "request", "list", "--server", base, "--token-file", lead())
	if err != nil || !strings.Contains(out, id) || !strings.Contains(out, "break-glass, review missing") {
		t.Fatalf("list before review: %v\n%s", err, out)
	}
	if out, err := runCLI(t, "", "request", "review", id, "--server", base, "--token-file", oncall()); err == nil {
		t.Fatalf("the requester reviewed their own break-glass:\n%s", out)
	}
	out, err = runCLI(t, "", "request", "review", id, "--reason", "incident INC-9 confirmed", "--server", base, "--token-file", lead())
	if err != nil || !strings.Contains(out, "reviewed by") {
		t.Fatalf("review: %v\n%s", err, out)
	}
	out, err = runCLI(t, "", "request", "show", id, "--server", base, "--token-file", lead())
	if err != nil || !strings.Contains(out, "break-glass review ") || strings.Contains(out, "MISSING") || !strings.Contains(out, "incident INC-9 confirmed") {
		t.Fatalf("show after review: %v\n%s", err, out)
	}
}
