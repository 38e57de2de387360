// Package plan evaluates a Rego query through the plan OPA makes of it: the intermediate
// representation (IR) that `opa build -t plan` writes and OPA's Wasm target compiles, plain
// statements over numbered locals. It runs that plan itself, on OPA's own values and with
// OPA's own built-in functions, so a decision means what OPA's topdown evaluator says it
// means, in a tenth of the time (README.md: semantics, what is not run, known differences).
// The input's objects (Object) and the sets and objects of strings a plan builds are kept in
// forms of its own while the plan only looks into them, and become OPA's values on any other
// read (README.md, "Values of its own").
//
// The package holds no state of its own: Compile plans and prepares a query, and the Program
// it returns is all there is. It knows nothing of sshca; the policies package decides with it
// and holds it to topdown's answers.
package plan

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/bundle"
	"github.com/open-policy-agent/opa/v1/compile"
	"github.com/open-policy-agent/opa/v1/ir"
)

// ErrUnsupported marks a policy whose plan this package does not run: it uses `with`, a
// dynamic call, or a built-in that is nondeterministic or reads the runtime.
var ErrUnsupported = errors.New("not supported by the plan evaluator")

// Module is one Rego source file.
type Module struct {
	Name   string
	Source string
}

// Compile plans query (a reference such as data.sshca.decision) over modules (Rego v1) and
// prepares the plan to run against data. The error wraps ErrUnsupported when the plan needs
// what Eval does not run.
func Compile(ctx context.Context, query string, modules []Module, data ast.Value) (*Program, error) {
	p, err := planOf(ctx, query, modules)
	if err != nil {
		return nil, err
	}
	return prepare(p, data)
}

// planOf asks OPA's compile package (what `opa build -t plan` runs) for the plan of query.
// OPA hands the plan over as JSON inside a bundle; it is decoded back into OPA's IR types.
func planOf(ctx context.Context, query string, modules []Module) (*ir.Policy, error) {
	ref, err := ast.ParseRef(query)
	if err != nil || !ref.HasPrefix(ast.DefaultRootRef) || len(ref) < 2 {
		return nil, fmt.Errorf("plan: query %q is not a reference under data", query)
	}
	entrypoint, err := ref.Ptr() // "sshca/decision"
	if err != nil {
		return nil, fmt.Errorf("plan: query %q: %w", query, err)
	}
	b := &bundle.Bundle{}
	b.SetRegoVersion(ast.RegoV1)
	b.Manifest.Init()
	for _, m := range modules {
		parsed, err := ast.ParseModuleWithOpts(m.Name, m.Source, ast.ParserOptions{RegoVersion: ast.RegoV1})
		if err != nil {
			return nil, fmt.Errorf("plan: %w", err)
		}
		b.Modules = append(b.Modules, bundle.ModuleFile{URL: m.Name, Path: m.Name, Raw: []byte(m.Source), Parsed: parsed})
	}
	c := compile.New().
		WithTarget(compile.TargetPlan).
		WithRegoVersion(ast.RegoV1).
		WithEntrypoints(entrypoint).
		WithPruneUnused(true). // one plan, for the query; no plans for the rules it depends on
		WithBundle(b)
	if err := c.Build(ctx); err != nil {
		return nil, fmt.Errorf("plan: %w", err)
	}
	out := c.Bundle()
	if out == nil || len(out.PlanModules) != 1 {
		return nil, errors.New("plan: OPA produced no plan")
	}
	var p ir.Policy
	if err := json.Unmarshal(out.PlanModules[0].Raw, &p); err != nil {
		return nil, fmt.Errorf("plan: decode: %w", err)
	}
	return &p, nil
}

// Statements are the kinds of statement the plan holds (such as "ScanStmt"), sorted.
func (p *Program) Statements() []string {
	var out []string
	for k := range p.stmts {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// Handled are the kinds of plan statement Eval runs; a plan with any other is refused.
func Handled() []string {
	return []string{
		"ArrayAppendStmt", "AssignIntStmt", "AssignVarOnceStmt", "AssignVarStmt", "BlockStmt",
		"BreakStmt", "CallStmt", "DotStmt", "EqualStmt", "IsArrayStmt", "IsDefinedStmt",
		"IsObjectStmt", "IsSetStmt", "IsUndefinedStmt", "LenStmt", "MakeArrayStmt",
		"MakeNullStmt", "MakeNumberIntStmt", "MakeNumberRefStmt", "MakeObjectStmt", "MakeSetStmt",
		"NopStmt", "NotEqualStmt", "NotStmt", "ObjectInsertOnceStmt", "ObjectInsertStmt",
		"ResetLocalStmt", "ResultSetAddStmt", "ReturnLocalStmt", "ScanStmt", "SetAddStmt",
	}
}

// stmtName is the IR type name of s ("ScanStmt").
func stmtName(s ir.Stmt) string {
	if c, ok := s.(*callStmt); ok {
		s = c.CallStmt
	}
	name := fmt.Sprintf("%T", s)
	return name[strings.LastIndexByte(name, '.')+1:]
}

// operands turns the operands of s back into the values OPA's planner makes (ir.Local,
// ir.StringIndex, ir.Bool): decoding a plan from JSON gives pointers to them.
func operands(s ir.Stmt) {
	v := reflect.ValueOf(s)
	if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
		return
	}
	v = v.Elem()
	fix := func(o *ir.Operand) {
		switch x := o.Value.(type) {
		case *ir.Local:
			o.Value = *x
		case *ir.StringIndex:
			o.Value = *x
		case *ir.Bool:
			o.Value = *x
		}
	}
	for i := range v.NumField() {
		if !v.Type().Field(i).IsExported() {
			continue
		}
		switch f := v.Field(i).Addr().Interface().(type) {
		case *ir.Operand:
			fix(f)
		case *[]ir.Operand:
			for j := range *f {
				fix(&(*f)[j])
			}
		}
	}
}
