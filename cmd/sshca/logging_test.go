package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
)

// TestDevLogFormatJSON: `sshca dev --log-format json --log-level debug` writes only JSON lines,
// and a request's line names its X-Request-ID.
func TestDevLogFormatJSON(t *testing.T) {
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	var stderr testenv.SyncBuffer
	root := newRootCommand()
	root.SetOut(&bytes.Buffer{})
	root.SetErr(&stderr)
	root.SetArgs([]string{"dev", "--listen", addr, "--state", filepath.Join(t.TempDir(), "state"), "--log-format", "json", "--log-level", "debug"})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- root.ExecuteContext(ctx) }()
	defer func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("sshca dev: %v", err)
		}
	}()
	base := "http://" + addr
	waitFor(t, 60*time.Second, "sshca dev answers /healthz", func() bool {
		resp, err := http.Get(base + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	code, id := send(t, http.MethodPost, base+"/v1/certs/user", "not-a-token", "", map[string]any{"public_key": "ssh-ed25519 AAAA"})
	if code != http.StatusUnauthorized {
		t.Fatalf("issue with a bad token = %d, want 401", code)
	}
	waitFor(t, 5*time.Second, "the request's log line", func() bool { return strings.Contains(stderr.String(), id) })

	lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
	var found bool
	for _, line := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Errorf("not a JSON line: %v: %s", err, line)
			continue
		}
		if m["level"] == nil || m["msg"] == nil || m["time"] == nil {
			t.Errorf("line without time, level or msg: %s", line)
		}
		if m["request_id"] == id && m["msg"] == "issue" && m["result"] == ca.KindUnauthenticated.String() {
			found = true
		}
	}
	if !found {
		t.Errorf("no \"issue\" line with request_id %q among:\n%s", id, stderr.String())
	}
}

// TestLogFlags: serve, dev and bastion agent take the same flags; bad values are refused
// naming the flag and what it takes; levels filter.
func TestLogFlags(t *testing.T) {
	for _, args := range [][]string{{"serve"}, {"dev"}, {"bastion", "agent"}} {
		cmd, _, err := newRootCommand().Find(args)
		if err != nil {
			t.Fatal(err)
		}
		for _, flag := range []string{"log-format", "log-level"} {
			if cmd.Flags().Lookup(flag) == nil {
				t.Errorf("sshca %s has no --%s", strings.Join(args, " "), flag)
			}
		}
	}
	for _, o := range []logOptions{{format: "xml", level: "info"}, {format: "json", level: "verbose"}} {
		_, err := newLogger(&testenv.SyncBuffer{}, o)
		want := "--log-format \"xml\": want json or text"
		if o.format == "json" {
			want = "--log-level \"verbose\": want debug, info, warn or error"
		}
		if err == nil || err.Error() != want {
			t.Errorf("%+v: err %v, want %q", o, err, want)
		}
	}
	var buf testenv.SyncBuffer // newLogger also gives go-redis this logger, for the whole process
	log, err := newLogger(&buf, logOptions{format: "text", level: "warn"})
	if err != nil {
		t.Fatal(err)
	}
	log.Info("hidden")
	log.Warn("shown")
	if strings.Contains(buf.String(), "hidden") || !strings.Contains(buf.String(), "level=WARN msg=shown") {
		t.Errorf("--log-level warn wrote:\n%s", buf.String())
	}
}

// TestRedisLoggerAdapter: go-redis's messages arrive as warn lines marked component=redis,
// with the request's ID when the context carries one.
func TestRedisLoggerAdapter(t *testing.T) {
	var buf testenv.SyncBuffer
	log, err := newLogger(&buf, logOptions{format: "json", level: "info"})
	if err != nil {
		t.Fatal(err)
	}
	redisLogger{log: log}.Printf(ca.WithRequestID(context.Background(), "r1"), "redis: connection pool: failed to dial after %d attempts\n", 5)
	var m map[string]any
	if err := json.Unmarshal([]byte(buf.String()), &m); err != nil {
		t.Fatalf("%v: %s", err, buf.String())
	}
	if m["level"] != "WARN" || m["msg"] != "redis: connection pool: failed to dial after 5 attempts" || m["component"] != "redis" || m["request_id"] != "r1" {
		t.Errorf("line: %s", buf.String())
	}
}
