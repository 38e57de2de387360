package bastion

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
)

// TestSessionsEnded: a live session whose certificate is revoked is ended (its process gets
// SIGTERM) and counted once by Ended; a revoked session with no live connection and a session
// that is not revoked are not counted. The "sshd" is a child process (python3) holding the
// server end of a loopback connection, as sshd's session process does.
func TestSessionsEnded(t *testing.T) {
	if _, err := os.Stat("/proc/net/tcp"); err != nil {
		t.Skipf("no Linux procfs: %v", err)
	}
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not installed: it plays the sshd that holds a session")
	}
	server := exec.Command(py, "-c", `
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
print(s.getsockname()[1], flush=True)
c, _ = s.accept()
time.sleep(60)
`)
	out, err := server.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := server.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- server.Wait() }()
	t.Cleanup(func() {
		_ = server.Process.Kill()
		<-done
	})
	port, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	client, err := net.Dial("tcp4", "127.0.0.1:"+strings.TrimSpace(port))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	_, clientPort, _ := net.SplitHostPort(client.LocalAddr().String())

	s := NewSessions(slog.New(slog.DiscardHandler))
	caKey := testKey(t)
	accept := func(port string, serial uint64) {
		s.Observe(fmt.Sprintf("sshd[1]: Accepted publickey for alice from 127.0.0.1 port %s ssh2: ED25519-CERT SHA256:x ID alice#%d (serial %d) CA ED25519 %s",
			port, serial, serial, ssh.FingerprintSHA256(caKey)))
	}
	accept(clientPort, 77) // live, revoked below
	accept("9", 78)        // revoked, but no connection from port 9
	accept("10", 79)       // not revoked
	// Wait until the child has accepted (its socket is established).
	deadline := time.Now().Add(10 * time.Second)
	for {
		if pids, _ := socketOwners("/proc", client.LocalAddr().String(), os.Getpid()); len(pids) > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.EndRevoked(context.Background(), []ca.RevocationEntry{{Kind: ca.RevokedSerial, Value: "77"}, {Kind: ca.RevokedSerial, Value: "78"}})
	select {
	case <-done:
		done <- nil // for the cleanup
	case <-time.After(10 * time.Second):
		t.Fatal("the session's process was not ended")
	}
	if got := s.Ended(); got != 1 {
		t.Errorf("Ended() = %d, want 1", got)
	}
}
