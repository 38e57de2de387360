package policies_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sshca/sshca/policies"
)

// TestReloadDropsDataOnlyValues: the compiled evaluator keeps the values of rules that read
// data alone (user_settings) across decisions; a reload with changed data is decided on the
// new data at once, with nothing kept from the policy it replaced.
func TestReloadDropsDataOnlyValues(t *testing.T) {
	ctx := context.Background()
	dir := copyPolicy(t)
	r, err := policies.NewReloader(ctx, dir, []policies.Option{policies.WithEvaluator(policies.EvaluatorCompiled)})
	if err != nil {
		t.Fatal(err)
	}
	in := userInput([]string{"dba"}, "postgres")
	for range 3 { // the kept values are computed and in use
		if d, err := r.Decide(ctx, in); err != nil || d.Allow {
			t.Fatalf("before the change: %+v, %v", d, err)
		}
	}
	data := readOrFail(t, filepath.Join(dir, "data.json"))
	changed := strings.Replace(data, `"admins": ["admin"],`, `"admins": ["admin"], "dba": ["postgres"],`, 1)
	if err := os.WriteFile(filepath.Join(dir, "data.json"), []byte(changed), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := r.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if r.Mode() != "compiled" {
		t.Fatalf("mode %s", r.Mode())
	}
	if d, err := r.Decide(ctx, in); err != nil || !d.Allow || len(d.Principals) != 1 || d.Principals[0] != "postgres" {
		t.Fatalf("after the change: %+v, %v", d, err)
	}
	// And back: the grant goes with the data.
	if err := os.WriteFile(filepath.Join(dir, "data.json"), []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := r.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if d, err := r.Decide(ctx, in); err != nil || d.Allow {
		t.Fatalf("after the change was undone: %+v, %v", d, err)
	}
}
