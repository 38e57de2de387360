// Package policies holds sshca's Rego policy (sshca.rego, its settings in data.json, and its
// tests in *_test.rego) and the engine that evaluates it with OPA. The query
// data.sshca.decision is prepared once at load; Decide only evaluates. The engine implements
// ca.Policy and fails closed: an undefined or malformed decision is an error, never a grant.
package policies

import (
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/tester"

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
	dataFile    string
	interpreted bool
}

// Interpreted evaluates with OPA's topdown evaluator only, never the compiled plan: the
// reference the compiled path is checked against, and an escape hatch.
func Interpreted() Option { return func(o *loadOptions) { o.interpreted = true } }

// WithDataFile replaces the policy's data.json with the file at path (same Rego).
func WithDataFile(path string) Option { return func(o *loadOptions) { o.dataFile = path } }

// Engine evaluates a loaded policy: through its compiled plan when the policy allows it
// (compiled.go), else through OPA's topdown evaluator.
type Engine struct {
	query    rego.PreparedEvalQuery
	compiled *program
	mode     string
	revision string
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
	modules, data, err := readBundle(fsys, o.dataFile)
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
	var mods []func(*rego.Rego)
	for _, m := range modules {
		mods = append(mods, rego.Module(m.name, string(m.content)))
	}
	e, err := newEngine(ctx, mods, doc, hex.EncodeToString(h.Sum(nil))[:12], o)
	if err != nil {
		return nil, fmt.Errorf("policies: %w", err)
	}
	return e, nil
}

// newEngine compiles the modules with their data: prepared for topdown, and planned and
// compiled unless the policy needs topdown or o asks for it.
func newEngine(ctx context.Context, modules []func(*rego.Rego), doc map[string]any, revision string, o loadOptions) (*Engine, error) {
	dataValue, err := ast.InterfaceToValue(doc)
	if err != nil {
		return nil, fmt.Errorf("data: %w", err)
	}
	args := append([]func(*rego.Rego){rego.Query(Query)}, modules...)
	store := rego.Store(inmem.NewFromObjectWithOpts(doc, inmem.OptReturnASTValuesOnRead(true)))
	pq, err := rego.New(append(args, store)...).PrepareForEval(ctx)
	if err != nil {
		return nil, fmt.Errorf("compile: %w", err)
	}
	e := &Engine{query: pq, mode: "compiled", revision: revision}
	if o.interpreted {
		e.mode = "interpreted (by request)"
		return e, nil
	}
	p, err := plan(ctx, args)
	if err == nil {
		e.compiled, err = compile(p, dataValue)
	}
	if err == nil {
		err = e.selfCheck(ctx)
	}
	if err != nil {
		e.compiled, e.mode = nil, "interpreted ("+strings.TrimPrefix(err.Error(), "policies: ")+")"
	}
	return e, nil
}

type file struct {
	name    string
	content []byte
}

func readBundle(fsys fs.FS, dataFile string) (modules []file, data file, err error) {
	names, err := fs.Glob(fsys, "*.rego")
	if err != nil {
		return nil, file{}, fmt.Errorf("policies: %w", err)
	}
	sort.Strings(names)
	for _, n := range names {
		if strings.HasSuffix(n, "_test.rego") {
			continue
		}
		b, err := fs.ReadFile(fsys, n)
		if err != nil {
			return nil, file{}, fmt.Errorf("policies: %w", err)
		}
		modules = append(modules, file{n, b})
	}
	if len(modules) == 0 {
		return nil, file{}, errors.New("policies: no .rego files found")
	}
	if dataFile != "" {
		b, err := os.ReadFile(dataFile)
		if err != nil {
			return nil, file{}, fmt.Errorf("policies: data file: %w", err)
		}
		return modules, file{path.Base(dataFile), b}, nil
	}
	b, err := fs.ReadFile(fsys, "data.json")
	if errors.Is(err, fs.ErrNotExist) {
		return modules, file{"data.json", []byte("{}")}, nil
	}
	if err != nil {
		return nil, file{}, fmt.Errorf("policies: %w", err)
	}
	return modules, file{"data.json", b}, nil
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
	v, err := e.compiled.eval(ctx, inputValue(in))
	if err != nil {
		// The plan evaluates every rule body; topdown stops early where an answer is settled
		// (early exit, rule indexing), so a conflict in a body topdown never reaches is an
		// error here only. Topdown is the reference: it decides such a request (and fails
		// closed itself on a real conflict).
		return e.decideInterpreted(ctx, in)
	}
	if v == nil {
		return ca.Decision{}, fmt.Errorf("policies: %s is undefined", Query)
	}
	return e.finish(v)
}

