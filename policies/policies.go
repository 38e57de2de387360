// Package policies holds sshca's Rego policy (sshca.rego, its settings in data.json, and its
// tests in *_test.rego) and the engine that evaluates it with OPA. The query
// data.sshca.decision is prepared once at load; Decide only evaluates. The engine implements
// ca.Policy and fails closed: an undefined or malformed decision is an error, never a grant.
package policies

import (
	"bytes"
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/tester"
	"github.com/open-policy-agent/opa/v1/topdown"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
)

// Embedded is the shipped policy: sshca.rego, data.json and the Rego tests.
//
//go:embed *.rego data.json
var Embedded embed.FS

// Query is the decision every policy must define.
const Query = "data.sshca.decision"

// Option tunes loading.
type Option func(*loadOptions)

type loadOptions struct {
	dataFile  string
	evaluator Evaluator
	fallbacks prometheus.Counter
}

// Interpreted evaluates with OPA's topdown evaluator only, never the compiled plan: the
// reference the compiled path is checked against, and an escape hatch. It is
// WithEvaluator(EvaluatorTopdown).
func Interpreted() Option { return WithEvaluator(EvaluatorTopdown) }

// WithFallbackCounter counts in c every request on which the compiled plan errored and
// topdown decided instead (NewFallbackCounter makes the one sshca serves).
func WithFallbackCounter(c prometheus.Counter) Option {
	return func(o *loadOptions) { o.fallbacks = c }
}

// NewFallbackCounter registers sshca_policy_topdown_fallbacks_total with reg.
func NewFallbackCounter(reg prometheus.Registerer) prometheus.Counter {
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "sshca_policy_topdown_fallbacks_total",
		Help: "Requests on which the compiled policy plan errored and OPA's topdown evaluator decided instead."})
	reg.MustRegister(c)
	return c
}

// WithDataFile replaces the policy's data.json with the file at path (same Rego).
func WithDataFile(path string) Option { return func(o *loadOptions) { o.dataFile = path } }

// Engine evaluates a loaded policy: through its compiled plan when the policy allows it
// (compiled.go, policies/plan), else through OPA's topdown evaluator.
type Engine struct {
	query     rego.PreparedEvalQuery
	compiled  planEvaluator // nil: topdown decides
	mode      string
	revision  string
	fallbacks prometheus.Counter // nil: not counted
	check     SelfCheck
}

// Mode says how decisions are evaluated: "compiled", or "interpreted (why)" when the policy
// uses something the compiled evaluator does not run.
func (e *Engine) Mode() string { return e.mode }

// LoadDir loads the policy in a directory: every *.rego file but the tests, and data.json.
func LoadDir(ctx context.Context, dir string, opts ...Option) (*Engine, error) {
	return LoadFS(ctx, os.DirFS(dir), opts...)
}

// LoadFS loads the policy at the root of fsys.
func LoadFS(ctx context.Context, fsys fs.FS, opts ...Option) (*Engine, error) {
	var o loadOptions
	for _, opt := range opts {
		opt(&o)
	}
	modules, tests, data, err := readBundle(fsys, o.dataFile)
	if err != nil {
		return nil, err
	}
	var doc map[string]any
	if err := json.Unmarshal(data.content, &doc); err != nil {
		return nil, fmt.Errorf("policies: %s: %w", data.name, err)
	}
	h := sha256.New()
	for _, m := range append(modules, data) {
		fmt.Fprintf(h, "%s\x00%d\x00", m.name, len(m.content))
		h.Write(m.content)
	}
	e, err := newEngine(ctx, modules, tests, doc, hex.EncodeToString(h.Sum(nil))[:12], o)
	if err != nil {
		return nil, fmt.Errorf("policies: %w", err)
	}
	return e, nil
}

