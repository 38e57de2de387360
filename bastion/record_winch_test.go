package bastion

import (
	"context"
	"crypto/rand"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/crypto/ssh"
)

// TestRecordWindowSize: a window-size change of the user's terminal reaches the session's pty
// (stty size inside sees it) and is recorded as a resize chunk.
func TestRecordWindowSize(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "s")
	l, err := ListenRecordSocket(sock, "")
	if err != nil {
		t.Fatal(err)
	}
	recs := filepath.Join(dir, "recs")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = (&RecordServer{Dir: recs}).Serve(ctx, l) }()
	// Serve returns once every session's connection has been handled to its end.
	stop := sync.OnceFunc(func() { cancel(); <-done })
	defer stop()
	ca := writeKey(t, filepath.Join(dir, "ca"))
	user := writeKey(t, filepath.Join(dir, "user"))
	c := &ssh.Certificate{Key: user.PublicKey(), Serial: 3, CertType: ssh.UserCert, KeyId: "w#3",
		ValidPrincipals: []string{"w"}, ValidBefore: ssh.CertTimeInfinity}
	if err := c.SignCert(rand.Reader, ca); err != nil {
		t.Fatal(err)
	}
	auth := filepath.Join(dir, "auth")
	if err := os.WriteFile(auth, []byte("publickey "+string(ssh.MarshalAuthorizedKey(c))), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(buildRecorder(t), "--socket", sock)
	cmd.Env = append(os.Environ(), "SSH_USER_AUTH="+auth, "SHELL=/bin/sh", "SSH_ORIGINAL_COMMAND=sleep 1; stty size")
	ptmx, err := pty.StartWithSize(cmd, &pty.Winsize{Cols: 80, Rows: 24})
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	time.Sleep(400 * time.Millisecond)
	if err := pty.Setsize(ptmx, &pty.Winsize{Cols: 101, Rows: 31}); err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(ptmx)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("recorder: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "31 101") {
		t.Fatalf("stty size in the session printed %q, want 31 101", out)
	}
	// The recorder exits as soon as its last frame is written; the agent may still be storing
	// it. Stop the server, which waits for its sessions, before reading the recording.
	stop()
	es, _ := os.ReadDir(recs)
	if len(es) != 1 {
		t.Fatalf("%d recordings", len(es))
	}
	r := readRecordingFile(t, filepath.Join(recs, es[0].Name()))
	found := false
	for _, ch := range r.Chunks {
		found = found || (ch.Kind == ChunkResize && string(ch.Data) == "101x31")
	}
	if !found || r.Header.Cols != 80 || r.Header.Rows != 24 {
		t.Errorf("header %dx%d, chunks %+v: want 80x24 then a 101x31 resize", r.Header.Cols, r.Header.Rows, r.Chunks)
	}
}
