package ca_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
)

// keyFiles writes a fresh Ed25519 key pair (OpenSSH private key, 0600, and .pub) to dir.
func keyFiles(t *testing.T, dir, name string) (ssh.Signer, string) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".pub", ssh.MarshalAuthorizedKey(s.PublicKey()), 0o644); err != nil {
		t.Fatal(err)
	}
	return s, path
}

// signDirect signs a user certificate with x/crypto alone, bypassing every check of sshca, and
// writes it to path: what a CA without the content check would hand out.
func signDirect(t *testing.T, caKey ssh.Signer, key ssh.PublicKey, principal string, perms ssh.Permissions, path string) {
	t.Helper()
	now := time.Now()
	c := &ssh.Certificate{Key: key, Serial: 1, CertType: ssh.UserCert, KeyId: "test", ValidPrincipals: []string{principal},
		ValidAfter: uint64(now.Add(-time.Minute).Unix()), ValidBefore: uint64(now.Add(10 * time.Minute).Unix()), Permissions: perms}
	if err := c.SignCert(rand.Reader, caKey); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, ssh.MarshalAuthorizedKey(c), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestFlagValueUnreadableBySSHKeygen: a flag extension or verify-required with a value makes
// a certificate that ssh-keygen 9.2 will not even print ("Option corrupt: extra data at end"),
// which is why CheckCertificateContent refuses it; the same flag empty prints fine.
func TestFlagValueUnreadableBySSHKeygen(t *testing.T) {
	keygen := testenv.Need(t, "ssh-keygen")
	dir := t.TempDir()
	caKey, _ := keyFiles(t, dir, "ca")
	user, _ := keyFiles(t, dir, "user")
	for _, tt := range []struct {
		name   string
		perms  ssh.Permissions
		unread bool
	}{
		{"empty flag", ssh.Permissions{Extensions: map[string]string{"permit-pty": ""}, CriticalOptions: map[string]string{"verify-required": ""}}, false},
		{"extension flag with a value", ssh.Permissions{Extensions: map[string]string{"permit-pty": "yes"}}, true},
		{"verify-required with a value", ssh.Permissions{CriticalOptions: map[string]string{"verify-required": "yes"}}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "_")+"-cert.pub")
			signDirect(t, caKey, user.PublicKey(), "alice", tt.perms, path)
			out, err := exec.Command(keygen, "-L", "-f", path).CombinedOutput()
			if tt.unread {
				if err == nil || !strings.Contains(string(out), "corrupt") {
					t.Fatalf("ssh-keygen -L read it: %v\n%s", err, out)
				}
				if f := ca.CheckCertificateContent(ca.UserCert, []string{"alice"}, time.Hour, tt.perms, ca.DefaultLimits.Extensions, ca.DefaultLimits.CriticalOptions); f == nil {
					t.Error("CheckCertificateContent passes a certificate ssh-keygen cannot read")
				}
				return
			}
			if err != nil {
				t.Fatalf("ssh-keygen -L: %v\n%s", err, out)
			}
			if f := ca.CheckCertificateContent(ca.UserCert, []string{"alice"}, time.Hour, tt.perms, ca.DefaultLimits.Extensions, ca.DefaultLimits.CriticalOptions); f != nil {
				t.Errorf("fault %v on a readable certificate", f.Reason())
			}
		})
	}
}

// TestSourceAddressWithSSHD: against a real sshd 9.2, a certificate with source-address
// 127.0.0.0/8 logs in from 127.0.0.1; the same with host bits set (127.0.0.1/8) is refused
// for every client, sshd logging that the source-address is invalid; and sshca refuses to
// sign the latter.
func TestSourceAddressWithSSHD(t *testing.T) {
	testenv.Need(t, "ssh")
	dir := t.TempDir()
	caKey, caPath := keyFiles(t, dir, "user_ca")
	hostKey, hostPath := keyFiles(t, dir, "host")
	user, userPath := keyFiles(t, dir, "user")
	sshd := testenv.StartSSHD(t, testenv.SSHDConfig{HostKey: hostPath, TrustedUserCAKeys: caPath + ".pub", Principals: []string{"alice"}})
	knownHosts := filepath.Join(dir, "known_hosts")
	line := "[127.0.0.1]:" + sshd.Addr[strings.LastIndexByte(sshd.Addr, ':')+1:] + " " + string(ssh.MarshalAuthorizedKey(hostKey.PublicKey()))
	if err := os.WriteFile(knownHosts, []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
	login := func(perms ssh.Permissions) (string, error) {
		cert := userPath + "-cert.pub"
		signDirect(t, caKey, user.PublicKey(), "alice", perms, cert)
		return sshd.SSH(userPath, cert, knownHosts, "echo", "logged-in")
	}
	check := func(v string) *ca.PolicyFault {
		return ca.CheckCertificateContent(ca.UserCert, []string{"alice"}, time.Hour,
			ssh.Permissions{CriticalOptions: map[string]string{"source-address": v}}, ca.DefaultLimits.Extensions, ca.DefaultLimits.CriticalOptions)
	}

	for _, ok := range []string{"127.0.0.0/8", "192.0.2.0/24,127.0.0.1", "::1,127.0.0.0/8"} {
		if out, err := login(ssh.Permissions{CriticalOptions: map[string]string{"source-address": ok}}); err != nil || !strings.Contains(out, "logged-in") {
			t.Fatalf("source-address %s: login failed: %v\n%s", ok, err, out)
		}
		if f := check(ok); f != nil {
			t.Errorf("sshca refuses %q, which sshd accepts: %s", ok, f.Reason())
		}
	}
	// Outside the list: refused by sshd as it should be (the option is read, not ignored).
	if out, err := login(ssh.Permissions{CriticalOptions: map[string]string{"source-address": "192.0.2.0/24"}}); err == nil {
		t.Fatalf("login from outside source-address succeeded:\n%s", out)
	}
	// Host bits set: sshd refuses the whole option, so the certificate is useless even from
	// inside the range.
	bad := "127.0.0.1/8"
	if out, err := login(ssh.Permissions{CriticalOptions: map[string]string{"source-address": bad}}); err == nil {
		t.Fatalf("source-address %s: sshd let it in:\n%s", bad, out)
	}
	if log := sshd.Log(); !strings.Contains(log, "Certificate source-address contents invalid") {
		t.Errorf("sshd log does not name source-address:\n%s", log)
	} else {
		for l := range strings.Lines(log) {
			if strings.Contains(l, "source-address") || strings.Contains(l, "addr_match") {
				t.Logf("sshd: %s", strings.TrimSpace(l))
			}
		}
	}
	f := check(bad)
	if f == nil || f.Field != "critical_options.source-address" || !strings.Contains(f.Reason(), `"127.0.0.1/8"`) || !strings.Contains(f.Why, "127.0.0.0/8") {
		t.Errorf("sshca would sign %s: %+v", bad, f)
	}
	// A flag extension with a value: sshd refuses it too.
	if out, err := login(ssh.Permissions{Extensions: map[string]string{"permit-pty": "x"}}); err == nil {
		t.Fatalf("permit-pty with a value: sshd let it in:\n%s", out)
	}
}
