package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestServersRecoverPanics: every listener of the binary (the API and console, the
// diagnostics listener, the bastion agent's health listener) is an http.Server from
// newHTTPServer; on one, served by serveUntilDone on a real socket, a handler that panics is
// answered 500 in JSON and logged at error level with its type and stack (not its text), and the server goes on
// serving; without services.Recover the client would see the connection reset.
func TestServersRecoverPanics(t *testing.T) {
	logs := &logCapture{}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(http.ResponseWriter, *http.Request) { panic("agent status nil") })
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "up 1\n") })
	srv := newHTTPServer(mux, slog.New(slog.NewJSONHandler(logs, nil)))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serveUntilDone(ctx, srv, l, "", "", slog.New(slog.DiscardHandler)) }()
	c := &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
	defer c.CloseIdleConnections()
	for range 2 {
		resp, err := c.Get("http://" + l.Addr().String() + "/healthz")
		if err != nil {
			t.Fatalf("panicking handler: %v, want a 500", err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusInternalServerError || strings.TrimSpace(string(b)) != `{"error":"internal error"}` {
			t.Errorf("panicking handler: %d %s", resp.StatusCode, b)
		}
	}
	resp, err := c.Get("http://" + l.Addr().String() + "/metrics")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("after the panics: %v %v", resp, err)
	}
	resp.Body.Close()
	cancel()
	if err := <-done; err != nil {
		t.Errorf("serve: %v", err)
	}
	if n := strings.Count(logs.String(), `"msg":"handler panicked"`); n != 2 || !strings.Contains(logs.String(), `"panic":{"type":"string"`) ||
		strings.Contains(logs.String(), "agent status nil") || !strings.Contains(logs.String(), "recover_test.go") {
		t.Errorf("%d panic lines, want 2 with the value's type (not its text) and the stack:\n%s", n, logs.String())
	}
}
