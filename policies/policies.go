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

type loadOptions struct{ dataFile string }

// WithDataFile replaces the policy's data.json with the file at path (same Rego).
func WithDataFile(path string) Option { return func(o *loadOptions) { o.dataFile = path } }

// Engine evaluates a loaded policy.
type Engine struct {
	query    rego.PreparedEvalQuery
	revision string
}

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
	args := []func(*rego.Rego){rego.Query(Query), rego.Store(inmem.NewFromObjectWithOpts(doc, inmem.OptReturnASTValuesOnRead(true)))}
	h := sha256.New()
	for _, m := range append(modules, data) {
		fmt.Fprintf(h, "%s\x00%d\x00", m.name, len(m.content))
		h.Write(m.content)
	}
	for _, m := range modules {
		args = append(args, rego.Module(m.name, string(m.content)))
	}
	pq, err := rego.New(args...).PrepareForEval(ctx)
	if err != nil {
		return nil, fmt.Errorf("policies: compile: %w", err)
	}
	return &Engine{query: pq, revision: hex.EncodeToString(h.Sum(nil))[:12]}, nil
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

// Decide evaluates the prepared query on in.
func (e *Engine) Decide(ctx context.Context, in ca.PolicyInput) (ca.Decision, error) {
	rs, err := e.query.Eval(ctx, rego.EvalInput(inputDocument(in)))
	if err != nil {
		return ca.Decision{}, fmt.Errorf("policies: eval: %w", err)
	}
	if len(rs) != 1 || len(rs[0].Expressions) != 1 {
		return ca.Decision{}, fmt.Errorf("policies: %s is undefined", Query)
	}
	d, err := parseDecision(rs[0].Expressions[0].Value)
	if err != nil {
		return ca.Decision{}, err
	}
	d.Revision = e.revision
	return d, nil
}

// inputDocument builds the input as plain maps and slices, which OPA converts without a JSON
// round trip.
func inputDocument(in ca.PolicyInput) map[string]any {
	id := in.Identity
	claims := id.Claims
	if claims == nil {
		claims = map[string]any{}
	}
	identity := map[string]any{
		"issuer": id.Issuer, "subject": id.Subject, "email": id.Email, "username": id.Username,
		"groups": strings2any(id.Groups), "amr": strings2any(id.AMR), "workload": id.Workload,
		"claims": claims,
	}
	if id.ACR != "" {
		identity["acr"] = id.ACR
	}
	if id.AuthTime != 0 {
		identity["auth_time"] = json.Number(fmt.Sprint(id.AuthTime))
	}
	r := in.Request
	return map[string]any{
		"kind":     string(in.Kind),
		"identity": identity,
		"request": map[string]any{
			"principals": strings2any(r.Principals), "ttl_seconds": json.Number(fmt.Sprint(r.TTLSeconds)),
			"key_type": r.KeyType, "key_fingerprint": r.KeyFingerprint, "source_ip": r.SourceIP, "reason": r.Reason,
		},
		"now": in.Now,
	}
}

func strings2any(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
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
