package bastion

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/sshca/sshca/internal/testenv"
)

// trapScript is the session's command: it says which signal reached it, and exits 7 on TERM.
// The loop sleeps in short steps so that a trap runs within 50 ms of its signal.
const trapScript = `trap 'echo got-INT' INT; trap 'echo got-TERM; exit 7' TERM; trap 'echo winch $(stty size 2>/dev/null)' WINCH; echo ready; while :; do sleep 0.05; done`

// serveRecordings runs s on the fixture's socket (the fixture made without an agent) until
// the test ends.
func (f *recordFixture) serveRecordings(s *RecordServer) {
	t := f.t
	if err := os.MkdirAll(s.Dir, 0o700); err != nil { // Serve makes it too, but not before it runs
		t.Fatal(err)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: f.socket, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		if err := s.Serve(ctx, l); err != nil {
			t.Errorf("record server: %v", err)
		}
	}()
	f.server, f.cancel, f.stopped = s, cancel, stopped
	t.Cleanup(func() { cancel(); <-stopped })
}

// recorderPID waits for the one recording to show want in its output and returns the
// recorder's pid (the agent's SO_PEERCRED peer).
func (f *recordFixture) recorderPID(want string) int {
	f.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if rs := f.recordings(f.recs); len(rs) == 1 && strings.Contains(string(rs[0].Output()), want) {
			return rs[0].Header.Peer.PID
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("no recording shows %q", want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func waitOutput(t *testing.T, out interface{ String() string }, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("the session never printed %q; it printed %q", want, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRecordSignalsRealSSHD: in an exec session (no pty) under a real sshd, SIGINT and
// SIGTERM sent to the recorder reach the session's command (its traps run, and their output
// comes back through sshd), the command's exit status on TERM is the ssh client's, and the
// recording holds both and that status.
func TestRecordSignalsRealSSHD(t *testing.T) {
	f := newRecordFixture(t, fixtureOptions{})
	type result struct {
		stdout string
		code   int
	}
	done := make(chan result, 1)
	go func() {
		stdout, _, code := f.ssh(f.cert(nil), false, "", trapScript)
		done <- result{stdout, code}
	}()
	pid := f.recorderPID("ready")
	if err := syscall.Kill(pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for rs := f.recordings(f.recs); !strings.Contains(string(rs[0].Output()), "got-INT"); rs = f.recordings(f.recs) {
		if time.Now().After(deadline) {
			t.Fatalf("SIGINT to the recorder did not reach the command: recorded %q", rs[0].Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var r result
	select {
	case r = <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("the session did not end on SIGTERM")
	}
	if r.code != 7 || r.stdout != "ready\ngot-INT\ngot-TERM\n" {
		t.Errorf("ssh: exit %d, output %q; want 7 and ready, got-INT, got-TERM", r.code, r.stdout)
	}
	rec := f.ended()
	// Output and stderr together: bash may also say "Terminated" of the sleep TERM ended.
	if got := string(rec.Output()); !strings.HasPrefix(got, "ready\ngot-INT\n") || !strings.Contains(got, "got-TERM\n") || rec.End.Exit != 7 {
		t.Errorf("recorded %q, exit %d", got, rec.End.Exit)
	}
}

// TestRecordPTYSignalsRealSSHD: in a pty session under a real sshd (a Go ssh client that
// asks for a pty), a window change of the client reaches the command as SIGWINCH with the new
// size (and is recorded), ^C typed by the user reaches it as SIGINT, SIGTERM to the recorder
// reaches it as SIGTERM and its exit status is the session's; and when the client goes away,
// the command gets SIGHUP (sshd hangs up the recorder's terminal, the recorder passes it on).
func TestRecordPTYSignalsRealSSHD(t *testing.T) {
	f := newRecordFixture(t, fixtureOptions{})
	certPath := f.cert(nil)
	dial := func() (*ssh.Client, *ssh.Session, *testenv.SyncBuffer, io.WriteCloser) {
		t.Helper()
		key, err := os.ReadFile(f.key)
		if err != nil {
			t.Fatal(err)
		}
		signer, err := ssh.ParsePrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		cb, err := os.ReadFile(certPath)
		if err != nil {
			t.Fatal(err)
		}
		pub, _, _, _, err := ssh.ParseAuthorizedKey(cb)
		if err != nil {
			t.Fatal(err)
		}
		cs, err := ssh.NewCertSigner(pub.(*ssh.Certificate), signer)
		if err != nil {
			t.Fatal(err)
		}
		hk, err := knownhosts.New(f.known)
		if err != nil {
			t.Fatal(err)
		}
		c, err := ssh.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(f.sshd.Port)), &ssh.ClientConfig{
			User: f.sshd.User, Auth: []ssh.AuthMethod{ssh.PublicKeys(cs)}, HostKeyCallback: hk, Timeout: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		s, err := c.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		if err := s.RequestPty("xterm", 24, 80, ssh.TerminalModes{ssh.ECHO: 0}); err != nil {
			t.Fatal(err)
		}
		out := &testenv.SyncBuffer{}
		s.Stdout, s.Stderr = out, out
		in, err := s.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		return c, s, out, in
	}

	t.Run("WINCH INT TERM", func(t *testing.T) {
		_, s, out, in := dial()
		if err := s.Start(trapScript); err != nil {
			t.Fatal(err)
		}
		waitOutput(t, out, "ready")
		if err := s.WindowChange(31, 101); err != nil {
			t.Fatal(err)
		}
		waitOutput(t, out, "winch 31 101")
		if _, err := in.Write([]byte{3}); err != nil { // ^C
			t.Fatal(err)
		}
		waitOutput(t, out, "got-INT")
		pid := f.recorderPID("got-INT")
		if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		waited := make(chan error, 1)
		go func() { waited <- s.Wait() }()
		var err error
		select {
		case err = <-waited:
		case <-time.After(15 * time.Second):
			t.Fatal("the session did not end on SIGTERM")
		}
		var ee *ssh.ExitError
		if !errors.As(err, &ee) || ee.ExitStatus() != 7 || !strings.Contains(out.String(), "got-TERM") {
			t.Errorf("session ended with %v, output %q; want exit 7 after got-TERM", err, out.String())
		}
		r := f.ended()
		resized := false
		for _, c := range r.Chunks {
			resized = resized || c.Kind == ChunkResize && string(c.Data) == "101x31"
		}
		if !resized || r.End.Exit != 7 || !strings.Contains(string(r.Output()), "winch 31 101") {
			t.Errorf("recording: resized %v, exit %d, output %q", resized, r.End.Exit, r.Output())
		}
	})

	t.Run("HUP when the client goes away", func(t *testing.T) {
		for _, e := range mustReadDir(t, f.recs) {
			os.Remove(filepath.Join(f.recs, e.Name()))
		}
		marker := filepath.Join(f.dir, "hup")
		c, s, out, _ := dial()
		if err := s.Start(fmt.Sprintf(`trap 'echo hup > %s; exit 1' HUP; echo ready; while :; do sleep 0.05; done`, marker)); err != nil {
			t.Fatal(err)
		}
		waitOutput(t, out, "ready")
		c.Close()
		deadline := time.Now().Add(10 * time.Second)
		for {
			if b, err := os.ReadFile(marker); err == nil && string(b) == "hup\n" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the command never got SIGHUP after the client went away")
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

func mustReadDir(t *testing.T, dir string) []os.DirEntry {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return es
}

// TestRecordHostCapRealSSHD: the per-host cap bounds the bytes kept over every recording of
// the host, under a real sshd: a first session fits and is kept whole; a second one is kept
// only up to what is left, the rest dropped and marked "host" while the user still gets all
// of it; after the agent restarts, it counts what its directory already holds, so a third
// session keeps nothing; and the directory stays within a small multiple of the cap.
func TestRecordHostCapRealSSHD(t *testing.T) {
	const hostCap, each = 10000, 6000
	f := newRecordFixture(t, fixtureOptions{noAgent: true})
	f.serveRecordings(&RecordServer{Dir: f.recs, Host: "bastion-test", HostCap: hostCap, RequireSSHD: true})
	session := func(letter string) *Recording {
		t.Helper()
		before := map[string]bool{}
		for _, e := range mustReadDir(t, f.recs) {
			before[e.Name()] = true
		}
		stdout, _, code := f.ssh(f.cert(nil), false, "", fmt.Sprintf("head -c %d /dev/zero | tr '\\0' %s", each, letter))
		if code != 0 || stdout != strings.Repeat(letter, each) {
			t.Fatalf("session %s: exit %d, %d bytes; the user must get all output whatever the cap", letter, code, len(stdout))
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			for _, e := range mustReadDir(t, f.recs) {
				if before[e.Name()] {
					continue
				}
				b, err := os.ReadFile(filepath.Join(f.recs, e.Name()))
				if err != nil {
					t.Fatal(err)
				}
				if r, err := ReadRecording(bytes.NewReader(b)); err == nil && r.End != nil {
					return r
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("session %s: no ended recording", letter)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	first := session("a")
	if len(first.Output()) != each || first.Dropped != "" {
		t.Errorf("first session: %d bytes kept, dropped %q; want all %d", len(first.Output()), first.Dropped, each)
	}
	second := session("b")
	kept := len(second.Output())
	if kept > hostCap-each || second.Dropped != "host" || int64(kept)+second.End.Dropped != each {
		t.Errorf("second session: %d bytes kept, %d dropped, cap %q; want at most %d kept, the rest dropped under the host cap",
			kept, second.End.Dropped, second.Dropped, hostCap-each)
	}

	// The agent restarts: what the directory holds counts against the cap.
	f.cancel()
	<-f.stopped
	f.serveRecordings(&RecordServer{Dir: f.recs, Host: "bastion-test", HostCap: hostCap, RequireSSHD: true})
	third := session("c")
	if len(third.Output()) != 0 || third.Dropped != "host" || third.End.Dropped != each {
		t.Errorf("after a restart: %d bytes kept, %d dropped, cap %q; want none kept", len(third.Output()), third.End.Dropped, third.Dropped)
	}
	used, err := dirBytes(f.recs)
	if err != nil {
		t.Fatal(err)
	}
	if used > 3*hostCap {
		t.Errorf("the recordings directory holds %d bytes for a %d-byte host cap", used, hostCap)
	}
}
