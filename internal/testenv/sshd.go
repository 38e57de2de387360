package testenv

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// SSHDConfig is what a test sshd trusts and presents. Paths are absolute.
type SSHDConfig struct {
	HostKey           string // private host key
	HostCertificate   string // optional
	TrustedUserCAKeys string // file of CA public keys
	RevokedKeys       string // optional KRL
	// Principals maps to the Unix user the test runs as: the certificate principals it accepts.
	Principals []string
	// AuthorizedKeysFile is sshd's AuthorizedKeysFile (default none: certificates only).
	AuthorizedKeysFile string
	// Extra lines appended to sshd_config.
	Extra []string
	// LogFile, when set, receives sshd's log as well (for the bastion agent to follow).
	LogFile string
	// LogWriter, when set, receives sshd's log as well (a test that rotates the file itself).
	LogWriter io.Writer
}

// SSHD is a real OpenSSH sshd on a free 127.0.0.1 port, started for one test.
type SSHD struct {
	Port int
	Addr string
	User string // the Unix user logins map to (the one running the test)
	Dir  string

	mu   sync.Mutex
	out  bytes.Buffer
	file *os.File
	w    io.Writer
}

// Log is what sshd has written so far (it runs with -e, LogLevel VERBOSE).
func (s *SSHD) Log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.String()
}

func (s *SSHD) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.file != nil {
		_, _ = s.file.Write(p)
	}
	if s.w != nil {
		_, _ = s.w.Write(p)
	}
	return s.out.Write(p)
}

// StartSSHD starts sshd in the foreground (-D -e) and stops it when the test ends.
func StartSSHD(t testing.TB, c SSHDConfig) *SSHD {
	t.Helper()
	bin := Need(t, "sshd", "/usr/sbin")
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		t.Fatalf("testenv: sshd needs /run/sshd: %v", err)
	}
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	s := &SSHD{Port: FreePort(t), User: u.Username, Dir: dir, w: c.LogWriter}
	s.Addr = "127.0.0.1:" + strconv.Itoa(s.Port)
	principals := filepath.Join(dir, "principals")
	if err := os.WriteFile(principals, []byte(strings.Join(c.Principals, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	akf := "none"
	if c.AuthorizedKeysFile != "" {
		akf = c.AuthorizedKeysFile
	}
	lines := []string{
		"Port " + strconv.Itoa(s.Port),
		"ListenAddress 127.0.0.1",
		"HostKey " + c.HostKey,
		"TrustedUserCAKeys " + c.TrustedUserCAKeys,
		"AuthorizedPrincipalsFile " + principals,
		"AuthorizedKeysFile " + akf,
		"PubkeyAuthentication yes",
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"PermitRootLogin prohibit-password",
		"StrictModes no",
		"UsePAM no",
		"LogLevel VERBOSE",
		"PidFile " + filepath.Join(dir, "sshd.pid"),
	}
	if c.HostCertificate != "" {
		lines = append(lines, "HostCertificate "+c.HostCertificate)
	}
	if c.RevokedKeys != "" {
		lines = append(lines, "RevokedKeys "+c.RevokedKeys)
	}
	lines = append(lines, c.Extra...)
	cfg := filepath.Join(dir, "sshd_config")
	if err := os.WriteFile(cfg, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "-t", "-f", cfg).CombinedOutput(); err != nil {
		t.Fatalf("testenv: sshd -t rejects the test config: %v\n%s", err, out)
	}
	if c.LogFile != "" {
		f, err := os.OpenFile(c.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		s.file = f
		t.Cleanup(func() { f.Close() })
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "-D", "-e", "-f", cfg)
	cmd.Stdout, cmd.Stderr = s, s
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("testenv: start sshd: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("sshd log:\n%s", s.Log())
		}
	})
	WaitDial(t, s.Addr, 10*time.Second)
	return s
}

// SSH runs the real ssh client against the sshd with only the given identity and known_hosts,
// StrictHostKeyChecking on, and returns its combined output and error.
func (s *SSHD) SSH(key, cert, knownHosts string, command ...string) (string, error) {
	bin, err := exec.LookPath("ssh")
	if err != nil {
		return "", fmt.Errorf("ssh is not installed: %w", err)
	}
	args := []string{"-F", "none", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
		"-o", "UserKnownHostsFile=" + knownHosts, "-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "ConnectTimeout=10",
		"-i", key, "-p", strconv.Itoa(s.Port)}
	if cert != "" {
		args = append(args, "-o", "CertificateFile="+cert)
	}
	args = append(args, s.User+"@127.0.0.1")
	args = append(args, command...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	return string(out), err
}
