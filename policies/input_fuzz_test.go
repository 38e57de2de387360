package policies

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/policies/plan"
)

// fuzzKinds are the kinds a fuzzed input draws from; a last choice takes a string from the data.
var fuzzKinds = []ca.Action{ca.ActionUser, ca.ActionHost, ca.ActionRenew, ca.ActionRevoke, ca.ActionAdmin,
	ca.ActionRead, ca.ActionRequest, ca.ActionApprove}

// inputCases are the table FuzzInputValue is seeded from: the golden inputs, and edges of the
// JSON form (nil lists, omitted fields, strings that are not UTF-8, numbers json writes in
// exponent form, nested claims).
func inputCases() map[string]ca.PolicyInput {
	out := map[string]ca.PolicyInput{}
	for kind, in := range goldenInputs() {
		out["golden-"+string(kind)] = in
	}
	out["zero"] = ca.PolicyInput{}
	out["nil-lists"] = ca.PolicyInput{Kind: ca.ActionUser, Identity: ca.Identity{Subject: "u"}, Request: ca.PolicyRequest{KeyType: "ssh-rsa"}}
	out["not-utf8"] = ca.PolicyInput{Kind: "us\xffer", Identity: ca.Identity{Email: "a\xc3@x", Groups: []string{"\xff\xfe", "ok"},
		Claims: map[string]any{"name": "b\xe2\x82"}}, Request: ca.PolicyRequest{Reason: "\xed\xa0\x80", Target: "\x80"}, Now: "\xc0\xaf"}
	out["claims-json-numbers"] = ca.PolicyInput{Kind: ca.ActionUser, Identity: ca.Identity{Claims: map[string]any{
		"iat": json.Number("1795600500"), "frac": json.Number("1.50"), "exp": json.Number("-2E+3"), "zero": json.Number("0"),
		"list": []any{json.Number("7"), "x\xffy"}}}}
	out["claims-numbers"] = ca.PolicyInput{Kind: ca.ActionHost, Identity: ca.Identity{AuthTime: -1, ACR: "x", Workload: true,
		Claims: map[string]any{"big": 1e21, "small": 1e-7, "neg": -0.0, "int": 12345678901234567890.0, "frac": 0.1,
			"nested": map[string]any{"list": []any{nil, true, "s", 2.5, map[string]any{}}}}},
		Request: ca.PolicyRequest{TTLSeconds: -300, Principals: []string{""}}}
	return out
}

// fuzzBytes is the reader FuzzInputValue fills a PolicyInput from, field by field.
type fuzzBytes struct{ b []byte }

