package policies

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/fstest"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/sshca/sshca/policies/plan"
)

// planPolicy is a policy the fuzz target compares both evaluators on: the shipped one, or one
// of testdata/plan, written for it.
type planPolicy struct {
	name       string
	engine     *Engine
	statements []string // what its header says it is there for (testdata/plan)
}

// planPolicies loads the shipped policy and every policy under testdata/plan (with its
// <name>.json as data.json when there is one), each with the compiled plan in force.
var planPolicies = sync.OnceValues(func() ([]planPolicy, error) {
	ctx := context.Background()
	e, err := LoadFS(ctx, Embedded, WithEvaluator(EvaluatorCompiled))
	if err != nil {
		return nil, err
	}
	out := []planPolicy{{name: "shipped", engine: e}}
	names, err := filepath.Glob("testdata/plan/*.rego")
	if err != nil {
		return nil, err
	}
	header := regexp.MustCompile(`(?m)^# statements:(.*)$`)
	for _, n := range names {
		src, err := os.ReadFile(n)
		if err != nil {
			return nil, err
		}
		fsys := fstest.MapFS{"p.rego": {Data: src}}
		if data, err := os.ReadFile(strings.TrimSuffix(n, ".rego") + ".json"); err == nil {
			fsys["data.json"] = &fstest.MapFile{Data: data}
		}
		e, err := LoadFS(ctx, fsys, WithEvaluator(EvaluatorCompiled))
		if err != nil {
			return nil, err
		}
		p := planPolicy{name: strings.TrimSuffix(filepath.Base(n), ".rego"), engine: e}
		if m := header.FindSubmatch(src); m != nil {
			p.statements = strings.Fields(string(m[1]))
		}
		out = append(out, p)
	}
	return out, nil
})

// FuzzPlanMatchesTopdown holds the plan evaluator to topdown's answers, for the shipped
// policy and for the small policies of testdata/plan (one or more per kind of plan statement,
// one per known difference of policies/plan/README.md), on any JSON document as input. Where
// the plan errors the request goes to topdown (Decide), so that is allowed; the plan
// answering where topdown fails, or answering differently, is not.
func FuzzPlanMatchesTopdown(f *testing.F) {
	pols, err := planPolicies()
	if err != nil {
		f.Fatal(err)
	}
	for i := range pols {
		for _, in := range planSeeds() {
			f.Add(uint8(i), []byte(in))
		}
	}
	f.Fuzz(func(t *testing.T, which uint8, doc []byte) {
		p := pols[int(which)%len(pols)]
		input, err := ast.ValueFromReader(bytes.NewReader(doc))
		if err != nil {
			t.Skip()
		}
		c, it, cerr, ierr := p.engine.evalBoth(context.Background(), input)
		sameDeferred(t, p, input, c, cerr)
		switch {
		case cerr != nil:
			return
		case ierr != nil:
			t.Fatalf("%s: the plan answers %v where topdown fails: %v", p.name, c, ierr)
		}
		if (c == nil) != (it == nil) || (c != nil && ast.Compare(c, it) != 0) {
			t.Fatalf("%s on %s:\ncompiled    %v\ninterpreted %v", p.name, doc, c, it)
		}
	})
}

// planSeeds are inputs for the testdata/plan policies and the shipped one's goldens.
func planSeeds() []string {
	seeds := []string{
		`{"n": 1, "a": "ab", "b": "ab", "xs": [1, 2], "obj": {"k": {"k": 1}}, "names": ["ann", "bob"]}`,
		`{"n": 600, "a": 1, "b": 1.0, "xs": [5, 11, "none"], "obj": {}, "names": []}`,
		`{"n": 2.5, "a": null, "b": [1], "xs": [], "obj": {"k": false}, "names": ["a", 7]}`,
		`{"n": 0, "a": "2026-11-25T10:00:00Z", "xs": [0, 0], "obj": {"k": 1, "j": 2}}`,
		`{}`,
		// For shared.rego: names with glob metacharacters, unicode, empty strings; empty and
		// filled sets and objects.
		`{"kind": "user", "names": ["*", "a.dev.internal", "x.dev.internal.evil", "", "ünïcode", "[ab]", "b", "a\u0000b", "*.dev.internal"], "xs": [1, 5, 3.5], "obj": {"": 1, "k": 2}}`,
		`{"kind": "host", "names": [], "xs": [], "obj": {}}`,
		`{"kind": "", "names": ["never", "never"], "xs": [4, 4.0], "obj": {"k": null}}`,
		// For whole_objects.rego: objects of the input compared, collected, given to
		// built-ins, looked up with keys of other types, and a conflict between two.
		`{"obj": {"k": {"k": 5}}, "obj2": {"k": {"k": 5}}, "key": "k", "n": 1}`,
		`{"obj": {"k": 1}, "obj2": {"k": 1.0}, "key": 1, "n": 1, "xs": [{"k": 1}]}`,
		`{"obj": {"k": {"k": 5}, "": {}}, "obj2": {"k": 2}, "key": {"k": 1}, "n": 1}`,
		`{"obj": {}, "obj2": {}, "key": null, "n": 2}`,
		`{"obj": [1], "obj2": "x", "key": 0}`,
	}
	// A long list: every name, matched or not, and every element of a set that fills.
	long := make([]string, 2000)
	for i := range long {
		long[i] = fmt.Sprintf(`"%c%d.dev.internal"`, 'a'+rune(i%3), i)
	}
	seeds = append(seeds, `{"kind": "user", "names": [`+strings.Join(long, ", ")+`], "xs": [`+strings.Repeat("9, ", 999)+`10]}`)
	for _, kind := range []string{"user", "host", "renew", "revoke", "admin"} {
		b, err := os.ReadFile(filepath.Join("testdata", "input", kind+".json"))
		if err == nil {
			seeds = append(seeds, string(b))
		}
	}
	return seeds
}