// decideInterpreted evaluates in with OPA's topdown evaluator.
func (e *Engine) decideInterpreted(ctx context.Context, in ca.PolicyInput) (ca.Decision, error) {
	rs, err := e.query.Eval(ctx, rego.EvalParsedInput(inputValue(in)))
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

// inputValue builds the input document (DESIGN.md, "Policy contract") as OPA values directly:
// no JSON round trip, no conversion inside OPA.
func inputValue(in ca.PolicyInput) ast.Value {
	id, r := in.Identity, in.Request
	// The terms come from one slab: a decision's input is a few dozen of them.
	slab := make([]ast.Term, 0, 16+len(id.Groups)+len(id.AMR)+len(r.Principals))
	str := func(s string) *ast.Term {
		if s == "" {
			return emptyString
		}
		slab = append(slab, ast.Term{Value: ast.String(s)})
		return &slab[len(slab)-1]
	}
	list := func(ss []string) *ast.Term {
		terms := make([]*ast.Term, len(ss))
		for i, s := range ss {
			terms[i] = str(s)
		}
		return ast.ArrayTerm(terms...)
	}
	claims := emptyObject
	if len(id.Claims) > 0 {
		if v, err := ast.InterfaceToValue(id.Claims); err == nil {
			claims = ast.NewTerm(v)
		}
	}
	identity := ast.NewObject(
		ast.Item(keyIssuer, str(id.Issuer)),
		ast.Item(keySubject, str(id.Subject)),
		ast.Item(keyEmail, str(id.Email)),
		ast.Item(keyUsername, str(id.Username)),
		ast.Item(keyGroups, list(id.Groups)),
		ast.Item(keyAmr, list(id.AMR)),
		ast.Item(keyWorkload, ast.InternedTerm(id.Workload)),
		ast.Item(keyClaims, claims),
	)
	if id.ACR != "" {
		identity.Insert(keyAcr, str(id.ACR))
	}
	if id.AuthTime != 0 {
		identity.Insert(keyAuthTime, ast.IntNumberTerm(int(id.AuthTime)))
	}
	request := ast.NewObject(
		ast.Item(keyPrincipals, list(r.Principals)),
		ast.Item(keyTTLSeconds, ast.IntNumberTerm(int(r.TTLSeconds))),
		ast.Item(keyKeyType, str(r.KeyType)),
		ast.Item(keyKeyFingerprint, str(r.KeyFingerprint)),
		ast.Item(keySourceIP, str(r.SourceIP)),
		ast.Item(keyReason, str(r.Reason)),
	)
	return ast.NewObject(
		ast.Item(keyKind, str(string(in.Kind))),
		ast.Item(keyIdentity, ast.NewTerm(identity)),
		ast.Item(keyRequest, ast.NewTerm(request)),
		ast.Item(keyNow, str(in.Now)),
	)
}

// Shared, never modified: neither evaluator writes to the input.
var (
	emptyString = ast.StringTerm("")
	emptyObject = ast.NewTerm(ast.NewObject())
)

// The input document's keys, made once.
var (
	keyIssuer         = ast.StringTerm("issuer")
	keySubject        = ast.StringTerm("subject")
	keyEmail          = ast.StringTerm("email")
	keyUsername       = ast.StringTerm("username")
	keyGroups         = ast.StringTerm("groups")
	keyAmr            = ast.StringTerm("amr")
	keyWorkload       = ast.StringTerm("workload")
	keyClaims         = ast.StringTerm("claims")
	keyAcr            = ast.StringTerm("acr")
	keyAuthTime       = ast.StringTerm("auth_time")
	keyPrincipals     = ast.StringTerm("principals")
	keyTTLSeconds     = ast.StringTerm("ttl_seconds")
	keyKeyType        = ast.StringTerm("keyType")
	keyKeyFingerprint = ast.StringTerm("keyFingerprint")
	keySourceIP       = ast.StringTerm("source_ip")
	keyReason         = ast.StringTerm("reason")
	keyKind           = ast.StringTerm("kind")
	keyIdentity       = ast.StringTerm("identity")
	keyRequest        = ast.StringTerm("request")
	keyNow            = ast.StringTerm("now")
)

// parseDecision reads the decision object. Anything malformed is an error, never a grant.
func parseDecision(v ast.Value) (ca.Decision, error) {
	m, ok := v.(ast.Object)
	if !ok {
		return ca.Decision{}, fmt.Errorf("policies: decision is %s, not an object", ast.ValueName(v))
	}
	var d ca.Decision
	allow, ok := field(m, "allow").(ast.Boolean)
	if !ok {
		return ca.Decision{}, errors.New("policies: decision.allow is not a boolean")
	}
	d.Allow = bool(allow)
	var err error
	if d.Reasons, err = stringsOf(m, "reasons"); err != nil {
		return ca.Decision{}, err
	}
	if d.Principals, err = stringsOf(m, "principals"); err != nil {
		return ca.Decision{}, err
	}
	if d.Extensions, err = stringMap(m, "extensions"); err != nil {
		return ca.Decision{}, err
	}
	if d.CriticalOptions, err = stringMap(m, "critical_options"); err != nil {
		return ca.Decision{}, err
	}
	switch t := field(m, "ticket").(type) {
	case nil, ast.Null:
	case ast.String:
		d.Ticket = string(t)
	default:
		return ca.Decision{}, errors.New("policies: decision.ticket is not a string")
	}
	if raw := field(m, "ttl_seconds"); raw != nil {
		n, ok := raw.(ast.Number)
		if !ok {
			return ca.Decision{}, errors.New("policies: decision.ttl_seconds is not a number")
		}
		secs, err := json.Number(n).Int64()
		if err != nil || secs < 0 {
			return ca.Decision{}, fmt.Errorf("policies: decision.ttl_seconds %s is not a non-negative integer", n)
		}
		d.TTL = time.Duration(secs) * time.Second
	}
	return d, nil
}

// decisionKeys are the decision's keys as terms, made once.
var decisionKeys = map[string]*ast.Term{}

func init() {
	for _, k := range []string{"allow", "reasons", "principals", "extensions", "critical_options", "ticket", "ttl_seconds"} {
		decisionKeys[k] = ast.StringTerm(k)
	}
}

// field is m[key], or nil.
func field(m ast.Object, key string) ast.Value {
	k := decisionKeys[key]
	if k == nil {
		k = ast.StringTerm(key)
	}
	if t := m.Get(k); t != nil {
		return t.Value
	}
	return nil
}

// stringsOf reads a list (or set) of strings.
func stringsOf(m ast.Object, key string) ([]string, error) {
	var elems []*ast.Term
	switch c := field(m, key).(type) {
	case nil, ast.Null:
		return nil, nil
	case *ast.Array:
		elems = make([]*ast.Term, c.Len())
		for i := range elems {
			elems[i] = c.Elem(i)
		}
	case ast.Set:
		elems = c.Slice()
	default:
		return nil, fmt.Errorf("policies: decision.%s is not a list", key)
	}
	out := make([]string, 0, len(elems))
	for _, e := range elems {
		s, ok := e.Value.(ast.String)
		if !ok {
			return nil, fmt.Errorf("policies: decision.%s holds a non-string", key)
		}
		out = append(out, string(s))
	}
	return out, nil
}

func stringMap(m ast.Object, key string) (map[string]string, error) {
	var obj ast.Object
	switch c := field(m, key).(type) {
	case nil, ast.Null:
		return map[string]string{}, nil
	case ast.Object:
		obj = c
	default:
		return nil, fmt.Errorf("policies: decision.%s is not an object", key)
	}
	out := make(map[string]string, obj.Len())
	var err error
	obj.Foreach(func(k, v *ast.Term) {
		ks, kok := k.Value.(ast.String)
		vs, vok := v.Value.(ast.String)
		if !kok || !vok {
			err = fmt.Errorf("policies: decision.%s.%v is not a string", key, k)
			return
		}
		out[string(ks)] = string(vs)
	})
	return out, err
}

var errNoTests = errors.New("policies: test: no Rego tests found")

// Test runs the Rego tests (*_test.rego) of the policy in dir with its data.json and returns
// an error naming every failing test.
func Test(ctx context.Context, dir string) error {
	results, err := tester.Run(ctx, dir)
	if err != nil {
		return fmt.Errorf("policies: test: %w", err)
	}
	var failed []string
	for _, r := range results {
		if r.Fail || r.Error != nil {
			msg := r.Package + "." + r.Name
			if r.Error != nil {
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
