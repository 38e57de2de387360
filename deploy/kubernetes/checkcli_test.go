package kubernetes

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

var (
	sshcaOnce sync.Once
	sshcaDir  string
	sshcaBin  string
	sshcaErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if sshcaDir != "" {
		os.RemoveAll(sshcaDir)
	}
	os.Exit(code)
}

// sshcaBinary builds cmd/sshca of this checkout once per test run.
func sshcaBinary(t *testing.T) string {
	t.Helper()
	sshcaOnce.Do(func() {
		var err error
		if sshcaDir, err = os.MkdirTemp("", "sshca-k8s-test"); err != nil {
			sshcaErr = err
			return
		}
		sshcaBin = filepath.Join(sshcaDir, "sshca")
		build := exec.Command("go", "build", "-o", sshcaBin, "./cmd/sshca")
		build.Dir = repoRoot
		if out, err := build.CombinedOutput(); err != nil {
			sshcaErr = &buildError{err, string(out)}
		}
	})
	if sshcaErr != nil {
		t.Fatalf("go build ./cmd/sshca: %v", sshcaErr)
	}
	return sshcaBin
}

type buildError struct {
	err error
	out string
}

func (e *buildError) Error() string { return e.err.Error() + "\n" + e.out }

// TestConfigCheckOffline runs the configuration that the base and the overlay deploy through
// `sshca serve --check-config --offline`: the service's own decoder (unknown keys refused),
// every value, and the policy compiled with its tests run, with nothing reached and no key
// material read (those files exist only in the pod). A configuration it refuses is caught too.
func TestConfigCheckOffline(t *testing.T) {
	bin := sshcaBinary(t)
	check := func(t *testing.T, text string) (string, error) {
		t.Helper()
		path := filepath.Join(t.TempDir(), "config.yaml")
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(bin, "serve", "--check-config", path, "--offline").CombinedOutput()
		return string(out), err
	}
	for _, dir := range []string{"base", "overlays/production"} {
		t.Run(dir, func(t *testing.T) {
			r := render(t, dir)
			text, ok := r.configMap.Data["config.yaml"]
			if !ok {
				t.Fatalf("ConfigMap %s has no config.yaml", r.configMap.Name)
			}
			if out, err := check(t, text); err != nil || !strings.Contains(out, ": OK") {
				t.Errorf("sshca serve --check-config --offline: %v\n%s", err, out)
			}
			// The check is not a formality: a value the service refuses fails it.
			broken := strings.Replace(text, "diag_listen: 0.0.0.0:9850", "diag_listen: 0.0.0.0", 1)
			if broken == text {
				t.Fatal("the configuration no longer sets diag_listen: 0.0.0.0:9850; adjust this test")
			}
			if out, err := check(t, broken); err == nil || !strings.Contains(out, "problem: diag_listen") {
				t.Errorf("a broken diag_listen passed the check: %v\n%s", err, out)
			}
		})
	}
}
