package plan

import (
	"context"
	"fmt"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
)

// deferred is v with each object and array reached through objects' members an *Object or
// *Array whose members are made on first read (deferredFields, deferredElems); what sits in
// arrays and sets stays as it is.
func deferred(v ast.Value) ast.Value {
	if arr, ok := v.(*ast.Array); ok {
		return &Array{Elems: &deferredElems{arr: arr, elems: make([]*ast.Term, arr.Len())}}
	}
	obj, ok := v.(ast.Object)
	if !ok {
		return v
	}
	f := &deferredFields{obj: obj, keys: obj.Keys()}
	f.values = make([]*ast.Term, len(f.keys))
	return &Object{Fields: f}
}

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

// TestObjectReads: each way a plan reads an object whole (a comparison, a scan, a built-in's
// argument, a member of a set, array or object, a key, a lookup key, a function's argument
// and result, the two values of a complete rule), alone in its own policy, gives the same
// answer on an input of *Objects as on the same input of OPA values, and no *Object reaches
// the answer. Each rule runs alone, so no other read has turned the object into its OPA form
// before it.
func TestObjectReads(t *testing.T) {
	ctx := context.Background()
	rules := []string{
		`d := input.obj == {"k": {"k": 5}}`,
		`d := input.obj != {"k": 1}`,
		`d if input.obj = {"k": {"k": 5}}`,
		`d if {"k": {"k": 5}} = input.obj`,
		`d if input.obj == input.obj2`,
		`d := count(input.obj)`,
		`d := count(input)`,
		`d := is_object(input.obj)`,
		`d := [v | some v in input.obj]`,
		`d := {k | some k, _ in input}`,
		`d := {k: v | some k, v in input}`,
		`d := {input.obj}`,
		`d := {input.obj | true}`,
		`d := [input.obj]`,
		`d := [input.obj | true]`,
		`d := {"v": input.obj}`,
		`d := {input.obj: 1}`,
		`d := {input.obj: 1 | true}`,
		`d := input.obj in {{"k": {"k": 5}}}`,
		`d := {{"k": {"k": 5}}}[input.obj]`,
		`d := {{"k": {"k": 5}}: 1}[input.obj]`,
		`d := input.obj[input.key]`,
		`d := input[input.key]`,
		`d := input.obj.k == {"k": 5}`,
		`d := json.marshal(input.obj)`,
		`d := object.keys(input)`,
		`d := sort([input.obj, input.obj2])`,
		`d := input`,
		`d := input.obj`,
		"f(x) := x\n\nd := f(input.obj)",
		"f(x) := 1 if x == {\"k\": {\"k\": 5}}\n\nd := f(input.obj)",
		"d := input.obj if input.n == 1\n\nd := input.obj2 if input.n == 1",
		"d := x if {\n\tsome x in [input.obj, input.obj2]\n\tx == {\"k\": {\"k\": 5}}\n}",
		"default d := 0\n\nd := 1 if input.obj == input.obj2",
		`d := input.xs == [1, {"k": 2}]`,
		`d := input.xs != [1]`,
		`d := count(input.xs)`,
		`d := is_array(input.xs)`,
		`d := x if input.xs = [x, _]`,
		`d := x if [_, x] = input.xs`,
		`d := [x | some x in input.xs]`,
		`d := [i | some i, _ in input.xs]`,
		`d := input.xs[input.key]`,
		`d := input.xs[1].k`,
		`d := sort(input.xs)`,
		`d := {input.xs}`,
		`d := [input.xs]`,
		`d := {"v": input.xs}`,
		`d := {input.xs: 1}`,
		`d := input.xs in {[1, {"k": 2}]}`,
		`d := 1 in input.xs`,
		`d := {"k": 2} in input.xs`,
		`d := json.marshal(input.xs)`,
		`d := input.xs`,
		`d := array.concat(input.xs, [3])`,
		"f(x) := x\n\nd := f(input.xs)",
		"d := input.xs if input.n == 1\n\nd := input.ys if input.n == 1",
		"d := [x | some x in input.obj.l]",
		"d := input.obj == {\"k\": {\"k\": 5}, \"l\": [1]}",
	}
	inputs := []string{
		`{"obj": {"k": {"k": 5}}, "obj2": {"k": {"k": 5}}, "key": "k", "n": 1}`,
		`{"obj": {"k": {"k": 5}, "j": [1]}, "obj2": {"k": 2}, "key": "j", "n": 1}`,
		`{"obj": {"k": 1}, "obj2": {"k": 1.0}, "key": 1, "n": 1}`,
		`{"obj": {"k": {}}, "obj2": {}, "key": {"k": {}}, "n": 2}`,
		`{"obj": [1], "obj2": "x", "key": 0}`,
		`{"obj": {"k": {"k": 5}, "l": [1]}, "xs": [1, {"k": 2}], "ys": [1, {"k": 2.0}], "key": 1, "n": 1}`,
		`{"obj": {"l": []}, "xs": [2, 1, "a", null], "ys": [1], "key": 0, "n": 1}`,
		`{"xs": [], "ys": [], "key": -1, "n": 1}`,
		`{"xs": [1, 2], "ys": [1, 2], "key": 2, "n": 1}`,
		`{"xs": "ab", "key": "k"}`,
		`{}`,
	}
	for i, rule := range rules {
		src := "package p\n\n" + rule + "\n"
		p, err := Compile(ctx, "data.p.d", []Module{{Name: "p.rego", Source: src}}, ast.NewObject())
		if err != nil {
			t.Fatalf("rule %d %q: %v", i, rule, err)
		}
		for _, in := range inputs {
			t.Run(fmt.Sprintf("%d/%s", i, in), func(t *testing.T) {
				v := ast.MustParseTerm(in).Value
				want, werr := p.Eval(ctx, v)
				got, gerr := p.Eval(ctx, deferred(v))
				if (werr != nil) != (gerr != nil) || (want == nil) != (got == nil) || (got != nil && ast.Compare(got, want) != 0) {
					t.Fatalf("%s\ndeferred   %v (%v)\nOPA values %v (%v)", rule, got, gerr, want, werr)
				}
				if got != nil {
					ast.WalkTerms(got, func(x *ast.Term) bool {
						if _, ok := x.Value.(*Object); ok {
							t.Fatalf("%s: an *Object reached the answer %v", rule, got)
						}
						return false
					})
				}
			})
		}
	}
}

