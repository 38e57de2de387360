package plan

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
)

// shipped compiles sshca's own policy (the parent directory) with its data.
func shipped(t *testing.T) *Program {
	t.Helper()
	src, err := os.ReadFile("../sshca.rego")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile("../data.json")
	if err != nil {
		t.Fatal(err)
	}
	data, err := ast.ValueFromReader(strings.NewReader(string(raw)))
	if err != nil {
		t.Fatal(err)
	}
	p, err := Compile(context.Background(), "data.sshca.decision", []Module{{Name: "sshca.rego", Source: string(src)}}, data)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestFaultIsAnError: a fault inside the evaluator (here a frame made too small) is caught and
// returned as an error, and the program stays usable.
func TestFaultIsAnError(t *testing.T) {
	ctx := context.Background()
	p := shipped(t)
	in := ast.MustParseTerm(`{"kind": "user", "identity": {"issuer": "https://idp", "subject": "u1", "username": "alice", "groups": [], "amr": [], "claims": {}}, "request": {"principals": [], "ttl_seconds": 0}, "now": "2026-11-25T10:00:00Z"}`).Value
	want, err := p.Eval(ctx, in)
	if err != nil || want == nil {
		t.Fatalf("shipped policy: %v, %v", want, err)
	}
	saved := p.locals
	p.locals = 1
	if _, err := p.Eval(ctx, in); err == nil || !strings.Contains(err.Error(), "evaluation failed") {
		t.Fatalf("a faulty evaluation gave no error: %v", err)
	}
	p.locals = saved
	if got, err := p.Eval(ctx, in); err != nil || ast.Compare(got, want) != 0 {
		t.Fatalf("after a fault: %v, %v; want %v", got, err, want)
	}
}

// TestStatements: the shipped policy's plan holds only statements Eval runs, and Statements
// names them.
func TestStatements(t *testing.T) {
	p := shipped(t)
	handled := map[string]bool{}
	for _, k := range Handled() {
		handled[k] = true
	}
	got := p.Statements()
	if len(got) < 10 {
		t.Fatalf("statements %v: too few", got)
	}
	for _, k := range got {
		if !handled[k] {
			t.Errorf("statement %s is not handled", k)
		}
	}
	t.Logf("the shipped plan uses %d kinds of statement: %v", len(got), got)
}

// TestUnsupported: a plan with a statement or built-in Eval does not run is refused at Compile.
func TestUnsupported(t *testing.T) {
	for name, body := range map[string]string{
		"with":    "f := input.kind\n\nd := g\n\ng if f == \"user\" with input.kind as \"user\"\n",
		"now":     "d := time.now_ns()\n",
		"runtime": "d := opa.runtime()\n",
	} {
		t.Run(name, func(t *testing.T) {
			src := "package p\n\n" + body
			_, err := Compile(context.Background(), "data.p.d", []Module{{Name: "p.rego", Source: src}}, ast.NewObject())
			if err == nil || !strings.Contains(err.Error(), ErrUnsupported.Error()) {
				t.Fatalf("Compile: %v, want %v", err, ErrUnsupported)
			}
		})
	}
}
