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

// TestServeDrainsInFlight: when the context ends (SIGTERM in main), a request in flight
// completes with 200 and its body, new connections are refused at once, and serveUntilDone
// returns only after the request has been answered.
func TestServeDrainsInFlight(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release
		io.WriteString(w, "signed")
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- serveUntilDone(ctx, newHTTPServer(h, testLog(t)), l, "", "", testLog(t)) }()

	type answer struct {
		code int
		body string
		err  error
	}
	answered := make(chan answer, 1)
	go func() {
		resp, err := http.Post("http://"+addr+"/v1/certs/user", "application/json", nil)
		if err != nil {
			answered <- answer{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		answered <- answer{resp.StatusCode, string(b), err}
	}()
	<-entered
	cancel()

	// New connections are refused while the request is still in flight.
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("new connections still accepted 5s after shutdown began")
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case err := <-done:
		t.Fatalf("serveUntilDone returned (%v) with a request in flight", err)
	case a := <-answered:
		t.Fatalf("the request in flight was answered (%+v) before its handler finished", a)
	case <-time.After(100 * time.Millisecond):
	}

	close(release)
	a := <-answered
	if a.err != nil || a.code != http.StatusOK || a.body != "signed" {
		t.Errorf("request in flight during shutdown: %d %q %v, want 200 \"signed\"", a.code, a.body, a.err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("serveUntilDone: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("serveUntilDone did not return after the last request was answered")
	}
}

// TestServeClosesListenerBeforeReturning: when ctx has ended before the serving goroutine
// got to run (a loop that failed at once, in CI), serveDraining still returns only once the
// listener is closed: a dial after it returns is refused. It once returned while Serve's own
// deferred Close was still to come.
func TestServeClosesListenerBeforeReturning(t *testing.T) {
	for i := range 200 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := serveUntilDone(ctx, newHTTPServer(http.NotFoundHandler(), testLog(t)), l, "", "", testLog(t)); err != nil {
			t.Fatalf("run %d: serveUntilDone: %v", i, err)
		}
		if c, err := net.Dial("tcp", l.Addr().String()); err == nil {
			c.Close()
			t.Fatalf("run %d: the listener still accepts after serveUntilDone returned", i)
		}
	}
}

// TestServeDrainingBoundsHandlerWait: a handler that ignores its cancelled context past the
// drain does not hold shutdown for ever: serveDraining waits handlersBound for it, then
// returns an error that says how many handlers still run, after an error line that says so.
func TestServeDrainingBoundsHandlerWait(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	defer close(release)
	h := http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		close(entered)
		<-release
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	logs := &logCapture{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- serveDraining(ctx, newHTTPServer(h, testLog(t)), l, "", "", 100*time.Millisecond, slog.New(slog.NewJSONHandler(logs, nil)))
	}()
	go func() {
		if resp, err := http.Post("http://"+l.Addr().String()+"/", "application/json", nil); err == nil {
			resp.Body.Close()
		}
	}()
	<-entered
	cancel()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "1 handlers still running") {
			t.Errorf("serveDraining = %v, want one handler still running", err)
		}
	case <-time.After(handlersBound + 20*time.Second):
		t.Fatal("serveDraining waited beyond its bound")
	}
	if !strings.Contains(logs.String(), `"level":"ERROR","msg":"shutdown: handlers still running; what they use closes under them","handlers":1`) {
		t.Errorf("no error line for the handler left running:\n%s", logs.String())
	}
}
