package ca_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"os"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
)

// skEd25519Line is a FIDO Ed25519 public key (application "ssh:").
const skEd25519Line = "sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAIEX/dQ0v4127bEo8eeG1EV0ApO2lWbSnN6RWusn/NjqIAAAABHNzaDo= sk"

// BenchmarkParsePublicKey is the cost of reading and checking a submitted public key, per key
// type. The 16384-bit RSA key (the largest ssh-keygen makes) comes from testdata: generating
// one takes minutes.
func BenchmarkParsePublicKey(b *testing.B) {
	_, ed := newSSHKey(b)
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	ecPub, err := ssh.NewPublicKey(&ec.PublicKey)
	if err != nil {
		b.Fatal(err)
	}
	r, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		b.Fatal(err)
	}
	rsaPub, err := ssh.NewPublicKey(&r.PublicKey)
	if err != nil {
		b.Fatal(err)
	}
	big, err := os.ReadFile("testdata/rsa16384.pub")
	if err != nil {
		b.Fatal(err)
	}
	for _, k := range []struct{ name, line string }{
		{"ed25519", string(ssh.MarshalAuthorizedKey(ed))},
		{"sk-ed25519", skEd25519Line},
		{"ecdsa-p256", string(ssh.MarshalAuthorizedKey(ecPub))},
		{"rsa-2048", string(ssh.MarshalAuthorizedKey(rsaPub))},
		{"rsa-16384", string(big)},
	} {
		b.Run(k.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := ca.ParsePublicKey(k.line); err != nil {
					b.Fatal(err)
				}
			}
		})
		if strings.HasPrefix(k.name, "rsa") {
			// RSA moduli are screened for small factors once per process; this is the cost of
			// a key's first submission.
			b.Run(k.name+"-first", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					ca.ForgetScreenedRSA()
					if _, err := ca.ParsePublicKey(k.line); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
