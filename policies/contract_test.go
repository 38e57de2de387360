package policies

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/sshca/sshca/ca"
)

// withShipped is the shipped policy and data plus the .rego files (tests included) of a
// directory under testdata/.
func withShipped(t *testing.T, dir string) fstest.MapFS {
	t.Helper()
	fsys := fstest.MapFS{}
	for _, name := range []string{"sshca.rego", "data.json"} {
		b, err := Embedded.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		fsys[name] = &fstest.MapFile{Data: b}
	}
	names, err := filepath.Glob(filepath.Join("testdata", dir, "*.rego"))
	if err != nil || len(names) == 0 {
		t.Fatalf("testdata/%s: no .rego files (%v)", dir, err)
	}
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			t.Fatal(err)
		}
		fsys[filepath.Base(n)] = &fstest.MapFile{Data: b}
	}
	return fsys
}

// writeFS writes fsys to a new directory, for the tools that read a directory.
func writeFS(t *testing.T, fsys fstest.MapFS) string {
	t.Helper()
	dir := t.TempDir()
	for name, f := range fsys {
		if err := os.WriteFile(filepath.Join(dir, name), f.Data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// evaluators are the engine's two ways to decide: the compiled plan, and topdown.
var evaluators = []struct {
	name string
	opts []Option
	mode string
}{
	{"compiled", nil, "compiled"},
	{"interpreted", []Option{Interpreted()}, "interpreted (by request)"},
}

// TestFIDODenyRuleFires is issue 11's example: a deny rule written to the documented input
// ("root only with a FIDO key", request.key_type) must fire through Engine.Decide, the path
// the server takes, with both evaluators. It failed open while the server sent keyType.
func TestFIDODenyRuleFires(t *testing.T) {
	ctx := context.Background()
	fsys := withShipped(t, "fido")
	if err := Test(ctx, writeFS(t, fsys)); err != nil {
		t.Fatal(err)
	}
	// Under an approved request for root: the shipped data grants root no other way.
	in := goldenInputs()[ca.ActionUser]
	in.Request.Principals = []string{"root"}
	in.AccessRequest = goldenInputs()[ca.ActionApprove].AccessRequest
	for _, ev := range evaluators {
		t.Run(ev.name, func(t *testing.T) {
			e, err := LoadFS(ctx, fsys, ev.opts...)
			if err != nil {
				t.Fatal(err)
			}
			if e.Mode() != ev.mode {
				t.Fatalf("mode %q, want %q", e.Mode(), ev.mode)
			}
			in.Request.KeyType = "ssh-ed25519"
			d, err := e.Decide(ctx, in)
			if err != nil {
				t.Fatal(err)
			}
			want := "principal root needs a FIDO key (sk-...), not ssh-ed25519"
			if d.Allow || !slices.Contains(d.Reasons, want) {
				t.Errorf("ssh-ed25519 key for root: allow %v, reasons %q; want denied with %q", d.Allow, d.Reasons, want)
			}
			in.Request.KeyType = "sk-ssh-ed25519@openssh.com"
			d, err = e.Decide(ctx, in)
			if err != nil {
				t.Fatal(err)
			}
			if !d.Allow || !slices.Equal(d.Principals, []string{"root"}) {
				t.Errorf("FIDO key for root: allow %v, principals %q, reasons %q; want root granted", d.Allow, d.Principals, d.Reasons)
			}
			for _, r := range d.Reasons {
				if strings.Contains(r, "FIDO") {
					t.Errorf("FIDO key for root: reason %q", r)
				}
			}
		})
	}
}
