package plan

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	"github.com/gobwas/glob"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/ir"
	"github.com/open-policy-agent/opa/v1/topdown"
)

// callStmt is a CallStmt with its target resolved at compile time; it replaces the CallStmt in
// the plan (which is ours: each load plans afresh).
type callStmt struct {
	*ir.CallStmt
	callee *callee
}

// callee is a resolved CallStmt target: a planned function or an OPA built-in.
type callee struct {
	fn     *ir.Func
	slot   int // memo slot for functions of (input, data) only; -1 otherwise
	locals int
	// dataOnly: a function of (input, data) that never reads input (dataOnly): its value is
	// the same for every evaluation of the Program, so the first one to compute it keeps it
	// in Program.shared for all later ones.
	dataOnly bool
	builtin  topdown.BuiltinFunc
	name     string
	glob     bool // glob.match: patterns are compiled once per Program (globMatch)
	count    bool // count
	member   bool // internal.member_2 (x in xs)
}

// sharedResult is the value of a dataOnly function; v is nil when it is undefined.
type sharedResult struct{ v *ast.Term }

// Program is a planned query ready to run. It is safe for concurrent use: each evaluation
// takes its own run from a pool, and what an evaluation makes is its own, except the values
// of rules that read data alone (shared), which every evaluation would make the same and
// none writes to.
type Program struct {
	plan  *ir.Plan
	stmts map[string]bool // the kinds of statement the plan holds, for Statements
	strs  []*ast.Term
	files []string
	nums  []*ast.Term
	data  *ast.Term
	// emptySet and emptyObject are what MakeSetStmt and MakeObjectStmt put in a new term:
	// most sets and objects a decision makes stay empty (the deny rules of a request that is
	// allowed), so one is made only by the first insert (own). They are never written to.
	emptySet, emptyObject ast.Value
	locals                int
	memos                 int
	// shared holds, by memo slot, the values of the dataOnly functions once one evaluation
	// has computed them. They are never written to afterwards: the plan builds a value in the
	// function that makes it and only reads it after it is returned. The Program is made
	// afresh on every load, so a value never outlives the data it was computed from.
	shared []atomic.Pointer[sharedResult]
	globs  globCache
	pool   sync.Pool // of *run
	// termHint is the most terms one run has made: the size of the next runs' slabs.
	termHint atomic.Int32
}

// readsClock reports whether the built-in name reads the time of the call although OPA marks
// it deterministic: the x509 chain checks verify validity at the current time (crypto/x509's
// Verify without CurrentTime). The plan evaluator calls them, but a rule that does is not kept
// across decisions (dataOnly): its value changes as time passes (a certificate expires).
func readsClock(name string) bool {
	switch name {
	case "crypto.x509.parse_and_verify_certificates", "crypto.x509.parse_and_verify_certificates_with_options":
		return true
	}
	return false
}

// refused are the built-ins the plan evaluator does not call although OPA marks them
// deterministic: they read the runtime, print, or are relations (walk).
func refused(name string) bool {
	switch name {
	case "opa.runtime", "trace", "print", "internal.print", "walk", "internal.test_case":
		return true
	}
	return false
}

