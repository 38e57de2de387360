package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
)

func runCLI(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	cmd := newRootCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetIn(strings.NewReader(stdin))
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(context.Background())
	return out.String(), err
}

func TestPolicyTools(t *testing.T) {
	dir := filepath.Join("..", "..", "policies")
	out, err := runCLI(t, "", "policy", "test", dir)
	if err != nil || !strings.Contains(out, "PASS") {
		t.Fatalf("policy test: %v\n%s", err, out)
	}
	// root under an approved access request (the shipped data grants it no other way), asked
	// for without a second factor.
	alice := `{"issuer":"https://idp","subject":"u1","email":"alice@example.com","username":"alice","groups":["ops"],"amr":["pwd"],"workload":false,"claims":{}}`
	lead := `{"issuer":"https://idp","subject":"u7","email":"lead@example.com","username":"lead","groups":["sre-leads"],"amr":["hwk"],"workload":false,"claims":{}}`
	standing := `{"kind":"user","identity":` + alice + `,
	 "request":{"principals":["root"],"ttl_seconds":0,"key_type":"ssh-ed25519","key_fingerprint":"SHA256:x","source_ip":"127.0.0.1","reason":"because"},"now":"2026-11-25T10:00:00Z"}`
	in := strings.TrimSuffix(standing, "}") + `,"access_request":{"id":"req_aaaaaaaaaaaaaaaa","requester":` + alice +
		`,"principals":["root"],"ttl_seconds":1800,"reason":"OPS-1 disk","approvals":[{"approver":` + lead + `,"at":"2026-11-25T09:58:00Z","reason":"ok"}],"break_glass":false}}`
	out, err = runCLI(t, standing, "policy", "eval", dir, "--input", "-")
	if err != nil || !strings.Contains(out, `"allow": false`) || !strings.Contains(out, "principal root is not granted") {
		t.Fatalf("policy eval without a request: %v\n%s", err, out)
	}
	out, err = runCLI(t, in, "policy", "eval", dir, "--input", "-")
	if err != nil || !strings.Contains(out, `"allow": false`) || !strings.Contains(out, "needs a second factor") {
		t.Fatalf("policy eval: %v\n%s", err, out)
	}
	out, err = runCLI(t, in, "policy", "explain", dir, "--input", "-")
	if err != nil || !strings.Contains(out, `granted_privileged   ["root"]`) || !strings.Contains(out, "has_mfa              \"(undefined") {
		t.Fatalf("policy explain: %v\n%s", err, out)
	}
	broken := t.TempDir()
	writeFile(t, filepath.Join(broken, "p.rego"), "package sshca\n\nimport rego.v1\n\ntest_fails if false\n")
	if out, err := runCLI(t, "", "policy", "test", broken); err == nil {
		t.Fatalf("policy test passed a failing test:\n%s", out)
	}
}
