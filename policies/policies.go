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
	dataValue, err := ast.InterfaceToValue(doc)
	if err != nil {
		return nil, fmt.Errorf("policies: %s: %w", data.name, err)
	}
	args := []func(*rego.Rego){rego.Query(Query)}
	h := sha256.New()
	for _, m := range append(modules, data) {
		fmt.Fprintf(h, "%s\x00%d\x00", m.name, len(m.content))
		h.Write(m.content)
	}
	for _, m := range modules {
		args = append(args, rego.Module(m.name, string(m.content)))
	}
	store := rego.Store(inmem.NewFromObjectWithOpts(doc, inmem.OptReturnASTValuesOnRead(true)))
	pq, err := rego.New(append(args, store)...).PrepareForEval(ctx)
	if err != nil {
		return nil, fmt.Errorf("policies: compile: %w", err)
	}
	e := &Engine{query: pq, mode: "compiled", revision: hex.EncodeToString(h.Sum(nil))[:12]}
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
		return ca.Decision{}, fmt.Errorf("policies: eval: %w", err)
	}
	if v == nil {
		return ca.Decision{}, fmt.Errorf("policies: %s is undefined", Query)
	}
	raw, err := ast.JSON(v)
	if err != nil {
		return ca.Decision{}, fmt.Errorf("policies: decision: %w", err)
	}
	return e.finish(raw)
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
	return e.finish(rs[0].Expressions[0].Value)
}

func (e *Engine) finish(raw any) (ca.Decision, error) {
	d, err := parseDecision(raw)
	if err != nil {
		return ca.Decision{}, err
	}
	d.Revision = e.revision
	return d, nil
}

// inputValue builds the input document (DESIGN.md, "Policy contract") as OPA values directly:
// no JSON round trip, no conversion inside OPA.
func inputValue(in ca.PolicyInput) ast.Value {
	id := in.Identity
	claims := ast.NewObject()
	if len(id.Claims) > 0 {
		if v, err := ast.InterfaceToValue(id.Claims); err == nil {
			if o, ok := v.(ast.Object); ok {
				claims = o
			}
		}
	}
	identity := ast.NewObject(
		ast.Item(keyIssuer, ast.StringTerm(id.Issuer)),
		ast.Item(keySubject, ast.StringTerm(id.Subject)),
		ast.Item(keyEmail, ast.StringTerm(id.Email)),
		ast.Item(keyUsername, ast.StringTerm(id.Username)),
		ast.Item(keyGroups, stringsTerm(id.Groups)),
		ast.Item(keyAmr, stringsTerm(id.AMR)),
		ast.Item(keyWorkload, ast.InternedTerm(id.Workload)),
		ast.Item(keyClaims, ast.NewTerm(claims)),
	)
	if id.ACR != "" {
		identity.Insert(keyAcr, ast.StringTerm(id.ACR))
	}
	if id.AuthTime != 0 {
		identity.Insert(keyAuthTime, ast.IntNumberTerm(int(id.AuthTime)))
	}
	r := in.Request
	request := ast.NewObject(
		ast.Item(keyPrincipals, stringsTerm(r.Principals)),
		ast.Item(keyTTLSeconds, ast.IntNumberTerm(int(r.TTLSeconds))),
		ast.Item(keyKeyType, ast.StringTerm(r.KeyType)),
		ast.Item(keyKeyFingerprint, ast.StringTerm(r.KeyFingerprint)),
		ast.Item(keySourceIp, ast.StringTerm(r.SourceIP)),
		ast.Item(keyReason, ast.StringTerm(r.Reason)),
	)
	return ast.NewObject(
		ast.Item(keyKind, ast.StringTerm(string(in.Kind))),
		ast.Item(keyIdentity, ast.NewTerm(identity)),
		ast.Item(keyRequest, ast.NewTerm(request)),
		ast.Item(keyNow, ast.StringTerm(in.Now)),
	)
}

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
	keySourceIp       = ast.StringTerm("source_ip")
	keyReason         = ast.StringTerm("reason")
	keyKind           = ast.StringTerm("kind")
	keyIdentity       = ast.StringTerm("identity")
	keyRequest        = ast.StringTerm("request")
	keyNow            = ast.StringTerm("now")
)

func stringsTerm(ss []string) *ast.Term {
	terms := make([]*ast.Term, len(ss))
	for i, s := range ss {
		terms[i] = ast.StringTerm(s)
	}
	return ast.ArrayTerm(terms...)
}

func parseDecision(v any) (ca.Decision, error) {
	m, ok := v.(map[string]any)
	if !ok {
		return ca.Decision{}, fmt.Errorf("policies: decision is %T, not an object", v)
	}
	var d ca.Decision
	allow, ok := m["allow"].(bool)
	if !ok {
		return ca.Decision{}, errors.New("policies: decision.allow is not a boolean")
	}
	d.Allow = allow
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
	if t, ok := m["ticket"]; ok && t != nil {
		s, ok := t.(string)
		if !ok {
			return ca.Decision{}, errors.New("policies: decision.ticket is not a string")
		}
		d.Ticket = s
	}
	if raw, ok := m["ttl_seconds"]; ok {
		n, ok := raw.(json.Number)
		if !ok {
			return ca.Decision{}, errors.New("policies: decision.ttl_seconds is not a number")
		}
		secs, err := n.Int64()
		if err != nil || secs < 0 {
			return ca.Decision{}, fmt.Errorf("policies: decision.ttl_seconds %s is not a non-negative integer", n)
		}
		d.TTL = time.Duration(secs) * time.Second
	}
	return d, nil
}

func stringsOf(m map[string]any, key string) ([]string, error) {
	raw, ok := m[key]
	if !ok || raw == nil {
		return nil, nil
	}
	list, ok := raw.([]any)
	if !ok {
		return nil, fmt.Errorf("policies: decision.%s is not a list", key)
	}
	out := make([]string, 0, len(list))
	for _, e := range list {
		s, ok := e.(string)
		if !ok {
			return nil, fmt.Errorf("policies: decision.%s holds a non-string", key)
		}
		out = append(out, s)
	}
	return out, nil
}

func stringMap(m map[string]any, key string) (map[string]string, error) {
	raw, ok := m[key]
	if !ok || raw == nil {
		return map[string]string{}, nil
	}
	obj, ok := raw.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("policies: decision.%s is not an object", key)
	}
	out := make(map[string]string, len(obj))
	for k, v := range obj {
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("policies: decision.%s.%s is not a string", key, k)
		}
		out[k] = s
	}
	return out, nil
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