// prepare resolves p's calls and sizes its frames. p is ours: its CallStmts are replaced.
func prepare(p *ir.Policy, data ast.Value) (*Program, error) {
	if p.Plans == nil || len(p.Plans.Plans) != 1 {
		return nil, fmt.Errorf("%w: expected one plan", ErrUnsupported)
	}
	prog := &Program{plan: p.Plans.Plans[0], data: ast.NewTerm(data), stmts: map[string]bool{},
		emptySet: ast.NewSet(), emptyObject: ast.NewObject()}
	if p.Static != nil {
		for _, s := range p.Static.Strings {
			prog.strs = append(prog.strs, ast.StringTerm(s.Value))
			prog.nums = append(prog.nums, ast.NewTerm(ast.Number(s.Value))) // read only by MakeNumberRef
		}
		for _, f := range p.Static.Files {
			prog.files = append(prog.files, f.Value)
		}
	}
	funcs := map[string]*callee{}
	if p.Funcs != nil {
		for _, f := range p.Funcs.Funcs {
			c := &callee{fn: f, slot: -1, name: f.Name}
			if len(f.Params) == 2 {
				c.slot = prog.memos
				prog.memos++
			}
			funcs[f.Name] = c
		}
	}
	resolve := func(name string) (*callee, error) {
		if c, ok := funcs[name]; ok {
			return c, nil
		}
		b, ok := ast.BuiltinMap[name]
		// Relations (walk) hand the plan every result at once; topdown's implementations
		// yield them one by one, so they stay with topdown.
		if !ok || refused(name) || b.Nondeterministic || b.Relation {
			return nil, fmt.Errorf("%w: built-in %s", ErrUnsupported, name)
		}
		impl := topdown.GetBuiltin(name)
		if impl == nil {
			return nil, fmt.Errorf("%w: built-in %s has no implementation", ErrUnsupported, name)
		}
		c := &callee{slot: -1, builtin: impl, name: name, glob: name == ast.GlobMatch.Name,
			count: name == ast.Count.Name, member: name == ast.Member.Name}
		funcs[name] = c
		return c, nil
	}
	var walk func(b *ir.Block, max *int) error
	walk = func(b *ir.Block, max *int) error {
		note := func(ls ...ir.Local) {
			for _, l := range ls {
				if int(l) >= *max {
					*max = int(l) + 1
				}
			}
		}
		noteOps := func(ops ...ir.Operand) {
			for _, o := range ops {
				if l, ok := o.Value.(ir.Local); ok {
					note(l)
				}
			}
		}
		for i, s := range b.Stmts {
			prog.stmts[stmtName(s)] = true
			operands(s)
			// Every local a statement names, read or written, must fit in the frame.
			switch s := s.(type) {
			case *ir.CallStmt:
				noteOps(s.Args...)
			case *ir.DotStmt:
				noteOps(s.Source, s.Key)
			case *ir.LenStmt:
				noteOps(s.Source)
			case *ir.AssignVarStmt:
				noteOps(s.Source)
			case *ir.AssignVarOnceStmt:
				noteOps(s.Source)
			case *ir.EqualStmt:
				noteOps(s.A, s.B)
			case *ir.NotEqualStmt:
				noteOps(s.A, s.B)
			case *ir.IsArrayStmt:
				noteOps(s.Source)
			case *ir.IsObjectStmt:
				noteOps(s.Source)
			case *ir.IsSetStmt:
				noteOps(s.Source)
			case *ir.IsDefinedStmt:
				note(s.Source)
			case *ir.IsUndefinedStmt:
				note(s.Source)
			case *ir.ReturnLocalStmt:
				note(s.Source)
			case *ir.ArrayAppendStmt:
				note(s.Array)
				noteOps(s.Value)
			case *ir.ObjectInsertStmt:
				note(s.Object)
				noteOps(s.Key, s.Value)
			case *ir.ObjectInsertOnceStmt:
				note(s.Object)
				noteOps(s.Key, s.Value)
			case *ir.SetAddStmt:
				note(s.Set)
				noteOps(s.Value)
			case *ir.ResultSetAddStmt:
				note(s.Value)
			}
			switch s := s.(type) {
			case *ir.CallStmt:
				c, err := resolve(s.Func)
				if err != nil {
					return err
				}
				b.Stmts[i] = &callStmt{CallStmt: s, callee: c}
				note(s.Result)
			case *callStmt: // a function's blocks are walked once per compile; a block may be shared
				noteOps(s.Args...)
				note(s.Result)
			case *ir.BlockStmt:
				for _, nb := range s.Blocks {
					if err := walk(nb, max); err != nil {
						return err
					}
				}
			case *ir.ScanStmt:
				note(s.Source, s.Key, s.Value)
				if err := walk(s.Block, max); err != nil {
					return err
				}
			case *ir.NotStmt:
				if err := walk(s.Block, max); err != nil {
					return err
				}
			case *ir.DotStmt:
				note(s.Target)
			case *ir.LenStmt:
				note(s.Target)
			case *ir.AssignIntStmt:
				note(s.Target)
			case *ir.AssignVarStmt:
				note(s.Target)
			case *ir.AssignVarOnceStmt:
				note(s.Target)
			case *ir.ResetLocalStmt:
				note(s.Target)
			case *ir.MakeNullStmt:
				note(s.Target)
			case *ir.MakeNumberIntStmt:
				note(s.Target)
			case *ir.MakeNumberRefStmt:
				note(s.Target)
			case *ir.MakeArrayStmt:
				note(s.Target)
			case *ir.MakeObjectStmt:
				note(s.Target)
			case *ir.MakeSetStmt:
				note(s.Target)
			case *ir.ReturnLocalStmt, *ir.BreakStmt, *ir.EqualStmt, *ir.NotEqualStmt, *ir.IsArrayStmt,
				*ir.IsObjectStmt, *ir.IsSetStmt, *ir.IsDefinedStmt, *ir.IsUndefinedStmt, *ir.ArrayAppendStmt,
				*ir.ObjectInsertStmt, *ir.ObjectInsertOnceStmt, *ir.SetAddStmt, *ir.NopStmt, *ir.ResultSetAddStmt:
			default:
				return fmt.Errorf("%w: statement %T", ErrUnsupported, s)
			}
		}
		return nil
	}
	for _, b := range prog.plan.Blocks {
		if err := walk(b, &prog.locals); err != nil {
			return nil, err
		}
	}
	if prog.locals < 2 {
		prog.locals = 2
	}
	for _, c := range funcs {
		if c.fn == nil {
			continue
		}
		max := 0
		for _, l := range append(c.fn.Params, c.fn.Return) {
			if int(l) >= max {
				max = int(l) + 1
			}
		}
		for _, b := range c.fn.Blocks {
			if err := walk(b, &max); err != nil {
				return nil, err
			}
		}
		c.locals = max
	}
	dataOnly(funcs)
	prog.shared = make([]atomic.Pointer[sharedResult], prog.memos)
	return prog, nil
}

