package bastion

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
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

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/internal/testenv"
)

var (
	recorderOnce sync.Once
	recorderBin  string
	recorderErr  error
)

// buildRecorder builds cmd/sshca-record once per test binary.
func buildRecorder(t testing.TB) string {
	t.Helper()
	recorderOnce.Do(func() {
		dir, err := os.MkdirTemp("", "sshca-record-")
		if err != nil {
			recorderErr = err
			return
		}
		recorderBin = filepath.Join(dir, "sshca-record")
		out, err := exec.Command("go", "build", "-o", recorderBin, "github.com/sshca/sshca/cmd/sshca-record").CombinedOutput()
		if err != nil {
			recorderErr = fmt.Errorf("%v\n%s", err, out)
		}
	})
	if recorderErr != nil {
		t.Fatalf("build sshca-record: %v", recorderErr)
	}
	return recorderBin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if recorderBin != "" {
		os.RemoveAll(filepath.Dir(recorderBin))
	}
	os.Exit(code)
}

// recordFixture is a real sshd whose ForceCommand is the recorder, and the agent's RecordServer
// in this process.
type recordFixture struct {
	t       *testing.T
	sshd    *testenv.SSHD
	dir     string
	recs    string // the agent's recordings
	socket  string
	caKey   ssh.Signer
	key     string // user private key file
	known   string
	server  *RecordServer
	stopped chan struct{}
	cancel  context.CancelFunc
}

type fixtureOptions struct {
	recorderArgs []string
	sessionCap   int64
	noAgent      bool
}

