package policies

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/policies/plan"
)

// both evaluates input through the compiled plan and through topdown.
func both(t *testing.T, e *Engine, input ast.Value) (compiled, interpreted ast.Value, cerr, ierr error) {
	t.Helper()
	return e.evalBoth(context.Background(), input)
}

// randomInput draws a request from the space the shipped policy and its data care about.
func randomInput(rnd *rand.Rand) ca.PolicyInput {
	pick := func(xs []string) string { return xs[rnd.IntN(len(xs))] }
	subset := func(xs []string) []string {
		var out []string
		for _, x := range xs {
			if rnd.IntN(4) == 0 {
				out = append(out, x)
			}
		}
		return out
	}
	kinds := []string{"user", "user", "user", "host", "host", "renew", "revoke", "admin", "bogus"}
	groups := []string{"admins", "ops", "backup-operators", "contractors", "bastion-users", "ci", "sshca-admins", "nobody"}
	principals := []string{"alice", "root", "admin", "backup", "prod-db", "x.dev.internal", "dev.internal", "a.prod.internal",
		"a.staging.internal", "localhost", "127.0.0.1", "evil.com", "a.dev.internal.evil.com", "svc5"}
	nows := []string{"2026-11-25T10:00:00Z", "2026-11-28T10:00:00Z", "2026-11-25T19:30:00Z", "2026-11-25T07:59:59Z",
		"2025-12-31T12:00:00Z", "2027-07-01T00:00:00Z", "2027-06-30T17:59:00Z"}
	now := pick(nows)
	id := ca.Identity{
		Issuer: pick([]string{"https://idp", "https://other"}), Subject: "u1", Email: pick([]string{"alice@example.com", ""}),
		Username: pick([]string{"alice", "alice", ""}), Groups: subset(groups), AMR: subset([]string{"pwd", "mfa", "otp"}),
		ACR: pick([]string{"", "", "phr", "low"}), Claims: map[string]any{},
	}
	switch rnd.IntN(3) {
	case 0:
		id.AuthTime = 0
	case 1:
		id.AuthTime = 1764064800 - 100 // 2026-11-25T10:00Z less 100 s
	default:
		id.AuthTime = 1764064800 - 7200
	}
	if rnd.IntN(3) == 0 {
		id.Workload = true
		id.Claims = map[string]any{
			"repository_id": pick([]string{"123456789", "987"}), "ref": pick([]string{"refs/heads/main", "refs/heads/dev", "main"}),
			"project_id": pick([]string{"4242", "1"}), "ref_type": pick([]string{"branch", "tag"}),
		}
	}
	return ca.PolicyInput{
		Kind: ca.Action(pick(kinds)), Identity: id, Now: now,
		Request: ca.PolicyRequest{
			Principals: subset(principals), TTLSeconds: []int64{0, 0, 300, 900, 1800, 3600, 7200, 100000}[rnd.IntN(8)],
			KeyType: "ssh-ed25519", Reason: pick([]string{"", "OPS-1234 fix the disk", "no ticket here", "ops-12"}),
		},
	}
}

// TestCompiledMatchesTopdown holds the compiled evaluator to topdown's answers for the shipped
// policy over thousands of requests that reach every rule (allowed and denied, every kind,
// MFA, tickets, time boxes, workloads, forced commands, TTL caps).
func TestCompiledMatchesTopdown(t *testing.T) {
	e, err := LoadFS(context.Background(), Embedded)
	if err != nil {
		t.Fatal(err)
	}
	if e.Mode() != "compiled" {
		t.Fatalf("the shipped policy is not compiled: %s", e.Mode())
	}
	rnd := rand.New(rand.NewPCG(1, 2))
	allowed, denied := 0, 0
	for i := range 4000 {
		in := randomInput(rnd)
		c, it, cerr, ierr := both(t, e, inputValue(in))
		if cerr != nil || ierr != nil {
			t.Fatalf("input %d: compiled error %v, topdown error %v", i, cerr, ierr)
		}
		if ast.Compare(c, it) != 0 {
			t.Fatalf("input %d %+v:\ncompiled    %v\ninterpreted %v", i, in, c, it)
		}
		// Decide's own input: its objects made as the plan reads them (lazyInput).
		if l, err := e.compiled.Eval(context.Background(), lazyInput(in)); err != nil || ast.Compare(l, c) != 0 {
			t.Fatalf("input %d %+v:\ncompiled on lazyInput %v (%v)\ncompiled            %v", i, in, l, err, c)
		}
		if strings.Contains(c.String(), `"allow": true`) {
			allowed++
		} else {
			denied++
		}
	}
	if allowed < 200 || denied < 200 {
		t.Errorf("the inputs reach too little of the policy: %d allowed, %d denied", allowed, denied)
	}
	t.Logf("4000 decisions equal (%d allowed, %d denied)", allowed, denied)
}