// dataOnly marks the functions of (input, data) whose value does not depend on input: no
// statement of theirs names the input parameter, except as an argument of a call to a
// planned function that does not read the parameter it is passed as. Anything else that
// names it (a copy to another local, a built-in's argument, a lookup, a scan) counts as a
// read, so a function is marked only when input cannot reach its value. Built-ins the plan
// evaluator calls are deterministic (refused are those that read the clock, the runtime or
// randomness), and a call of one that reads the clock all the same (readsClock) counts as a
// read of input, so such a function's value depends on data alone, which a Program never
// changes. What reads what is settled by iterating until nothing changes: reading spreads
// from callee to caller, and Rego has no recursion.
func dataOnly(funcs map[string]*callee) {
	// Whether a function calls a built-in that reads the clock is settled in the same
	// iteration: such a call counts as a read of input (readsClock).
	reads := map[*callee][]bool{}
	for _, c := range funcs {
		if c.fn != nil {
			reads[c] = make([]bool, len(c.fn.Params))
		}
	}
	for changed := true; changed; {
		changed = false
		for c, used := range reads {
			param := map[ir.Local]int{}
			for i, l := range c.fn.Params {
				param[l] = i
			}
			mark := func(l ir.Local) {
				if i, ok := param[l]; ok && !used[i] {
					used[i], changed = true, true
				}
			}
			for _, b := range c.fn.Blocks {
				localsOf(b, func(s *callStmt, arg int, l ir.Local) {
					if s != nil && arg < 0 { // the call's result
						if s.callee.fn == nil && readsClock(s.callee.name) && len(used) > 0 && !used[0] {
							// Its value changes with the time of the decision, as a read of
							// input changes with input: counted as one.
							used[0], changed = true, true
						}
						mark(l)
						return
					}
					if s != nil && s.callee.fn != nil && arg < len(reads[s.callee]) && !reads[s.callee][arg] {
						return // passed on to a parameter its callee does not read (yet)
					}
					mark(l)
				})
			}
		}
	}
	for c, used := range reads {
		c.dataOnly = c.slot >= 0 && len(used) == 2 && !used[0] // a rule's parameters: input, data
	}
}

// localsOf calls yield with every local that a statement of b, or of a block inside it,
// names, read or written; for an argument of a call, with the call and the argument's
// position, for its result with the call and -1 (s is nil otherwise). Every call is yielded
// with its result, also one whose arguments are all constants.
func localsOf(b *ir.Block, yield func(s *callStmt, arg int, l ir.Local)) {
	for _, st := range b.Stmts {
		if c, ok := st.(*callStmt); ok {
			for i, a := range c.Args {
				if l, ok := a.Value.(ir.Local); ok {
					yield(c, i, l)
				}
			}
			yield(c, -1, c.Result)
			continue
		}
		v := reflect.ValueOf(st)
		if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
			continue
		}
		v = v.Elem()
		for i := range v.NumField() {
			if !v.Type().Field(i).IsExported() {
				continue
			}
			switch f := v.Field(i).Interface().(type) {
			case ir.Local:
				yield(nil, 0, f)
			case ir.Operand:
				if l, ok := f.Value.(ir.Local); ok {
					yield(nil, 0, l)
				}
			case []ir.Operand:
				for _, o := range f {
					if l, ok := o.Value.(ir.Local); ok {
						yield(nil, 0, l)
					}
				}
			case *ir.Block:
				localsOf(f, yield)
			case []*ir.Block:
				for _, nb := range f {
					localsOf(nb, yield)
				}
			}
		}
	}
}

// returning is the break depth that carries a function's return up through every block.
const returning = 1 << 30

