package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// canonicalJSON is the JSON document b with sorted keys and numbers as written.
func canonicalJSON(t *testing.T, b []byte) string {
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

// TestPolicyEvalSeesGolden: `sshca policy eval` on policies/testdata/input/<kind>.json shows
// the echo policy (policies/testdata/echo) exactly that document, as the server's path does
// (policies' TestEchoSeesGolden).
func TestPolicyEvalSeesGolden(t *testing.T) {
	policiesDir := filepath.Join("..", "..", "policies")
	echo := filepath.Join(policiesDir, "testdata", "echo")
	for _, kind := range []string{"user", "host", "renew", "revoke", "admin", "request", "approve"} {
		path := filepath.Join(policiesDir, "testdata", "input", kind+".json")
		golden, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		out, err := runCLI(t, "", "policy", "eval", echo, "--input", path)
		if err != nil {
			t.Fatalf("%s: %v\n%s", kind, err, out)
		}
		var d struct{ Reasons []string }
		if err := json.Unmarshal([]byte(out), &d); err != nil || len(d.Reasons) != 1 {
			t.Fatalf("%s: echo decision %v: %s", kind, err, out)
		}
		if diff := cmp.Diff(canonicalJSON(t, golden), canonicalJSON(t, []byte(d.Reasons[0]))); diff != "" {
			t.Errorf("%s: policy eval showed the policy another input than %s (-golden +seen):\n%s", kind, path, diff)
		}
	}
}

// TestPolicyEvalRefusesUndocumentedKeys: an input written to another shape than the contract
// (keyType for key_type) is refused, not evaluated with the key missing.
func TestPolicyEvalRefusesUndocumentedKeys(t *testing.T) {
	dir := filepath.Join("..", "..", "policies")
	golden, err := os.ReadFile(filepath.Join(dir, "testdata", "input", "user.json"))
	if err != nil {
		t.Fatal(err)
	}
	drifted := strings.Replace(string(golden), `"key_type"`, `"keyType"`, 1)
	if drifted == string(golden) {
		t.Fatal("user.json has no key_type to rename")
	}
	for _, sub := range []string{"eval", "explain"} {
		out, err := runCLI(t, drifted, "policy", sub, dir, "--input", "-")
		if err == nil || !strings.Contains(err.Error(), `unknown field "keyType"`) {
			t.Errorf("policy %s on an input with keyType: %v\n%s", sub, err, out)
		}
	}
}
