package plan

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/util"
)

// adversarialPolicy reads input in the ways a rule of data alone could miss it: through a
// function's first or second argument, a lookup keyed by input, a rule that reads it, a
// comprehension that scans it beside data, every, not, a partial set with a body of each kind;
// and it builds empty sets and objects from data that later rules combine with input.
const adversarialPolicy = `package p

allowed := {g | some g in data.groups}

f(x) := y if { y := x.n }

via_fn := f(input)

lookup := data.m[input.k]

r1 := input.n

r2 := r1 + 1

r3 := {x | some y in data.ys; some x in input.xs; x == y}

r4 if { every x in input.xs { x > 0 } }

h(a, b) := a.n + b

r5 := h(input, data.limit)

h2(a, b) := b.n

r5b := h2(data.limit, input)

r6 if { not input.flag }

empty := {x | some x in data.ys; x > 100}

r7 := empty | {input.n}

r8 := count(empty)

emptyobj := {k: v | some k, v in data.m; v > 100}

r9 := object.union(emptyobj, {"a": input.n})

r10 := glob.match(input.p, input.d, input.s)

walked := [x | some x in data.ys]

r11 := array.concat(walked, [input.n])

dyn := data.pkg[input.k]

partial contains x if { some x in data.ys }

partial contains x if { some x in input.xs }

d := {"allowed": allowed, "via_fn": via_fn, "lookup": lookup, "r2": r2, "r3": r3, "r4": r4, "r5": r5, "r5b": r5b,
	"r6": r6, "r7": r7, "r8": r8, "r9": r9, "r10": r10, "r11": r11, "empty": empty, "dyn": dyn, "partial": partial,
	"walked": walked, "emptyobj": emptyobj}
`

// TestDataOnlyMatchesTopdownConcurrently: adversarialPolicy through the plan, decisions after
// decisions and eight at a time (run with -race: the values kept and the shared empty set
// and object are only read), answers as topdown on every input; exactly the rules that input
// cannot reach are kept.
func TestDataOnlyMatchesTopdownConcurrently(t *testing.T) {
	ctx := context.Background()
	dataJSON := `{"groups": ["a", "b"], "m": {"x": 1, "y": 2}, "ys": [1, 2, 3], "limit": 10, "pkg": {"x": 7, "y": 8}}`
	data := ast.MustParseTerm(dataJSON).Value
	p, err := Compile(ctx, "data.p.d", []Module{{Name: "p.rego", Source: adversarialPolicy}}, data)
	if err != nil {
		t.Fatal(err)
	}
	kept := map[string]bool{}
	for name, c := range functions(p) {
		if c.dataOnly {
			kept[strings.TrimPrefix(name, "g0.data.p.")] = true
		}
	}
	if diff := cmp.Diff(map[string]bool{"allowed": true, "walked": true, "empty": true, "r8": true, "emptyobj": true}, kept); diff != "" {
		t.Fatalf("rules kept across decisions (-want +got):\n%s", diff)
	}
	var doc map[string]any
	if err := util.UnmarshalJSON([]byte(dataJSON), &doc); err != nil {
		t.Fatal(err)
	}
	pq, err := rego.New(rego.Query("data.p.d"), rego.Module("p.rego", adversarialPolicy), rego.Store(inmem.NewFromObject(doc))).PrepareForEval(ctx)
	if err != nil {
		t.Fatal(err)
	}
	inputs := []string{
		`{"n": 1, "k": "x", "xs": [1, 5], "p": "a.*", "d": ["."], "s": "a.b", "pkg": "groups"}`,
		`{"n": 2, "k": "y", "xs": [2, -1], "flag": true, "p": "a-*", "d": ["-"], "s": "a-b.c", "pkg": "m"}`,
		`{"n": 3, "k": "z", "xs": [], "p": "*", "d": null, "s": "", "pkg": "nope"}`,
		`{"n": 4, "xs": [3], "p": "a*", "d": [], "s": "a.b"}`,
	}
	want := make([]ast.Value, len(inputs))
	for i, in := range inputs {
		rs, err := pq.Eval(ctx, rego.EvalParsedInput(ast.MustParseTerm(in).Value))
		if err != nil {
			t.Fatalf("topdown %s: %v %v", in, rs, err)
		}
		if len(rs) == 1 {
			want[i] = ast.MustInterfaceToValue(rs[0].Expressions[0].Value)
		}
	}
	check := func(i int) string {
		got, err := p.Eval(ctx, ast.MustParseTerm(inputs[i]).Value)
		if err != nil {
			return err.Error()
		}
		if got == nil || want[i] == nil {
			if (got == nil) != (want[i] == nil) {
				return "definedness differs on " + inputs[i]
			}
			return ""
		}
		raw, _ := ast.JSON(got)
		g := ast.MustInterfaceToValue(raw)
		if ast.Compare(g, want[i]) != 0 {
			return "input " + inputs[i] + "\n got " + g.String() + "\nwant " + want[i].String()
		}
		return ""
	}
	for round := range 2 {
		for i := range inputs {
			if msg := check(i); msg != "" {
				t.Fatalf("round %d: %s", round, msg)
			}
		}
	}
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range 200 {
				if msg := check((k + w) % len(inputs)); msg != "" {
					errs <- msg
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for msg := range errs {
		t.Error(msg)
	}
}