// TestPlanPolicies: every testdata/plan policy runs on the plan, holds the statements its
// header names, and together they cover every kind of statement the evaluator handles that
// the planner emits; each known difference of the README has its policy.
func TestPlanPolicies(t *testing.T) {
	pols, err := planPolicies()
	if err != nil {
		t.Fatal(err)
	}
	covered := map[string]bool{}
	for _, p := range pols[1:] {
		prog, ok := p.engine.compiled.(*plan.Program)
		if !ok || p.engine.Mode() != "compiled" {
			t.Fatalf("%s: not compiled: %s", p.name, p.engine.Mode())
		}
		got := prog.Statements()
		for _, s := range got {
			covered[s] = true
		}
		for _, s := range p.statements {
			if !slices.Contains(got, s) {
				t.Errorf("%s: its plan has no %s (it has %v)", p.name, s, got)
			}
		}
	}
	var missing []string
	for _, s := range plan.Handled() {
		if !covered[s] {
			missing = append(missing, s)
		}
	}
	// NopStmt: OPA's planner does not emit it today; the evaluator accepts it all the same.
	if !slices.Equal(missing, []string{"NopStmt"}) {
		t.Errorf("statements no testdata/plan policy holds: %v", missing)
	}
	readme, err := os.ReadFile("plan/README.md")
	if err != nil {
		t.Fatal(err)
	}
	diffs := regexp.MustCompile("(?m)^- known difference `([a-z_]+)`").FindAllSubmatch(readme, -1)
	if len(diffs) == 0 {
		t.Fatal("plan/README.md lists no known differences")
	}
	for _, d := range diffs {
		if !slices.ContainsFunc(pols, func(p planPolicy) bool { return p.name == string(d[1]) }) {
			t.Errorf("known difference %s has no policy in testdata/plan", d[1])
		}
	}
	for _, in := range planSeeds() {
		for _, p := range pols {
			v, err := ast.ValueFromReader(strings.NewReader(in))
			if err != nil {
				t.Fatal(err)
			}
			c, it, cerr, ierr := p.engine.evalBoth(context.Background(), v)
			sameDeferred(t, p, v, c, cerr)
			if cerr == nil && (ierr != nil || (c == nil) != (it == nil) || (c != nil && ast.Compare(c, it) != 0)) {
				t.Errorf("%s on %s:\ncompiled    %v\ninterpreted %v (%v)", p.name, in, c, it, ierr)
			}
		}
	}
}

// sameDeferred: the plan gives input, with each object and array reached through objects'
// members (the document itself, input.obj, input.obj.k, input.xs) as a plan.Object or
// plan.Array whose members are made as they are read (what Decide gives it), the answer it gave the same document as OPA values:
// compiled and its error cerr (as evalBoth returns them).
func sameDeferred(t *testing.T, p planPolicy, input ast.Value, compiled ast.Value, cerr error) {
	t.Helper()
	v, err := p.engine.compiled.Eval(context.Background(), deferred(input))
	if err == nil && v != nil {
		raw, jerr := ast.JSON(v) // as evalBoth turns the answer into its rego API form
		if jerr == nil {
			v, jerr = ast.InterfaceToValue(raw)
		}
		if jerr != nil {
			t.Fatalf("%s: the answer on the deferred input has no JSON form: %v", p.name, jerr)
		}
	}
	if (err != nil) != (cerr != nil) || (v == nil) != (compiled == nil) || (v != nil && ast.Compare(v, compiled) != 0) {
		t.Fatalf("%s on %v:\ndeferred input %v (%v)\nOPA values     %v (%v)", p.name, input, v, err, compiled, cerr)
	}
}

// deferred is v with each object and array reached through objects' members a plan.Object or
// plan.Array (deferredFields, deferredElems); what sits in arrays and sets stays as it is.
func deferred(v ast.Value) ast.Value {
	if arr, ok := v.(*ast.Array); ok {
		return &plan.Array{Elems: &deferredElems{arr: arr, elems: make([]*ast.Term, arr.Len())}}
	}
	obj, ok := v.(ast.Object)
	if !ok {
		return v
	}
	f := &deferredFields{obj: obj, keys: obj.Keys()}
	f.values = make([]*ast.Term, len(f.keys))
	return &plan.Object{Fields: f}
}

// deferredElems are an OPA array's elements made on first read, and kept (plan.Elems).
type deferredElems struct {
	arr   *ast.Array
	elems []*ast.Term
}

func (e *deferredElems) Len() int { return e.arr.Len() }

func (e *deferredElems) Elem(i int) *ast.Term {
	if e.elems[i] == nil {
		e.elems[i] = ast.NewTerm(e.arr.Elem(i).Value)
	}
	return e.elems[i]
}

// deferredFields are an OPA object's members made on first read, and kept (plan.Fields).
type deferredFields struct {
	obj    ast.Object
	keys   []*ast.Term
	values []*ast.Term
}

func (f *deferredFields) Len() int { return len(f.keys) }

func (f *deferredFields) Member(i int) (key, value *ast.Term) {
	if f.values[i] == nil {
		f.values[i] = ast.NewTerm(deferred(f.obj.Get(f.keys[i]).Value))
	}
	return f.keys[i], f.values[i]
}

func (f *deferredFields) Get(key string) *ast.Term {
	for i, k := range f.keys {
		if s, ok := k.Value.(ast.String); ok && string(s) == key {
			_, v := f.Member(i)
			return v
		}
	}
	return nil
}
