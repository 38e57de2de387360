package plan

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
)

// TestBuiltMatchesTopdown: sets and objects the plan builds (build.go: strSet and strObject
// while their members are strings, OPA's past that) answer as topdown when scanned, counted,
// looked up, tested for membership, compared, given to built-ins, put into other collections,
// used as keys and returned; when a member that is not a string, a key that is not, or more
// than maxBuilt members arrive; with equal and unicode strings, and conflicting object keys.
// Each rule runs alone, so no other read has turned the collection into OPA's value first.
func TestBuiltMatchesTopdown(t *testing.T) {
	ctx := context.Background()
	rules := []string{
		`d := {x | some x in input.xs}`,
		`d := count({x | some x in input.xs})`,
		`d := [x | some x in {y | some y in input.xs}]`,
		`d := {k: v | some k, v in input.obj}`,
		`d := [[k, v] | some k, v in {k: v | some k, v in input.obj}]`,
		`d := {k: v | some k, v in input.obj}[input.key]`,
		`d := {x | some x in input.xs}[input.key]`,
		`d := input.key in {x | some x in input.xs}`,
		`d := input.key in {k: v | some k, v in input.obj}`,
		`d := sort({x | some x in input.xs})`,
		`d := {x | some x in input.xs} == {"a", "b"}`,
		`d := {x | some x in input.xs} != {"a", "b"}`,
		`d := {{x | some x in input.xs}}`,
		`d := [{x | some x in input.xs}]`,
		`d := {"s": {x | some x in input.xs}}`,
		`d := {{x | some x in input.xs}: 1}`,
		`d := {k: 1 | some k in input.xs}`,
		`d := [k | some k, _ in {k: 1 | some k in input.xs}]`,
		`d := object.union({k: 1 | some k in input.xs}, {"z": 2})`,
		`d := count({k: 1 | some k in input.xs})`,
		`d := is_set({x | some x in input.xs})`,
		`d := is_object({k: 1 | some k in input.xs})`,
		`d := {x | some x in input.xs} | {"q"}`,
		`d := {x | some x in input.xs} & {"a", 1}`,
		`d := {x | some x in input.xs} - {"a"}`,
		"d := x if {\n\ts := {y | some y in input.xs}\n\tx := s[input.key]\n}",
		"d := [x | s := {y | some y in input.xs}; some x in s; x != \"b\"]",
		"s contains x if some x in input.xs\n\ns contains \"fixed\"\n\nd := s",
		"s contains x if some x in input.xs\n\nd := count(s) + count([1 | some _ in s])",
		"o[k] := v if some k, v in input.obj\n\nd := o",
		"o[k] := 1 if some k in input.xs\n\no[k] := 2 if some k in input.ys\n\nd := o",
		"o[k] := 1 if some k in input.xs\n\no[k] := 1.0 if some k in input.ys\n\nd := o",
		"d := {\"a\": input.n, \"b\": input.xs, \"a\": input.n}",
		"d := {\"b\": 1, \"a\": 2, \"\": 3}[input.key]",
		"d := {\"b\": 1, input.key: 2}",
		"d := {x | some x in input.ys; x != 1} == {x | some x in input.xs; x != 1}",
		"d := {x: [y | some y in input.ys] | some x in input.xs}",
	}
	big := make([]string, 40)
	for i := range big {
		big[i] = fmt.Sprintf(`"n%02d"`, (i*7)%40)
	}
	inputs := []string{
		`{"xs": ["b", "a", "b", "", "ü", "Z", "a\u0000", "aa"], "ys": ["a", "b"], "obj": {"b": 1, "a": 2, "": 3, "ü": {"x": 1}}, "key": "a", "n": 1}`,
		`{"xs": ["a", 1, 1.0, null, "1", true, {"k": "v"}, "a"], "ys": [1, "a"], "obj": {"a": "a"}, "key": 1, "n": 2}`,
		`{"xs": [` + strings.Join(big, ", ") + `, "n00", "a"], "ys": ["n05", "zz"], "obj": {}, "key": "n07"}`,
		`{"xs": [], "ys": [], "obj": {}, "key": "zz"}`,
		`{"xs": ["a", "b"], "ys": ["b", "c"], "obj": {"a": ["x"]}, "key": ["x"]}`,
		`{"xs": ["b", "a"], "ys": ["a", "b"], "key": null}`,
	}
	for i, rule := range rules {
		src := "package p\n\n" + rule + "\n"
		p, err := Compile(ctx, "data.p.d", []Module{{Name: "p.rego", Source: src}}, ast.NewObject())
		if err != nil {
			t.Fatalf("rule %d %q: %v", i, rule, err)
		}
		pq, err := rego.New(rego.Query("data.p.d"), rego.Module("p.rego", src)).PrepareForEval(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for j, in := range inputs {
			t.Run(fmt.Sprintf("%d/%d", i, j), func(t *testing.T) {
				v := ast.MustParseTerm(in).Value
				got, gerr := p.Eval(ctx, v)
				rs, werr := pq.Eval(ctx, rego.EvalParsedInput(v))
				var want ast.Value
				if werr == nil && len(rs) == 1 {
					want = ast.MustInterfaceToValue(rs[0].Expressions[0].Value)
				}
				if got != nil {
					ast.WalkTerms(got, func(x *ast.Term) bool {
						switch x.Value.(type) {
						case *strSet, *strObject, *Object:
							t.Fatalf("%s: a value of the evaluator's own reached the answer %v", rule, got)
						}
						return false
					})
					raw, err := ast.JSON(got)
					if err != nil {
						t.Fatalf("%s: %v", rule, err)
					}
					got = ast.MustInterfaceToValue(raw)
				}
				if gerr != nil && werr != nil {
					return // a conflict both see
				}
				if (gerr != nil) != (werr != nil) || (got == nil) != (want == nil) || (got != nil && ast.Compare(got, want) != 0) {
					t.Fatalf("%s on %s\nplan    %v (%v)\ntopdown %v (%v)", rule, in, got, gerr, want, werr)
				}
			})
		}
	}
}

// TestBuiltSharedAcrossDecisions: a set of strings a rule of data alone builds is kept for
// every later decision (dataOnly) in OPA's form, never as a strSet that a decision would turn
// into OPA's form in place while others read it (run with -race: each program's first
// decisions run eight at a time).
func TestBuiltSharedAcrossDecisions(t *testing.T) {
	ctx := context.Background()
	src := "package p\n\nk := {x | some x in data.ys}\n\no := {x: 1 | some x in data.ys}\n\nd := [k == {\"a\", \"b\"}, input.x in k, count(k), o == {\"a\": 1, \"b\": 1}, o[input.x]]\n"
	data := ast.MustParseTerm(`{"ys": ["b", "a"]}`).Value
	want := ast.MustParseTerm(`[true, true, 2, true, 1]`).Value
	for range 20 {
		p, err := Compile(ctx, "data.p.d", []Module{{Name: "p.rego", Source: src}}, data)
		if err != nil {
			t.Fatal(err)
		}
		start := make(chan struct{})
		errs := make(chan error, 8)
		for range 8 {
			go func() {
				<-start
				var err error
				for range 2 { // the second reads what the first decision of all kept
					got, e := p.Eval(ctx, ast.MustParseTerm(`{"x": "a"}`).Value)
					if e == nil && (got == nil || ast.Compare(got, want) != 0) {
						e = fmt.Errorf("d = %v, want %v", got, want)
					}
					err = errors.Join(err, e)
				}
				errs <- err
			}()
		}
		close(start)
		for range 8 {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
	}
}
