package testenv

import (
	"bytes"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// ReplyDropper is a TCP proxy on loopback in front of a server (redis-server) that, once
// armed with a marker, forwards the next request holding the marker to the server, which runs
// it, and drops the server's answer to it, closing that client connection: what a client sees
// when an answer is lost or comes after its read timeout. go-redis then sends the command (a
// pipeline, a script) again on another connection. Everything else passes through.
type ReplyDropper struct {
	// Addr is the proxy's address, for the client.
	Addr   string
	mu     sync.Mutex
	marker []byte // armed: the next request holding it loses its answer
}

// DropReply starts a ReplyDropper in front of target (host:port); it stops with the test.
func DropReply(t testing.TB, target string) *ReplyDropper {
	t.Helper()
	d := &ReplyDropper{}
	d.Addr = startProxy(t, target, func(req []byte) (hold, drop bool) { return false, d.take(req) })
	return d
}

// RetryingClient is a go-redis client through the proxy that sends a command again after its
// answer was lost (read timeout 500 ms, three retries, as go-redis retries by default; serve's
// own clients retry nothing, MaxRetries -1): what a store's writes must survive. It closes
// with the test.
func (d *ReplyDropper) RetryingClient(t testing.TB) *redis.Client {
	rdb := redis.NewClient(&redis.Options{Addr: d.Addr, ReadTimeout: 500 * time.Millisecond,
		MaxRetries: 3, MinRetryBackoff: time.Millisecond, MaxRetryBackoff: 10 * time.Millisecond})
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// Arm makes the next request whose bytes hold marker lose its answer.
func (d *ReplyDropper) Arm(marker string) {
	d.mu.Lock()
	d.marker = []byte(marker)
	d.mu.Unlock()
}

// Armed reports whether the dropper still waits for its request (no answer dropped yet).
func (d *ReplyDropper) Armed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.marker != nil
}

// take reports whether req holds the armed marker, disarming it.
func (d *ReplyDropper) take(req []byte) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.marker == nil || !bytes.Contains(req, d.marker) {
		return false
	}
	d.marker = nil
	return true
}

// startProxy starts a TCP proxy on loopback in front of target and returns its address; it
// stops with the test, closing the connections it relays. decide sees each chunk a client
// sends: hold, and neither it nor anything after it on the connection reaches the server;
// drop, and it does, but the connection closes at the server's next answer, which never
// reaches the client.
func startProxy(t testing.TB, target string, decide func(req []byte) (hold, drop bool)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() { defer wg.Done(); relay(c, target, decide) }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close() // a held connection waits for its client, which may still be alive
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

func relay(c net.Conn, target string, decide func(req []byte) (hold, drop bool)) {
	defer c.Close()
	s, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	defer s.Close()
	var drop atomic.Bool
	done := make(chan struct{})
	go func() { // the server's answers, unless this connection's is to be dropped
		defer close(done)
		buf := make([]byte, 64<<10)
		for {
			n, err := s.Read(buf)
			if n > 0 && drop.Load() {
				c.Close() // the request ran; its answer never arrives
				return
			}
			if n > 0 {
				if _, err := c.Write(buf[:n]); err != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	buf := make([]byte, 64<<10)
	holding := false
	for {
		n, err := c.Read(buf)
		if n > 0 && !holding {
			h, d := decide(buf[:n])
			holding = h
			if d {
				drop.Store(true)
			}
			if !holding {
				if _, werr := s.Write(buf[:n]); werr != nil {
					break
				}
			}
		}
		if err != nil {
			break
		}
	}
	s.Close()
	<-done
}
