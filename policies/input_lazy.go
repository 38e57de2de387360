package policies

import (
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"unicode/utf8"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/policies/plan"
)

// lazyInput is the input document for the compiled path: inputValue's value, with the
// document, identity, request and (when plainClaims holds) claims objects as plan.Objects
// whose members are made only when the policy reads them. A user certificate's decision reads
// 8 of the 18 members and none of a token's claims; inputValue makes all of them, 45 to 90
// allocations with a token's claims, where this makes one and then one per string member
// read. The evaluator turns an object into inputValue's form the first time anything but a
// member lookup, its length or its type reads it (plan.Object), so what a policy can see is
// inputValue's document (checkLazyInput under FuzzInputValue and TestLazyInputClaims; the
// self-check at load and TestCompiledMatchesTopdown decide through it).
//
// An input with an access request is inputValue's as it is (access requests are rare, and
// their objects nest deeper). It is nil when inputValue is.
func lazyInput(in ca.PolicyInput) ast.Value {
	if !in.AccessRequest.IsZero() {
		return inputValue(in)
	}
	d := &lazyDoc{kind: in.Kind, now: in.Now, id: in.Identity, req: in.Request}
	d.claims = emptyObject
	switch c := in.Identity.Claims; {
	case len(c) == 0:
	case plainClaims(c):
		// A token's claims (a dozen or more) are read by few policies, and by the shipped one
		// for host certificates only.
		d.claimsFields.claims = c
		d.claimsObj.Fields = &d.claimsFields
		d.claims = d.term(&d.claimsObj)
	default:
		// Made at once: claims that have no JSON form must fail the decision before it runs.
		v, err := claimsValue(c)
		if err != nil {
			return nil
		}
		d.claims = ast.NewTerm(v)
	}
	k := &inputKeys
	d.doc.d, d.identity.d, d.request.d = d, d, d
	d.doc.add(k.kind, fieldKind)
	d.doc.add(k.identity, fieldIdentity)
	d.doc.add(k.request, fieldRequest)
	d.doc.add(k.now, fieldNow)
	for _, m := range []struct {
		key *ast.Term
		f   inputField
	}{{k.issuer, fieldIssuer}, {k.subject, fieldSubject}, {k.email, fieldEmail}, {k.username, fieldUsername},
		{k.groups, fieldGroups}, {k.amr, fieldAMR}, {k.workload, fieldWorkload}, {k.claims, fieldClaims}} {
		d.identity.add(m.key, m.f)
	}
	// omitempty in ca.Identity and ca.PolicyRequest: absent when zero, as in the JSON.
	if in.Identity.ACR != "" {
		d.identity.add(k.acr, fieldACR)
	}
	if in.Identity.AuthTime != 0 {
		d.identity.add(k.authTime, fieldAuthTime)
	}
	for _, m := range []struct {
		key *ast.Term
		f   inputField
	}{{k.principals, fieldPrincipals}, {k.ttlSeconds, fieldTTLSeconds}, {k.keyType, fieldKeyType},
		{k.keyFingerprint, fieldKeyFingerprint}, {k.sourceIP, fieldSourceIP}, {k.reason, fieldReason}} {
		d.request.add(m.key, m.f)
	}
	if in.Request.Target != "" {
		d.request.add(k.target, fieldTarget)
	}
	d.docObj.Fields, d.identityObj.Fields, d.requestObj.Fields = &d.doc, &d.identity, &d.request
	return &d.docObj
}

// inputField names a member of the input document (lazyDoc.make).
type inputField uint8

const (
	fieldKind inputField = iota
	fieldIdentity
	fieldRequest
	fieldNow
	fieldIssuer
	fieldSubject
	fieldEmail
	fieldUsername
	fieldGroups
	fieldAMR
	fieldWorkload
	fieldClaims
	fieldACR
	fieldAuthTime
	fieldPrincipals
	fieldTTLSeconds
	fieldKeyType
	fieldKeyFingerprint
	fieldSourceIP
	fieldReason
	fieldTarget
)

// lazyDoc is one decision's input: one allocation for the objects, their members' terms and
// the first strings' terms.
type lazyDoc struct {
	kind                            ca.Action
	now                             string
	id                              ca.Identity
	req                             ca.PolicyRequest
	claims                          *ast.Term
	doc, identity, request          lazyMembers
	docObj, identityObj, requestObj plan.Object
	claimsFields                    lazyClaims
	claimsObj                       plan.Object
	groups, amr, principals         lazyList
	slab                            [16]ast.Term
	used                            int
}

// maxMembers is the most members an object of the document has (the identity: ten).
const maxMembers = 10

// lazyMembers are one object's members (plan.Fields): their values are made on first read
// and kept, as plan.Fields requires.
type lazyMembers struct {
	d      *lazyDoc
	n      int
	keys   [maxMembers]*ast.Term
	fields [maxMembers]inputField
	values [maxMembers]*ast.Term
}

func (m *lazyMembers) add(key *ast.Term, f inputField) {
	m.keys[m.n], m.fields[m.n] = key, f
	m.n++
}

func (m *lazyMembers) Len() int { return m.n }

func (m *lazyMembers) Member(i int) (key, value *ast.Term) { return m.keys[i], m.value(i) }

func (m *lazyMembers) Get(key string) *ast.Term {
	for i := range m.n {
		if string(m.keys[i].Value.(ast.String)) == key {
			return m.value(i)
		}
	}
	return nil
}

func (m *lazyMembers) value(i int) *ast.Term {
	if m.values[i] == nil {
		m.values[i] = m.d.make(m.fields[i])
	}
	return m.values[i]
}

