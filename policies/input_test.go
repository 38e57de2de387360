package policies

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/sshca/sshca/ca"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/ and the JSON blocks of README.md")

// goldenKinds are the kinds the server builds inputs for, in the order README.md shows them.
var goldenKinds = []ca.Action{ca.ActionUser, ca.ActionHost, ca.ActionRenew, ca.ActionRevoke, ca.ActionAdmin,
	ca.ActionRead, ca.ActionRequest, ca.ActionApprove}

// goldenInputs are one input of each kind, as ca.Authority builds them (issueFor, Renew,
// authorize): testdata/input/<kind>.json are their JSON form, README.md shows them.
func goldenInputs() map[ca.Action]ca.PolicyInput {
	now := "2026-11-25T10:00:00Z"
	alice := ca.Identity{Issuer: "https://idp.example", Subject: "u1", Email: "alice@example.com", Username: "alice",
		Groups: []string{"ops", "bastion-users"}, AMR: []string{"pwd", "mfa"}, ACR: "phr", AuthTime: 1795600500,
		Claims: map[string]any{"department": "sre"}}
	admin := ca.Identity{Issuer: "https://idp.example", Subject: "u9", Email: "sec@example.com", Username: "sec",
		Groups: []string{"sshca-admins"}, AMR: []string{"pwd", "hwk"}, AuthTime: 1795600200, Claims: map[string]any{}}
	job := ca.Identity{Issuer: "https://ci.example", Subject: "repo:org/app:ref:refs/heads/main", Groups: []string{},
		AMR: []string{}, Workload: true, Claims: map[string]any{"repository_id": "123456789", "ref": "refs/heads/main"}}
	host := ca.Identity{Issuer: "sshca:renew", Subject: "repo:org/app:ref:refs/heads/main", Groups: []string{},
		AMR: []string{}, Workload: true, Claims: map[string]any{"serial": "1234567", "key_id": "repo:org/app:ref:refs/heads/main#1234567"}}
	lead := ca.Identity{Issuer: "https://idp.example", Subject: "u7", Email: "lead@example.com", Username: "lead",
		Groups: []string{"sre-leads"}, AMR: []string{"pwd", "hwk"}, AuthTime: 1795600800, Claims: map[string]any{"department": "sre"}}
	rootRequest := ca.PolicyAccessRequest{ID: "req_k5qw3bfn7yxa2dzc", Requester: alice, Principals: []string{"root"},
		TTLSeconds: 1800, Reason: "OPS-1234 disk full", Approvals: []ca.PolicyApproval{}}
	approved := rootRequest
	approved.Approvals = []ca.PolicyApproval{{Approver: lead, At: "2026-11-25T09:58:00Z", Reason: "looked at OPS-1234"}}
	auditor := ca.Identity{Issuer: "https://idp.example", Subject: "u12", Email: "audit@example.com", Username: "audit",
		Groups: []string{"auditors"}, AMR: []string{"pwd", "hwk"}, AuthTime: 1795600300, Claims: map[string]any{}}
	return map[ca.Action]ca.PolicyInput{
		ca.ActionRead: {Kind: ca.ActionRead, Identity: auditor, Now: now, Request: ca.PolicyRequest{
			Principals: []string{}, Target: "list certificates with principal root"}},
		ca.ActionRequest: {Kind: ca.ActionRequest, Identity: alice, Now: now, Request: ca.PolicyRequest{
			Principals: []string{"root"}, TTLSeconds: 1800, SourceIP: "192.0.2.10", Reason: "OPS-1234 disk full",
			Target: "request:req_k5qw3bfn7yxa2dzc"}, AccessRequest: rootRequest},
		ca.ActionApprove: {Kind: ca.ActionApprove, Identity: lead, Now: now, Request: ca.PolicyRequest{
			Principals: []string{"root"}, TTLSeconds: 1800, Reason: "looked at OPS-1234",
			Target: "request:req_k5qw3bfn7yxa2dzc"}, AccessRequest: approved},
		ca.ActionUser: {Kind: ca.ActionUser, Identity: alice, Now: now, Request: ca.PolicyRequest{
			Principals: []string{"alice"}, TTLSeconds: 300, KeyType: "ssh-ed25519",
			KeyFingerprint: "SHA256:1Fhx0GcLqgZQx8VzJ2e8QkXSpYLxTnLJKrYQeYxXqk4", SourceIP: "192.0.2.10", Reason: "OPS-1234 disk full"}},
		ca.ActionHost: {Kind: ca.ActionHost, Identity: job, Now: now, Request: ca.PolicyRequest{
			Principals: []string{"web1.prod.internal"}, TTLSeconds: 3600, KeyType: "ecdsa-sha2-nistp256",
			KeyFingerprint: "SHA256:Yt3xPkVv8o2mC6Zb1m2Qn0f9l7eR5wS4aT3uV2xW1yZ", SourceIP: "192.0.2.20"}},
		ca.ActionRenew: {Kind: ca.ActionRenew, Identity: host, Now: now, Request: ca.PolicyRequest{
			Principals: []string{"web1.prod.internal"}, KeyType: "ecdsa-sha2-nistp256",
			KeyFingerprint: "SHA256:Yt3xPkVv8o2mC6Zb1m2Qn0f9l7eR5wS4aT3uV2xW1yZ", SourceIP: "192.0.2.20"}},
		ca.ActionRevoke: {Kind: ca.ActionRevoke, Identity: admin, Now: now, Request: ca.PolicyRequest{
			Principals: []string{}, Reason: "laptop stolen (SEC-77)", Target: "serial:1234567"}},
		ca.ActionAdmin: {Kind: ca.ActionAdmin, Identity: admin, Now: now, Request: ca.PolicyRequest{
			Principals: []string{}, Target: "promote user CA key"}},
	}
}

