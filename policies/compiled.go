package policies

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage/inmem"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/policies/plan"
)

// The compiled path: the plan evaluator of policies/plan (README.md there) decides, held to
// topdown's answers. For a policy the size of ours topdown costs ~200 µs a decision, most of
// it bookkeeping; the plan evaluator ~25 µs. Which one decides is Option WithEvaluator's
// choice; this file is the engine's side of it: loading the plan, checking it against topdown
// before it is used, and the requests the check runs.

// Evaluator chooses how decisions are evaluated (config policy.evaluator).
type Evaluator string

const (
	// EvaluatorAuto runs the plan when the policy's plan can run and agrees with topdown on
	// the self-check, else topdown (Mode says why).
	EvaluatorAuto Evaluator = "auto"
	// EvaluatorCompiled runs the plan, and refuses to load a policy whose plan cannot run or
	// disagrees with topdown on the self-check.
	EvaluatorCompiled Evaluator = "compiled"
	// EvaluatorTopdown runs OPA's topdown evaluator only.
	EvaluatorTopdown Evaluator = "topdown"
)

// ParseEvaluator reads a configured evaluator; empty is EvaluatorAuto.
func ParseEvaluator(s string) (Evaluator, error) {
	switch ev := Evaluator(s); ev {
	case "":
		return EvaluatorAuto, nil
	case EvaluatorAuto, EvaluatorCompiled, EvaluatorTopdown:
		return ev, nil
	}
	return "", fmt.Errorf("policies: evaluator %q: want auto, compiled or topdown", s)
}

// WithEvaluator chooses the evaluator (default EvaluatorAuto).
func WithEvaluator(ev Evaluator) Option { return func(o *loadOptions) { o.evaluator = ev } }

// planEvaluator is what the engine needs of a compiled plan (plan.Program).
type planEvaluator interface {
	Eval(ctx context.Context, input ast.Value) (ast.Value, error)
}

// SelfCheck says what the load-time check ran through both evaluators.
type SelfCheck struct {
	// Requests are the built-in check requests (every kind, with and without groups, a
	// second factor, principals and host names).
	Requests int
	// TestInputs are the ground `with input as ...` values of the policy's *_test.rego
	// (values computed from the test module's own constants and functions count).
	TestInputs int
	// SkippedTests are the tests whose input is not ground: built from the test's own
	// variables, overriding part of input, or overriding data.
	SkippedTests int
}

// loadPlan compiles the policy's plan and checks it against topdown; with EvaluatorAuto a
// failure leaves topdown deciding and says why in Mode, with EvaluatorCompiled it is an error.
func (e *Engine) loadPlan(ctx context.Context, modules, tests []file, doc map[string]any, dataValue ast.Value, ev Evaluator) error {
	var pm []plan.Module
	for _, m := range modules {
		pm = append(pm, plan.Module{Name: m.name, Source: string(m.content)})
	}
	prog, err := plan.Compile(ctx, Query, pm, dataValue)
	if err == nil {
		e.compiled = prog
		e.check, err = e.selfCheck(ctx, testInputs(ctx, modules, tests, doc))
	}
	if err == nil {
		return nil
	}
	e.compiled = nil
	if ev == EvaluatorCompiled {
		return fmt.Errorf("evaluator compiled: %w", err)
	}
	why := strings.TrimPrefix(strings.TrimPrefix(err.Error(), "policies: "), "plan: ")
	e.mode = "interpreted (" + why + ")"
	return nil
}

// SelfCheck reports what the load-time check ran (zero when topdown was asked for).
func (e *Engine) SelfCheck() SelfCheck { return e.check }

// checkTests are the `with input as ...` values of a policy's Rego tests that the self-check
// runs, and how many tests it skipped.
type checkTests struct {
	inputs  []ast.Value
	skipped int
}

