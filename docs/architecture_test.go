// Package docs_test keeps docs/architecture.md true: its layout table and its diagram of
// package imports are checked against what `go list` reports.
package docs_test

import (
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/sshca/sshca"

// imports returns our packages and, for each, the packages of ours it imports (not its tests).
func imports(t *testing.T) map[string][]string {
	t.Helper()
	cmd := exec.Command("go", "list", "-f", `{{.ImportPath}} {{join .Imports " "}}`, module+"/...")
	cmd.Dir = ".."
	out, err := cmd.Output()
	if err != nil {
		var stderr string
		if e, ok := err.(*exec.ExitError); ok {
			stderr = string(e.Stderr)
		}
		t.Fatalf("go list: %v\n%s", err, stderr)
	}
	got := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		pkg := strings.TrimPrefix(f[0], module+"/")
		got[pkg] = nil
		for _, imp := range f[1:] {
			if rest, ok := strings.CutPrefix(imp, module+"/"); ok {
				got[pkg] = append(got[pkg], rest)
			}
		}
	}
	return got
}

// row is one line of the layout table: a directory and what it may import of ours
// (any: everything).
type row struct {
	allowed []string
	any     bool
}

func readDoc(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("architecture.md")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

var backquoted = regexp.MustCompile("`([^`]+)`")

// layout parses the table under "## Layout".
func layout(t *testing.T, doc string) map[string]row {
	t.Helper()
	_, section, ok := strings.Cut(doc, "## Layout")
	if !ok {
		t.Fatal("architecture.md has no Layout section")
	}
	rows := map[string]row{}
	for _, line := range strings.Split(section, "\n") {
		if strings.HasPrefix(line, "## ") {
			break
		}
		cells := strings.Split(strings.Trim(line, " |"), "|")
		if len(cells) != 3 || !strings.HasPrefix(strings.TrimSpace(cells[0]), "`") {
			continue
		}
		dir := strings.TrimSuffix(strings.Trim(strings.TrimSpace(cells[0]), "`"), "/")
		may := strings.TrimSpace(cells[2])
		var r row
		switch {
		case may == "everything":
			r.any = true
		case may == "—" || strings.HasPrefix(may, "nothing of ours"):
		default:
			for _, m := range backquoted.FindAllStringSubmatch(may, -1) {
				r.allowed = append(r.allowed, m[1])
			}
			if len(r.allowed) == 0 {
				t.Errorf("layout row %s: cannot read what it may import: %q", dir, may)
			}
		}
		if _, dup := rows[dir]; dup {
			t.Errorf("layout row %s appears twice", dir)
		}
		rows[dir] = r
	}
	if len(rows) == 0 {
		t.Fatal("no rows in the layout table")
	}
	return rows
}

// TestLayout: every package of ours has a row, and imports only what its row allows.
func TestLayout(t *testing.T) {
	rows := layout(t, readDoc(t))
	for pkg, deps := range imports(t) {
		r, ok := rows[pkg]
		if !ok {
			t.Errorf("package %s has no row in docs/architecture.md's layout table", pkg)
			continue
		}
		for _, d := range deps {
			if strings.HasPrefix(d, "cmd/") {
				t.Errorf("%s imports %s: nothing imports cmd/", pkg, d)
			}
			if !r.any && !slices.Contains(r.allowed, d) {
				t.Errorf("%s imports %s, which its row does not allow (it may import %v)", pkg, d, r.allowed)
			}
		}
	}
}

var edge = regexp.MustCompile(`^\s*([A-Za-z0-9_]+)\s*-->\s*([A-Za-z0-9_]+)\s*$`)

// TestDiagram: the diagram's edges are exactly the imports between our packages.
func TestDiagram(t *testing.T) {
	doc := readDoc(t)
	_, after, ok := strings.Cut(doc, "```mermaid")
	if !ok {
		t.Fatal("architecture.md has no mermaid diagram")
	}
	diagram, _, _ := strings.Cut(after, "```")
	drawn := map[string]bool{}
	for _, line := range strings.Split(diagram, "\n") {
		if m := edge.FindStringSubmatch(line); m != nil {
			drawn[m[1]+" --> "+m[2]] = true
		}
	}
	node := func(pkg string) string { return strings.NewReplacer("/", "_", "-", "_").Replace(pkg) }
	real := map[string]bool{}
	for pkg, deps := range imports(t) {
		for _, d := range deps {
			real[node(pkg)+" --> "+node(d)] = true
		}
	}
	var missing, extra []string
	for e := range real {
		if !drawn[e] {
			missing = append(missing, e)
		}
	}
	for e := range drawn {
		if !real[e] {
			extra = append(extra, e)
		}
	}
	slices.Sort(missing)
	slices.Sort(extra)
	if len(missing) > 0 {
		t.Errorf("imports the diagram does not draw (add them to docs/architecture.md):\n  %s", strings.Join(missing, "\n  "))
	}
	if len(extra) > 0 {
		t.Errorf("edges the diagram draws that no import has:\n  %s", strings.Join(extra, "\n  "))
	}
}
