package bastion

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"
	"golang.org/x/crypto/ssh"
	"golang.org/x/term"
)

// Defaults of RecorderOptions.
const (
	DefaultRecordSocket = "/run/sshca/record.sock"
	DefaultSFTPServer   = "/usr/lib/openssh/sftp-server"
)

// RecorderOptions configure the recorder that sshd runs as ForceCommand (cmd/sshca-record).
type RecorderOptions struct {
	Socket string // DefaultRecordSocket
	// Spool, when set, is a directory where a session of a user not in Privileged is recorded
	// when the agent cannot be reached. Empty: such sessions are refused. The spool is written
	// as the session user, so it proves nothing against them (the header says Spooled).
	Spool string
	// Privileged are accounts whose sessions are refused whenever the agent cannot be reached,
	// spool or not.
	Privileged []string
	SFTPServer string // DefaultSFTPServer
	// RecordInput records what the user types too; off by default because people type secrets.
	RecordInput bool

	Getenv func(string) string // os.Getenv when nil
	Stdin  *os.File            // os.Stdin etc. when nil
	Stdout *os.File
	Stderr *os.File
}

// session is what the recorder runs, decided from the certificate and sshd's environment.
type recordedSession struct {
	hello RecordHello
	argv  []string // argv[0] is the program
	arg0  string   // what the program sees as its name (a login shell's "-bash")
}

// SessionCommand decides what a recorded session runs. userAuth is the content of the file
// $SSH_USER_AUTH names (sshd's ExposeAuthInfo: "publickey <certificate line>" lines); original
// is $SSH_ORIGINAL_COMMAND; shell the account's login shell.
//
// A certificate's force-command wins over everything the client asked for: sshd's own
// ForceCommand (the recorder) overrides the certificate's, so the recorder must apply it or it
// would lift the restriction. Without a certificate in userAuth (ExposeAuthInfo off) the session
// is refused: a recorder that cannot see force-command cannot honour it.
func sessionCommand(userAuth []byte, original, shell, sftpServer string, user string) (recordedSession, error) {
	var cert *ssh.Certificate
	for _, line := range strings.Split(string(userAuth), "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "publickey ")
		if !ok {
			continue
		}
		k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(rest))
		if err != nil {
			continue
		}
		if c, ok := k.(*ssh.Certificate); ok {
			cert = c
			break
		}
	}
	if cert == nil {
		return recordedSession{}, errors.New("no certificate in $SSH_USER_AUTH (sshd needs ExposeAuthInfo yes)")
	}
	s := recordedSession{hello: RecordHello{User: user, KeyID: cert.KeyId, Serial: strconv.FormatUint(cert.Serial, 10)}}
	if shell == "" {
		shell = "/bin/sh"
	}
	cmd := original
	if fc, ok := cert.CriticalOptions["force-command"]; ok {
		cmd = fc
		s.hello.ForceCommand = true
	}
	s.hello.Command = cmd
	switch {
	case !s.hello.ForceCommand && (cmd == "internal-sftp" || filepath.Base(strings.Fields(cmd + " x")[0]) == "sftp-server"):
		// sshd passes a subsystem request to ForceCommand as the subsystem's command.
		s.hello.Kind = "sftp"
		s.argv = []string{sftpServer}
		s.arg0 = sftpServer
	case cmd == "":
		s.hello.Kind = "shell"
		s.argv = []string{shell}
		s.arg0 = "-" + filepath.Base(shell)
	default:
		s.hello.Kind = "exec"
		s.argv = []string{shell, "-c", cmd}
		s.arg0 = shell
	}
	return s, nil
}