// newEngine compiles the modules with their data: prepared for topdown, and planned and
// compiled unless the policy needs topdown or o asks for it. tests are the policy's Rego
// tests, whose inputs the self-check also runs.
func newEngine(ctx context.Context, modules, tests []file, doc map[string]any, revision string, o loadOptions) (*Engine, error) {
	ev := o.evaluator
	if ev == "" {
		ev = EvaluatorAuto
	}
	if _, err := ParseEvaluator(string(ev)); err != nil {
		return nil, err
	}
	dataValue, err := ast.InterfaceToValue(doc)
	if err != nil {
		return nil, fmt.Errorf("data: %w", err)
	}
	args := []func(*rego.Rego){rego.Query(Query)}
	for _, m := range modules {
		args = append(args, rego.Module(m.name, string(m.content)))
	}
	store := rego.Store(inmem.NewFromObjectWithOpts(doc, inmem.OptReturnASTValuesOnRead(true)))
	pq, err := rego.New(append(args, store)...).PrepareForEval(ctx)
	if err != nil {
		return nil, fmt.Errorf("compile: %w", err)
	}
	e := &Engine{query: pq, mode: "compiled", revision: revision, fallbacks: o.fallbacks}
	if err := checkLoaded(ctx, e, doc); err != nil { // datacheck.go; topdown decides until compiled
		return nil, err
	}
	if ev == EvaluatorTopdown {
		e.mode = "interpreted (by request)"
		return e, nil
	}
	if err := e.loadPlan(ctx, modules, tests, doc, dataValue, ev); err != nil { // compiled.go
		return nil, err
	}
	return e, nil
}

type file struct {
	name    string
	content []byte
}

// readBundle reads the policy's modules, its Rego tests (*_test.rego) and its data.
func readBundle(fsys fs.FS, dataFile string) (modules, tests []file, data file, err error) {
	names, err := fs.Glob(fsys, "*.rego")
	if err != nil {
		return nil, nil, file{}, fmt.Errorf("policies: %w", err)
	}
	sort.Strings(names)
	for _, n := range names {
		b, err := fs.ReadFile(fsys, n)
		if err != nil {
			return nil, nil, file{}, fmt.Errorf("policies: %w", err)
		}
		if strings.HasSuffix(n, "_test.rego") {
			tests = append(tests, file{n, b})
			continue
		}
		modules = append(modules, file{n, b})
	}
	if len(modules) == 0 {
		return nil, nil, file{}, errors.New("policies: no .rego files found")
	}
	if dataFile != "" {
		b, err := os.ReadFile(dataFile)
		if err != nil {
			return nil, nil, file{}, fmt.Errorf("policies: data file: %w", err)
		}
		return modules, tests, file{path.Base(dataFile), b}, nil
	}
	b, err := fs.ReadFile(fsys, "data.json")
	if errors.Is(err, fs.ErrNotExist) {
		return modules, tests, file{"data.json", []byte("{}")}, nil
	}
	if err != nil {
		return nil, nil, file{}, fmt.Errorf("policies: %w", err)
	}
	return modules, tests, file{"data.json", b}, nil
}

// Revision is a short hash of the policy files and data: which policy decided.
func (e *Engine) Revision() string { return e.revision }

// Check reports the engine ready; a loaded engine always is.
func (e *Engine) Check(context.Context) error { return nil }

// Decide evaluates the policy on in.
func (e *Engine) Decide(ctx context.Context, in ca.PolicyInput) (ca.Decision, error) {
	if e.compiled == nil {
		return e.decideInterpreted(ctx, in)
	}
	if err := ctx.Err(); err != nil {
		return ca.Decision{}, fmt.Errorf("policies: eval: %w", err)
	}
	input := lazyInput(in)
	if input == nil {
		return ca.Decision{}, errNoInput
	}
	v, err := e.compiled.Eval(ctx, input)
	if err != nil {
		// The plan evaluates every rule body; topdown stops early where an answer is settled
		// (early exit, rule indexing), so a conflict in a body topdown never reaches is an
		// error here only. Topdown is the reference: it decides such a request (and fails
		// closed itself on a real conflict).
		if e.fallbacks != nil {
			e.fallbacks.Inc()
		}
		return e.decideInterpreted(ctx, in)
	}
	if v == nil {
		return ca.Decision{}, fmt.Errorf("policies: %s is undefined", Query)
	}
	return e.finish(v)
}

