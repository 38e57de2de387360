package bastion

import (
	"context"
	"fmt"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
)

// TestSessionsEnded: a live session whose certificate is revoked is ended (its sshd processes
// get SIGTERM) and counted once by Ended; a revoked session whose connection is gone and a
// session that is not revoked are not counted. (The real sshd processes are signalled in
// TestSessionsFollowRotation and the cmd/sshca lockdown tests.)
func TestSessionsEnded(t *testing.T) {
	s, h := newFakeSessions(t)
	caKey := testenv.PublicKey(t)
	accept := func(port int, serial uint64) {
		h.set(fmt.Sprintf("127.0.0.1:%d", port), &tcpConn{inode: uint64(port), pids: []int{port, port + 1}, sshd: []int{port, port + 1}})
		s.Observe(fmt.Sprintf("sshd[%d]: Accepted publickey for alice from 127.0.0.1 port %d ssh2: ED25519-CERT SHA256:x ID alice#%d (serial %d) CA ED25519 %s",
			port, port, serial, serial, ssh.FingerprintSHA256(caKey)))
	}
	accept(5000, 77) // live, revoked below
	accept(6000, 78) // revoked, but its connection is gone by then
	accept(7000, 79) // not revoked
	h.set("127.0.0.1:6000", nil)
	s.EndRevoked(context.Background(), []ca.RevocationEntry{{Kind: ca.RevokedSerial, Value: "77"}, {Kind: ca.RevokedSerial, Value: "78"}})
	if got := h.signalled(); fmt.Sprint(got) != "[5000 5001]" {
		t.Errorf("signalled %v, want [5000 5001]", got)
	}
	if got := s.Ended(); got != 1 {
		t.Errorf("Ended() = %d, want 1", got)
	}
}
