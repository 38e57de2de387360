package plan

import (
	"context"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/ir"
)

// sharedPolicy has rules of (input, data) that read input in every way the planner passes it
// on (directly, through a copy, as a function's argument, to a built-in, through another
// rule), beside rules of data and constants alone.
const sharedPolicy = `package p

limit := data.limit

kinds := {"a", "b"}

plus_one := limit + 1

direct := input.n

copied := x if {
	i := input
	x := i.n
}

g(x) := x.n

via_function := g(input)

via_builtin := object.get(input, "n", 0)

via_rule := direct + limit

via_scan := [v | some v in input.xs]

d := {"limit": limit, "kinds": kinds, "plus_one": plus_one, "direct": direct, "copied": copied,
	"via_function": via_function, "via_builtin": via_builtin, "via_rule": via_rule, "via_scan": via_scan}
`

// functions are the planned functions a program calls, by name.
func functions(p *Program) map[string]*callee {
	out := map[string]*callee{}
	var visit func(b *ir.Block)
	visit = func(b *ir.Block) {
		localsOf(b, func(s *callStmt, _ int, _ ir.Local) {
			if s == nil || s.callee.fn == nil || out[s.callee.name] != nil {
				return
			}
			out[s.callee.name] = s.callee
			for _, nb := range s.callee.fn.Blocks {
				visit(nb)
			}
		})
	}
	for _, b := range p.plan.Blocks {
		visit(b)
	}
	return out
}

// TestDataOnly: only the rules that input cannot reach are kept across evaluations; every way
// of reading input leaves a rule evaluated afresh, so a second input gets its own answer.
func TestDataOnly(t *testing.T) {
	ctx := context.Background()
	compile := func(limit int) *Program {
		data := ast.MustParseTerm(`{"limit": ` + ast.IntNumberTerm(limit).String() + `}`).Value
		p, err := Compile(ctx, "data.p.d", []Module{{Name: "p.rego", Source: sharedPolicy}}, data)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	p := compile(10)
	got := map[string]bool{}
	for name, c := range functions(p) {
		if c.slot >= 0 {
			got[strings.TrimPrefix(name, "g0.data.p.")] = c.dataOnly
		}
	}
	want := map[string]bool{"limit": true, "kinds": true, "plus_one": true, "direct": false, "copied": false,
		"via_function": false, "via_builtin": false, "via_rule": false, "via_scan": false, "d": false}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("data-only rules (-want +got):\n%s", diff)
	}
	eval := func(p *Program, in string) string {
		t.Helper()
		v, err := p.Eval(ctx, ast.MustParseTerm(in).Value)
		if err != nil || v == nil {
			t.Fatalf("eval %s: %v %v", in, v, err)
		}
		return v.String()
	}
	first := eval(p, `{"n": 1, "xs": [1]}`)
	if want := `{"copied": 1, "direct": 1, "kinds": {"a", "b"}, "limit": 10, "plus_one": 11, "via_builtin": 1, "via_function": 1, "via_rule": 11, "via_scan": [1]}`; first != want {
		t.Fatalf("first input:\n got %s\nwant %s", first, want)
	}
	if got, want := eval(p, `{"n": 2, "xs": [2, 3]}`), `{"copied": 2, "direct": 2, "kinds": {"a", "b"}, "limit": 10, "plus_one": 11, "via_builtin": 2, "via_function": 2, "via_rule": 12, "via_scan": [2, 3]}`; got != want {
		t.Errorf("second input (kept rules must not keep input's answers):\n got %s\nwant %s", got, want)
	}
	// A program compiled with other data (what a reload does) keeps nothing of the first.
	if got, want := eval(compile(20), `{"n": 1, "xs": [1]}`), `{"copied": 1, "direct": 1, "kinds": {"a", "b"}, "limit": 20, "plus_one": 21, "via_builtin": 1, "via_function": 1, "via_rule": 21, "via_scan": [1]}`; got != want {
		t.Errorf("other data:\n got %s\nwant %s", got, want)
	}
}