// Record runs one recorded session and returns the exit status the recorder should exit with:
// the child's, 128+n when a signal n ended it, 1 when the session was refused. Diagnostics go
// to Stderr (the user sees them).
func Record(o RecorderOptions) int {
	if o.Getenv == nil {
		o.Getenv = os.Getenv
	}
	if o.Stdin == nil {
		o.Stdin, o.Stdout, o.Stderr = os.Stdin, os.Stdout, os.Stderr
	}
	if o.Socket == "" {
		o.Socket = DefaultRecordSocket
	}
	if o.SFTPServer == "" {
		o.SFTPServer = DefaultSFTPServer
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(o.Stderr, "sshca-record: "+format+"\r\n", a...)
		return 1
	}
	user := o.Getenv("USER")
	authFile := o.Getenv("SSH_USER_AUTH")
	if authFile == "" {
		return fail("session refused: $SSH_USER_AUTH is not set (sshd needs ExposeAuthInfo yes)")
	}
	auth, err := os.ReadFile(authFile)
	if err != nil {
		return fail("session refused: read $SSH_USER_AUTH: %v", err)
	}
	sess, err := sessionCommand(auth, o.Getenv("SSH_ORIGINAL_COMMAND"), o.Getenv("SHELL"), o.SFTPServer, user)
	if err != nil {
		return fail("session refused: %v", err)
	}
	usePTY := term.IsTerminal(int(o.Stdin.Fd()))
	sess.hello.PTY = usePTY
	if usePTY {
		if cols, rows, err := term.GetSize(int(o.Stdin.Fd())); err == nil {
			sess.hello.Cols, sess.hello.Rows = cols, rows
		}
	}

	var sink recordSink
	sink, err = dialRecorder(o.Socket, sess.hello)
	if err != nil {
		if o.Spool == "" || slices.Contains(o.Privileged, user) {
			return fail("session refused: the recording agent is unreachable (%v)", err)
		}
		sink, err = spoolRecorder(o.Spool, sess.hello)
		if err != nil {
			return fail("session refused: the recording agent is unreachable and the spool failed: %v", err)
		}
		fmt.Fprintf(o.Stderr, "sshca-record: the recording agent is unreachable; recording to the local spool\r\n")
	}
	defer sink.close()

	cmd := exec.Command(sess.argv[0], sess.argv[1:]...)
	cmd.Args[0] = sess.arg0
	cmd.Env = os.Environ()
	// The child never keeps the recorder's setgid group (the one that may reach the agent's
	// socket), and dies with the recorder, so killing the recorder ends the session.
	attr := &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if os.Getegid() != os.Getgid() {
		attr.Credential = &syscall.Credential{Uid: uint32(os.Getuid()), Gid: uint32(os.Getgid()), NoSetGroups: true}
	}
	if home := o.Getenv("HOME"); home != "" {
		cmd.Dir = home
	}
	var status int
	if usePTY {
		status, err = runPTY(cmd, attr, o, sink)
	} else {
		status, err = runPipes(cmd, attr, o, sink)
	}
	if err != nil {
		return fail("%v", err)
	}
	end, _ := json.Marshal(RecordingEnd{Exit: status})
	sink.frame(frameExit, end)
	return status
}

func exitStatus(err error) (int, error) {
	if err == nil {
		return 0, nil
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal()), nil
		}
		return ee.ExitCode(), nil
	}
	return 0, err
}

// forwardSignals passes the signals sshd sends the recorder (HUP when the client goes away,
// TERM, INT) on to the child until stop is closed.
func forwardSignals(cmd *exec.Cmd, group bool, stop <-chan struct{}) {
	ch := make(chan os.Signal, 4)
	signal.Notify(ch, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT)
	go func() {
		defer signal.Stop(ch)
		for {
			select {
			case sig := <-ch:
				if group {
					_ = syscall.Kill(-cmd.Process.Pid, sig.(syscall.Signal))
				} else {
					_ = cmd.Process.Signal(sig)
				}
			case <-stop:
				return
			}
		}
	}()
}

func runPTY(cmd *exec.Cmd, attr *syscall.SysProcAttr, o RecorderOptions, sink recordSink) (int, error) {
	// pty.Start sets Setsid and Setctty; the rest of attr is ours.
	cmd.SysProcAttr = attr
	size, err := pty.GetsizeFull(o.Stdin)
	if err != nil {
		size = &pty.Winsize{Cols: 80, Rows: 24}
	}
	ptmx, err := pty.StartWithSize(cmd, size)
	if err != nil {
		return 0, fmt.Errorf("start the session: %w", err)
	}
	defer ptmx.Close()
	if old, err := term.MakeRaw(int(o.Stdin.Fd())); err == nil {
		defer term.Restore(int(o.Stdin.Fd()), old)
	}
	stop := make(chan struct{})
	defer close(stop)
	forwardSignals(cmd, true, stop)
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	defer signal.Stop(winch)
	go func() {
		for {
			select {
			case <-winch:
				if ws, err := pty.GetsizeFull(o.Stdin); err == nil {
					_ = pty.Setsize(ptmx, ws)
					sink.frame(frameResize, []byte(fmt.Sprintf("%dx%d", ws.Cols, ws.Rows)))
				}
			case <-stop:
				return
			}
		}
	}()
	go func() {
		var w io.Writer = ptmx
		if o.RecordInput {
			w = io.MultiWriter(ptmx, sink.writer(frameInput))
		}
		_, _ = io.Copy(w, o.Stdin)
	}()
	// Output goes to the user first, then to the agent, so recording adds no latency beyond
	// one local write (BenchmarkRecordedEcho measures it).
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(teeWriter{o.Stdout, sink.writer(frameOutput)}, ptmx)
	}()
	status, err := exitStatus(cmd.Wait())
	// The pty reads EIO once the last process holding it is gone; a background process that
	// keeps it must not keep the session open forever.
	select {
	case <-done:
	case <-time.After(2 * time.Second):
	}
	return status, err
}

