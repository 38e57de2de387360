package policies

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
)

// Eval evaluates query (e.g. "data.sshca.decision") against the policy in dir with input, for
// the authoring tools. It compiles the policy for this one evaluation.
func Eval(ctx context.Context, dir string, input any, query string, opts ...Option) (any, error) {
	var o loadOptions
	for _, opt := range opts {
		opt(&o)
	}
	modules, _, data, err := readBundle(os.DirFS(dir), o.dataFile)
	if err != nil {
		return nil, err
	}
	var doc map[string]any
	if err := json.Unmarshal(data.content, &doc); err != nil {
		return nil, fmt.Errorf("policies: %s: %w", data.name, err)
	}
	args := []func(*rego.Rego){rego.Query(query), rego.Store(inmem.NewFromObject(doc)), rego.Input(input)}
	for _, m := range modules {
		args = append(args, rego.Module(m.name, string(m.content)))
	}
	rs, err := rego.New(args...).Eval(ctx)
	if err != nil {
		return nil, fmt.Errorf("policies: eval: %w", err)
	}
	if len(rs) == 0 || len(rs[0].Expressions) == 0 {
		return nil, fmt.Errorf("policies: %s is undefined for this input", query)
	}
	return rs[0].Expressions[0].Value, nil
}

// explained are the intermediate rules of the shipped policy that say why it decided.
var explained = []string{
	"who", "groups", "requested", "user_principals", "granted", "granted_privileged", "has_mfa",
	"fresh_sign_in", "auth_age", "ticket", "host_patterns", "max_ttl", "ttl", "extensions",
	"critical_options", "deny",
}

// Explain evaluates the decision and the rules behind it, by name; rules that are undefined
// for this input (a condition that did not hold) are reported as such.
func Explain(ctx context.Context, dir string, input any, opts ...Option) (map[string]any, error) {
	out := map[string]any{}
	d, err := Eval(ctx, dir, input, Query, opts...)
	if err != nil {
		return nil, err
	}
	out["decision"] = d
	for _, name := range explained {
		v, err := Eval(ctx, dir, input, "data.sshca."+name, opts...)
		if err != nil {
			out[name] = "(undefined: its conditions do not hold)"
			continue
		}
		out[name] = v
	}
	return out, nil
}

// ExplainOrder is the order in which Explain's entries read best.
func ExplainOrder(m map[string]any) []string {
	keys := append([]string{"decision"}, explained...)
	var out []string
	for _, k := range keys {
		if _, ok := m[k]; ok {
			out = append(out, k)
		}
	}
	return out
}
