package bastion

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func startRecordServer(t *testing.T, s *RecordServer) string {
	t.Helper()
	dir := t.TempDir()
	s.Dir = filepath.Join(dir, "recs")
	sock := filepath.Join(dir, "s")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Serve(ctx, l) }()
	t.Cleanup(func() { cancel(); <-done })
	return sock
}

// hello connects and says hello; it returns the connection and the agent's reply.
func hello(t *testing.T, sock string) (net.Conn, recordReply) {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	b, _ := json.Marshal(RecordHello{User: "u", Kind: "exec"})
	// A refusal may come before the hello is read (the peer is checked first): the write can
	// fail then, and the reply says why.
	_ = writeFrame(c, frameHello, b)
	line, err := bufio.NewReader(c).ReadBytes('\n')
	if err != nil {
		t.Fatal(err)
	}
	var r recordReply
	if err := json.Unmarshal(line, &r); err != nil {
		t.Fatal(err)
	}
	return c, r
}

// TestRecordServerRequiresSSHD: a peer whose parent is not sshd (this test binary's parent is
// go test) gets no session; the sshd tests show that one whose parent is sshd does.
func TestRecordServerRequiresSSHD(t *testing.T) {
	sock := startRecordServer(t, &RecordServer{RequireSSHD: true})
	_, r := hello(t, sock)
	if r.Session != "" || !strings.Contains(r.Error, "not run by sshd") {
		t.Errorf("reply %+v, want refused as not run by sshd", r)
	}
}

// TestRecordServerOneConnectionPerSession: a second connection from the same sshd session
// process (here: the same parent) is refused while the first is open, and accepted after.
func TestRecordServerOneConnectionPerSession(t *testing.T) {
	sock := startRecordServer(t, &RecordServer{})
	first, r := hello(t, sock)
	if r.Session == "" {
		t.Fatalf("first connection: %+v, want a session", r)
	}
	if _, r2 := hello(t, sock); r2.Session != "" || !strings.Contains(r2.Error, "already has a recording") {
		t.Errorf("second connection: %+v, want refused", r2)
	}
	first.Close()
	for i := 0; ; i++ {
		_, r3 := hello(t, sock)
		if r3.Session != "" {
			if r3.Session == r.Session {
				t.Errorf("session ID %s reused", r3.Session)
			}
			break
		}
		time.Sleep(10 * time.Millisecond)
		if i > 100 {
			t.Fatalf("after the first closed: %+v, want a session", r3)
		}
	}
}
