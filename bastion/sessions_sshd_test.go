package bastion

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/krl"
)

// rotatingLog is a log file as syslog writes it, rotated the two ways logrotate does.
type rotatingLog struct {
	path string

	mu sync.Mutex
	f  *os.File
}

func newRotatingLog(t *testing.T, path string) *rotatingLog {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	l := &rotatingLog{path: path, f: f}
	t.Cleanup(func() { l.mu.Lock(); l.f.Close(); l.mu.Unlock() })
	return l
}

func (l *rotatingLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Write(p)
}

// renameAndCreate is logrotate's default (create): the file is renamed to path.1 and a new one
// created, and the writer goes on writing to the old one until it is told to reopen (syslog's
// HUP), here after lag.
func (l *rotatingLog) renameAndCreate(t *testing.T, lag time.Duration) {
	t.Helper()
	if err := os.Rename(l.path, l.path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(l.path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(lag)
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	l.mu.Lock()
	old := l.f
	l.f = f
	l.mu.Unlock()
	old.Close()
}

// copyTruncate is logrotate's copytruncate: the content is copied to path.1 and the file
// truncated in place; the writer keeps its descriptor (O_APPEND: it writes from 0 again).
// The writer is held meanwhile, so no line falls between copy and truncation.
func (l *rotatingLog) copyTruncate(t *testing.T) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	b, err := os.ReadFile(l.path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(l.path+".1", b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(l.path, 0); err != nil {
		t.Fatal(err)
	}
}

// sessionRig is a real sshd that trusts a CA made with ssh-keygen and logs to a rotatable
// file, and the means to open sessions with certificates of that CA.
type sessionRig struct {
	t      *testing.T
	dir    string
	ca     ssh.PublicKey
	sshd   *testenv.SSHD
	kh     string
	log    *rotatingLog
	serial uint64
}

type liveSession struct {
	id     string
	serial uint64
	cmd    *exec.Cmd
	done   chan error
}

func startSessionRig(t *testing.T) *sessionRig {
	testenv.Need(t, "sshd", "/usr/sbin")
	testenv.Need(t, "ssh")
	testenv.Need(t, "ssh-keygen")
	dir := t.TempDir()
	r := &sessionRig{t: t, dir: dir}
	for _, k := range []string{"ca", "host"} {
		testenv.Run(t, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, k))
	}
	b, err := os.ReadFile(filepath.Join(dir, "ca.pub"))
	if err != nil {
		t.Fatal(err)
	}
	if r.ca, _, _, _, err = ssh.ParseAuthorizedKey(b); err != nil {
		t.Fatal(err)
	}
	r.log = newRotatingLog(t, filepath.Join(dir, "sshd.log"))
	r.sshd = testenv.StartSSHD(t, testenv.SSHDConfig{HostKey: filepath.Join(dir, "host"), TrustedUserCAKeys: filepath.Join(dir, "ca.pub"),
		Principals: []string{"alice"}, LogWriter: r.log})
	host, err := os.ReadFile(filepath.Join(dir, "host.pub"))
	if err != nil {
		t.Fatal(err)
	}
	r.kh = filepath.Join(dir, "known_hosts")
	if err := os.WriteFile(r.kh, []byte(fmt.Sprintf("[127.0.0.1]:%d %s", r.sshd.Port, host)), 0o600); err != nil {
		t.Fatal(err)
	}
	return r
}

// open starts a long session with a new key and certificate and waits until sshd logs it.
func (r *sessionRig) open() *liveSession {
	t := r.t
	t.Helper()
	r.serial++
	id := "alice#" + strconv.FormatUint(r.serial, 10)
	key := filepath.Join(r.dir, "user"+strconv.FormatUint(r.serial, 10))
	testenv.Run(t, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key)
	testenv.Run(t, "ssh-keygen", "-q", "-s", filepath.Join(r.dir, "ca"), "-I", id, "-n", "alice", "-z", strconv.FormatUint(r.serial, 10), "-V", "-1m:+10m", key+".pub")
	cmd := exec.Command("ssh", "-F", "none", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile="+r.kh,
		"-o", "GlobalKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-i", key,
		"-o", "CertificateFile="+key+"-cert.pub", "-p", strconv.Itoa(r.sshd.Port), r.sshd.User+"@127.0.0.1", "sleep 120")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &liveSession{id: id, serial: r.serial, cmd: cmd, done: make(chan error, 1)}
	go func() { s.done <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	testenv.Eventually(t, 10*time.Second, "sshd logs session "+id, func() bool {
		return strings.Contains(r.sshd.Log(), "ID "+id+" (serial")
	})
	return s
}

// revoke ends, through s, the sessions of the given serials' certificates, as an installed
// KRL does.
func (r *sessionRig) revoke(s *Sessions, serials ...uint64) {
	k := &krl.KRL{Version: uint64(time.Now().UnixNano())}
	k.RevokeSerials(r.ca, serials...)
	s.EndRevokedBy(k)
}

func (s *Sessions) tracks(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ss := range s.live {
		for _, c := range ss.certs {
			if c.keyID == id {
				return true
			}
		}
	}
	return false
}

func (s *Sessions) addrOf(id string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	for addr, ss := range s.live {
		for _, c := range ss.certs {
			if c.keyID == id {
				return addr
			}
		}
	}
	return ""
}

func followSessions(t *testing.T, path string) *Sessions {
	s, _ := followSessionsLogged(t, path)
	return s
}

// followSessionsLogged is followSessions with the follower's log, debug lines included.
func followSessionsLogged(t *testing.T, path string) (*Sessions, *testenv.SyncBuffer) {
	logs := &testenv.SyncBuffer{}
	s := NewSessions(slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = s.Follow(ctx, path); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return s, logs
}

func ended(t *testing.T, ls *liveSession, within time.Duration) {
	t.Helper()
	select {
	case <-ls.done:
	case <-time.After(within):
		t.Fatalf("session %s was not ended within %s", ls.id, within)
	}
}

func alive(t *testing.T, ls *liveSession) {
	t.Helper()
	select {
	case err := <-ls.done:
		t.Fatalf("session %s ended: %v", ls.id, err)
	default:
	}
}

// TestSessionsFollowRotation: real sshd and ssh, the log rotated while sessions start and end.
// After each kind of rotation the follower still learns new sessions and closes, and the
// sessions of revoked certificates are ended, on either side of the rotation. With
// rename-and-create the writer keeps writing to the renamed file for a while (until syslog's
// HUP): a session logged there is found too.
func TestSessionsFollowRotation(t *testing.T) {
	for _, kind := range []string{"rename-and-create", "copytruncate"} {
		t.Run(kind, func(t *testing.T) {
			r := startSessionRig(t)
			s, logs := followSessionsLogged(t, r.log.path)
			rotate := func(during func()) {
				switch kind {
				case "rename-and-create":
					done := make(chan struct{})
					go func() { r.log.renameAndCreate(t, 2*time.Second); close(done) }()
					time.Sleep(200 * time.Millisecond)
					during() // logged to the renamed file
					<-done
				case "copytruncate":
					r.log.copyTruncate(t)
					during()
				}
			}
			a := r.open()
			testenv.Eventually(t, 5*time.Second, "the follower tracks a session", func() bool { return s.tracks(a.id) })
			var b *liveSession
			rotate(func() { b = r.open() })
			testenv.Eventually(t, 10*time.Second, "the follower tracks the session logged during the rotation", func() bool { return s.tracks(b.id) })
			c := r.open()
			testenv.Eventually(t, 5*time.Second, "the follower tracks a session after the rotation", func() bool { return s.tracks(c.id) })

			r.revoke(s, a.serial)
			ended(t, a, 5*time.Second)
			alive(t, b)
			alive(t, c)

			// A close after the rotation is followed: once the follower has read sshd's close
			// line, that line (confirmed in /proc) is what drops the session, not the sweep. sshd
			// under a loaded -race run has logged no close line within 4.5 s (a timed check
			// failed), so the test waits for the drop and asks the follower's debug log which
			// path dropped it; with no close line read, the sweep (two sweeps in a row) must.
			if err := c.cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			testenv.Eventually(t, 15*time.Second, "the follower drops a closed session", func() bool { return !s.tracks(c.id) })
			addr := clientAddr(t, r.sshd.Log(), c.id)
			read := strings.Contains(logs.String(), `msg="close line read" client=`+addr)
			byLine := strings.Contains(logs.String(), `msg="session closed" client=`+addr+` by="close line"`)
			bySweep := strings.Contains(logs.String(), `msg="session closed" client=`+addr+` by=sweep`)
			switch {
			case read && !byLine:
				t.Errorf("the follower read the close line of %s but did not drop the session by it (sweep: %v):\n%s", addr, bySweep, logs.String())
			case !read && !bySweep:
				t.Errorf("session %s was dropped neither by a close line nor by the sweep:\n%s", addr, logs.String())
			case !read:
				t.Logf("sshd logged no close line for %s in time; the sweep dropped the session", addr)
			}

			rotate(func() {})
			d := r.open()
			testenv.Eventually(t, 5*time.Second, "the follower tracks a session after the second rotation", func() bool { return s.tracks(d.id) })
			r.revoke(s, b.serial, d.serial)
			ended(t, b, 5*time.Second)
			ended(t, d, 5*time.Second)
		})
	}
}

// portOf is the client port sshd logged for the session of certificate id.
func (r *sessionRig) portOf(id string) string {
	r.t.Helper()
	for _, l := range strings.Split(r.sshd.Log(), "\n") {
		if strings.Contains(l, "Accepted publickey") && strings.Contains(l, " ID "+id+" (serial") {
			if f := strings.Fields(l[strings.Index(l, " port ")+6:]); len(f) > 0 {
				return f[0]
			}
		}
	}
	r.t.Fatalf("sshd logged no Accepted line for %s", id)
	return ""
}

// forge appends lines to the log file as any local user can (logger -t sshd).
func (r *sessionRig) forge(lines ...string) {
	r.t.Helper()
	for _, l := range lines {
		if _, err := r.log.Write([]byte(l + "\n")); err != nil {
			r.t.Fatal(err)
		}
	}
}

func (r *sessionRig) forgedLines(victim string) []string {
	fp := ssh.FingerprintSHA256(r.ca)
	port := r.portOf(victim)
	return []string{
		// A session that does not exist.
		fmt.Sprintf("Accepted publickey for root from 127.0.0.1 port 9 ssh2: ED25519-CERT %s ID ghost#99 (serial 99) CA ED25519 %s", fp, fp),
		// Another certificate for the victim's connection.
		fmt.Sprintf("Accepted publickey for root from 127.0.0.1 port %s ssh2: ED25519-CERT %s ID decoy#98 (serial 98) CA ED25519 %s", port, fp, fp),
		// Closes of the victim's connection.
		"Connection closed by 127.0.0.1 port " + port,
		"Received disconnect from 127.0.0.1 port " + port + ":11: disconnected by user",
		"Disconnected from user root 127.0.0.1 port " + port,
	}
}

// TestSessionsForgedLinesSSHD: lines forged into the log sshd writes (as logger -t sshd does)
// change nothing: an Accepted line for a session that does not exist adds none, closes of a
// live session do not drop it, and another certificate claimed for it does not save it from
// the revocation of its own.
func TestSessionsForgedLinesSSHD(t *testing.T) {
	r := startSessionRig(t)
	s := followSessions(t, r.log.path)
	a := r.open()
	testenv.Eventually(t, 5*time.Second, "the follower tracks the session", func() bool { return s.tracks(a.id) })
	r.forge(r.forgedLines(a.id)...)
	time.Sleep(1500 * time.Millisecond) // several rounds of close confirmation
	if s.tracks("ghost#99") {
		t.Error("a forged Accepted line for a session that does not exist added it")
	}
	if !s.tracks(a.id) {
		t.Fatal("forged close lines dropped a live session")
	}
	r.revoke(s, a.serial)
	ended(t, a, 5*time.Second)
}

// TestSessionsRebuild: sessions that began before the agent started, one logged before the
// last rotation (only in sshd.log.1) and one after, are found at start from sshd's live
// connections and both log files, and ended when revoked; lines forged into the files before
// the start count no more than live ones.
func TestSessionsRebuild(t *testing.T) {
	r := startSessionRig(t)
	a := r.open()
	r.log.renameAndCreate(t, 0)
	b := r.open()
	r.forge(r.forgedLines(b.id)...)
	if _, err := os.Stat(r.log.path + ".1"); err != nil {
		t.Fatal(err)
	}
	s := followSessions(t, r.log.path)
	testenv.Eventually(t, 5*time.Second, "the rebuilt table holds both sessions", func() bool { return s.tracks(a.id) && s.tracks(b.id) })
	if s.tracks("ghost#99") {
		t.Error("a forged Accepted line in the log file added a session that does not exist")
	}
	r.revoke(s, a.serial)
	ended(t, a, 5*time.Second)
	alive(t, b)
	r.revoke(s, b.serial)
	ended(t, b, 5*time.Second)
}

// clientAddr is the client address ("127.0.0.1:port") of the session whose certificate has key
// ID id, from sshd's Accepted line.
func clientAddr(t *testing.T, sshdLog, id string) string {
	t.Helper()
	m := regexp.MustCompile(`Accepted publickey for \S+ from (\S+) port (\d+) ssh2: .* ID ` + regexp.QuoteMeta(id) + ` \(serial`).FindStringSubmatch(sshdLog)
	if m == nil {
		t.Fatalf("no Accepted line for %s in sshd's log", id)
	}
	return m[1] + ":" + m[2]
}