// run is one evaluation. Runs are pooled: frames come from one stack of locals, so a
// decision allocates little beyond the values it builds.
type run struct {
	p     *Program
	bctx  topdown.BuiltinContext
	memo  []*ast.Term
	done  []bool
	out   []*ast.Term
	ret   *ast.Term
	bout  *ast.Term
	biter func(*ast.Term) error
	stack []*ast.Term
	sp    int
	top   int // the highest sp of this evaluation: release clears the stack up to it
	args  []*ast.Term
	terms []ast.Term // a slab the terms this run makes come from: one allocation, not one each
	made  int32
	// sets and objects are the strSets and strObjects this run's evaluations build, reused
	// from one evaluation to the next: when an evaluation ends nothing refers to them any
	// more (what leaves it, and what is kept across evaluations, is OPA's values, which copy
	// their members).
	sets         []*strSet
	objects      []*strObject
	nsets, nobjs int
}

// newSet is an empty strSet of r's.
func (r *run) newSet() *strSet {
	if r.nsets == len(r.sets) {
		r.sets = append(r.sets, &strSet{elems: make([]*ast.Term, 0, 4)})
	}
	r.nsets++
	return r.sets[r.nsets-1]
}

// newObject is an empty strObject of r's.
func (r *run) newObject() *strObject {
	if r.nobjs == len(r.objects) {
		r.objects = append(r.objects, &strObject{keys: make([]*ast.Term, 0, 4), values: make([]*ast.Term, 0, 4)})
	}
	r.nobjs++
	return r.objects[r.nobjs-1]
}

// maxTermHint bounds slabs: one unusual request must not make every later slab large.
const maxTermHint = 256

// term wraps v in a term from the run's slab. The slab is never reused: the decision may refer
// to its terms after the run is back in the pool.
func (r *run) term(v ast.Value) *ast.Term {
	if len(r.terms) == 0 {
		r.terms = make([]ast.Term, max(8, r.p.termHint.Load()))
	}
	t := &r.terms[0]
	r.terms = r.terms[1:]
	r.made++
	t.Value = v
	return t
}

func (p *Program) newRun() *run {
	if r, ok := p.pool.Get().(*run); ok {
		return r
	}
	r := &run{p: p, memo: make([]*ast.Term, p.memos), done: make([]bool, p.memos), stack: make([]*ast.Term, 256)}
	r.biter = func(t *ast.Term) error { r.bout = t; return nil }
	return r
}

func (p *Program) release(r *run) {
	// Frames are cleared as they are popped (deferred, so also when a run panics); this is a
	// guard, as far as this evaluation's frames reached, not the whole stack.
	clear(r.stack[:min(r.top, len(r.stack))])
	clear(r.memo)
	clear(r.done)
	clear(r.out)
	clear(r.args)
	if r.made > p.termHint.Load() && r.made <= maxTermHint {
		p.termHint.Store(r.made) // the next runs' slabs fit what runs make
	}
	for _, s := range r.sets[:r.nsets] {
		clear(s.elems)
		s.elems, s.set = s.elems[:0], nil
	}
	for _, o := range r.objects[:r.nobjs] {
		clear(o.keys)
		clear(o.values)
		clear(o.items)
		o.keys, o.values, o.obj = o.keys[:0], o.values[:0], nil
	}
	r.nsets, r.nobjs, r.top = 0, 0, 0
	r.out, r.ret, r.bout, r.sp, r.terms, r.made = r.out[:0], nil, nil, 0, nil, 0
	r.bctx = topdown.BuiltinContext{}
	p.pool.Put(r)
}

// push takes a cleared frame of n locals from the stack.
func (r *run) push(n int) []*ast.Term {
	if r.sp+n > len(r.stack) {
		// Frames already handed out keep the old array; new ones come from a bigger one.
		r.stack, r.sp = make([]*ast.Term, max(2*len(r.stack), 2*n)), 0
	}
	f := r.stack[r.sp : r.sp+n : r.sp+n]
	r.sp += n
	r.top = max(r.top, r.sp)
	return f
}

func (r *run) pop(f []*ast.Term) {
	clear(f)
	if r.sp >= len(f) && &r.stack[r.sp-len(f)] == &f[0] {
		r.sp -= len(f)
	}
}