// TestCompiledLanguage runs small policies that use each construct the planner emits
// statements for (else chains, every, not, comprehensions, partial sets and objects, functions,
// defaults, iteration over arrays, sets and objects) through both evaluators.
func TestCompiledLanguage(t *testing.T) {
	policies := map[string]string{
		"else and defaults": `
default x := "none"
x := "a" if input.n == 1
else := "b" if input.n == 2
else := "c"
decision := {"x": x, "y": y}
default y := 0
y := input.n * 2 if input.n > 1`,
		"every and not": `
all_small if every v in input.xs { v < 3 }
decision := {"all_small": all_small, "none_big": none_big, "some_two": some_two}
default all_small := false
default none_big := false
none_big if not big
big if { some v in input.xs; v > 10 }
default some_two := false
some_two if 2 in input.xs`,
		"comprehensions": `
decision := {
	"arr": [x | some v in input.xs; x := v * 2],
	"set": {v | some v in input.xs; v > 1},
	"obj": {k: v | some k, v in input.obj},
	"nested": [[i, j] | some i in input.xs; some j in input.xs; i < j],
	"sorted": sort([k | some k, _ in input.obj]),
}`,
		"partial rules": `
names contains n if { some n in input.names; startswith(n, "a") }
names contains "fixed"
by_len[n] := count(n) if { some n in input.names }
decision := {"names": names, "by_len": by_len, "n": count(names)}`,
		"functions": `
double(x) := x * 2
pick(x) := "small" if x < 2
else := "big"
f(x, y) := z if { z := x + y; z > 0 } else := 0
decision := {"d": [double(v) | some v in input.xs], "p": [pick(v) | some v in input.xs], "f": f(input.n, -1)}`,
		"refs and lookups": `
decision := {
	"first": input.xs[0],
	"missing": object.get(input.obj, "nope", "default"),
	"deep": object.get(input, ["obj", "k1"], null),
	"has": [k | some k in ["k1", "k9"]; input.obj[k]],
	"strings": concat("/", [upper(n) | some n in input.names]),
	"glob": [n | some n in input.names; glob.match("a*", [], n)],
	"set_ref": {x | some x in {"p", "q"}; x != "q"},
}`,
		"numbers": `
decision := {
	"big": 123456789012345678901234567890 + input.n,
	"float": 0.5 * input.n,
	"exp": 1e3 > input.n,
	"eq": 1.0 == 1,
	"sum": sum([x | some x in input.xs]),
}`,
		"undefined": `
decision := {"v": v} if v := input.nope
else := {"v": "fallback"}`,
	}
	inputs := []string{
		`{"n": 1, "xs": [1, 2], "obj": {"k1": 1, "k2": 2}, "names": ["ann", "bob", "al"]}`,
		`{"n": 2, "xs": [5, 1, 2, 11], "obj": {}, "names": []}`,
		`{"n": 3, "xs": [], "obj": {"k1": false}, "names": ["x"]}`,
		`{"n": 0, "xs": [0], "obj": {"k1": "v"}, "names": ["a", "ab"]}`,
	}
	for name, body := range policies {
		t.Run(name, func(t *testing.T) {
			src := "package sshca\n\nimport rego.v1\n" + body + "\n"
			e, err := LoadFS(context.Background(), fstest.MapFS{"p.rego": {Data: []byte(src)}})
			if err != nil {
				t.Fatal(err)
			}
			if e.Mode() != "compiled" {
				t.Fatalf("not compiled: %s", e.Mode())
			}
			for _, raw := range inputs {
				var doc any
				if err := json.Unmarshal([]byte(raw), &doc); err != nil {
					t.Fatal(err)
				}
				in, err := ast.InterfaceToValue(doc)
				if err != nil {
					t.Fatal(err)
				}
				c, it, cerr, ierr := both(t, e, in)
				if (cerr == nil) != (ierr == nil) {
					t.Fatalf("input %s: compiled error %v, topdown error %v", raw, cerr, ierr)
				}
				if (c == nil) != (it == nil) || (c != nil && ast.Compare(c, it) != 0) {
					t.Errorf("input %s:\ncompiled    %v\ninterpreted %v", raw, c, it)
				}
			}
		})
	}
}