// selfCheck evaluates representative requests of every kind, and the ground inputs of the
// policy's Rego tests, through both evaluators and refuses the compiled path when they answer
// differently, or when it answers where topdown fails: a policy then runs slower, never
// differently. (Where the plan errors, Decide asks topdown.)
func (e *Engine) selfCheck(ctx context.Context, tests checkTests) (SelfCheck, error) {
	check := func(what string, i int, input ast.Value) error {
		c, want, cerr, ierr := e.evalBoth(ctx, input)
		switch {
		case cerr != nil:
			return nil // Decide hands a request the plan cannot answer to topdown
		case ierr != nil:
			// The plan answers where the reference fails closed: never use it.
			return fmt.Errorf("compiled evaluation answers %s %d where interpreted fails: %v", what, i, ierr)
		}
		if (c == nil) != (want == nil) || (c != nil && ast.Compare(c, want) != 0) {
			return fmt.Errorf("compiled and interpreted evaluation disagree on %s %d", what, i)
		}
		return nil
	}
	reqs := checkInputs()
	for i, in := range reqs {
		if err := check("check request", i, inputValue(in)); err != nil {
			return SelfCheck{}, err
		}
		// Decide's own input (lazyInput) must get the same answer as the document it stands
		// for, error or not.
		want, werr := e.compiled.Eval(ctx, inputValue(in))
		got, gerr := e.compiled.Eval(ctx, lazyInput(in))
		if (werr != nil) != (gerr != nil) || (got == nil) != (want == nil) || (got != nil && ast.Compare(got, want) != 0) {
			return SelfCheck{}, fmt.Errorf("compiled evaluation of check request %d differs with Decide's input", i)
		}
	}
	for i, in := range tests.inputs {
		if err := check("Rego test input", i, in); err != nil {
			return SelfCheck{}, err
		}
	}
	return SelfCheck{Requests: len(reqs), TestInputs: len(tests.inputs), SkippedTests: tests.skipped}, nil
}

// evalBoth evaluates input through the compiled plan and through topdown, each result as it
// leaves OPA's rego API (sets become arrays), so the two compare with ast.Compare.
func (e *Engine) evalBoth(ctx context.Context, input ast.Value) (compiled, interpreted ast.Value, cerr, ierr error) {
	compiled, cerr = e.compiled.Eval(ctx, input)
	if cerr == nil && compiled != nil {
		raw, err := ast.JSON(compiled)
		if err == nil {
			compiled, err = ast.InterfaceToValue(raw)
		}
		if err != nil {
			compiled, cerr = nil, err
		}
	}
	rs, ierr := e.query.Eval(ctx, rego.EvalParsedInput(input))
	if ierr == nil && len(rs) == 1 && len(rs[0].Expressions) == 1 {
		interpreted, ierr = ast.InterfaceToValue(rs[0].Expressions[0].Value)
	}
	return compiled, interpreted, cerr, ierr
}

// checkInputs are the self-check's requests: each kind, with and without groups, a second
// factor, a ticket, principals and host names.
func checkInputs() []ca.PolicyInput {
	now := "2026-11-25T10:00:00Z"
	person := ca.Identity{Issuer: "https://idp.example", Subject: "u1", Email: "alice@example.com", Username: "alice",
		Groups: []string{"admins", "ops", "contractors", "bastion-users", "ci", "sshca-admins", "auditors"}, AMR: []string{"pwd", "mfa"},
		ACR: "phr", AuthTime: 1764064700, Claims: map[string]any{"groups": []any{"ops"}}}
	bare := ca.Identity{Issuer: "https://idp.example", Subject: "u2", Claims: map[string]any{}}
	job := ca.Identity{Issuer: "https://ci.example", Subject: "repo:org/app:ref:refs/heads/main", Workload: true,
		Claims: map[string]any{"repository_id": "123456789", "ref": "refs/heads/main", "project_id": "4242", "ref_type": "branch"}}
	var out []ca.PolicyInput
	for _, kind := range []ca.Action{"user", "host", "renew", "revoke", "admin", "read", "request", "approve", "other"} {
		for _, id := range []ca.Identity{person, bare, job} {
			for _, req := range []ca.PolicyRequest{
				{KeyType: "ssh-ed25519"},
				{Principals: []string{"alice", "root", "backup"}, TTLSeconds: 600, Reason: "OPS-1 disk"},
				{Principals: []string{"web.dev.internal", "db.prod.internal"}, TTLSeconds: 86400 * 30},
			} {
				out = append(out, ca.PolicyInput{Kind: kind, Identity: id, Request: req, Now: now})
			}
		}
	}
	// Access requests: asked for, approved by another person, by the requester, and a
	// certificate under one.
	lead := person
	lead.Subject, lead.Email, lead.Groups, lead.AMR = "u3", "lead@example.com", []string{"sre-leads"}, []string{"hwk"}
	for _, principals := range [][]string{{"root"}, {"prod-db", "root"}, {"alice"}} {
		ar := ca.PolicyAccessRequest{ID: "req_aaaaaaaaaaaaaaaa", Requester: person, Principals: principals, TTLSeconds: 1800,
			Reason: "OPS-1 disk", Approvals: []ca.PolicyApproval{{Approver: lead, At: now, Reason: "ok"}}}
		req := ca.PolicyRequest{Principals: principals, TTLSeconds: 1800, Reason: "OPS-1 disk", Target: "request:" + ar.ID}
		for _, in := range []ca.PolicyInput{
			{Kind: "request", Identity: person, Request: req, AccessRequest: ar},
			{Kind: "request", Identity: job, Request: req, AccessRequest: ar},
			{Kind: "approve", Identity: lead, Request: req, AccessRequest: ar},
			{Kind: "approve", Identity: person, Request: req, AccessRequest: ar},
			{Kind: "approve", Identity: job, Request: req, AccessRequest: ar},
			{Kind: "user", Identity: person, Request: ca.PolicyRequest{Principals: principals, TTLSeconds: 300, Reason: "OPS-1 disk"}, AccessRequest: ar},
		} {
			in.Now = now
			out = append(out, in)
		}
	}
	return out
}