// Eval runs the plan on input and returns the query's single result, or nil when it is
// undefined. An error is a conflict (a complete rule or an object key with two values), a
// query with more than one result, a halting built-in error, or a fault of the evaluator
// itself (recovered): the caller decides the request another way (the policies package asks
// topdown). Eval never writes to input, but for the OPA form of an *Object of it (Object),
// which it puts in place of the *Object in the term that holds it.
func (p *Program) Eval(ctx context.Context, input ast.Value) (_ ast.Value, err error) {
	defer func() {
		// A fault of the evaluator must deny, not take the request down with it.
		if v := recover(); v != nil {
			err = fmt.Errorf("plan: evaluation failed: %v", v)
		}
	}()
	r := p.newRun()
	defer p.release(r)
	// No per-query cache: only rand.intn writes to it, and the compiled path refuses it.
	r.bctx = topdown.BuiltinContext{Context: ctx}
	frame := r.push(p.locals)
	defer r.pop(frame)
	frame[ir.Input] = r.term(input)
	frame[ir.Data] = p.data
	for _, b := range p.plan.Blocks {
		if _, err := r.block(frame, b); err != nil {
			return nil, err
		}
	}
	switch len(r.out) {
	case 0:
		return nil, nil
	case 1:
	default:
		return nil, fmt.Errorf("plan: the query has %d results, want one", len(r.out))
	}
	// The result is an object of one member, the query's value; members are OPA's values.
	if b, ok := r.out[0].Value.(*strObject); ok && len(b.values) == 1 {
		return b.values[0].Value, nil
	}
	obj, ok := concrete(r.out[0]).Value.(ast.Object)
	if !ok || obj.Len() != 1 {
		return nil, errors.New("plan: malformed query result")
	}
	var v ast.Value
	obj.Foreach(func(_, t *ast.Term) { v = t.Value })
	return v, nil
}

func (r *run) operand(f []*ast.Term, o ir.Operand) *ast.Term {
	switch v := o.Value.(type) {
	case ir.Local:
		return f[v]
	case ir.StringIndex:
		return r.p.strs[v]
	case ir.Bool:
		return ast.InternedTerm(bool(v))
	}
	return nil
}

// block runs b. It returns -1 when b ran to its end, or how many enclosing blocks remain to be
// left when b was left by a break or an undefined statement (0: just b).
func (r *run) block(f []*ast.Term, b *ir.Block) (int, error) {
	for _, s := range b.Stmts {
		switch s := s.(type) {
		case *callStmt:
			v, err := r.call(f, s)
			if err != nil {
				return 0, err
			}
			if v == nil {
				return 0, nil
			}
			f[s.Result] = v
		case *ir.AssignVarStmt:
			f[s.Target] = r.operand(f, s.Source)
		case *ir.AssignVarOnceStmt:
			v := r.operand(f, s.Source)
			if cur := f[s.Target]; cur != nil {
				if ast.Compare(concrete(cur).Value, concrete(v).Value) != 0 {
					return 0, r.conflict(s.Location, "complete rules must not produce multiple outputs")
				}
				continue // equal (1 and 1.0 are): the first value stays, as in topdown
			}
			f[s.Target] = v
		case *ir.DotStmt:
			v := dot(r.operand(f, s.Source), r.operand(f, s.Key))
			if v == nil {
				return 0, nil
			}
			f[s.Target] = v
		case *ir.BlockStmt:
			for _, nb := range s.Blocks {
				n, err := r.block(f, nb)
				if err != nil {
					return 0, err
				}
				if n > 0 {
					return n - 1, nil
				}
			}
		case *ir.ScanStmt:
			n, err := r.scan(f, s)
			if err != nil {
				return 0, err
			}
			if n >= 0 {
				return n, nil
			}
		case *ir.NotStmt:
			n, err := r.block(f, s.Block)
			if err != nil {
				return 0, err
			}
			switch {
			case n < 0: // the negated block held: not is undefined
				return 0, nil
			case n > 0:
				return n - 1, nil
			}
		case *ir.BreakStmt:
			return int(s.Index), nil
		case *ir.ReturnLocalStmt:
			r.ret = f[s.Source]
			return returning, nil
		case *ir.EqualStmt:
			a, b := concrete(r.operand(f, s.A)), concrete(r.operand(f, s.B))
			if a == nil || b == nil || ast.Compare(a.Value, b.Value) != 0 {
				return 0, nil
			}
		case *ir.NotEqualStmt:
			a, b := concrete(r.operand(f, s.A)), concrete(r.operand(f, s.B))
			if a == nil || b == nil || ast.Compare(a.Value, b.Value) == 0 {
				return 0, nil
			}
		case *ir.IsDefinedStmt:
			if f[s.Source] == nil {
				return 0, nil
			}
		case *ir.IsUndefinedStmt:
			if f[s.Source] != nil {
				return 0, nil
			}
		case *ir.ResetLocalStmt:
			f[s.Target] = nil
		case *ir.MakeNullStmt:
			f[s.Target] = ast.InternedNullTerm
		case *ir.MakeNumberIntStmt:
			f[s.Target] = ast.InternedTerm(int(s.Value))
		case *ir.MakeNumberRefStmt:
			f[s.Target] = r.p.nums[s.Index]
		case *ir.AssignIntStmt:
			f[s.Target] = ast.InternedTerm(int(s.Value))
		case *ir.MakeArrayStmt:
			f[s.Target] = r.term(ast.NewArrayWithCapacity(int(s.Capacity)))
		case *ir.MakeObjectStmt:
			f[s.Target] = r.term(r.p.emptyObject)
		case *ir.MakeSetStmt:
			f[s.Target] = r.term(r.p.emptySet)
		case *ir.ArrayAppendStmt:
			arr := f[s.Array].Value.(*ast.Array)
			// In place, as the plan expects: every local holding this array sees the element.
			*arr = *arr.Append(concrete(r.operand(f, s.Value)))
		case *ir.ObjectInsertStmt:
			r.insert(f[s.Object], concrete(r.operand(f, s.Key)), concrete(r.operand(f, s.Value)))
		case *ir.ObjectInsertOnceStmt:
			k, v := concrete(r.operand(f, s.Key)), concrete(r.operand(f, s.Value))
			if cur := dot(f[s.Object], k); cur != nil {
				if ast.Compare(cur.Value, v.Value) != 0 {
					return 0, r.conflict(s.Location, "object keys must be unique")
				}
				continue
			}
			r.insert(f[s.Object], k, v)
		case *ir.SetAddStmt:
			r.add(f[s.Set], concrete(r.operand(f, s.Value)))
		case *ir.LenStmt:
			n, ok := length(r.operand(f, s.Source))
			if !ok {
				return 0, nil
			}
			f[s.Target] = ast.InternedTerm(n)
		case *ir.IsArrayStmt:
			if v := r.operand(f, s.Source); v == nil || !isArray(v.Value) {
				return 0, nil
			}
		case *ir.IsObjectStmt:
			if v := r.operand(f, s.Source); v == nil || !isObject(v.Value) {
				return 0, nil
			}
		case *ir.IsSetStmt:
			if v := r.operand(f, s.Source); v == nil || !isSet(v.Value) {
				return 0, nil
			}
		case *ir.ResultSetAddStmt:
			// The result set is a set: the same result twice is one result. A query has one
			// result, kept as it is (Eval takes its value out); a second is compared.
			v := f[s.Value]
			if len(r.out) > 0 {
				concrete(v)
				concrete(r.out[0])
			}
			if !slices.ContainsFunc(r.out, func(t *ast.Term) bool { return ast.Compare(t.Value, v.Value) == 0 }) {
				r.out = append(r.out, v)
			}
		case *ir.NopStmt:
		default:
			return 0, fmt.Errorf("plan: %w: statement %T", ErrUnsupported, s)
		}
	}
	return -1, nil
}

