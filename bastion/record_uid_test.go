package bastion

import (
	"context"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/internal/testenv"
)

// TestRecordSocketSecondUID: with a second uid (nobody), the recording socket's group is the
// boundary. The recorder installed setgid to that group connects and records, and its child
// runs without the group; the same binary without setgid, run by the same user, cannot connect.
func TestRecordSocketSecondUID(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run processes as nobody")
	}
	setpriv := testenv.Need(t, "setpriv")
	const group = "daemon" // a group nobody is not in
	bin := buildRecorder(t)
	dir, err := os.MkdirTemp("", "sshca-uid-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// Two copies of the recorder nobody can run: one setgid to the socket's group, one not.
	setgid, plain := filepath.Join(dir, "record-setgid"), filepath.Join(dir, "record-plain")
	for _, p := range []string{setgid, plain} {
		b, err := os.ReadFile(bin)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Run(t, "chown", "root:"+group, setgid)
	testenv.Run(t, "chmod", "2755", setgid)

	sock := filepath.Join(dir, "record.sock")
	l, err := ListenRecordSocket(sock, group)
	if err != nil {
		t.Fatal(err)
	}
	recs := filepath.Join(dir, "recs")
	// RequireSSHD off: the peer's parent here is this test, not sshd.
	srv := &RecordServer{Dir: recs}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ctx, l) }()
	// Serve returns once every session's connection has been handled to its end.
	stop := sync.OnceFunc(func() { cancel(); <-done })
	t.Cleanup(stop)

	ca := writeKey(t, filepath.Join(dir, "ca"))
	user := writeKey(t, filepath.Join(dir, "user"))
	c := &ssh.Certificate{Key: user.PublicKey(), Serial: 7, CertType: ssh.UserCert, KeyId: "nobody#7",
		ValidPrincipals: []string{"nobody"}, ValidBefore: ssh.CertTimeInfinity}
	if err := c.SignCert(rand.Reader, ca); err != nil {
		t.Fatal(err)
	}
	auth := filepath.Join(dir, "user_auth")
	if err := os.WriteFile(auth, []byte("publickey "+string(ssh.MarshalAuthorizedKey(c))), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(recorder string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups",
			recorder, "--socket", sock, "--privileged", "nobody")
		cmd.Env = []string{"USER=nobody", "HOME=/", "SHELL=/bin/sh", "SSH_USER_AUTH=" + auth,
			"SSH_ORIGINAL_COMMAND=echo gid=$(id -g) groups=$(id -G)", "PATH=/usr/bin:/bin"}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := run(plain)
	if err == nil || !strings.Contains(out, "session refused") || !strings.Contains(out, "permission denied") {
		t.Errorf("the recorder without setgid: %v, %q; want the socket refused (permission denied)", err, out)
	}
	out, err = run(setgid)
	if err != nil || strings.TrimSpace(out) != "gid=65534 groups=65534" {
		t.Errorf("the setgid recorder: %v, %q; want the session run, its child without group %s", err, out, group)
	}
	// The recorder exits as soon as its last frame is written; the agent may still be storing
	// it. Stop the server, which waits for its sessions, before reading the recording.
	stop()
	es, _ := os.ReadDir(recs)
	if len(es) != 1 {
		t.Fatalf("%d recordings, want the setgid recorder's one", len(es))
	}
	r := readRecordingFile(t, filepath.Join(recs, es[0].Name()))
	if r.Header.Peer.UID != 65534 || !strings.Contains(string(r.Output()), "gid=65534") {
		t.Errorf("recording peer %+v, output %q: want nobody's session", r.Header.Peer, r.Output())
	}
}

func readRecordingFile(t *testing.T, path string) *Recording {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := ReadRecording(f)
	if err != nil {
		t.Fatal(err)
	}
	return r
}