// make is member f's value, as inputValue makes it.
func (d *lazyDoc) make(f inputField) *ast.Term {
	id, r := &d.id, &d.req
	switch f {
	case fieldKind:
		return d.str(string(d.kind))
	case fieldIdentity:
		return d.term(&d.identityObj)
	case fieldRequest:
		return d.term(&d.requestObj)
	case fieldNow:
		return d.str(d.now)
	case fieldIssuer:
		return d.str(id.Issuer)
	case fieldSubject:
		return d.str(id.Subject)
	case fieldEmail:
		return d.str(id.Email)
	case fieldUsername:
		return d.str(id.Username)
	case fieldGroups:
		return d.list(&d.groups, id.Groups)
	case fieldAMR:
		return d.list(&d.amr, id.AMR)
	case fieldWorkload:
		return ast.InternedTerm(id.Workload)
	case fieldClaims:
		return d.claims
	case fieldACR:
		return d.str(id.ACR)
	case fieldAuthTime:
		return ast.IntNumberTerm(int(id.AuthTime))
	case fieldPrincipals:
		return d.list(&d.principals, r.Principals)
	case fieldTTLSeconds:
		return ast.IntNumberTerm(int(r.TTLSeconds))
	case fieldKeyType:
		return d.str(r.KeyType)
	case fieldKeyFingerprint:
		return d.str(r.KeyFingerprint)
	case fieldSourceIP:
		return d.str(r.SourceIP)
	case fieldReason:
		return d.str(r.Reason)
	case fieldTarget:
		return d.str(r.Target)
	}
	panic("policies: unknown input field")
}

// term is a term of d's slab (a new one past it) holding v.
func (d *lazyDoc) term(v ast.Value) *ast.Term {
	if d.used == len(d.slab) {
		return ast.NewTerm(v)
	}
	t := &d.slab[d.used]
	d.used++
	t.Value = v
	return t
}

// str is s as inputValue makes it: shared terms for the empty string and common values.
func (d *lazyDoc) str(s string) *ast.Term {
	if s == "" {
		return emptyString
	}
	if t, ok := commonStrings[s]; ok {
		return t
	}
	return d.term(ast.String(jsonString(s)))
}

// list is ss as inputValue makes it (a shared term for the empty list), as l: a plan.Array
// whose elements are made as the policy reads them.
func (d *lazyDoc) list(l *lazyList, ss []string) *ast.Term {
	if len(ss) == 0 {
		return emptyArray
	}
	l.d, l.ss = d, ss
	l.arr.Elems = l
	return d.term(&l.arr)
}

// lazyList is a list of strings of the input (plan.Elems), each element's term made when first
// read and kept.
type lazyList struct {
	d     *lazyDoc
	ss    []string
	terms []*ast.Term
	arr   plan.Array
}

func (l *lazyList) Len() int { return len(l.ss) }

func (l *lazyList) Elem(i int) *ast.Term {
	if l.terms == nil {
		l.terms = make([]*ast.Term, len(l.ss))
	}
	if l.terms[i] == nil {
		l.terms[i] = l.d.str(l.ss[i])
	}
	return l.terms[i]
}

// plainClaims reports whether claimValue converts every claim without an error and without
// falling back to encoding/json: keys valid UTF-8, values nil, booleans, strings, finite
// float64s, json.Numbers without an exponent (the exponent bound is OPA's to check), and
// lists and objects of those. Only such claims are made as they are read (lazyClaims): their
// conversion cannot fail once the decision runs.
func plainClaims(claims map[string]any) bool {
	for k, v := range claims {
		if !utf8.ValidString(k) || !plainClaim(v) {
			return false
		}
	}
	return true
}

func plainClaim(v any) bool {
	switch x := v.(type) {
	case nil, bool, string:
		return true
	case json.Number:
		return x == "" || (validNumber(string(x)) && !strings.ContainsAny(string(x), "eE"))
	case float64:
		return !math.IsNaN(x) && !math.IsInf(x, 0)
	case []any:
		for _, e := range x {
			if !plainClaim(e) {
				return false
			}
		}
		return true
	case map[string]any:
		return plainClaims(x)
	}
	return false
}

// lazyClaims are the claims object's members (plan.Fields), each converted by claimValue when
// first read and kept. plainClaims holds for claims.
type lazyClaims struct {
	claims map[string]any
	keys   []*ast.Term // in the order of values; made on first read
	values []*ast.Term
}

func (c *lazyClaims) Len() int { return len(c.claims) }

func (c *lazyClaims) Member(i int) (key, value *ast.Term) {
	c.index()
	return c.keys[i], c.value(i)
}

func (c *lazyClaims) Get(key string) *ast.Term {
	if _, ok := c.claims[key]; !ok {
		return nil
	}
	c.index()
	for i, k := range c.keys {
		if string(k.Value.(ast.String)) == key {
			return c.value(i)
		}
	}
	return nil
}

// index fixes the members' order, the first time a member is read.
func (c *lazyClaims) index() {
	if c.keys != nil {
		return
	}
	c.keys = make([]*ast.Term, 0, len(c.claims))
	for k := range c.claims {
		c.keys = append(c.keys, ast.StringTerm(k))
	}
	c.values = make([]*ast.Term, len(c.keys))
}

func (c *lazyClaims) value(i int) *ast.Term {
	if c.values[i] == nil {
		v, err := claimValue(c.claims[string(c.keys[i].Value.(ast.String))])
		if err != nil {
			// plainClaims rules this out; were it to happen, the plan evaluator recovers
			// and Decide asks topdown, whose input (inputValue) refuses the claims.
			panic(fmt.Sprintf("policies: claims: %v", err))
		}
		c.values[i] = ast.NewTerm(v)
	}
	return c.values[i]
}