// add adds e to the set t holds. The first element replaces the shared empty set MakeSetStmt
// put there by a set of its own: a strSet while its elements are strings (build.go), else
// OPA's. Replacing the value of t (not of the local) keeps what the plan expects: every local
// holding t sees the element.
func (r *run) add(t, e *ast.Term) {
	str, isStr := e.Value.(ast.String)
	switch c := t.Value.(type) {
	case *strSet:
		if isStr && c.add(e, str) {
			return
		}
		t.Value = c.Value() // not a string, or full: OPA's set from here on
	default:
		if t.Value == r.p.emptySet {
			if isStr {
				s := r.newSet()
				s.add(e, str)
				t.Value = s
				return
			}
			t.Value = ast.NewSet()
		}
	}
	t.Value.(ast.Set).Add(e)
}

// insert sets key k to v in the object t holds, as add does for sets (a strObject while its
// keys are strings).
func (r *run) insert(t, k, v *ast.Term) {
	str, isStr := k.Value.(ast.String)
	switch c := t.Value.(type) {
	case *strObject:
		if isStr && c.insert(k, v, str) {
			return
		}
		t.Value = c.Value()
	default:
		if t.Value == r.p.emptyObject {
			if isStr {
				o := r.newObject()
				o.insert(k, v, str)
				t.Value = o
				return
			}
			t.Value = ast.NewObject()
		}
	}
	t.Value.(ast.Object).Insert(k, v)
}

func isArray(v ast.Value) bool {
	switch v.(type) {
	case *ast.Array, *Array:
		return true
	}
	return false
}
func isObject(v ast.Value) bool {
	switch v.(type) {
	case ast.Object, *Object, *strObject:
		return true
	}
	return false
}
func isSet(v ast.Value) bool {
	switch v.(type) {
	case ast.Set, *strSet:
		return true
	}
	return false
}

