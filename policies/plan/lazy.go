package plan

import "github.com/open-policy-agent/opa/v1/ast"

// Fields are the members of an object of the input whose values are made only when the plan
// reads them (Object). A request's input document has a few dozen members; a decision of the
// shipped policy reads fewer than half of them, and each member made as an OPA value costs
// allocations (an object costs five, a string one).
//
// An implementation keeps what it makes: Member and Get return the same term for a member
// every time, since the evaluator may replace the value of a term that holds an *Object by
// its OPA form (in place, so that every local holding the term sees it). Values are OPA values
// or *Object or *Array; no value of the evaluator's own sits inside an OPA value (an array's
// element, say).
type Fields interface {
	// Len is the number of members.
	Len() int
	// Member is member i, 0 <= i < Len(), in an order that does not change: its key, an
	// ast.String term (each key once), and its value.
	Member(i int) (key, value *ast.Term)
	// Get is the value of the member named key, nil when there is none.
	Get(key string) *ast.Term
}

// Object is an object of the input (as Eval's input or a member of one) that the evaluator
// reads member by member through its Fields: a lookup (input.identity.email), its length and
// its type cost no more than the members they reach. Anything else that reads it (a
// comparison, a scan, a built-in, a value stored into a collection, the query's result) gets
// its OPA form, made once, members included (Value).
//
// It is an ast.Value only to sit in a term; its methods are those of its OPA form. An Object
// is one evaluation's: it is not safe for concurrent use.
type Object struct {
	Fields Fields
	obj    ast.Object
}

// Value is o as an OPA object, members that are *Object turned into theirs in place.
func (o *Object) Value() ast.Object {
	if o.obj == nil {
		n := o.Fields.Len()
		items := make([][2]*ast.Term, n)
		for i := range n {
			k, v := o.Fields.Member(i)
			items[i] = [2]*ast.Term{k, concrete(v)}
		}
		o.obj = ast.NewObject(items...)
	}
	return o.obj
}

func (o *Object) Compare(other ast.Value) int          { return o.Value().Compare(other) }
func (o *Object) Find(path ast.Ref) (ast.Value, error) { return o.Value().Find(path) }
func (o *Object) Hash() int                            { return o.Value().Hash() }
func (o *Object) IsGround() bool                       { return true }
func (o *Object) String() string                       { return o.Value().String() }
func (o *Object) StringLength() int                    { return o.Value().StringLength() }

// concrete turns the value of the evaluator's own that t holds, if any (an *Object or *Array
// of the input, a strSet or strObject being built), into its OPA form in place, and returns t: what
// reaches OPA's code (built-ins, comparisons, collections, the result) is OPA's values only.
func concrete(t *ast.Term) *ast.Term {
	if t != nil {
		switch v := t.Value.(type) {
		case *Object:
			t.Value = v.Value()
		case *Array:
			t.Value = v.Value()
		case *strSet:
			t.Value = v.Value()
		case *strObject:
			t.Value = v.Value()
		}
	}
	return t
}

// Elems are the elements of an array of the input whose values are made only when the plan
// reads them (Array): a request's lists (groups, principals) are mostly only scanned. Elem
// returns the same term for an element every time; elements are OPA values.
type Elems interface {
	// Len is the number of elements.
	Len() int
	// Elem is element i, 0 <= i < Len().
	Elem(i int) *ast.Term
}

// Array is an array of the input (a member of an Object) that the evaluator scans, indexes,
// counts and type-tests through its Elems; anything else gets its OPA form, made once
// (Value). Like Object, an ast.Value only to sit in a term, and one evaluation's.
type Array struct {
	Elems Elems
	arr   *ast.Array
}

// Value is a as an OPA array.
func (a *Array) Value() *ast.Array {
	if a.arr == nil {
		elems := make([]*ast.Term, a.Elems.Len())
		for i := range elems {
			elems[i] = a.Elems.Elem(i)
		}
		a.arr = ast.NewArray(elems...)
	}
	return a.arr
}

func (a *Array) Compare(other ast.Value) int          { return a.Value().Compare(other) }
func (a *Array) Find(path ast.Ref) (ast.Value, error) { return a.Value().Find(path) }
func (a *Array) Hash() int                            { return a.Value().Hash() }
func (a *Array) IsGround() bool                       { return true }
func (a *Array) String() string                       { return a.Value().String() }
func (a *Array) StringLength() int                    { return a.Value().StringLength() }
