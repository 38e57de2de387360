package policies_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/policies"
)

// TestRego runs the policy's own Rego tests (sshca_test.rego) through OPA's tester.
func TestRego(t *testing.T) {
	if err := policies.Test(context.Background(), "."); err != nil {
		t.Fatal(err)
	}
}

func userInput(groups []string, principals ...string) ca.PolicyInput {
	return ca.PolicyInput{
		Kind:     ca.ActionUser,
		Identity: ca.Identity{Issuer: "https://idp", Subject: "u1", Email: "alice@example.com", Username: "alice", Groups: groups, AMR: []string{}, Claims: map[string]any{}},
		Request:  ca.PolicyRequest{Principals: principals, KeyType: "ssh-ed25519"},
		Now:      "2026-11-25T10:00:00Z",
	}
}

func TestDecide(t *testing.T) {
	ctx := context.Background()
	e, err := policies.LoadFS(ctx, policies.Embedded)
	if err != nil {
		t.Fatal(err)
	}
	d, err := e.Decide(ctx, userInput(nil))
	if err != nil {
		t.Fatal(err)
	}
	want := ca.Decision{Allow: true, Reasons: []string{}, Principals: []string{"alice"}, TTL: 600e9,
		Extensions: map[string]string{"permit-pty": ""}, CriticalOptions: map[string]string{}, Revision: e.Revision()}
	if diff := cmp.Diff(want, d); diff != "" {
		t.Errorf("decision (-want +got):\n%s", diff)
	}
	d, err = e.Decide(ctx, userInput(nil, "root"))
	if err != nil {
		t.Fatal(err)
	}
	if d.Allow || len(d.Reasons) != 1 || !strings.Contains(d.Reasons[0], "principal root is not granted") {
		t.Errorf("root: %+v", d)
	}
}

// TestDataFileOnly: the same Rego with only data.json changed grants something else.
func TestDataFileOnly(t *testing.T) {
	ctx := context.Background()
	before, err := policies.LoadDir(ctx, ".")
	if err != nil {
		t.Fatal(err)
	}
	in := userInput([]string{"dba"}, "postgres")
	if d, _ := before.Decide(ctx, in); d.Allow {
		t.Fatalf("shipped data already grants postgres to dba: %+v", d)
	}
	data, err := os.ReadFile("data.json")
	if err != nil {
		t.Fatal(err)
	}
	changed := strings.Replace(string(data), `"admins": ["admin"]`, `"admins": ["admin"], "dba": ["postgres"]`, 1)
	if changed == string(data) {
		t.Fatal("data.json no longer has the admins mapping this test edits")
	}
	path := filepath.Join(t.TempDir(), "data.json")
	if err := os.WriteFile(path, []byte(changed), 0o600); err != nil {
		t.Fatal(err)
	}
	after, err := policies.LoadDir(ctx, ".", policies.WithDataFile(path))
	if err != nil {
		t.Fatal(err)
	}
	d, err := after.Decide(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	if !d.Allow || !cmp.Equal(d.Principals, []string{"postgres"}) {
		t.Errorf("after the data change: %+v", d)
	}
	if before.Revision() == after.Revision() {
		t.Error("the revision did not change with the data")
	}
}

func TestBrokenPolicyRefused(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "p.rego"), []byte("package sshca\n\ndecision := {"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := policies.LoadDir(context.Background(), dir); err == nil {
		t.Fatal("a policy that does not compile was loaded")
	}
}

func TestUndefinedDecisionFailsClosed(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "p.rego"), []byte("package sshca\n\nimport rego.v1\n\ndecision := {\"allow\": true} if input.kind == \"never\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e, err := policies.LoadDir(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	if d, err := e.Decide(context.Background(), userInput(nil)); err == nil {
		t.Fatalf("undefined decision gave %+v, want an error", d)
	}
}

// BenchmarkDecide times one decision of the shipped policy (a user certificate for a member of
// admins), compiled and, for the ratio in the same run, interpreted by OPA's topdown.
func BenchmarkDecide(b *testing.B) {
	ctx := context.Background()
	for _, mode := range []struct {
		name string
		opts []policies.Option
	}{{"compiled", nil}, {"interpreted", []policies.Option{policies.Interpreted()}}} {
		b.Run(mode.name, func(b *testing.B) {
			e, err := policies.LoadFS(ctx, policies.Embedded, mode.opts...)
			if err != nil {
				b.Fatal(err)
			}
			in := userInput([]string{"admins"})
			if d, err := e.Decide(ctx, in); err != nil || !d.Allow {
				b.Fatalf("decision %+v %v", d, err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := e.Decide(ctx, in); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