// scan runs s's block for each element of its source. As in OPA's Wasm compilation, a scan is
// two blocks deep: leaving its block (0) moves to the next element, leaving one more (1) ends
// the scan. It returns -1 to go on after the scan, or the depth still to leave from the block
// that holds it.
func (r *run) scan(f []*ast.Term, s *ir.ScanStmt) (int, error) {
	src := f[s.Source]
	if src == nil {
		return -1, nil
	}
	if _, ok := src.Value.(*Object); ok {
		concrete(src) // its members in OPA's order
	}
	switch c := src.Value.(type) {
	case *ast.Array:
		for i := 0; i < c.Len(); i++ {
			if n, err := r.visit(f, s, ast.InternedTerm(i), c.Elem(i)); n != -1 || err != nil {
				return scanned(n, err)
			}
		}
	case ast.Set:
		for _, t := range c.Slice() {
			if n, err := r.visit(f, s, t, t); n != -1 || err != nil {
				return scanned(n, err)
			}
		}
	case *Array:
		for i := range c.Elems.Len() {
			if n, err := r.visit(f, s, ast.InternedTerm(i), c.Elems.Elem(i)); n != -1 || err != nil {
				return scanned(n, err)
			}
		}
	case *strSet: // sorted, as OPA's set iterates
		for _, t := range c.elems {
			if n, err := r.visit(f, s, t, t); n != -1 || err != nil {
				return scanned(n, err)
			}
		}
	case *strObject: // keys sorted, as OPA's object iterates
		for i, k := range c.keys {
			if n, err := r.visit(f, s, k, c.values[i]); n != -1 || err != nil {
				return scanned(n, err)
			}
		}
	case ast.Object:
		for it := c.KeysIterator(); ; {
			k, ok := it.Next()
			if !ok {
				break
			}
			if n, err := r.visit(f, s, k, c.Get(k)); n != -1 || err != nil {
				return scanned(n, err)
			}
		}
	}
	return -1, nil
}

// visit runs a scan's block on one element: -1 to go on to the next, else the depth it left.
func (r *run) visit(f []*ast.Term, s *ir.ScanStmt, k, v *ast.Term) (int, error) {
	f[s.Key], f[s.Value] = k, v
	n, err := r.block(f, s.Block)
	if n == 0 {
		n = -1
	}
	return n, err
}

// scanned turns the depth a scan's block was left by (1 or more) into the scan's own result.
func scanned(n int, err error) (int, error) {
	switch {
	case err != nil:
		return 0, err
	case n == returning:
		return returning, nil
	case n == 1:
		return -1, nil
	}
	return n - 2, nil
}

func (r *run) call(f []*ast.Term, s *callStmt) (*ast.Term, error) {
	c := s.callee
	if c.fn == nil {
		// count and membership (x in s) of a set or object being built need not make OPA's.
		switch {
		case c.count && len(s.Args) == 1:
			if n, ok := builtLen(r.operand(f, s.Args[0])); ok {
				return ast.InternedTerm(n), nil
			}
		case c.member && len(s.Args) == 2:
			if v, ok := builtMember(r.operand(f, s.Args[0]), r.operand(f, s.Args[1])); ok {
				return v, nil
			}
		}
		if cap(r.args) < len(s.Args) {
			r.args = make([]*ast.Term, len(s.Args))
		}
		args := r.args[:len(s.Args)]
		for i, a := range s.Args {
			if args[i] = concrete(r.operand(f, a)); args[i] == nil {
				return nil, nil
			}
		}
		if c.glob {
			if v, ok := r.p.globs.match(args); ok {
				return v, nil
			}
		}
		r.bout = nil
		if err := c.builtin(r.bctx, args, r.biter); err != nil {
			var halt topdown.Halt
			if errors.As(err, &halt) {
				return nil, err
			}
			// As topdown without strict built-in errors: a failing built-in is undefined.
			return nil, nil
		}
		return r.bout, nil
	}
	if c.slot >= 0 && r.done[c.slot] {
		return r.memo[c.slot], nil
	}
	if c.dataOnly {
		if sr := r.p.shared[c.slot].Load(); sr != nil {
			r.memo[c.slot], r.done[c.slot] = sr.v, true
			return sr.v, nil
		}
	}
	frame := r.push(c.locals)
	defer r.pop(frame)
	for i, p := range c.fn.Params {
		frame[p] = r.operand(f, s.Args[i])
	}
	r.ret = nil
	var v *ast.Term
	for _, b := range c.fn.Blocks {
		n, err := r.block(frame, b)
		if err != nil {
			return nil, err
		}
		if n == returning {
			v = r.ret
			break
		}
	}
	if v == nil {
		v = frame[c.fn.Return]
	}
	if c.slot >= 0 {
		r.memo[c.slot], r.done[c.slot] = v, true
	}
	if c.dataOnly {
		// Every later evaluation reads it, concurrently: OPA's form, made now, which none
		// writes to.
		r.p.shared[c.slot].CompareAndSwap(nil, &sharedResult{concrete(v)})
	}
	return v, nil
}