// TestCompiledConflictFailsClosed: a complete rule with two values is an error in both
// evaluators, never one of the values.
func TestCompiledConflictFailsClosed(t *testing.T) {
	src := "package sshca\n\nimport rego.v1\n\nx := 1 if input.a\n\nx := 2 if input.b\n\ndecision := {\"allow\": true, \"x\": x}\n"
	e, err := LoadFS(context.Background(), fstest.MapFS{"p.rego": {Data: []byte(src)}})
	if err != nil {
		t.Fatal(err)
	}
	in := ast.MustParseTerm(`{"a": true, "b": true}`).Value
	c, _, cerr, ierr := both(t, e, in)
	if cerr == nil || ierr == nil {
		t.Fatalf("compiled %v (error %v), topdown error %v: want both to fail", c, cerr, ierr)
	}
	if _, err := e.Decide(context.Background(), ca.PolicyInput{}); err == nil {
		t.Fatal("Decide granted on a conflict")
	}
	// The same for a key of a partial object with two values.
	src = "package sshca\n\nimport rego.v1\n\no[k] := v if { some k, v in input.a }\n\no[k] := 0 if { some k, _ in input.a }\n\ndecision := {\"allow\": true, \"o\": o}\n"
	if e, err = LoadFS(context.Background(), fstest.MapFS{"p.rego": {Data: []byte(src)}}); err != nil {
		t.Fatal(err)
	}
	c, _, cerr, ierr = both(t, e, ast.MustParseTerm(`{"a": {"x": 1}}`).Value)
	if cerr == nil || ierr == nil {
		t.Fatalf("partial object: compiled %v (error %v), topdown error %v: want both to fail", c, cerr, ierr)
	}
	if c, it, cerr, ierr := both(t, e, ast.MustParseTerm(`{"a": {"x": 0}}`).Value); cerr != nil || ierr != nil || ast.Compare(c, it) != 0 {
		t.Fatalf("partial object without a conflict: %v (%v), %v (%v)", c, cerr, it, ierr)
	}
}

// TestInterpretedFallback: a policy that uses what the compiled evaluator does not run is
// evaluated by topdown, says so, and still decides.
func TestInterpretedFallback(t *testing.T) {
	for name, body := range map[string]string{
		"with":    "f := input.kind\n\ndecision := {\"allow\": g, \"principals\": [\"x\"]}\n\ng if f == \"user\" with input.kind as \"user\"\n",
		"now":     "decision := {\"allow\": time.now_ns() > 0, \"principals\": [\"x\"]}\n",
		"runtime": "decision := {\"allow\": is_object(opa.runtime()), \"principals\": [\"x\"]}\n",
		"walk":    "decision := {\"allow\": count([p | walk(input, [p, _])]) > 0, \"principals\": [\"x\"]}\n",
	} {
		t.Run(name, func(t *testing.T) {
			src := "package sshca\n\nimport rego.v1\n\n" + body
			e, err := LoadFS(context.Background(), fstest.MapFS{"p.rego": {Data: []byte(src)}})
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(e.Mode(), "interpreted (") {
				t.Fatalf("mode %q, want interpreted", e.Mode())
			}
			d, err := e.Decide(context.Background(), ca.PolicyInput{Kind: ca.ActionUser})
			if err != nil || !d.Allow || !cmp.Equal(d.Principals, []string{"x"}) {
				t.Fatalf("decision %+v, %v", d, err)
			}
		})
	}
}

