package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sshca/sshca/bastion"
	"github.com/sshca/sshca/store"
)

// TestAgentHealthRedOnBrokenLink: a link sshd reads through that leads elsewhere makes the
// agent's /healthz answer 503 with the problem, and Run (so the process) end with an error.
func TestAgentHealthRedOnBrokenLink(t *testing.T) {
	dir := t.TempDir()
	krlPath, link := filepath.Join(dir, "agent.krl"), filepath.Join(dir, "sshd.krl")
	if err := os.WriteFile(filepath.Join(dir, "stale.krl"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("stale.krl", link); err != nil {
		t.Fatal(err)
	}
	a, err := bastion.NewAgent(bastion.Options{KRLPath: krlPath, KRLLink: link, Feed: store.NewMemory(time.Now)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Run(ctx); !errors.Is(err, bastion.ErrSSHDLink) {
		t.Fatalf("Run: %v, want an ErrSSHDLink error", err)
	}
	rec := httptest.NewRecorder()
	agentHealthHandler(a, nil).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	var body struct{ Problems []string }
	_ = json.Unmarshal(rec.Body.Bytes(), &body)
	if rec.Code != http.StatusServiceUnavailable || len(body.Problems) != 1 || !strings.Contains(body.Problems[0], "stale.krl") {
		t.Errorf("/healthz = %d %s, want 503 naming where the link leads", rec.Code, rec.Body)
	}
}