// errNoInput: the request has no JSON form, so no policy can be shown it.
var errNoInput = errors.New("policies: input: the request's claims have no JSON form")

// decideInterpreted evaluates in with OPA's topdown evaluator.
func (e *Engine) decideInterpreted(ctx context.Context, in ca.PolicyInput) (ca.Decision, error) {
	input := inputValue(in)
	if input == nil {
		return ca.Decision{}, errNoInput
	}
	rs, err := e.query.Eval(ctx, rego.EvalParsedInput(input))
	if err != nil {
		return ca.Decision{}, fmt.Errorf("policies: eval: %w", err)
	}
	if len(rs) != 1 || len(rs[0].Expressions) != 1 {
		return ca.Decision{}, fmt.Errorf("policies: %s is undefined", Query)
	}
	v, err := ast.InterfaceToValue(rs[0].Expressions[0].Value)
	if err != nil {
		return ca.Decision{}, fmt.Errorf("policies: decision: %w", err)
	}
	return e.finish(v)
}

func (e *Engine) finish(v ast.Value) (ca.Decision, error) {
	d, err := parseDecision(v)
	if err != nil {
		return ca.Decision{}, err
	}
	d.Revision = e.revision
	return d, nil
}

// inputValue is the input document (ca.PolicyInput's JSON form, DESIGN.md "Policy contract")
// built as OPA values directly: no JSON round trip, no conversion inside OPA. It is exactly the
// value json.Marshal(in) parses to (FuzzInputValue), keys read from the type's JSON tags
// (inputKeys). It is nil when in has no JSON form that OPA reads (claims json.Marshal
// refuses, such as NaN, or a number OPA refuses, such as 1e999999): Decide then fails closed.
func inputValue(in ca.PolicyInput) ast.Value {
	id, r := in.Identity, in.Request
	// The terms come from one slab: a decision's input is a few dozen of them.
	slab := make([]ast.Term, 0, 16+len(id.Groups)+len(id.AMR)+len(r.Principals))
	str := func(s string) *ast.Term {
		if s == "" {
			return emptyString
		}
		if t, ok := commonStrings[s]; ok {
			return t
		}
		slab = append(slab, ast.Term{Value: ast.String(jsonString(s))})
		return &slab[len(slab)-1]
	}
	list := func(ss []string) *ast.Term {
		if len(ss) == 0 {
			return emptyArray
		}
		terms := make([]*ast.Term, len(ss))
		for i, s := range ss {
			terms[i] = str(s)
		}
		return ast.ArrayTerm(terms...)
	}
	k := &inputKeys
	identityOf := func(id ca.Identity) *ast.Term {
		claims := emptyObject
		if len(id.Claims) > 0 {
			v, err := claimsValue(id.Claims)
			if err != nil {
				return nil
			}
			claims = ast.NewTerm(v)
		}
		// The optional members go in with the others, so the object is made at its size once
		// (an Insert afterwards grows it).
		var buf [10][2]*ast.Term
		items := append(buf[:0],
			ast.Item(k.issuer, str(id.Issuer)),
			ast.Item(k.subject, str(id.Subject)),
			ast.Item(k.email, str(id.Email)),
			ast.Item(k.username, str(id.Username)),
			ast.Item(k.groups, list(id.Groups)),
			ast.Item(k.amr, list(id.AMR)),
			ast.Item(k.workload, ast.InternedTerm(id.Workload)),
			ast.Item(k.claims, claims),
		)
		// omitempty in ca.Identity and ca.PolicyRequest: absent when zero, as in the JSON.
		if id.ACR != "" {
			items = append(items, ast.Item(k.acr, str(id.ACR)))
		}
		if id.AuthTime != 0 {
			items = append(items, ast.Item(k.authTime, ast.IntNumberTerm(int(id.AuthTime))))
		}
		return ast.NewTerm(ast.NewObject(items...))
	}
	identity := identityOf(id)
	if identity == nil {
		return nil
	}
	var buf [7][2]*ast.Term
	items := append(buf[:0],
		ast.Item(k.principals, list(r.Principals)),
		ast.Item(k.ttlSeconds, ast.IntNumberTerm(int(r.TTLSeconds))),
		ast.Item(k.keyType, str(r.KeyType)),
		ast.Item(k.keyFingerprint, str(r.KeyFingerprint)),
		ast.Item(k.sourceIP, str(r.SourceIP)),
		ast.Item(k.reason, str(r.Reason)),
	)
	if r.Target != "" {
		items = append(items, ast.Item(k.target, str(r.Target)))
	}
	request := ast.NewObject(items...)
	doc := ast.NewObject(
		ast.Item(k.kind, str(string(in.Kind))),
		ast.Item(k.identity, identity),
		ast.Item(k.request, ast.NewTerm(request)),
		ast.Item(k.now, str(in.Now)),
	)
	// omitzero: absent when there is no request (ca.PolicyAccessRequest.IsZero).
	if ar := in.AccessRequest; !ar.IsZero() {
		requester := identityOf(ar.Requester)
		if requester == nil {
			return nil
		}
		approvals := make([]*ast.Term, len(ar.Approvals))
		for i, ap := range ar.Approvals {
			approver := identityOf(ap.Approver)
			if approver == nil {
				return nil
			}
			approvals[i] = ast.ObjectTerm(
				ast.Item(k.approver, approver),
				ast.Item(k.at, str(ap.At)),
				ast.Item(k.approvalReason, str(ap.Reason)),
			)
		}
		doc.Insert(k.accessRequest, ast.ObjectTerm(
			ast.Item(k.arID, str(ar.ID)),
			ast.Item(k.requester, requester),
			ast.Item(k.arPrincipals, list(ar.Principals)),
			ast.Item(k.arTTLSeconds, ast.IntNumberTerm(int(ar.TTLSeconds))),
			ast.Item(k.arReason, str(ar.Reason)),
			ast.Item(k.approvals, ast.ArrayTerm(approvals...)),
			ast.Item(k.breakGlass, ast.InternedTerm(ar.BreakGlass)),
			ast.Item(k.breakGlassLast24h, ast.IntNumberTerm(int(ar.BreakGlassLast24h))),
		))
	}
	return doc
}

