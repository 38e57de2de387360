package policies

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/sshca/sshca/ca"
)

// TestParseDecisionGolden: the documented decision (testdata/decision.json, from
// ca.PolicyDecision) reads as the Decision it says.
func TestParseDecisionGolden(t *testing.T) {
	got, err := parseDecision(jsonValue(t, goldenDecision()))
	if err != nil {
		t.Fatal(err)
	}
	want := ca.Decision{Allow: true, Reasons: []string{}, Principals: []string{"alice", "root"}, TTL: 300 * time.Second,
		Extensions: map[string]string{"permit-pty": ""}, CriticalOptions: map[string]string{"source-address": "10.0.0.0/8"},
		Ticket: "OPS-1234", ApprovalsRequired: 2}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("decision (-want +got):\n%s", diff)
	}
}

// TestParseDecisionReadsEveryField: every key of ca.PolicyDecision (by its JSON tag) is read:
// a value of the wrong type under it is refused, naming the key.
func TestParseDecisionReadsEveryField(t *testing.T) {
	typ := reflect.TypeFor[ca.PolicyDecision]()
	for i := range typ.NumField() {
		f := typ.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		wrong := map[reflect.Kind]any{reflect.Bool: "yes", reflect.Int64: "300", reflect.String: 1,
			reflect.Slice: 1, reflect.Map: 1}[f.Type.Kind()]
		if wrong == nil {
			t.Fatalf("%s: no wrong value for a %s: teach this test", f.Name, f.Type)
		}
		var doc map[string]any
		b, _ := json.Marshal(goldenDecision())
		if err := json.Unmarshal(b, &doc); err != nil {
			t.Fatal(err)
		}
		doc[name] = wrong
		v, err := ast.InterfaceToValue(doc)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := parseDecision(v); err == nil || !strings.Contains(err.Error(), "decision."+name+" ") {
			t.Errorf("%s: %q set to %v: error %v, want one naming decision.%s", f.Name, name, wrong, err, name)
		}
	}
}

// TestInputValueCoversEveryField: with every field of the input set (walking the type), the
// builder writes what json.Marshal writes: a field added to ca.PolicyInput, ca.Identity or
// ca.PolicyRequest that inputValue does not write fails here.
func TestInputValueCoversEveryField(t *testing.T) {
	var in ca.PolicyInput
	var set func(v reflect.Value)
	set = func(v reflect.Value) {
		switch v.Kind() {
		case reflect.Struct:
			for i := range v.NumField() {
				if f := v.Type().Field(i); f.IsExported() && f.Tag.Get("json") != "-" {
					set(v.Field(i))
				}
			}
		case reflect.String:
			v.SetString("x")
		case reflect.Int64:
			v.SetInt(7)
		case reflect.Bool:
			v.SetBool(true)
		case reflect.Slice:
			v.Set(reflect.MakeSlice(v.Type(), 1, 1))
			set(v.Index(0))
		case reflect.Map:
			v.Set(reflect.ValueOf(map[string]any{"x": "x"}))
		default:
			t.Fatalf("%s: teach this test to set it", v.Type())
		}
	}
	set(reflect.ValueOf(&in).Elem())
	checkInputValue(t, in)
}