// TestObjectLookupsMakeOnlyWhatTheyRead: a lookup of input.obj.k makes the members on its
// way, not the rest of the document.
func TestObjectLookupsMakeOnlyWhatTheyRead(t *testing.T) {
	ctx := context.Background()
	p, err := Compile(ctx, "data.p.d", []Module{{Name: "p.rego", Source: "package p\n\nd := input.obj.k\n"}}, ast.NewObject())
	if err != nil {
		t.Fatal(err)
	}
	v := ast.MustParseTerm(`{"obj": {"k": 1, "j": {"x": 2}}, "other": {"y": 3}}`).Value
	in := deferred(v).(*Object)
	got, err := p.Eval(ctx, in)
	if err != nil || ast.Compare(got, ast.Number("1")) != 0 {
		t.Fatalf("d = %v, %v; want 1", got, err)
	}
	made := func(o *Object) (n int) {
		for _, v := range o.Fields.(*deferredFields).values {
			if v != nil {
				n++
			}
		}
		return n
	}
	obj := in.Fields.Get("obj").Value.(*Object)
	if in.obj != nil || obj.obj != nil || made(in) != 1 || made(obj) != 1 {
		t.Errorf("a lookup of input.obj.k made %d members of the document and %d of obj; OPA forms %v, %v",
			made(in), made(obj), in.obj, obj.obj)
	}
}
