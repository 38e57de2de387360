package main

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestConfigPolicyEvaluator: policy.evaluator takes auto, compiled or topdown (empty is
// auto); anything else is reported with the other problems.
func TestConfigPolicyEvaluator(t *testing.T) {
	for _, ev := range []string{"", "auto", "compiled", "topdown", "fast"} {
		path := filepath.Join(t.TempDir(), "config.yaml")
		writeFile(t, path, "policy:\n  evaluator: \""+ev+"\"\n")
		_, err := LoadConfig(path)
		if err == nil {
			t.Fatal("LoadConfig accepted a config without CA keys")
		}
		reported := strings.Contains(err.Error(), "policy.evaluator")
		if reported != (ev == "fast") {
			t.Errorf("evaluator %q: reported %v:\n%v", ev, reported, err)
		}
	}
}
