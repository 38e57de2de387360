package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sshca/sshca/bastion"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
)

// TestAgentHealthStartupFiles: a recorded account that owns its ~/.bashrc turns the agent's
// /healthz 503 naming the account and the file, with sshca_bastion_startup_unsafe 1; once the
// file is root's again, /healthz is 200 and the change is counted
// (sshca_bastion_startup_changes_total) and listed under startup_files.
func TestAgentHealthStartupFiles(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
	dir := t.TempDir()
	home := filepath.Join(dir, "home", "alice")
	if err := os.MkdirAll(home, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bashrc := filepath.Join(home, ".bashrc")
	writeFile(t, bashrc, "# alice\n")
	const uid = 47113 // an account that exists only in this test's passwd file
	if err := os.Chown(bashrc, uid, uid); err != nil {
		t.Fatal(err)
	}
	passwd, group := filepath.Join(dir, "passwd"), filepath.Join(dir, "group")
	writeFile(t, passwd, "alice:x:47113:47113::"+home+":/bin/bash\nbob:x:47114:47114::/nonexistent:/bin/bash\n")
	writeFile(t, group, "alice:x:47113:\nadmins:x:47200:alice\n")

	check, err := agentStartupCheck(agentStartupFlags{groups: []string{"admins"}, every: time.Hour}, nil)
	if err != nil {
		t.Fatal(err)
	}
	check.Passwd, check.Group, check.SystemFiles = passwd, group, []string{}
	a, err := bastion.NewAgent(bastion.Options{KRLPath: filepath.Join(dir, "krl"), Feed: store.NewMemory(time.Now)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{}, 2)
	go func() { _ = a.Run(ctx); done <- struct{}{} }()
	go func() { _ = check.Run(ctx); done <- struct{}{} }()
	defer func() { cancel(); <-done; <-done }()
	testenv.Eventually(t, 10*time.Second, "the agent is connected and the check ran", func() bool {
		return a.Status().Connected && !check.Status().Checked.IsZero()
	})
	h := agentHealthHandler(a, nil, startupHealth{check})
	get := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return rec.Code, rec.Body.String()
	}
	code, body := get("/healthz")
	var hz struct {
		Problems     []string
		StartupFiles bastion.StartupStatus `json:"startup_files"`
	}
	if err := json.Unmarshal([]byte(body), &hz); err != nil {
		t.Fatal(err)
	}
	if code != http.StatusServiceUnavailable || len(hz.Problems) != 1 || !strings.Contains(hz.Problems[0], "recorded account alice") ||
		!strings.Contains(hz.Problems[0], bashrc+" (file "+bashrc+" is owned by alice)") || len(hz.StartupFiles.Unsafe) != 1 {
		t.Errorf("/healthz with alice owning her .bashrc = %d %s", code, body)
	}
	if _, m := get("/metrics"); !strings.Contains(m, "sshca_bastion_startup_unsafe 1\n") || !strings.Contains(m, "sshca_bastion_startup_check_error 0\n") {
		t.Errorf("metrics:\n%s", grepLines(m, "sshca_bastion_startup"))
	}

	if err := os.Chown(bashrc, 0, 0); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "the change is seen (inotify)", func() bool { return check.Status().Changes == 1 })
	code, body = get("/healthz")
	if code != http.StatusOK || !strings.Contains(body, `"changes":1`) || !strings.Contains(body, `"was":"file uid 47113`) {
		t.Errorf("/healthz once the file is root's = %d %s", code, body)
	}
	if _, m := get("/metrics"); !strings.Contains(m, "sshca_bastion_startup_unsafe 0\n") || !strings.Contains(m, "sshca_bastion_startup_changes_total 1\n") {
		t.Errorf("metrics:\n%s", grepLines(m, "sshca_bastion_startup"))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
