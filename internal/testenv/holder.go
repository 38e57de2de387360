package testenv

import (
	"bytes"
	"sync"
	"testing"
)

// RequestHolder is a TCP proxy on loopback in front of a server (redis-server) that holds
// one request: the first whose bytes hold a marker, sent after a request that held another
// marker (when one is given). Until Release it forwards neither that request nor anything
// after it on that connection, so the server has not run it and the client waits: a process
// caught between two steps, for the test to kill there or to let another client overtake it
// (ReplyDropper is the other half: the request runs, its answer is lost). Everything else
// passes through.
type RequestHolder struct {
	// Addr is the proxy's address, for the client.
	Addr   string
	mu     sync.Mutex
	after  []byte // still to be seen before marker counts; nil once seen
	marker []byte
	held   chan struct{}
	// release lets the held request go on (Release); stop, closed when the test ends, keeps
	// it held for good.
	release, stop chan struct{}
}

// HoldRequest starts a RequestHolder in front of target (host:port) that holds the first
// request holding marker once a request holding after ("": at once) went by; it stops with
// the test.
func HoldRequest(t testing.TB, target, after, marker string) *RequestHolder {
	t.Helper()
	h := &RequestHolder{marker: []byte(marker), held: make(chan struct{}), release: make(chan struct{}), stop: make(chan struct{})}
	if after != "" {
		h.after = []byte(after)
	}
	h.Addr = startProxy(t, target, func(req []byte) (hold, drop bool) {
		if !h.take(req) {
			return false, false
		}
		select { // the relay of this connection waits here
		case <-h.release:
			return false, false
		case <-h.stop:
			return true, false
		}
	})
	t.Cleanup(func() { close(h.stop) }) // before the proxy's own cleanup, which waits for the relays
	return h
}

// Held is closed once the request is held.
func (h *RequestHolder) Held() <-chan struct{} { return h.held }

// Release forwards the held request (or the one to be held, at once), and everything after
// it: the client goes on as if its request had been slow.
func (h *RequestHolder) Release() { close(h.release) }

// take reports whether req is the one to hold.
func (h *RequestHolder) take(req []byte) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.marker == nil {
		return false
	}
	if h.after != nil {
		if bytes.Contains(req, h.after) {
			h.after = nil
		}
		return false
	}
	if !bytes.Contains(req, h.marker) {
		return false
	}
	h.marker = nil
	close(h.held)
	return true
}