func writeKey(t testing.TB, path string) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pemBlock, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := pem.Encode(&b, pemBlock); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func newRecordFixture(t *testing.T, o fixtureOptions) *recordFixture {
	t.Helper()
	testenv.Need(t, "ssh")
	bin := buildRecorder(t)
	dir := t.TempDir()
	f := &recordFixture{t: t, dir: dir, recs: filepath.Join(dir, "recordings"), socket: filepath.Join(dir, "record.sock")}
	f.caKey = writeKey(t, filepath.Join(dir, "ca"))
	hostKey := writeKey(t, filepath.Join(dir, "host"))
	f.key = filepath.Join(dir, "user")
	writeKey(t, f.key)
	if err := os.WriteFile(filepath.Join(dir, "ca.pub"), ssh.MarshalAuthorizedKey(f.caKey.PublicKey()), 0o644); err != nil {
		t.Fatal(err)
	}
	force := append([]string{bin, "--socket", f.socket}, o.recorderArgs...)
	f.sshd = testenv.StartSSHD(t, testenv.SSHDConfig{
		HostKey:           filepath.Join(dir, "host"),
		TrustedUserCAKeys: filepath.Join(dir, "ca.pub"),
		Principals:        []string{"rec"},
		Extra: []string{"ExposeAuthInfo yes", "PermitUserRC no", "DisableForwarding yes",
			"Subsystem sftp " + DefaultSFTPServer,
			"ForceCommand " + strings.Join(force, " ")},
	})
	f.known = filepath.Join(dir, "known_hosts")
	line := fmt.Sprintf("[127.0.0.1]:%d %s", f.sshd.Port, ssh.MarshalAuthorizedKey(hostKey.PublicKey()))
	if err := os.WriteFile(f.known, []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
	if !o.noAgent {
		f.startAgent(o.sessionCap)
	}
	return f
}

func (f *recordFixture) startAgent(sessionCap int64) {
	t := f.t
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: f.socket, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	f.server = &RecordServer{Dir: f.recs, Host: "bastion-test", SessionCap: sessionCap, RequireSSHD: true}
	f.stopped = make(chan struct{})
	go func() {
		defer close(f.stopped)
		if err := f.server.Serve(ctx, l); err != nil {
			t.Errorf("record server: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); <-f.stopped })
}

// cert signs a certificate for the fixture's user key with principal "rec" and the given
// critical options.
func (f *recordFixture) cert(options map[string]string) string {
	t := f.t
	b, err := os.ReadFile(f.key)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(b)
	if err != nil {
		t.Fatal(err)
	}
	c := &ssh.Certificate{Key: signer.PublicKey(), Serial: 4242, CertType: ssh.UserCert, KeyId: "alice@example.com#4242",
		ValidPrincipals: []string{"rec"}, ValidAfter: uint64(time.Now().Add(-time.Minute).Unix()),
		ValidBefore: uint64(time.Now().Add(10 * time.Minute).Unix()),
		Permissions: ssh.Permissions{CriticalOptions: options, Extensions: map[string]string{"permit-pty": ""}}}
	if err := c.SignCert(rand.Reader, f.caKey); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(f.dir, fmt.Sprintf("user-cert-%d.pub", time.Now().UnixNano()))
	if err := os.WriteFile(p, ssh.MarshalAuthorizedKey(c), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// ssh runs the real client; tty adds -tt. It returns stdout, stderr and the exit status.
func (f *recordFixture) ssh(cert string, tty bool, stdin string, command ...string) (string, string, int) {
	args := []string{"-F", "none", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
		"-o", "UserKnownHostsFile=" + f.known, "-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "CertificateFile=" + cert,
		"-i", f.key, "-p", strconv.Itoa(f.sshd.Port)}
	if tty {
		args = append(args, "-tt")
	}
	args = append(args, f.sshd.User+"@127.0.0.1")
	args = append(args, command...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ssh", args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		f.t.Fatalf("ssh: %v", err)
	}
	return out.String(), errb.String(), code
}

// recordings reads every recording the agent kept, verifying each chain.
func (f *recordFixture) recordings(dir string) []*Recording {
	t := f.t
	es, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []*Recording
	for _, e := range es {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		r, err := ReadRecording(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("%s: %v", e.Name(), err)
		}
		out = append(out, r)
	}
	return out
}

// the one recording, once it has ended (the agent writes the end a moment after ssh returns).
func (f *recordFixture) ended() *Recording {
	t := f.t
	deadline := time.Now().Add(5 * time.Second)
	for {
		rs := f.recordings(f.recs)
		if len(rs) == 1 && rs[0].End != nil {
			return rs[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d recordings, want one that ended", len(rs))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRecordExecSession(t *testing.T) {
	f := newRecordFixture(t, fixtureOptions{})
	cmd := `echo "out-$((6*7))"; echo err-line >&2; exit 3`
	stdout, stderr, code := f.ssh(f.cert(nil), false, "", cmd)
	if code != 3 || stdout != "out-42\n" || !strings.Contains(stderr, "err-line") {
		t.Fatalf("ssh: exit %d, stdout %q, stderr %q; want 3, out-42, err-line", code, stdout, stderr)
	}
	r := f.ended()
	h := r.Header
	if h.Command != cmd || h.Kind != "exec" || h.PTY || h.KeyID != "alice@example.com#4242" || h.Serial != "4242" || h.ForceCommand {
		t.Errorf("header %+v: want the command exactly, exec, no pty, the certificate's key ID and serial", h)
	}
	if h.Peer == nil || h.Peer.SSHDPID == 0 || h.Peer.PID == 0 {
		t.Errorf("header names no peer: %+v", h.Peer)
	}
	if got := string(r.Output()); !strings.Contains(got, "out-42\n") || !strings.Contains(got, "err-line\n") {
		t.Errorf("recorded output %q, want out-42 and err-line", got)
	}
	if r.End.Exit != 3 {
		t.Errorf("recorded exit %d, want 3", r.End.Exit)
	}
}

// TestRecordChainDetectsChange: the agent's recording verifies, and changing one byte of one
// chunk's data, its time, or dropping a chunk breaks the chain at that chunk.
func TestRecordChainDetectsChange(t *testing.T) {
	f := newRecordFixture(t, fixtureOptions{})
	if _, _, code := f.ssh(f.cert(nil), false, "", "echo one; sleep 0.1; echo two; sleep 0.1; echo three"); code != 0 {
		t.Fatalf("ssh exit %d", code)
	}
	f.ended()
	es, _ := os.ReadDir(f.recs)
	path := filepath.Join(f.recs, es[0].Name())
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.Split(bytes.TrimSuffix(orig, []byte("\n")), []byte("\n"))
	if len(lines) < 4 {
		t.Fatalf("%d lines, want a header, three outputs and an end", len(lines))
	}
	mutate := func(name string, change func(c *RecordingChunk) bool) {
		for i := 1; i < len(lines); i++ {
			var c RecordingChunk
			if err := json.Unmarshal(lines[i], &c); err != nil {
				t.Fatal(err)
			}
			if !change(&c) {
				continue
			}
			b, _ := json.Marshal(c)
			changed := bytes.Join(append(append(append([][]byte{}, lines[:i]...), b), lines[i+1:]...), []byte("\n"))
			_, err := ReadRecording(bytes.NewReader(changed))
			if !errors.Is(err, ErrRecordingChain) || !strings.Contains(err.Error(), fmt.Sprintf("line %d:", i+1)) {
				t.Errorf("%s at line %d: %v, want the chain broken at that line", name, i+1, err)
			}
			return
		}
		t.Fatalf("%s: no chunk to change", name)
	}
	mutate("data byte", func(c *RecordingChunk) bool {
		if c.Kind != ChunkOutput || !bytes.Contains(c.Data, []byte("two")) {
			return false
		}
		c.Data = bytes.Replace(c.Data, []byte("two"), []byte("twO"), 1)
		return true
	})
	mutate("time", func(c *RecordingChunk) bool { c.T++; return c.Kind == ChunkOutput })
	// Dropping a chunk: the next one no longer follows.
	dropped := bytes.Join(append(append([][]byte{}, lines[:2]...), lines[3:]...), []byte("\n"))
	if _, err := ReadRecording(bytes.NewReader(dropped)); !errors.Is(err, ErrRecordingChain) {
		t.Errorf("a dropped chunk: %v, want the chain broken", err)
	}
	// The header too: a changed user is the first chunk not following.
	hdr := bytes.Replace(orig, []byte(`"user":"`), []byte(`"user":"x`), 1)
	if _, err := ReadRecording(bytes.NewReader(hdr)); !errors.Is(err, ErrRecordingChain) {
		t.Errorf("a changed header: %v, want the chain broken", err)
	}
	// And the unchanged one verifies (so the failures above are the changes').
	if _, err := ReadRecording(bytes.NewReader(orig)); err != nil {
		t.Errorf("the unchanged recording: %v", err)
	}
}

// TestRecordForceCommand: a certificate's force-command runs under the recorder whatever the
// client asks, exec or shell.
func TestRecordForceCommand(t *testing.T) {
	f := newRecordFixture(t, fixtureOptions{})
	cert := f.cert(map[string]string{"force-command": "echo forced-$((40+2))"})
	for _, asked := range [][]string{{"echo client-asked"}, nil} {
		stdout, _, code := f.ssh(cert, false, "echo typed-in\n", asked...)
		if code != 0 || strings.Contains(stdout, "client-asked") || strings.Contains(stdout, "typed-in") || stdout != "forced-42\n" {
			t.Errorf("asked %q: exit %d, stdout %q; want only forced-42", asked, code, stdout)
		}
	}
	for _, r := range f.recordings(f.recs) {
		if !r.Header.ForceCommand || r.Header.Command != "echo forced-$((40+2))" {
			t.Errorf("header %+v: want the certificate's command, marked", r.Header)
		}
	}
}

// TestRecordInteractive: ssh -tt with scripted input gets a pty; what the terminal showed is
// recorded, and the shell's exit status comes back.
func TestRecordInteractive(t *testing.T) {
	f := newRecordFixture(t, fixtureOptions{})
	stdout, _, code := f.ssh(f.cert(nil), true, "echo \"tty-$((6*7))\"\nexit 5\n")
	if code != 5 || !strings.Contains(stdout, "tty-42") {
		t.Fatalf("ssh -tt: exit %d, output %q; want 5 and tty-42", code, stdout)
	}
	r := f.ended()
	if !r.Header.PTY || r.Header.Kind != "shell" || r.Header.Command != "" {
		t.Errorf("header %+v: want a pty login shell", r.Header)
	}
	if got := string(r.Output()); !strings.Contains(got, "tty-42") {
		t.Errorf("recorded output %q lacks tty-42", got)
	}
	if r.End.Exit != 5 {
		t.Errorf("recorded exit %d, want 5", r.End.Exit)
	}
	for _, c := range r.Chunks {
		if c.Kind == ChunkInput {
			t.Errorf("input recorded though input recording is off: %q", c.Data)
		}
	}
}

// TestRecordKillRecorderEndsSession: killing the recorder ends the session (the ssh client
// returns) and leaves the recording unterminated.
func TestRecordKillRecorderEndsSession(t *testing.T) {
	f := newRecordFixture(t, fixtureOptions{})
	done := make(chan int, 1)
	go func() {
		_, _, code := f.ssh(f.cert(nil), false, "", "echo started; sleep 30; echo not-reached")
		done <- code
	}()
	var r *Recording
	deadline := time.Now().Add(10 * time.Second)
	for r == nil || !strings.Contains(string(r.Output()), "started") {
		if time.Now().After(deadline) {
			t.Fatal("the session did not start")
		}
		time.Sleep(20 * time.Millisecond)
		if rs := f.recordings(f.recs); len(rs) == 1 {
			r = rs[0]
		}
	}
	if err := syscall.Kill(r.Header.Peer.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the session lived on after its recorder was killed")
	}
	time.Sleep(100 * time.Millisecond)
	rs := f.recordings(f.recs)
	if rs[0].End != nil || strings.Contains(string(rs[0].Output()), "not-reached") {
		t.Errorf("recording end %+v, output %q: want unterminated", rs[0].End, rs[0].Output())
	}
}

// TestRecordAgentDownRefusesPrivileged: with no agent, a privileged account's session is
// refused before its command runs, even when a spool is configured; an unprivileged one is
// spooled and marked so.
func TestRecordAgentDownRefusesPrivileged(t *testing.T) {
	spool := t.TempDir()
	for _, tc := range []struct {
		privileged string
		refused    bool
	}{{"root," + currentUser(t), true}, {"someone-else", false}} {
		f := newRecordFixture(t, fixtureOptions{noAgent: true, recorderArgs: []string{"--spool", spool, "--privileged", tc.privileged}})
		marker := filepath.Join(f.dir, "ran")
		stdout, stderr, code := f.ssh(f.cert(nil), false, "", "touch "+marker+"; echo ran")
		_, statErr := os.Stat(marker)
		if tc.refused {
			if code == 0 || statErr == nil || !strings.Contains(stderr, "session refused") {
				t.Errorf("privileged %q: exit %d, stdout %q, stderr %q, command ran %v: want refused", tc.privileged, code, stdout, stderr, statErr == nil)
			}
			continue
		}
		if code != 0 || statErr != nil {
			t.Errorf("unprivileged with a spool: exit %d, stderr %q: want it to run", code, stderr)
		}
		rs := f.recordings(spool)
		if len(rs) != 1 || !rs[0].Header.Spooled || !strings.Contains(string(rs[0].Output()), "ran") || rs[0].End == nil {
			t.Errorf("spool: %d recordings, want one, spooled, with the output and an end", len(rs))
		}
	}
}

func currentUser(t *testing.T) string {
	u := os.Getenv("USER")
	if u == "" {
		u = "root"
	}
	return u
}

// TestRecordCap: output past the session cap does not reach the recording; the drop is marked
// and counted, and the session itself still gets all its output.
func TestRecordCap(t *testing.T) {
	const sessionCap = 4096
	f := newRecordFixture(t, fixtureOptions{sessionCap: sessionCap})
	stdout, _, code := f.ssh(f.cert(nil), false, "", "head -c 200000 /dev/zero | tr '\\0' x")
	if code != 0 || len(stdout) != 200000 {
		t.Fatalf("exit %d, %d bytes out; want 0 and 200000", code, len(stdout))
	}
	r := f.ended()
	if n := len(r.Output()); n > sessionCap {
		t.Errorf("%d bytes recorded, cap %d", n, sessionCap)
	}
	if r.Dropped != "session" || r.End.Dropped+int64(len(r.Output())) != 200000 {
		t.Errorf("dropped %q, %d bytes; recorded %d: want the session cap and the rest counted", r.Dropped, r.End.Dropped, len(r.Output()))
	}
	es, _ := os.ReadDir(f.recs)
	fi, _ := es[0].Info()
	if fi.Size() > 3*sessionCap {
		t.Errorf("the recording file is %d bytes for a %d-byte cap", fi.Size(), sessionCap)
	}
}

// TestRecordSFTP: an sftp subsystem request runs the sftp server under the recorder, recorded
// as a file-transfer session, and the transfer works.
func TestRecordSFTP(t *testing.T) {
	testenv.Need(t, "sftp")
	f := newRecordFixture(t, fixtureOptions{})
	src := filepath.Join(f.dir, "src")
	dst := filepath.Join(f.dir, "dst")
	if err := os.WriteFile(src, []byte("payload-for-sftp\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sftp", "-F", "none", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
		"-o", "UserKnownHostsFile="+f.known, "-o", "GlobalKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes",
		"-o", "IdentityAgent=none", "-o", "CertificateFile="+f.cert(nil), "-i", f.key, "-P", strconv.Itoa(f.sshd.Port),
		"-b", "-", f.sshd.User+"@127.0.0.1")
	cmd.Stdin = strings.NewReader("put " + src + " " + dst + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sftp: %v\n%s", err, out)
	}
	if b, err := os.ReadFile(dst); err != nil || string(b) != "payload-for-sftp\n" {
		t.Fatalf("the file did not arrive: %q, %v", b, err)
	}
	r := f.ended()
	if r.Header.Kind != "sftp" || r.Header.PTY {
		t.Errorf("header %+v: want an sftp session without a pty", r.Header)
	}
}
