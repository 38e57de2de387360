package docs_test

import (
	"os"
	"regexp"
	"sort"
	"testing"

	"gopkg.in/yaml.v3"
)

// TestREADMENamesEveryTask: the README's list of what `go tool task` runs names every task of
// Taskfile.yml and no task that is gone (bench-fleet and bench-cluster were added without it).
func TestREADMENamesEveryTask(t *testing.T) {
	b, err := os.ReadFile("../Taskfile.yml")
	if err != nil {
		t.Fatal(err)
	}
	var tf struct {
		Tasks map[string]any `yaml:"tasks"`
	}
	if err := yaml.Unmarshal(b, &tf); err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("`go tool task` runs `Taskfile.yml` \\(([^)]*)\\)").FindSubmatch(readme)
	if m == nil {
		t.Fatal("README no longer lists the tasks (\"`go tool task` runs `Taskfile.yml` (...)\")")
	}
	listed := map[string]bool{}
	for _, n := range regexp.MustCompile("`([a-z-]+)`").FindAllSubmatch(m[1], -1) {
		listed[string(n[1])] = true
	}
	var names []string
	for n := range tf.Tasks {
		names = append(names, n)
		if !listed[n] {
			t.Errorf("README's task list lacks %s", n)
		}
	}
	sort.Strings(names)
	for n := range listed {
		if _, ok := tf.Tasks[n]; !ok {
			t.Errorf("README's task list names %s, which Taskfile.yml does not have (tasks: %v)", n, names)
		}
	}
}