// goldenDecision is a decision with every key set: testdata/decision.json, shown in README.md.
func goldenDecision() ca.PolicyDecision {
	return ca.PolicyDecision{Allow: true, Reasons: []string{}, Principals: []string{"alice", "root"}, TTLSeconds: 300,
		Extensions: map[string]string{"permit-pty": ""}, CriticalOptions: map[string]string{"source-address": "10.0.0.0/8"},
		Ticket: "OPS-1234", ApprovalsRequired: 2}
}

// goldens are the golden files and the Go values they are the JSON form of.
func goldens() map[string]any {
	out := map[string]any{filepath.Join("testdata", "decision.json"): goldenDecision()}
	for kind, in := range goldenInputs() {
		out[filepath.Join("testdata", "input", string(kind)+".json")] = in
	}
	return out
}

func indented(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

// TestGoldenDocuments: testdata/input/<kind>.json and testdata/decision.json are the JSON form
// of the Go types (-update rewrites them).
func TestGoldenDocuments(t *testing.T) {
	if len(goldenInputs()) != len(goldenKinds) {
		t.Fatalf("goldenInputs has %d kinds, goldenKinds %d", len(goldenInputs()), len(goldenKinds))
	}
	for path, v := range goldens() {
		want := indented(t, v)
		if *update {
			if err := os.WriteFile(path, want, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run `go test ./policies -run TestGoldenDocuments -update` to create it)", err)
		}
		if diff := cmp.Diff(string(want), string(got)); diff != "" {
			t.Errorf("%s is not the JSON form of its Go value (-type +file; -update if intended):\n%s", path, diff)
		}
	}
}

// readmeBlock is a JSON block of README.md and the golden file its marker names:
// "<!-- golden: testdata/input/user.json -->" on the line before "```json".
var readmeBlock = regexp.MustCompile("(?m)^<!-- golden: (\\S+) -->\n```json\n((?s:.*?))```\n")

// TestREADMEShowsGoldens: every ```json block of README.md is marked with the golden file it
// shows and is that file byte for byte; the user, revoke and decision documents are shown.
// -update rewrites the marked blocks from the goldens.
func TestREADMEShowsGoldens(t *testing.T) {
	raw, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		raw = readmeBlock.ReplaceAllFunc(raw, func(m []byte) []byte {
			path := readmeBlock.FindSubmatch(m)[1]
			b, err := os.ReadFile(string(path))
			if err != nil {
				t.Fatal(err)
			}
			return []byte("<!-- golden: " + string(path) + " -->\n```json\n" + string(b) + "```\n")
		})
		if err := os.WriteFile("README.md", raw, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	readme := string(raw)
	if n, marked := strings.Count(readme, "```json\n"), len(readmeBlock.FindAllString(readme, -1)); n != marked {
		t.Errorf("README.md has %d json blocks, %d of them marked with their golden file", n, marked)
	}
	shown := map[string]bool{}
	for _, m := range readmeBlock.FindAllStringSubmatch(readme, -1) {
		path, block := m[1], m[2]
		shown[path] = true
		want, err := os.ReadFile(path)
		if err != nil {
			t.Errorf("README.md shows %s: %v", path, err)
			continue
		}
		if diff := cmp.Diff(string(want), block); diff != "" {
			t.Errorf("README.md's block for %s differs from it (-golden +README; -update rewrites the block):\n%s", path, diff)
		}
	}
	for _, path := range []string{"testdata/input/user.json", "testdata/input/revoke.json", "testdata/decision.json"} {
		if !shown[path] {
			t.Errorf("README.md does not show %s", path)
		}
	}
}

// jsonValue is the OPA value of v's JSON form, as OPA parses JSON input.
func jsonValue(t testing.TB, v any) ast.Value {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	val, err := ast.ValueFromReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	return val
}

// canonical is the JSON document b re-encoded with sorted keys and numbers as written.
func canonical(t testing.TB, b []byte) string {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("%v in %s", err, b)
	}
	out, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// TestEchoSeesGolden: a policy that echoes input (testdata/echo) sees exactly the golden
// document of each kind through Engine.Decide, the server's path, with the compiled evaluator
// and with topdown. (cmd/sshca's TestPolicyEvalSeesGolden runs `sshca policy eval` on it.)
func TestEchoSeesGolden(t *testing.T) {
	ctx := t.Context()
	for _, ev := range evaluators {
		t.Run(ev.name, func(t *testing.T) {
			e, err := LoadDir(ctx, filepath.Join("testdata", "echo"), ev.opts...)
			if err != nil {
				t.Fatal(err)
			}
			if e.Mode() != ev.mode {
				t.Fatalf("mode %q, want %q", e.Mode(), ev.mode)
			}
			for _, kind := range goldenKinds {
				golden, err := os.ReadFile(filepath.Join("testdata", "input", string(kind)+".json"))
				if err != nil {
					t.Fatal(err)
				}
				d, err := e.Decide(ctx, goldenInputs()[kind])
				if err != nil {
					t.Fatal(err)
				}
				if len(d.Reasons) != 1 {
					t.Fatalf("%s: echo gave reasons %q", kind, d.Reasons)
				}
				if diff := cmp.Diff(canonical(t, golden), canonical(t, []byte(d.Reasons[0]))); diff != "" {
					t.Errorf("%s: the policy saw another input than testdata/input/%s.json (-golden +seen):\n%s", kind, kind, diff)
				}
			}
		})
	}
}
