package services

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

// TestAuthorizedKeyLine: the certificate line of an answer is x/crypto's authorized_keys form
// without its newline, for a certificate and for each kind of key.
func TestAuthorizedKeyLine(t *testing.T) {
	_, edPriv, _ := ed25519.GenerateKey(rand.Reader)
	ecPriv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rsaPriv, _ := rsa.GenerateKey(rand.Reader, 2048)
	var keys []ssh.PublicKey
	for _, k := range []any{edPriv, ecPriv, rsaPriv} {
		s, err := ssh.NewSignerFromKey(k)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, s.PublicKey())
	}
	caSigner, _ := ssh.NewSignerFromKey(edPriv)
	cert := &ssh.Certificate{Key: keys[1], Serial: 1 << 63, CertType: ssh.UserCert, KeyId: "alice@example.com#9",
		ValidPrincipals: []string{"alice", "root"}, ValidBefore: 1 << 40, Permissions: ssh.Permissions{
			Extensions: map[string]string{"permit-pty": ""}, CriticalOptions: map[string]string{"source-address": "10.0.0.0/8"}}}
	if err := cert.SignCert(rand.Reader, caSigner); err != nil {
		t.Fatal(err)
	}
	for _, k := range append(keys, cert) {
		want := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
		if got := authorizedKeyLine(k); got != want {
			t.Errorf("%s: %q, want %q", k.Type(), got, want)
		}
	}
}