// testInputs finds the `with input as X` of every test rule (test_*) of the policy's Rego
// tests where X is ground: it names no variable of the test's own, only constants, the test
// module's rules and functions, imports and data. Such X are evaluated once, by topdown, with
// the policy, its tests and its data. A test that overrides data, overrides part of input
// (with input.now as ...), or builds input from its own variables is skipped and counted. A
// test file that does not parse or compile is left to the Rego test run, which reports it.
func testInputs(ctx context.Context, modules, tests []file, doc map[string]any) checkTests {
	var out checkTests
	all := make([]func(*rego.Rego), 0, len(modules)+2*len(tests))
	for _, m := range append(slices.Clone(modules), tests...) {
		all = append(all, rego.Module(m.name, string(m.content)))
	}
	for ti, tf := range tests {
		m, err := ast.ParseModuleWithOpts(tf.name, string(tf.content), ast.ParserOptions{RegoVersion: ast.RegoV1})
		if err != nil {
			continue
		}
		known := map[ast.Var]bool{}
		for _, r := range m.Rules {
			known[r.Head.Ref()[0].Value.(ast.Var)] = true
		}
		for _, imp := range m.Imports {
			if v := imp.Name(); v != "" {
				known[v] = true
			}
		}
		var values []*ast.Term
		for _, r := range m.Rules {
			if !strings.HasPrefix(r.Head.Ref()[0].Value.String(), "test_") {
				continue
			}
			var found []*ast.Term
			skip := false
			ast.WalkExprs(r, func(x *ast.Expr) bool {
				for _, w := range x.With {
					if target, ok := w.Target.Value.(ast.Ref); !ok || !target.Equal(ast.InputRootRef) || !constant(w.Value, known) {
						skip = true
					} else {
						found = append(found, w.Value)
					}
				}
				return false
			})
			if skip {
				out.skipped++
				continue
			}
			values = append(values, found...)
		}
		if len(values) == 0 {
			continue
		}
		// One rule per value, in the test's own package, so that its names mean what they
		// mean in the test.
		var src strings.Builder
		fmt.Fprintf(&src, "%s\n\n", m.Package)
		for _, imp := range m.Imports {
			fmt.Fprintf(&src, "%s\n", imp)
		}
		for i, v := range values {
			fmt.Fprintf(&src, "sshca_selfcheck_inputs[%d] := %s\n", i, v)
		}
		gen := fmt.Sprintf("sshca-selfcheck-%d.rego", ti)
		query := m.Package.Path.Append(ast.StringTerm("sshca_selfcheck_inputs")).String()
		args := append(slices.Clone(all), rego.Module(gen, src.String()), rego.Query(query),
			rego.Store(inmem.NewFromObject(doc)))
		rs, err := rego.New(args...).Eval(ctx)
		if err != nil || len(rs) != 1 || len(rs[0].Expressions) != 1 {
			continue
		}
		got, ok := rs[0].Expressions[0].Value.(map[string]any)
		if !ok {
			continue
		}
		for i := range values {
			raw, ok := got[strconv.Itoa(i)]
			if !ok {
				continue // undefined: the test itself would not run
			}
			if v, err := ast.InterfaceToValue(raw); err == nil {
				out.inputs = append(out.inputs, v)
			}
		}
	}
	return out
}

// constant reports whether t names no variable but known ones (the module's rules, its
// imports) and data: it has the same value wherever in the module it is written.
func constant(t *ast.Term, known map[ast.Var]bool) bool {
	ok := true
	var vis *ast.GenericVisitor
	vis = ast.NewGenericVisitor(func(x any) bool {
		switch x := x.(type) {
		case ast.Call:
			for _, a := range x[1:] { // x[0] names a function or a built-in
				vis.Walk(a)
			}
			return true
		case ast.Ref:
			head, isVar := x[0].Value.(ast.Var)
			if !isVar || !(known[head] || head.Equal(ast.DefaultRootDocument.Value)) {
				ok = false
			}
			for _, p := range x[1:] {
				vis.Walk(p)
			}
			return true
		case ast.Var:
			if !known[x] {
				ok = false
			}
		case *ast.ArrayComprehension, *ast.SetComprehension, *ast.ObjectComprehension, *ast.TemplateString:
			ok = false
			return true
		}
		return false
	})
	vis.Walk(t)
	return ok
}
