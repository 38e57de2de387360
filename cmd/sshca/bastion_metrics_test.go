package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sshca/sshca/bastion"
	"github.com/sshca/sshca/store"
)

// TestAgentMetrics: the agent's /metrics says the KRL's version, how long since a source
// confirmed it (small while connected), and counts a file put back after it was deleted
// behind the agent's back; every metric the alert rules may name is there, drift and ended
// sessions at 0.
func TestAgentMetrics(t *testing.T) {
	dir := t.TempDir()
	krlPath := filepath.Join(dir, "sshca.krl")
	a, err := bastion.NewAgent(bastion.Options{KRLPath: krlPath, Feed: store.NewMemory(time.Now)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	h := agentHealthHandler(a, bastion.NewSessions(testLog(t)))
	get := func() []sample {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(rec.Body.Bytes()) }))
		defer srv.Close()
		return scrape(t, srv.URL)
	}
	waitFor(t, 10*time.Second, "the agent connected", func() bool { return a.Status().Connected })

	m := get()
	for _, name := range []string{"sshca_bastion_krl_version", "sshca_bastion_krl_age_seconds", "sshca_bastion_sync_age_seconds",
		"sshca_bastion_source_up", "sshca_bastion_krl_refused", "sshca_bastion_files_restored_total", "sshca_bastion_files_alert",
		"sshca_bastion_config_drift", "sshca_bastion_sessions_ended_total"} {
		if _, ok := value(m, name, nil); !ok {
			t.Errorf("%s not exported", name)
		}
	}
	if v, _ := value(m, "sshca_bastion_sync_age_seconds", nil); v > 5 {
		t.Errorf("sync age %v s right after connecting, want under 5", v)
	}
	if v, _ := value(m, "sshca_bastion_source_up", nil); v != 1 {
		t.Errorf("source up = %v, want 1", v)
	}

	if err := os.Remove(krlPath); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the KRL put back", func() bool {
		v, _ := value(get(), "sshca_bastion_files_restored_total", nil)
		return v == 1
	})
}
