package bastion

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"slices"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/krl"
)

func testKey(t *testing.T) ssh.PublicKey {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestEndRevokedBy: in HTTPS mode each newer KRL is checked against the live sessions; those it
// revokes (serial or key ID under their CA or any CA, their key, its SHA-256) are ended and the
// others live on. The addresses are TEST-NET ones no process holds, so nothing is signalled.
func TestEndRevokedBy(t *testing.T) {
	ca1, ca2 := testKey(t), testKey(t)
	keys := map[string]ssh.PublicKey{}
	s := NewSessions(slog.New(slog.DiscardHandler))
	accept := func(name string, port int, serial uint64, id string, caKey ssh.PublicKey) {
		keys[name] = testKey(t)
		s.Observe(fmt.Sprintf("sshd[1]: Accepted publickey for %s from 192.0.2.1 port %d ssh2: ED25519-CERT %s ID %s (serial %d) CA ED25519 %s",
			name, port, ssh.FingerprintSHA256(keys[name]), id, serial, ssh.FingerprintSHA256(caKey)))
	}
	accept("serial", 1001, 500, "a#500", ca1)  // in a revoked range of ca1
	accept("otherca", 1002, 500, "b#500", ca2) // same serial, other CA: lives
	accept("keyid", 1003, 7, "mallory#7", ca2) // key ID revoked for any CA
	accept("key", 1004, 8, "c#8", ca1)         // its key is revoked
	accept("keyhash", 1005, 9, "d#9", ca1)     // its key's SHA-256 is revoked
	accept("clean", 1006, 10, "e#10", ca1)     // nothing revokes it
	accept("edge", 1007, 600, "f#600", ca1)    // just past the range
	if len(s.live) != 7 {
		t.Fatalf("%d sessions tracked from the log, want 7", len(s.live))
	}
	k := &krl.KRL{Version: 2}
	k.RevokeSerialRange(ca1, 400, 599)
	k.RevokeSerials(ca1, 3)
	k.RevokeKeyIDs(nil, "mallory#7")
	k.RevokeKey(keys["key"])
	b, err := k.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := krl.Parse(b) // as the agent has it: decoded from the wire
	if err != nil {
		t.Fatal(err)
	}
	parsed.RevokedSHA256 = append(parsed.RevokedSHA256, sha256.Sum256(keys["keyhash"].Marshal()))
	s.EndRevokedBy(parsed)
	var left []string
	for _, ss := range s.live {
		left = append(left, ss.user)
	}
	slices.Sort(left)
	if want := []string{"clean", "edge", "otherca"}; !slices.Equal(left, want) {
		t.Errorf("sessions left %v, want %v", left, want)
	}
}