// jsonString is s as encoding/json writes it: each byte that is not part of valid UTF-8
// becomes U+FFFD.
func jsonString(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n == 1 {
			b.WriteString("\uFFFD")
		} else {
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

// claimsValue is the claims object as OPA parses its JSON form. Claims as a token's JSON
// decodes them (strings, json.Number or float64, bool, nil, []any, map[string]any) are
// converted directly; anything else goes through json.Marshal. An error means the claims
// have no JSON form OPA reads (NaN, an invalid json.Number, an exponent out of range).
func claimsValue(claims map[string]any) (ast.Value, error) {
	v, err := claimValue(claims)
	if errors.Is(err, errNotPlain) {
		var b []byte
		if b, err = json.Marshal(claims); err == nil {
			v, err = ast.ValueFromReader(bytes.NewReader(b))
		}
	}
	if err != nil {
		return nil, fmt.Errorf("policies: input: claims: %w", err)
	}
	return v, nil
}

// errNotPlain: a claim holds something that is not a decoded JSON value.
var errNotPlain = errors.New("not a decoded JSON value")

// claimValue converts a decoded JSON value as json.Marshal writes it and OPA parses it back.
func claimValue(v any) (ast.Value, error) {
	switch x := v.(type) {
	case nil:
		return ast.NullValue, nil
	case bool:
		return ast.Boolean(x), nil
	case string:
		return ast.String(jsonString(x)), nil
	case json.Number:
		if x == "" {
			x = "0" // as json.Marshal writes it
		}
		if !validNumber(string(x)) {
			return nil, fmt.Errorf("json.Number %q is not a number", string(x))
		}
		return ast.InterfaceToValue(x)
	case float64:
		n, ok := jsonFloat(x)
		if !ok {
			return nil, fmt.Errorf("%v has no JSON form", x)
		}
		if t := ast.InternedIntNumberTermFromString(n); t != nil {
			return t.Value, nil
		}
		return ast.Number(n), nil
	case []any:
		terms := make([]ast.Term, len(x))
		ptrs := make([]*ast.Term, len(x))
		for i, e := range x {
			v, err := claimValue(e)
			if err != nil {
				return nil, err
			}
			terms[i].Value, ptrs[i] = v, &terms[i]
		}
		return ast.NewArray(ptrs...), nil
	case map[string]any:
		terms := make([]ast.Term, 2*len(x))
		items := make([][2]*ast.Term, 0, len(x))
		i := 0
		for k, e := range x {
			if !utf8.ValidString(k) {
				// Keys json.Marshal mends may collide; let it decide which one stays.
				return nil, errNotPlain
			}
			v, err := claimValue(e)
			if err != nil {
				return nil, err
			}
			terms[i].Value, terms[i+1].Value = ast.String(k), v
			items = append(items, [2]*ast.Term{&terms[i], &terms[i+1]})
			i += 2
		}
		return ast.NewObject(items...), nil
	}
	return nil, errNotPlain
}

// validNumber reports whether s is a JSON number (RFC 8259 section 6), as json.Marshal checks
// a json.Number before writing it.
func validNumber(s string) bool {
	digits := func() {
		for len(s) > 0 && '0' <= s[0] && s[0] <= '9' {
			s = s[1:]
		}
	}
	if s != "" && s[0] == '-' {
		s = s[1:]
	}
	switch {
	case s == "":
		return false
	case s[0] == '0':
		s = s[1:]
	case '1' <= s[0] && s[0] <= '9':
		digits()
	default:
		return false
	}
	if len(s) >= 2 && s[0] == '.' && '0' <= s[1] && s[1] <= '9' {
		s = s[2:]
		digits()
	}
	if len(s) >= 2 && (s[0] == 'e' || s[0] == 'E') {
		s = s[1:]
		if s[0] == '+' || s[0] == '-' {
			s = s[1:]
			if s == "" {
				return false
			}
		}
		digits()
	}
	return s == ""
}

// jsonFloat formats f as encoding/json does (ES6 number formatting), false for NaN and ±Inf.
func jsonFloat(f float64) (string, bool) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return "", false
	}
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	var buf [32]byte
	b := strconv.AppendFloat(buf[:0], f, format, -1, 64)
	if format == 'e' {
		// e-09 becomes e-9, as encoding/json writes it.
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return string(b), true
}

// Shared, never modified: neither evaluator writes to the input.
var (
	emptyString = ast.StringTerm("")
	emptyObject = ast.NewTerm(ast.NewObject())
	emptyArray  = ast.ArrayTerm()
	// commonStrings are values most inputs carry (the kind, the key type): one term each,
	// shared, instead of one per decision.
	commonStrings = func() map[string]*ast.Term {
		m := map[string]*ast.Term{}
		for _, s := range []string{
			string(ca.ActionUser), string(ca.ActionHost), string(ca.ActionRenew), string(ca.ActionRevoke),
			string(ca.ActionAdmin), string(ca.ActionRead), string(ca.ActionRequest), string(ca.ActionApprove),
			ssh.KeyAlgoED25519, ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA521, ssh.KeyAlgoRSA,
			ssh.KeyAlgoSKED25519, ssh.KeyAlgoSKECDSA256,
		} {
			m[s] = ast.StringTerm(s)
		}
		return m
	}()
)

// inputKeys are the input document's keys, read once from the JSON tags of ca.PolicyInput,
// ca.Identity and ca.PolicyRequest: the type is their one definition. A field named here that
// the type lacks, or that has no JSON name, stops the package from loading.
var inputKeys = struct {
	kind, identity, request, now                                                   *ast.Term
	issuer, subject, email, username, groups, amr, acr, authTime, workload, claims *ast.Term
	principals, ttlSeconds, keyType, keyFingerprint, sourceIP, reason, target      *ast.Term

	accessRequest, arID, requester, arPrincipals, arTTLSeconds, arReason, approvals, breakGlass *ast.Term
	breakGlassLast24h                                                                           *ast.Term
	approver, at, approvalReason                                                                *ast.Term
}{
	kind: key[ca.PolicyInput]("Kind"), identity: key[ca.PolicyInput]("Identity"),
	request: key[ca.PolicyInput]("Request"), now: key[ca.PolicyInput]("Now"),

	issuer: key[ca.Identity]("Issuer"), subject: key[ca.Identity]("Subject"), email: key[ca.Identity]("Email"),
	username: key[ca.Identity]("Username"), groups: key[ca.Identity]("Groups"), amr: key[ca.Identity]("AMR"),
	acr: key[ca.Identity]("ACR"), authTime: key[ca.Identity]("AuthTime"), workload: key[ca.Identity]("Workload"),
	claims: key[ca.Identity]("Claims"),

	principals: key[ca.PolicyRequest]("Principals"), ttlSeconds: key[ca.PolicyRequest]("TTLSeconds"),
	keyType: key[ca.PolicyRequest]("KeyType"), keyFingerprint: key[ca.PolicyRequest]("KeyFingerprint"),
	sourceIP: key[ca.PolicyRequest]("SourceIP"), reason: key[ca.PolicyRequest]("Reason"),
	target: key[ca.PolicyRequest]("Target"),

	accessRequest: key[ca.PolicyInput]("AccessRequest"),
	arID:          key[ca.PolicyAccessRequest]("ID"), requester: key[ca.PolicyAccessRequest]("Requester"),
	arPrincipals: key[ca.PolicyAccessRequest]("Principals"), arTTLSeconds: key[ca.PolicyAccessRequest]("TTLSeconds"),
	arReason: key[ca.PolicyAccessRequest]("Reason"), approvals: key[ca.PolicyAccessRequest]("Approvals"),
	breakGlass: key[ca.PolicyAccessRequest]("BreakGlass"), breakGlassLast24h: key[ca.PolicyAccessRequest]("BreakGlassLast24h"),
	approver: key[ca.PolicyApproval]("Approver"), at: key[ca.PolicyApproval]("At"),
	approvalReason: key[ca.PolicyApproval]("Reason"),
}

// key is the JSON name of T's field as a term.
func key[T any](field string) *ast.Term {
	name := jsonName[T](field)
	return ast.StringTerm(name)
}

// jsonName is the name encoding/json gives T's field; it panics when there is none.
func jsonName[T any](field string) string {
	t := reflect.TypeFor[T]()
	f, ok := t.FieldByName(field)
	name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
	if !ok || name == "" || name == "-" {
		panic(fmt.Sprintf("policies: %s.%s has no JSON name", t, field))
	}
	return name
}

// parseDecision reads the decision object (ca.PolicyDecision's JSON form) by the keys of
// decisionKeys. Anything malformed is an error, never a grant.
func parseDecision(v ast.Value) (ca.Decision, error) {
	m, ok := v.(ast.Object)
	if !ok {
		return ca.Decision{}, fmt.Errorf("policies: decision is %s, not an object", ast.ValueName(v))
	}
	k := &decisionKeys
	var d ca.Decision
	allow, ok := field(m, k.allow).(ast.Boolean)
	if !ok {
		return ca.Decision{}, fmt.Errorf("policies: decision.%s is not a boolean", k.allow.name)
	}
	d.Allow = bool(allow)
	var err error
	if d.Reasons, err = stringsOf(m, k.reasons); err != nil {
		return ca.Decision{}, err
	}
	if d.Principals, err = stringsOf(m, k.principals); err != nil {
		return ca.Decision{}, err
	}
	if d.Extensions, err = stringMap(m, k.extensions); err != nil {
		return ca.Decision{}, err
	}
	if d.CriticalOptions, err = stringMap(m, k.criticalOptions); err != nil {
		return ca.Decision{}, err
	}
	switch t := field(m, k.ticket).(type) {
	case nil, ast.Null:
	case ast.String:
		d.Ticket = string(t)
	default:
		return ca.Decision{}, fmt.Errorf("policies: decision.%s is not a string", k.ticket.name)
	}
	if raw := field(m, k.approvalsRequired); raw != nil {
		n, ok := raw.(ast.Number)
		if !ok {
			return ca.Decision{}, fmt.Errorf("policies: decision.%s is not a number", k.approvalsRequired.name)
		}
		c, err := json.Number(n).Int64()
		if err != nil || c < 0 || c > 100 {
			return ca.Decision{}, fmt.Errorf("policies: decision.%s %s is not an integer from 0 to 100", k.approvalsRequired.name, n)
		}
		d.ApprovalsRequired = int(c)
	}
	if raw := field(m, k.ttlSeconds); raw != nil {
		n, ok := raw.(ast.Number)
		if !ok {
			return ca.Decision{}, fmt.Errorf("policies: decision.%s is not a number", k.ttlSeconds.name)
		}
		secs, err := json.Number(n).Int64()
		if err != nil || secs < 0 {
			return ca.Decision{}, fmt.Errorf("policies: decision.%s %s is not a non-negative integer", k.ttlSeconds.name, n)
		}
		d.TTL = time.Duration(secs) * time.Second
	}
	return d, nil
}

// decisionKey is one key of the decision document, as a term made once.
type decisionKey struct {
	name string
	term *ast.Term
}

func decisionKeyOf(field string) decisionKey {
	name := jsonName[ca.PolicyDecision](field)
	return decisionKey{name, ast.StringTerm(name)}
}

// decisionKeys are the decision's keys, read once from ca.PolicyDecision's JSON tags.
var decisionKeys = struct {
	allow, reasons, principals, ttlSeconds, extensions, criticalOptions, ticket, approvalsRequired decisionKey
}{
	allow: decisionKeyOf("Allow"), reasons: decisionKeyOf("Reasons"), principals: decisionKeyOf("Principals"),
	ttlSeconds: decisionKeyOf("TTLSeconds"), extensions: decisionKeyOf("Extensions"),
	criticalOptions: decisionKeyOf("CriticalOptions"), ticket: decisionKeyOf("Ticket"),
	approvalsRequired: decisionKeyOf("ApprovalsRequired"),
}

// field is m[k], or nil.
func field(m ast.Object, k decisionKey) ast.Value {
	if t := m.Get(k.term); t != nil {
		return t.Value
	}
	return nil
}

// stringsOf reads a list (or set) of strings.
func stringsOf(m ast.Object, k decisionKey) ([]string, error) {
	var n int
	var elem func(int) *ast.Term
	switch c := field(m, k).(type) {
	case nil, ast.Null:
		return nil, nil
	case *ast.Array:
		n, elem = c.Len(), c.Elem
	case ast.Set:
		elems := c.Slice()
		n, elem = len(elems), func(i int) *ast.Term { return elems[i] }
	default:
		return nil, fmt.Errorf("policies: decision.%s is not a list", k.name)
	}
	out := make([]string, 0, n)
	for i := range n {
		s, ok := elem(i).Value.(ast.String)
		if !ok {
			return nil, fmt.Errorf("policies: decision.%s holds a non-string", k.name)
		}
		out = append(out, string(s))
	}
	return out, nil
}

func stringMap(m ast.Object, k decisionKey) (map[string]string, error) {
	var obj ast.Object
	switch c := field(m, k).(type) {
	case nil, ast.Null:
		return map[string]string{}, nil
	case ast.Object:
		obj = c
	default:
		return nil, fmt.Errorf("policies: decision.%s is not an object", k.name)
	}
	out := make(map[string]string, obj.Len())
	if obj.Len() == 0 {
		return out, nil // most critical_options: no closure and error to make for nothing
	}
	var err error
	obj.Foreach(func(key, v *ast.Term) {
		ks, kok := key.Value.(ast.String)
		vs, vok := v.Value.(ast.String)
		if !kok || !vok {
			err = fmt.Errorf("policies: decision.%s.%v is not a string", k.name, key)
			return
		}
		out[string(ks)] = string(vs)
	})
	return out, err
}

var errNoTests = errors.New("policies: test: no Rego tests found")

// DefaultTestTimeout bounds each Rego test of a policy (wall clock, from the test's compile to
// its result, as OPA's runner times it), so that a policy with a test that never ends is
// refused rather than hanging its reload. OPA's default, 5 s, was only 16 times the slowest
// shipped test under -race (312 ms; 17 ms without) and a loaded machine reached it: TestRego
// timed out, and a server busy signing would have refused an operator's good policy at reload.
// A minute is 190 times that test under -race (docs/performance.md, "Stop 14 changes"); the
// price is that a policy whose test never ends is refused only after that minute (per such
// test, as many at a time as the machine has cores).
const DefaultTestTimeout = time.Minute

// Test runs the Rego tests (*_test.rego) of the policy in dir with its data.json and returns
// an error naming every failing test, each bounded by DefaultTestTimeout. Directories named
// testdata are skipped, as go skips them: they hold test policies and documents, not the
// policy.
func Test(ctx context.Context, dir string) error { return TestWithin(ctx, dir, DefaultTestTimeout) }

// TestWithin is Test with each test bounded by perTest (wall clock): a test that runs longer
// fails, named with the bound. When ctx ends before every test has run, the policy is not
// tested and TestWithin fails (OPA's runner skips the tests left without a result).
func TestWithin(ctx context.Context, dir string, perTest time.Duration) error {
	modules, store, err := tester.Load([]string{dir}, func(_ string, info fs.FileInfo, depth int) bool {
		return depth > 0 && info.IsDir() && info.Name() == "testdata"
	})
	if err != nil {
		return fmt.Errorf("policies: test: %w", err)
	}
	ch, err := tester.NewRunner().SetStore(store).SetTimeout(perTest).Run(ctx, modules)
	if err != nil {
		return fmt.Errorf("policies: test: %w", err)
	}
	var results []*tester.Result
	for r := range ch {
		results = append(results, r)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("policies: test: stopped after %d Rego tests, before all had run: %w", len(results), err)
	}
	var failed []string
	for _, r := range results {
		if r.Fail || r.Error != nil {
			msg := r.Package + "." + r.Name
			switch {
			case r.Error != nil && topdown.IsCancel(r.Error):
				// ctx is still live: only the runner's bound on this test cancelled it.
				msg += fmt.Sprintf(": did not finish within %v, the bound on each Rego test: a test must end (is it iterating over a huge range?)", perTest)
			case r.Error != nil:
				msg += ": " + r.Error.Error()
			}
			failed = append(failed, msg)
		}
	}
	if len(results) == 0 {
		return errNoTests
	}
	if len(failed) > 0 {
		return fmt.Errorf("policies: %d of %d Rego tests failed:\n  %s", len(failed), len(results), strings.Join(failed, "\n  "))
	}
	return nil
}