func runPipes(cmd *exec.Cmd, attr *syscall.SysProcAttr, o RecorderOptions, sink recordSink) (int, error) {
	attr.Setpgid = true
	cmd.SysProcAttr = attr
	if o.RecordInput {
		in, err := cmd.StdinPipe()
		if err != nil {
			return 0, err
		}
		go func() {
			_, _ = io.Copy(io.MultiWriter(in, sink.writer(frameInput)), o.Stdin)
			in.Close()
		}()
	} else {
		cmd.Stdin = o.Stdin
	}
	cmd.Stdout = teeWriter{o.Stdout, sink.writer(frameOutput)}
	cmd.Stderr = teeWriter{o.Stderr, sink.writer(frameStderr)}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start the session: %w", err)
	}
	stop := make(chan struct{})
	defer close(stop)
	forwardSignals(cmd, true, stop)
	return exitStatus(cmd.Wait())
}

// teeWriter writes to the user, then to the recording; a recording error does not stop the
// session's output (the agent marks what it lost).
type teeWriter struct {
	user, rec io.Writer
}

func (t teeWriter) Write(p []byte) (int, error) {
	n, err := t.user.Write(p)
	_, _ = t.rec.Write(p[:n])
	return n, err
}

// recordSink is where the recorder sends frames: the agent's socket or the local spool.
type recordSink interface {
	frame(typ byte, p []byte)
	writer(typ byte) io.Writer
	close()
}

type frameWriter struct {
	s   recordSink
	typ byte
}

func (f frameWriter) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		n := min(len(p), maxFrame)
		f.s.frame(f.typ, p[:n])
		p = p[n:]
	}
	return total, nil
}

// socketSink sends frames to the agent. Losing the agent mid-session ends the session: the
// recording could no longer be complete, and the agent has marked it unterminated.
type socketSink struct {
	mu   sync.Mutex
	conn net.Conn
}

func dialRecorder(path string, hello RecordHello) (*socketSink, error) {
	c, err := net.DialTimeout("unix", path, 2*time.Second)
	if err != nil {
		return nil, err
	}
	b, _ := json.Marshal(hello)
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	// A refusal can come before the hello is read, so the write may fail: the reply says why.
	_ = writeFrame(c, frameHello, b)
	line, err := bufio.NewReaderSize(c, 4096).ReadBytes('\n')
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("agent did not answer: %w", err)
	}
	var r recordReply
	if err := json.Unmarshal(line, &r); err != nil || r.Session == "" {
		c.Close()
		if r.Error != "" {
			return nil, fmt.Errorf("agent refused: %s", r.Error)
		}
		return nil, errors.New("agent gave no session ID")
	}
	_ = c.SetDeadline(time.Time{})
	return &socketSink{conn: c}, nil
}

func (s *socketSink) frame(typ byte, p []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == nil {
		return
	}
	if err := writeFrame(s.conn, typ, p); err != nil {
		s.conn.Close()
		s.conn = nil
		// The chain can no longer be complete: end the session rather than run unrecorded
		// (the child dies with the recorder: Pdeathsig).
		os.Exit(1)
	}
}

func (s *socketSink) writer(typ byte) io.Writer { return frameWriter{s, typ} }

func (s *socketSink) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != nil {
		s.conn.Close()
	}
}

// spoolSink writes the recording itself, as the session user.
type spoolSink struct {
	mu sync.Mutex
	f  *os.File
	cw *chainWriter
}

func spoolRecorder(dir string, hello RecordHello) (*spoolSink, error) {
	id := newSessionID()
	f, err := os.OpenFile(filepath.Join(dir, id+".rec"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	h := RecordingHeader{Version: 1, ID: id, Start: time.Now().UTC(), User: hello.User, KeyID: hello.KeyID,
		Serial: hello.Serial, Command: hello.Command, ForceCommand: hello.ForceCommand, Kind: hello.Kind,
		PTY: hello.PTY, Cols: hello.Cols, Rows: hello.Rows, Spooled: true}
	cw, err := newChainWriter(f, h, time.Now)
	if err != nil {
		f.Close()
		return nil, err
	}
	return &spoolSink{f: f, cw: cw}, nil
}

func (s *spoolSink) frame(typ byte, p []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	kind := map[byte]string{frameOutput: ChunkOutput, frameStderr: ChunkStderr, frameInput: ChunkInput,
		frameResize: ChunkResize, frameExit: ChunkEnd}[typ]
	_ = s.cw.write(kind, p)
}

func (s *spoolSink) writer(typ byte) io.Writer { return frameWriter{s, typ} }

func (s *spoolSink) close() { s.f.Close() }
