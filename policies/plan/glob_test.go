package plan

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/topdown"
)

// opaGlob is OPA's glob.match on args: its answer, or ok false when it fails.
func opaGlob(t *testing.T, args []*ast.Term) (*ast.Term, bool) {
	t.Helper()
	var out *ast.Term
	err := topdown.GetBuiltin(ast.GlobMatch.Name)(topdown.BuiltinContext{Context: context.Background()}, args,
		func(v *ast.Term) error { out = v; return nil })
	return out, err == nil
}

// TestGlobMatchAsOPA: the Program's glob.match answers as OPA's built-in on every operand it
// takes (delimiters null, empty, several, unicode, not valid UTF-8; patterns with every
// metacharacter, unicode, empty) and leaves to it every operand it does not take (the
// built-in's errors: a delimiter of two characters or none, not a string, a pattern that
// does not compile, operands of other types).
func TestGlobMatchAsOPA(t *testing.T) {
	delims := []string{`null`, `[]`, `["."]`, `[".", "-"]`, `["ü"]`, `[":", "/", "."]`}
	patterns := []string{`"*"`, `"**"`, `"*.dev.internal"`, `"a?c"`, `"[ab]*"`, `"[!a]*"`, `"[a-c]x"`, `"{a,b}*"`,
		`"\\*"`, `"ünï*"`, `""`, `"**.internal"`, `"root"`, `"prod-*"`}
	subjects := []string{`"a.dev.internal"`, `"dev.internal"`, `"a.b.dev.internal"`, `"abc"`, `"*"`, `""`, `"ünïcode"`,
		`"root"`, `"prod-db"`, `"bx"`, `"a\u0000b"`, `"x.internal"`}
	var g globCache
	check := func(pattern, delim, subject string, wantTaken bool) {
		t.Helper()
		args := []*ast.Term{ast.MustParseTerm(pattern), ast.MustParseTerm(delim), ast.MustParseTerm(subject)}
		want, opaOK := opaGlob(t, args)
		got, taken := g.match(args)
		switch {
		case taken != wantTaken:
			t.Errorf("glob.match(%s, %s, %s): taken %v, want %v", pattern, delim, subject, taken, wantTaken)
		case taken && (!opaOK || ast.Compare(got.Value, want.Value) != 0):
			t.Errorf("glob.match(%s, %s, %s) = %v, OPA %v (ok %v)", pattern, delim, subject, got, want, opaOK)
		case !taken && !opaOK && wantTaken:
			t.Errorf("glob.match(%s, %s, %s): OPA fails", pattern, delim, subject)
		}
	}
	for _, d := range delims {
		for _, p := range patterns {
			for _, s := range subjects {
				check(p, d, s, true)
			}
		}
	}
	// Invalid UTF-8 as a delimiter is one character (U+FFFD), as in OPA.
	args := []*ast.Term{ast.StringTerm("a*"), ast.ArrayTerm(ast.StringTerm("\xff")), ast.StringTerm("a\xffb")}
	want, _ := opaGlob(t, args)
	if got, taken := g.match(args); !taken || ast.Compare(got.Value, want.Value) != 0 {
		t.Errorf("invalid UTF-8 delimiter: %v (taken %v), OPA %v", got, taken, want)
	}
	// What the built-in refuses goes to it.
	for _, c := range [][3]string{
		{`"a*"`, `["ab"]`, `"a"`}, {`"a*"`, `[""]`, `"a"`}, {`"a*"`, `[1]`, `"a"`}, {`"a*"`, `"."`, `"a"`},
		{`1`, `[]`, `"a"`}, {`"a*"`, `[]`, `1`}, {`"[a"`, `[]`, `"a"`}, {`"{a"`, `null`, `"a"`},
	} {
		check(c[0], c[1], c[2], false)
		if _, ok := opaGlob(t, []*ast.Term{ast.MustParseTerm(c[0]), ast.MustParseTerm(c[1]), ast.MustParseTerm(c[2])}); ok {
			t.Errorf("OPA's glob.match(%s, %s, %s) does not fail", c[0], c[1], c[2])
		}
	}
	// Patterns from input cannot grow the cache without end; past the bound they still match.
	for i := range maxGlobs + 50 {
		p := fmt.Sprintf(`"%s%d*"`, strings.Repeat("p", i%7), i)
		check(p, `["."]`, fmt.Sprintf(`"%s%dx"`, strings.Repeat("p", i%7), i), true)
	}
	if n := len(g.m); n != maxGlobs {
		t.Errorf("cache holds %d patterns, want the bound %d", n, maxGlobs)
	}
	// Nor can long patterns from input fill it with large compiled patterns: one past
	// maxGlobPattern bytes still matches as OPA's, and is not kept; one of maxGlobPattern is.
	var h globCache
	for _, n := range []int{maxGlobPattern, maxGlobPattern + 1} {
		p := strings.Repeat("a", n-1) + "*"
		check2 := func(subject string) {
			args := []*ast.Term{ast.StringTerm(p), ast.NullTerm(), ast.StringTerm(subject)}
			want, _ := opaGlob(t, args)
			if got, taken := h.match(args); !taken || ast.Compare(got.Value, want.Value) != 0 {
				t.Errorf("pattern of %d bytes on %.10q...: %v (taken %v), OPA %v", n, subject, got, taken, want)
			}
		}
		check2(p[:n-1] + "xyz")
		check2("b" + p)
	}
	if len(h.m) != 1 {
		t.Errorf("cache holds %d patterns, want 1: the one of %d bytes, not the longer one", len(h.m), maxGlobPattern)
	}
}