func (r *fuzzBytes) byte() byte {
	if len(r.b) == 0 {
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *fuzzBytes) bytes(n int) []byte {
	n = min(n, len(r.b))
	out := r.b[:n]
	r.b = r.b[n:]
	return out
}

var (
	actionType = reflect.TypeFor[ca.Action]()
	claimsType = reflect.TypeFor[map[string]any]()
)

// fill sets every field of v that has a JSON form from r (claims from claims), walking the
// type: a field added to the input document is fuzzed without a change here, and one of a
// type fill does not know fails the test.
func fill(t testing.TB, v reflect.Value, r *fuzzBytes, claims []byte) {
	switch {
	case v.Type() == actionType:
		if i := int(r.byte()); i < len(fuzzKinds) {
			v.SetString(string(fuzzKinds[i]))
		} else {
			v.SetString(string(r.bytes(int(r.byte()))))
		}
	case v.Type() == claimsType:
		m := map[string]any{}
		dec := json.NewDecoder(bytes.NewReader(claims))
		switch r.byte() {
		case 0:
			return // nil
		case 2:
			dec.UseNumber()
		}
		if dec.Decode(&m) == nil {
			v.Set(reflect.ValueOf(m))
		}
	case v.Kind() == reflect.Struct:
		for i := range v.NumField() {
			if f := v.Type().Field(i); f.IsExported() && f.Tag.Get("json") != "-" {
				fill(t, v.Field(i), r, claims)
			}
		}
	case v.Kind() == reflect.String:
		v.SetString(string(r.bytes(int(r.byte()))))
	case v.Kind() == reflect.Int64:
		if r.byte() != 0 {
			var n [8]byte
			copy(n[:], r.bytes(8))
			v.SetInt(int64(binary.BigEndian.Uint64(n[:])))
		}
	case v.Kind() == reflect.Bool:
		v.SetBool(r.byte()&1 == 1)
	case v.Type() == reflect.TypeFor[[]string]():
		if n := int(r.byte()); n > 0 {
			ss := make([]string, n-1)
			for i := range ss {
				ss[i] = string(r.bytes(int(r.byte())))
			}
			v.Set(reflect.ValueOf(ss))
		}
	case v.Kind() == reflect.Slice && v.Type().Elem().Kind() == reflect.Struct:
		if n := int(r.byte()); n > 0 {
			s := reflect.MakeSlice(v.Type(), (n-1)%4, (n-1)%4)
			for i := range s.Len() {
				fill(t, s.Index(i), r, claims)
			}
			v.Set(s)
		}
	default:
		t.Fatalf("fill: %s is a type the fuzzer does not fill: teach fill and unfill", v.Type())
	}
}

// unfill is fill's inverse: the bytes (and claims) that fill turns into v.
func unfill(t testing.TB, v reflect.Value, w *bytes.Buffer, claims *[]byte) {
	str := func(s string) {
		if len(s) > 255 {
			t.Fatalf("unfill: %q is longer than 255 bytes", s)
		}
		w.WriteByte(byte(len(s)))
		w.WriteString(s)
	}
	switch {
	case v.Type() == actionType:
		for i, k := range fuzzKinds {
			if string(k) == v.String() {
				w.WriteByte(byte(i))
				return
			}
		}
		w.WriteByte(byte(len(fuzzKinds)))
		str(v.String())
	case v.Type() == claimsType:
		if v.IsNil() {
			w.WriteByte(0)
			return
		}
		w.WriteByte(2) // decoded with UseNumber: numbers as written, as identity decodes them
		b, err := json.Marshal(v.Interface())
		if err != nil {
			t.Fatal(err)
		}
		*claims = b
	case v.Kind() == reflect.Struct:
		for i := range v.NumField() {
			if f := v.Type().Field(i); f.IsExported() && f.Tag.Get("json") != "-" {
				unfill(t, v.Field(i), w, claims)
			}
		}
	case v.Kind() == reflect.String:
		str(v.String())
	case v.Kind() == reflect.Int64:
		if v.Int() == 0 {
			w.WriteByte(0)
			return
		}
		w.WriteByte(1)
		binary.Write(w, binary.BigEndian, v.Int())
	case v.Kind() == reflect.Bool:
		if v.Bool() {
			w.WriteByte(1)
		} else {
			w.WriteByte(0)
		}
	case v.Type() == reflect.TypeFor[[]string]():
		if v.IsNil() {
			w.WriteByte(0)
			return
		}
		w.WriteByte(byte(v.Len() + 1))
		for i := range v.Len() {
			str(v.Index(i).String())
		}
	case v.Kind() == reflect.Slice && v.Type().Elem().Kind() == reflect.Struct:
		if v.IsNil() {
			w.WriteByte(0)
			return
		}
		if v.Len() > 3 {
			t.Fatalf("unfill: %d elements; fill makes at most 3", v.Len())
		}
		w.WriteByte(byte(v.Len() + 1))
		for i := range v.Len() {
			unfill(t, v.Index(i), w, claims)
		}
	default:
		t.Fatalf("unfill: %s is a type the fuzzer does not fill: teach fill and unfill", v.Type())
	}
}

// encodeCase is the fuzz arguments that fill turns into in.
func encodeCase(t testing.TB, in ca.PolicyInput) (data, claims []byte) {
	var w bytes.Buffer
	unfill(t, reflect.ValueOf(in), &w, &claims)
	return w.Bytes(), claims
}

// checkInputValue: inputValue(in) is the value json.Marshal(in) parses to in OPA, number and
// string representations included, and is nil exactly when there is no such value.
func checkInputValue(t *testing.T, in ca.PolicyInput) {
	t.Helper()
	got := inputValue(in)
	b, err := json.Marshal(in)
	var want ast.Value
	if err == nil {
		want, err = ast.ValueFromReader(bytes.NewReader(b))
	}
	if err != nil || got == nil {
		if (err != nil) != (got == nil) {
			t.Fatalf("JSON form: error %v; inputValue %v: both or neither must refuse %#v", err, got, in)
		}
		checkLazyInput(t, in, nil)
		return
	}
	if got.Compare(want) != 0 {
		t.Fatalf("inputValue differs from the JSON form:\n got %v\nwant %v", got, want)
	}
	seen, err := json.Marshal(ast.MustJSON(got))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(canonical(t, b), canonical(t, seen)); diff != "" {
		t.Fatalf("inputValue writes values differently from the JSON form (-json +inputValue):\n%s", diff)
	}
	checkLazyInput(t, in, got)
}

// checkLazyInput: lazyInput(in), Decide's input on the compiled path, is want (inputValue(in))
// member by member, before and after it is made whole, and is nil exactly when want is.
func checkLazyInput(t *testing.T, in ca.PolicyInput, want ast.Value) {
	t.Helper()
	lazy := lazyInput(in)
	if (lazy == nil) != (want == nil) {
		t.Fatalf("lazyInput %v, inputValue %v: both or neither must refuse %#v", lazy, want, in)
	}
	if lazy == nil {
		return
	}
	sameMembers(t, "input", lazy, want)
	whole := lazy
	if o, ok := lazy.(*plan.Object); ok {
		whole = o.Value()
	}
	if whole.Compare(want) != 0 {
		t.Fatalf("lazyInput made whole differs from inputValue:\n got %v\nwant %v", whole, want)
	}
	if _, ok := whole.(ast.Object); !ok {
		t.Fatalf("lazyInput made whole is a %T", whole)
	}
}

// sameMembers: got, a plan.Object or an OPA value, has want's members, each looked up by key
// and listed by index, and no other.
func sameMembers(t *testing.T, path string, got, want ast.Value) {
	t.Helper()
	if a, ok := got.(*plan.Array); ok {
		arr, ok := want.(*ast.Array)
		if !ok || a.Elems.Len() != arr.Len() {
			t.Fatalf("%s: an array of %d elements, want %v", path, a.Elems.Len(), want)
		}
		for i := range arr.Len() {
			if e := a.Elems.Elem(i); e != a.Elems.Elem(i) || e.Value.Compare(arr.Elem(i).Value) != 0 {
				t.Fatalf("%s[%d]: %v (not the same term twice, or not %v)", path, i, e, arr.Elem(i))
			}
		}
		return
	}
	o, ok := got.(*plan.Object)
	if !ok {
		if got.Compare(want) != 0 {
			t.Fatalf("%s: %v, want %v", path, got, want)
		}
		return
	}
	obj, ok := want.(ast.Object)
	if !ok || o.Fields.Len() != obj.Len() {
		t.Fatalf("%s: an object of %d members, want %v", path, o.Fields.Len(), want)
	}
	for _, k := range obj.Keys() {
		g := o.Fields.Get(string(k.Value.(ast.String)))
		if g == nil {
			t.Fatalf("%s: no member %v", path, k)
		}
		sameMembers(t, path+"."+string(k.Value.(ast.String)), g.Value, obj.Get(k).Value)
	}
	for i := range o.Fields.Len() {
		k, v := o.Fields.Member(i)
		if w := obj.Get(k); w == nil || v != o.Fields.Get(string(k.Value.(ast.String))) {
			t.Fatalf("%s: member %d, %v, is not the one Get finds, or not in %v", path, i, k, want)
		}
	}
	if o.Fields.Get("no such member") != nil {
		t.Fatalf("%s: a member that is not there", path)
	}
}

// TestInputValueCases runs the table FuzzInputValue is seeded from, and checks that fill and
// unfill agree on it (so the seeds are the cases).
func TestInputValueCases(t *testing.T) {
	for name, in := range inputCases() {
		t.Run(name, func(t *testing.T) {
			checkInputValue(t, in)
			data, claims := encodeCase(t, in)
			var back ca.PolicyInput
			fill(t, reflect.ValueOf(&back).Elem(), &fuzzBytes{data}, claims)
			if diff := cmp.Diff(jsonValue(t, in).String(), jsonValue(t, back).String()); diff != "" {
				t.Errorf("fill(unfill(case)) has another JSON form (-case +filled):\n%s", diff)
			}
		})
	}
}

// TestInputValueRefusesWhatJSONRefuses: claims json.Marshal cannot write (NaN) make no input,
// so Decide fails closed instead of showing the policy something else.
func TestInputValueRefusesWhatJSONRefuses(t *testing.T) {
	in := goldenInputs()[ca.ActionUser]
	in.Identity.Claims = map[string]any{"score": nan()}
	checkInputValue(t, in)
	if inputValue(in) != nil {
		t.Fatal("inputValue made an input of claims json.Marshal refuses")
	}
	e, err := LoadFS(t.Context(), Embedded)
	if err != nil {
		t.Fatal(err)
	}
	if d, err := e.Decide(t.Context(), in); err == nil {
		t.Fatalf("Decide on an input with no JSON form: %+v, want an error", d)
	}
}

// TestInputValueRefusesWhatOPARefuses: a claim that json.Marshal writes but OPA does not read
// (an exponent out of range), or that json.Marshal refuses (not a number), makes no input.
func TestInputValueRefusesWhatOPARefuses(t *testing.T) {
	for _, n := range []json.Number{"1e999999", "0x10", "1.", "-"} {
		in := goldenInputs()[ca.ActionUser]
		in.Identity.Claims = map[string]any{"n": n}
		checkInputValue(t, in)
		if inputValue(in) != nil {
			t.Errorf("claim %q: inputValue made an input", n)
		}
	}
}

func nan() float64 { var z float64; return z / z }

// TestLazyInputClaims: claims that lazyInput makes as they are read, and those it converts at
// once (plainClaims), give inputValue's document, or no input where inputValue gives none.
func TestLazyInputClaims(t *testing.T) {
	for name, claims := range map[string]map[string]any{
		"plain":              {"email_verified": true, "groups": []any{"a", 1.5, nil}, "n": json.Number("42"), "o": map[string]any{"k": "v"}},
		"empty number":       {"n": json.Number("")},
		"exponent":           {"n": json.Number("1e5")},
		"huge exponent":      {"n": json.Number("1e999999")},
		"nested exponent":    {"o": map[string]any{"n": json.Number("1e999999")}},
		"not a number":       {"n": json.Number("0x10")},
		"NaN":                {"n": nan()},
		"Inf":                {"l": []any{math.Inf(1)}},
		"big float":          {"f": 1e21, "g": 1e-7},
		"invalid key":        {"a\xffb": 1.0, "a\uFFFDb": 2.0},
		"nested invalid key": {"o": map[string]any{"\xff": "x"}},
		"invalid string":     {"s": "a\xffb"},
		"other type":         {"t": time.Unix(0, 0).UTC()},
	} {
		t.Run(name, func(t *testing.T) {
			in := goldenInputs()[ca.ActionUser]
			in.Identity.Claims = claims
			checkInputValue(t, in)
		})
	}
}

// FuzzInputValue: for inputs of every kind, with any field values and any JSON claims,
// inputValue(in) equals the value json.Marshal(in) parses to. Seeded from inputCases; the
// corpus under testdata/fuzz/FuzzInputValue holds the same seeds (-update writes them).
func FuzzInputValue(f *testing.F) {
	for _, in := range inputCases() {
		data, claims := encodeCase(f, in)
		f.Add(data, claims)
	}
	f.Fuzz(func(t *testing.T, data, claims []byte) {
		var in ca.PolicyInput
		fill(t, reflect.ValueOf(&in).Elem(), &fuzzBytes{data}, claims)
		checkInputValue(t, in)
	})
}

// TestFuzzCorpus: testdata/fuzz/FuzzInputValue holds the table's seeds (-update writes them).
func TestFuzzCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzInputValue")
	for name, in := range inputCases() {
		data, claims := encodeCase(t, in)
		want := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n[]byte(%q)\n", data, claims)
		path := filepath.Join(dir, "seed-"+name)
		if *update {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (-update writes it)", err)
		}
		if string(got) != want {
			t.Errorf("%s is not the seed of case %s (-update if intended)", path, name)
		}
	}
}