// globCache holds the patterns glob.match was called with, compiled, for the Program's life.
// OPA's glob.match keeps its own cache, but looks it up under a key it builds on every call
// and converts the delimiters anew: allocations on every call, several calls a decision.
type globCache struct {
	mu sync.RWMutex
	// m is keyed by the delimiters (UTF-8), a 0xff byte (which UTF-8 never holds) and the
	// pattern.
	m map[string]*glob.Pattern
}

// maxGlobs bounds the cache: patterns can come from input, which must not grow it without
// end. Past it, a pattern is compiled for the call alone.
const maxGlobs = 1024

// maxGlobPattern bounds the patterns kept, in bytes: a compiled pattern can be some twenty
// times its text (a 36 KB list of alternatives, about 700 KB), so a thousand long patterns
// from input would hold hundreds of MB. A policy's patterns are short; a longer one is
// compiled for the call alone.
const maxGlobPattern = 256

// match is glob.match(pattern, delimiters, s) when its operands are what the built-in takes
// (strings, and delimiters an array of one-character strings or null), with the built-in's
// meaning: null is no delimiter, an empty array is "."; ok is false otherwise (and for a
// pattern that does not compile), and OPA's glob.match decides, with its own errors.
func (g *globCache) match(args []*ast.Term) (_ *ast.Term, ok bool) {
	pattern, ok := args[0].Value.(ast.String)
	if !ok {
		return nil, false
	}
	s, ok := args[2].Value.(ast.String)
	if !ok {
		return nil, false
	}
	var rbuf [8]rune
	var kbuf [128]byte
	delims, key := rbuf[:0], kbuf[:0]
	switch d := args[1].Value.(type) {
	case ast.Null:
	case *ast.Array:
		for i := range d.Len() {
			e, ok := d.Elem(i).Value.(ast.String)
			if !ok || utf8.RuneCountInString(string(e)) != 1 {
				return nil, false
			}
			r, _ := utf8.DecodeRuneInString(string(e)) // invalid UTF-8 is U+FFFD, as []rune(e) makes it
			delims = append(delims, r)
		}
		if len(delims) == 0 {
			delims = append(delims, '.')
		}
	default:
		return nil, false
	}
	for _, r := range delims {
		key = utf8.AppendRune(key, r)
	}
	key = append(append(key, 0xff), pattern...)
	g.mu.RLock()
	p, found := g.m[string(key)]
	g.mu.RUnlock()
	if !found {
		var err error
		if p, err = glob.Compile(string(pattern), slices.Clone(delims)...); err != nil { // a copy: delims stays on the stack
			return nil, false
		}
		g.mu.Lock()
		if g.m == nil {
			g.m = map[string]*glob.Pattern{}
		}
		if len(g.m) < maxGlobs && len(pattern) <= maxGlobPattern {
			g.m[string(key)] = p
		}
		g.mu.Unlock()
	}
	return ast.InternedTerm(p.Match(string(s))), true
}

func dot(src, key *ast.Term) *ast.Term {
	if src == nil || key == nil {
		return nil
	}
	switch c := src.Value.(type) {
	case *Object:
		// Its members' keys are strings: any other key finds nothing, as in its OPA form.
		if k, ok := key.Value.(ast.String); ok {
			return c.Fields.Get(string(k))
		}
		return nil
	case ast.Object:
		return c.Get(concrete(key))
	case *strObject:
		return c.get(key)
	case *strSet:
		return c.get(key)
	case *Array:
		n, ok := key.Value.(ast.Number)
		if !ok {
			return nil
		}
		i, ok := n.Int()
		if !ok || i < 0 || i >= c.Elems.Len() {
			return nil
		}
		return c.Elems.Elem(i)
	case *ast.Array:
		n, ok := key.Value.(ast.Number)
		if !ok {
			return nil
		}
		i, ok := n.Int()
		if !ok || i < 0 || i >= c.Len() {
			return nil
		}
		return c.Elem(i)
	case ast.Set:
		if c.Contains(concrete(key)) {
			return key
		}
	}
	return nil
}

func length(t *ast.Term) (int, bool) {
	if t == nil {
		return 0, false
	}
	switch c := t.Value.(type) {
	case *ast.Array:
		return c.Len(), true
	case ast.Object:
		return c.Len(), true
	case *Object:
		return c.Fields.Len(), true
	case *strObject:
		return len(c.keys), true
	case *strSet:
		return len(c.elems), true
	case *Array:
		return c.Elems.Len(), true
	case ast.Set:
		return c.Len(), true
	case ast.String:
		return utf8.RuneCountInString(string(c)), true
	}
	return 0, false
}

func (r *run) conflict(loc ir.Location, msg string) error {
	file := "?"
	if loc.File >= 0 && loc.File < len(r.p.files) {
		file = r.p.files[loc.File]
	}
	return fmt.Errorf("plan: eval_conflict_error: %s:%d: %s", file, loc.Row, msg)
}