// TestCompiledMappingsData: the differential check also holds on the large data the benchmark
// uses.
func TestCompiledMappingsData(t *testing.T) {
	raw, err := os.ReadFile("data.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	user := doc["sshca_settings"].(map[string]any)["user"].(map[string]any)
	mappings := user["group_principals"].(map[string]any)
	for i := range 1000 {
		mappings[fmt.Sprintf("team-%d", i)] = []any{fmt.Sprintf("svc%d", i)}
	}
	out, _ := json.Marshal(doc)
	path := t.TempDir() + "/data.json"
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
	e, err := LoadDir(context.Background(), ".", WithDataFile(path))
	if err != nil {
		t.Fatal(err)
	}
	rnd := rand.New(rand.NewPCG(3, 4))
	for i := range 500 {
		in := randomInput(rnd)
		in.Identity.Groups = append(in.Identity.Groups, fmt.Sprintf("team-%d", rnd.IntN(1200)))
		c, it, cerr, ierr := both(t, e, inputValue(in))
		if cerr != nil || ierr != nil || ast.Compare(c, it) != 0 {
			t.Fatalf("input %d %+v:\ncompiled    %v (%v)\ninterpreted %v (%v)", i, in, c, cerr, it, ierr)
		}
	}
}

// TestSelfCheckCatchesDisagreement: a compiled plan that answers differently from topdown is
// caught by the load-time check (here a plan whose string constants were tampered with).
func TestSelfCheckCatchesDisagreement(t *testing.T) {
	ctx := context.Background()
	e, err := LoadFS(ctx, Embedded)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.selfCheck(ctx, checkTests{}); err != nil {
		t.Fatalf("the shipped policy fails its own check: %v", err)
	}
	src, err := Embedded.ReadFile("sshca.rego")
	if err != nil {
		t.Fatal(err)
	}
	tampered := strings.ReplaceAll(string(src), "is not granted", "tampered")
	if tampered == string(src) {
		t.Fatal("nothing to tamper with in sshca.rego")
	}
	raw, err := Embedded.ReadFile("data.json")
	if err != nil {
		t.Fatal(err)
	}
	data, err := ast.ValueFromReader(strings.NewReader(string(raw)))
	if err != nil {
		t.Fatal(err)
	}
	if e.compiled, err = plan.Compile(ctx, Query, []plan.Module{{Name: "sshca.rego", Source: tampered}}, data); err != nil {
		t.Fatal(err)
	}
	if _, err := e.selfCheck(ctx, checkTests{}); err == nil {
		t.Fatal("a tampered plan passed the check")
	}
}

// TestCompiledConcurrent: decisions in parallel (pooled runs, shared data) give the same
// answers as one at a time; run with -race.
func TestCompiledConcurrent(t *testing.T) {
	ctx := context.Background()
	e, err := LoadFS(ctx, Embedded)
	if err != nil {
		t.Fatal(err)
	}
	rnd := rand.New(rand.NewPCG(5, 6))
	inputs := make([]ca.PolicyInput, 200)
	want := make([]ca.Decision, len(inputs))
	for i := range inputs {
		inputs[i] = randomInput(rnd)
		if want[i], err = e.Decide(ctx, inputs[i]); err != nil {
			t.Fatal(err)
		}
	}
	errs := make(chan error, 4)
	for w := range 4 {
		go func() {
			for k := range 3 * len(inputs) {
				i := (k*7 + w) % len(inputs)
				got, err := e.Decide(ctx, inputs[i])
				if err != nil || !cmp.Equal(got, want[i]) {
					errs <- fmt.Errorf("worker %d, input %d: %+v, %v; want %+v", w, i, got, err, want[i])
					return
				}
			}
			errs <- nil
		}()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

// faultyPlan answers as a plan evaluator that faulted (policies/plan's TestFaultIsAnError:
// a fault inside Eval, such as a frame made too small, is recovered as this error).
type faultyPlan struct{}

func (faultyPlan) Eval(context.Context, ast.Value) (ast.Value, error) {
	return nil, errors.New("plan: evaluation failed: runtime error: index out of range [1] with length 1")
}

// TestCompiledFaultFallsBack: a fault inside the compiled evaluator is caught (policies/plan);
// that request is decided by topdown, counted, and the engine stays usable.
func TestCompiledFaultFallsBack(t *testing.T) {
	ctx := context.Background()
	fallbacks := prometheus.NewCounter(prometheus.CounterOpts{Name: "fallbacks"})
	e, err := LoadFS(ctx, Embedded, WithFallbackCounter(fallbacks))
	if err != nil {
		t.Fatal(err)
	}
	in := randomInput(rand.New(rand.NewPCG(7, 8)))
	want, err := e.Decide(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	saved := e.compiled
	e.compiled = faultyPlan{}
	if got, err := e.Decide(ctx, in); err != nil || !cmp.Equal(got, want) {
		t.Fatalf("Decide during the fault: %+v, %v; want topdown's %+v", got, err, want)
	}
	if n := testutil.ToFloat64(fallbacks); n != 1 {
		t.Errorf("fallbacks counted %v, want 1", n)
	}
	e.compiled = saved
	if got, err := e.Decide(ctx, in); err != nil || !cmp.Equal(got, want) {
		t.Fatalf("after a fault: %+v, %v; want %+v", got, err, want)
	}
	if n := testutil.ToFloat64(fallbacks); n != 1 {
		t.Errorf("fallbacks counted %v after the fault, want 1", n)
	}
}

// TestCompiledAsTopdownOnEdges: cases found by review where the plan and topdown part ways.
// Two rules giving equal values (600 and 600.0) keep the first, as topdown does; a conflict
// in a rule body topdown never evaluates (early exit) does not turn an answer into an error.
func TestCompiledAsTopdownOnEdges(t *testing.T) {
	ctx := context.Background()
	for name, body := range map[string]string{
		"first of equal values": `
ttl := 600 if input.kind == "user"
ttl := 600.0 if input.kind == "user"
decision := {"allow": true, "principals": ["x"], "ttl_seconds": ttl}`,
		"conflict past an early exit": `
default allow := false
allow if input.kind == "user"
allow if conflicting == 1
conflicting := 1 if input.kind == "user"
conflicting := 2 if input.kind == "user"
decision := {"allow": allow, "principals": ["x"], "ttl_seconds": 600}`,
	} {
		t.Run(name, func(t *testing.T) {
			src := "package sshca\n\nimport rego.v1\n" + body + "\n"
			compiled, err := LoadFS(ctx, fstest.MapFS{"p.rego": {Data: []byte(src)}})
			if err != nil {
				t.Fatal(err)
			}
			if compiled.Mode() != "compiled" {
				t.Fatalf("not compiled: %s", compiled.Mode())
			}
			interpreted, err := LoadFS(ctx, fstest.MapFS{"p.rego": {Data: []byte(src)}}, Interpreted())
			if err != nil {
				t.Fatal(err)
			}
			in := ca.PolicyInput{Kind: ca.ActionUser}
			want, err := interpreted.Decide(ctx, in)
			if err != nil || !want.Allow || want.TTL != 10*time.Minute {
				t.Fatalf("topdown: %+v, %v", want, err)
			}
			got, err := compiled.Decide(ctx, in)
			if err != nil || !cmp.Equal(got, want) {
				t.Fatalf("compiled: %+v, %v; topdown: %+v", got, err, want)
			}
		})
	}
}

// TestSelfCheckRunsTestInputs: the load-time check runs the ground inputs of the shipped
// policy's Rego tests through both evaluators, and skips (and counts) the tests that override
// data or build input from their own variables.
func TestSelfCheckRunsTestInputs(t *testing.T) {
	e, err := LoadFS(context.Background(), Embedded)
	if err != nil {
		t.Fatal(err)
	}
	c := e.SelfCheck()
	if c.Requests != len(checkInputs()) || c.TestInputs < 30 || c.SkippedTests == 0 {
		t.Fatalf("self-check %+v: want every check request, the tests' ground inputs and some skipped tests", c)
	}
	t.Logf("self-check of the shipped policy: %d check requests, %d Rego test inputs, %d tests skipped", c.Requests, c.TestInputs, c.SkippedTests)
}

// TestEvaluatorSwitch: topdown never plans; compiled refuses a policy its plan cannot run,
// where auto falls back to topdown and says why.
func TestEvaluatorSwitch(t *testing.T) {
	ctx := context.Background()
	now := fstest.MapFS{"p.rego": {Data: []byte("package sshca\n\nimport rego.v1\n\ndecision := {\"allow\": time.now_ns() > 0, \"principals\": [\"x\"]}\n")}}
	if _, err := LoadFS(ctx, now, WithEvaluator(EvaluatorCompiled)); err == nil || !strings.Contains(err.Error(), "evaluator compiled") {
		t.Fatalf("compiled loaded a policy its plan cannot run: %v", err)
	}
	e, err := LoadFS(ctx, now, WithEvaluator(EvaluatorAuto))
	if err != nil || !strings.HasPrefix(e.Mode(), "interpreted (") {
		t.Fatalf("auto: %v, %v", e, err)
	}
	for ev, mode := range map[Evaluator]string{EvaluatorCompiled: "compiled", EvaluatorAuto: "compiled", EvaluatorTopdown: "interpreted (by request)"} {
		e, err := LoadFS(ctx, Embedded, WithEvaluator(ev))
		if err != nil || e.Mode() != mode {
			t.Fatalf("%s: mode %v, %v; want %s", ev, e, err, mode)
		}
	}
	if _, err := LoadFS(ctx, Embedded, WithEvaluator("fast")); err == nil {
		t.Fatal("an unknown evaluator loaded")
	}
	for _, s := range []string{"", "auto", "compiled", "topdown"} {
		if _, err := ParseEvaluator(s); err != nil {
			t.Errorf("ParseEvaluator(%q): %v", s, err)
		}
	}
}
