package docs_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestGoModExplained: the README's Dependencies section lists exactly go.mod's tools and direct
// requirements, one `- ` item each, so a module added to go.mod has to say there what uses it.
func TestGoModExplained(t *testing.T) {
	cmd := exec.Command("go", "mod", "edit", "-json")
	cmd.Dir = ".."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go mod edit -json: %v", err)
	}
	var mod struct {
		Require []struct {
			Path     string
			Indirect bool
		}
		Tool []struct{ Path string }
	}
	if err := json.Unmarshal(out, &mod); err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, r := range mod.Require {
		if !r.Indirect {
			want = append(want, r.Path)
		}
	}
	for _, tool := range mod.Tool {
		want = append(want, tool.Path)
	}

	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "\n## Dependencies\n")
	if !ok {
		t.Fatal("README.md has no \"## Dependencies\" section")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	var listed []string
	for _, m := range regexp.MustCompile("(?m)^- `([^`]+)`:").FindAllStringSubmatch(section, -1) {
		listed = append(listed, m[1])
	}

	for _, p := range want {
		if !slices.Contains(listed, p) {
			t.Errorf("go.mod requires %s directly (or as a tool), but README.md's Dependencies section does not say what uses it", p)
		}
	}
	for _, p := range listed {
		if !slices.Contains(want, p) {
			t.Errorf("README.md's Dependencies section lists %s, which go.mod neither requires directly nor names as a tool", p)
		}
	}
	if len(listed) != len(slices.Compact(slices.Sorted(slices.Values(listed)))) {
		t.Errorf("README.md's Dependencies section lists a module twice: %v", listed)
	}
}
