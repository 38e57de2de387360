package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/bastion"
)

// TestSessionsCommands: a session recorded by the real sshca-record (run by hand, so the agent
// does not require sshd) is listed, verified, exported and played; one byte changed in its file
// makes verify and list fail naming the line.
func TestSessionsCommands(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "sshca-record")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/sshca/sshca/cmd/sshca-record").CombinedOutput(); err != nil {
		t.Fatalf("build sshca-record: %v\n%s", err, out)
	}
	recs := filepath.Join(dir, "recs")
	sock := filepath.Join(dir, "s")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = (&bastion.RecordServer{Dir: recs}).Serve(ctx, l) }()
	defer func() { cancel(); <-done }()

	_, caPriv, _ := ed25519.GenerateKey(rand.Reader)
	ca, _ := ssh.NewSignerFromKey(caPriv)
	userPub, _, _ := ed25519.GenerateKey(rand.Reader)
	up, _ := ssh.NewPublicKey(userPub)
	c := &ssh.Certificate{Key: up, Serial: 99, CertType: ssh.UserCert, KeyId: "bob@example.com#99",
		ValidPrincipals: []string{"root"}, ValidBefore: ssh.CertTimeInfinity}
	if err := c.SignCert(rand.Reader, ca); err != nil {
		t.Fatal(err)
	}
	auth := filepath.Join(dir, "auth")
	if err := os.WriteFile(auth, []byte("publickey "+string(ssh.MarshalAuthorizedKey(c))), 0o600); err != nil {
		t.Fatal(err)
	}
	rec := exec.Command(bin, "--socket", sock)
	rec.Env = append(os.Environ(), "USER=root", "SSH_USER_AUTH="+auth, "SHELL=/bin/sh", "SSH_ORIGINAL_COMMAND=echo hello-recorded")
	if out, err := rec.CombinedOutput(); err != nil || string(out) != "hello-recorded\n" {
		t.Fatalf("sshca-record: %v, %q", err, out)
	}
	var id string
	for try := 0; id == ""; try++ {
		if try > 200 {
			t.Fatal("the recording did not end")
		}
		time.Sleep(10 * time.Millisecond)
		out, err := runCLI(t, "", "sessions", "list", "--dir", recs)
		if err != nil {
			t.Fatalf("sessions list: %v\n%s", err, out)
		}
		if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) == 2 && strings.Contains(lines[1], "exit 0") {
			if !strings.Contains(lines[1], "bob@example.com#99") || !strings.Contains(lines[1], `"echo hello-recorded"`) {
				t.Fatalf("sessions list: %q", lines[1])
			}
			id = strings.Fields(lines[1])[0]
		}
	}
	out, err := runCLI(t, "", "sessions", "verify", "--dir", recs, id)
	if err != nil || !strings.Contains(out, "chain: ok") || !strings.Contains(out, "end: exit 0") {
		t.Fatalf("sessions verify: %v\n%s", err, out)
	}
	out, err = runCLI(t, "", "sessions", "export", "--dir", recs, id)
	if err != nil || !strings.Contains(out, `"version":2`) || !strings.Contains(out, `"o","hello-recorded\n"`) {
		t.Fatalf("sessions export: %v\n%s", err, out)
	}
	out, err = runCLI(t, "", "sessions", "play", "--dir", recs, "--speed", "100", id)
	if err != nil || out != "hello-recorded\n" {
		t.Fatalf("sessions play: %v, %q", err, out)
	}
	if _, err := runCLI(t, "", "sessions", "verify", "--dir", recs, "../x"); err == nil || !strings.Contains(err.Error(), "session ID") {
		t.Errorf("verify ../x: %v, want the ID refused", err)
	}
	path := filepath.Join(recs, id+".rec")
	b, _ := os.ReadFile(path)
	// "hello" is base64 aGVsbG8; change one character of it.
	changed := bytes.Replace(b, []byte("aGVsbG8t"), []byte("aGVsbG9t"), 1)
	if bytes.Equal(changed, b) {
		t.Fatal("the recording does not hold the output where the test expects it")
	}
	if err := os.WriteFile(path, changed, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := runCLI(t, "", "sessions", "verify", "--dir", recs, id); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("verify of a changed recording: %v, want the chain broken at line 2", err)
	}
	if _, err := runCLI(t, "", "sessions", "list", "--dir", recs); err == nil || !strings.Contains(err.Error(), id) {
		t.Errorf("list with a changed recording: %v, want it named", err)
	}
}

// TestSessionsListMissingDir: a recordings directory that is not there is an error that names
// it and both ways out, not an empty table; an empty directory that is there is an empty table.
func TestSessionsListMissingDir(t *testing.T) {
	t.Setenv("SSHCA_SERVER", "")
	missing := filepath.Join(t.TempDir(), "nope")
	out, err := runCLI(t, "", "sessions", "list", "--dir", missing)
	if err == nil || !strings.Contains(err.Error(), missing) || !strings.Contains(err.Error(), "--server") {
		t.Fatalf("sessions list --dir %s: err %v, out %q; want an error naming the directory and --server", missing, err, out)
	}
	file := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := runCLI(t, "", "sessions", "list", "--dir", file); err == nil {
		t.Fatal("sessions list --dir FILE: no error")
	}
	out, err = runCLI(t, "", "sessions", "list", "--dir", t.TempDir())
	if err != nil || strings.TrimSpace(out) != "ID  START  HOST  USER  KEY ID  KIND  STATE  COMMAND" {
		t.Fatalf("sessions list of an empty directory: %v, %q", err, out)
	}
}
