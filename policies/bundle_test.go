package policies_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/sshca/sshca/policies"
)

// tarball packs files into the .tar.gz format of OPA bundles.
func tarball(t *testing.T, files map[string]string) []byte {
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for name, content := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(content)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(content)); err != nil {
			t.Fatal(err)
		}
	}
	tw.Close()
	gz.Close()
	return buf.Bytes()
}

// TestBundleServer: the policy comes from an OPA bundle served over HTTP, and a new bundle
// replaces it on the next poll; a broken bundle is refused.
func TestBundleServer(t *testing.T) {
	rego, _ := os.ReadFile("sshca.rego")
	data, _ := os.ReadFile("data.json")
	var mu sync.Mutex
	current := tarball(t, map[string]string{"/sshca.rego": string(rego), "/data.json": string(data), "/.manifest": `{"revision":"v1"}`})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		w.Header().Set("Content-Type", "application/gzip")
		w.Write(current)
	}))
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r, err := policies.NewBundleReloader(ctx, srv.URL+"/bundles/sshca.tar.gz", nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.Mode() != "compiled" {
		t.Errorf("a bundle's policy is evaluated %s, want compiled", r.Mode())
	}
	if r.Revision() != "v1" {
		t.Errorf("revision %q, want the manifest's v1", r.Revision())
	}
	in := userInput([]string{"dba"}, "postgres")
	if d, err := r.Decide(ctx, in); err != nil || d.Allow {
		t.Fatalf("v1 decision: %+v %v", d, err)
	}
	go r.Poll(ctx, 50*time.Millisecond)

	mu.Lock()
	current = tarball(t, map[string]string{"/sshca.rego": string(rego), "/.manifest": `{"revision":"v2"}`,
		"/data.json": strings.Replace(string(data), `"admins": ["admin"],`, `"admins": ["admin"], "dba": ["postgres"],`, 1)})
	mu.Unlock()
	eventually(t, "bundle v2 is in force", func() bool { d, _ := r.Decide(ctx, in); return d.Allow && r.Revision() == "v2" })

	mu.Lock()
	current = tarball(t, map[string]string{"/sshca.rego": "package sshca\n\ndecision := {", "/.manifest": `{"revision":"v3"}`})
	mu.Unlock()
	eventually(t, "bundle v3 is refused", func() bool { _, err := r.Status(); return err != nil })
	if r.Revision() != "v2" {
		t.Errorf("revision %q after a broken bundle, want v2", r.Revision())
	}
}

// TestBundlePollOnItsClock: Poll asks the bundle server again every interval of the
// reloader's clock (a clockwork.FakeClock that only the test moves), and at no other time.
func TestBundlePollOnItsClock(t *testing.T) {
	// A policy of one rule: what is tested is when a poll starts, not what a load costs.
	rego, data := "package sshca\n\nimport rego.v1\n\ndecision := {\"allow\": false}\n", "{}"
	var mu sync.Mutex
	revision := "v1"
	var requests atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		mu.Lock()
		defer mu.Unlock()
		w.Header().Set("Content-Type", "application/gzip")
		w.Write(tarball(t, map[string]string{"/sshca.rego": rego, "/data.json": data, "/.manifest": `{"revision":"` + revision + `"}`}))
	}))
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	clk := clockwork.NewFakeClock()
	r, err := policies.NewBundleReloader(ctx, srv.URL+"/bundles/sshca.tar.gz", nil, policies.WithClock(clk))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { r.Poll(ctx, time.Minute); close(done) }()
	defer func() { cancel(); <-done }()
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := clk.BlockUntilContext(wctx, 1); err != nil {
		t.Fatalf("Poll does not wait on its clock: %v", err)
	}
	mu.Lock()
	revision = "v2"
	mu.Unlock()
	clk.Advance(59 * time.Second)
	time.Sleep(200 * time.Millisecond) // room for a poll that should not happen
	if n := requests.Load(); n != 1 || r.Revision() != "v1" {
		t.Fatalf("59 s into a 1 min interval: %d requests (want the first load only), revision %s", n, r.Revision())
	}
	clk.Advance(time.Second)
	eventually(t, "bundle v2 is in force after one interval", func() bool { return r.Revision() == "v2" })
	if n := requests.Load(); n != 2 {
		t.Errorf("%d requests after one interval, want 2", n)
	}
}
