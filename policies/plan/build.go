package plan

import (
	"slices"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
)

// The sets and objects a plan builds (partial rules, comprehensions, literals) are mostly small
// and of strings: principals, groups, reasons, the decision's own members. OPA's set and object
// cost a hash map each and an allocation per member or growth; most of them are only iterated,
// counted or asked for a member before the decision ends. So the evaluator builds them as
// sorted slices of its own (strSet, strObject) and makes OPA's value only for anything else
// (a built-in, a comparison, a member of another collection, the result: concrete). Keys and
// elements are strings only, where sorting by ast.Compare, equality and OPA's own hashing agree
// exactly (two numbers can compare equal and hash apart); anything else, or more than
// maxBuilt members, turns the collection into OPA's value on the spot and goes on there.

// maxBuilt bounds the members kept in a slice: past it, inserting costs more than OPA's map.
const maxBuilt = 32

// strSet is a set of strings being built: its elements sorted by ast.Compare and distinct, the
// order OPA's set iterates in. It is an ast.Value only to sit in a term; its methods are those
// of its OPA form.
type strSet struct {
	elems []*ast.Term
	set   ast.Set // its OPA form, once made
}

// add adds e (an ast.String term) unless an equal string is there; false when the set is full.
func (s *strSet) add(e *ast.Term, str ast.String) bool {
	i, found := slices.BinarySearchFunc(s.elems, str, compareKey)
	if found {
		return true // the first stays, as in OPA's set
	}
	if len(s.elems) == maxBuilt {
		return false
	}
	s.elems = slices.Insert(s.elems, i, e)
	return true
}

// get is the element equal to key, nil when there is none.
func (s *strSet) get(key *ast.Term) *ast.Term {
	str, ok := key.Value.(ast.String)
	if !ok {
		return nil // only strings are in it
	}
	if i, found := slices.BinarySearchFunc(s.elems, str, compareKey); found {
		return s.elems[i]
	}
	return nil
}

// Value is s as an OPA set.
func (s *strSet) Value() ast.Set {
	if s.set == nil {
		s.set = ast.NewSet(s.elems...)
	}
	return s.set
}

func (s *strSet) Compare(other ast.Value) int          { return s.Value().Compare(other) }
func (s *strSet) Find(path ast.Ref) (ast.Value, error) { return s.Value().Find(path) }
func (s *strSet) Hash() int                            { return s.Value().Hash() }
func (s *strSet) IsGround() bool                       { return true }
func (s *strSet) String() string                       { return s.Value().String() }
func (s *strSet) StringLength() int                    { return s.Value().StringLength() }

// strObject is an object with string keys being built: keys sorted by ast.Compare (OPA's
// object iterates in that order), values beside them. Like strSet, an ast.Value only to sit in
// a term.
type strObject struct {
	keys, values []*ast.Term
	obj          ast.Object     // its OPA form, once made
	items        [][2]*ast.Term // for making it (ast.NewObject copies them), kept for reuse
}

// find is where key (an ast.String) is or would go.
func (o *strObject) find(key ast.String) (int, bool) {
	return slices.BinarySearchFunc(o.keys, key, compareKey)
}

// insert sets key's value (replacing an equal key's, whose key stays, as in OPA's object);
// false when the object is full.
func (o *strObject) insert(k, v *ast.Term, key ast.String) bool {
	i, found := o.find(key)
	if found {
		o.values[i] = v
		return true
	}
	if len(o.keys) == maxBuilt {
		return false
	}
	o.keys, o.values = slices.Insert(o.keys, i, k), slices.Insert(o.values, i, v)
	return true
}

// get is key's value, nil when there is none.
func (o *strObject) get(key *ast.Term) *ast.Term {
	str, ok := key.Value.(ast.String)
	if !ok {
		return nil // only strings are keys of it
	}
	if i, found := o.find(str); found {
		return o.values[i]
	}
	return nil
}

// Value is o as an OPA object.
func (o *strObject) Value() ast.Object {
	if o.obj == nil {
		o.items = o.items[:0]
		for i := range o.keys {
			o.items = append(o.items, [2]*ast.Term{o.keys[i], o.values[i]})
		}
		o.obj = ast.NewObject(o.items...)
	}
	return o.obj
}

func (o *strObject) Compare(other ast.Value) int          { return o.Value().Compare(other) }
func (o *strObject) Find(path ast.Ref) (ast.Value, error) { return o.Value().Find(path) }
func (o *strObject) Hash() int                            { return o.Value().Hash() }
func (o *strObject) IsGround() bool                       { return true }
func (o *strObject) String() string                       { return o.Value().String() }
func (o *strObject) StringLength() int                    { return o.Value().StringLength() }

// compareKey orders string terms as ast.Compare does (strings compare as Go strings).
func compareKey(t *ast.Term, s ast.String) int {
	return strings.Compare(string(t.Value.(ast.String)), string(s))
}

// builtLen is count(t) of a set or object being built, or of an input's Array; ok is false
// for any other value.
func builtLen(t *ast.Term) (int, bool) {
	if t != nil {
		switch c := t.Value.(type) {
		case *strSet:
			return len(c.elems), true
		case *strObject:
			return len(c.keys), true
		case *Array:
			return c.Elems.Len(), true
		}
	}
	return 0, false
}

// builtMember is internal.member_2(x, t) (x in t) for a set or object being built, or an
// input's Array, with the built-in's meaning: an element of a set or array, a value of an
// object. ok is false for any other t,
// and for an undefined x.
func builtMember(x, t *ast.Term) (*ast.Term, bool) {
	if x == nil || t == nil {
		return nil, false
	}
	switch c := t.Value.(type) {
	case *strSet:
		return ast.InternedTerm(c.get(concrete(x)) != nil), true
	case *strObject:
		concrete(x)
		return ast.InternedTerm(slices.ContainsFunc(c.values, x.Equal)), true
	case *Array:
		concrete(x)
		for i := range c.Elems.Len() {
			if x.Equal(c.Elems.Elem(i)) {
				return ast.InternedTerm(true), true
			}
		}
		return ast.InternedTerm(false), true
	}
	return nil, false
}
