package testenv

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ConfiguredRedis is a redis-server run from a configuration file (the shipped one, say) with
// its data in a directory of its own, so that a test can kill -9 it, let it shut down, and
// start it again on the same port and data: what a production Redis goes through.
type ConfiguredRedis struct {
	Addr string
	Dir  string // the server's working directory (`dir`): its AOF and RDB files

	t    testing.TB
	bin  string
	args []string // the configuration file, then `--name value` overrides

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when the running process has exited

	out SyncBuffer // the output of every run, in order
}

// StartRedisConfig starts `redis-server conf --port P --bind 127.0.0.1 --dir D args...` on a
// free loopback port with D a fresh temporary directory; args add or override directives after
// the file (Redis applies the last value). The server is killed at the end of the test.
func StartRedisConfig(t testing.TB, conf string, args ...string) *ConfiguredRedis {
	t.Helper()
	abs, err := filepath.Abs(conf)
	if err != nil {
		t.Fatalf("testenv: redis config: %v", err)
	}
	port := strconv.Itoa(FreePort(t))
	r := &ConfiguredRedis{t: t, bin: Need(t, "redis-server"), Dir: t.TempDir(), Addr: "127.0.0.1:" + port}
	r.args = append([]string{abs, "--port", port, "--bind", "127.0.0.1", "--dir", r.Dir}, args...)
	t.Cleanup(r.Kill)
	r.Start()
	return r
}

// Start starts the server again (same file, port and directory) and waits until it has loaded
// its data and says "Ready to accept connections" (it accepts TCP connections before that, and
// answers LOADING to commands).
func (r *ConfiguredRedis) Start() {
	r.t.Helper()
	r.mu.Lock()
	if r.cmd != nil {
		r.mu.Unlock()
		return
	}
	ready := strings.Count(r.out.String(), readyLine)
	cmd := exec.Command(r.bin, r.args...)
	cmd.Stdout, cmd.Stderr = &r.out, &r.out
	if err := cmd.Start(); err != nil {
		r.mu.Unlock()
		r.t.Fatalf("testenv: start redis-server: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	r.cmd, r.done = cmd, done
	r.mu.Unlock()

	deadline := time.Now().Add(20 * time.Second)
	for {
		if strings.Count(r.out.String(), readyLine) > ready {
			if c, err := net.DialTimeout("tcp", r.Addr, 200*time.Millisecond); err == nil {
				c.Close()
				return
			}
		}
		select {
		case <-done:
			r.mu.Lock()
			r.cmd = nil
			r.mu.Unlock()
			r.t.Fatalf("testenv: redis-server %v exited at start:\n%s", r.args, r.Log())
		default:
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("testenv: redis-server did not accept connections within 20s:\n%s", r.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

const readyLine = "Ready to accept connections"

// Kill sends SIGKILL (kill -9: nothing flushed, nothing said) and waits until the process is gone.
func (r *ConfiguredRedis) Kill() {
	r.mu.Lock()
	cmd, done := r.cmd, r.done
	r.cmd = nil
	r.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

// Exited waits up to d for the server to exit by itself (after a SHUTDOWN the test sent) and
// reports whether it did.
func (r *ConfiguredRedis) Exited(d time.Duration) bool {
	r.mu.Lock()
	cmd, done := r.cmd, r.done
	r.mu.Unlock()
	if cmd == nil {
		return true
	}
	select {
	case <-done:
		r.mu.Lock()
		r.cmd = nil
		r.mu.Unlock()
		return true
	case <-time.After(d):
		return false
	}
}

// Log returns what the server printed in all its runs so far.
func (r *ConfiguredRedis) Log() string { return r.out.String() }

// WriteFile writes content to a file named name in a fresh temporary directory and returns its
// path: a generated configuration or ACL file for StartRedisConfig.
func WriteFile(t testing.TB, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return p
}

// SyncBuffer is a bytes.Buffer that a process's output and a test may use at once.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
