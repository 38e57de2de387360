package signer_test

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/signer"
)

// caKeys are a CA key of each type the kms package creates.
func caKeys(tb testing.TB) map[string]ssh.Signer {
	tb.Helper()
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rs, _ := rsa.GenerateKey(rand.Reader, 3072)
	out := map[string]ssh.Signer{}
	for name, k := range map[string]any{"ed25519": ed, "ecdsa-p256": ec, "rsa-3072": rs} {
		s, err := ssh.NewSignerFromKey(k)
		if err != nil {
			tb.Fatal(err)
		}
		out[name] = s
	}
	return out
}

// TestFingerprint: the fingerprint a Signer computed once is its key's, for each key type.
func TestFingerprint(t *testing.T) {
	for name, k := range caKeys(t) {
		s := signer.New(k, &fakeReserver{}, signer.Options{})
		if got, want := s.Fingerprint(), ssh.FingerprintSHA256(k.PublicKey()); got != want {
			t.Errorf("%s: Fingerprint %s, want %s", name, got, want)
		}
	}
}

// BenchmarkFingerprint is what the authority paid for a CA key's fingerprint, three times per
// certificate until stop 17 (computed: x/crypto/ssh marshals the key by reflection, then
// SHA-256 and base64), against the one Signer.Fingerprint keeps (kept).
func BenchmarkFingerprint(b *testing.B) {
	for _, name := range []string{"ed25519", "ecdsa-p256", "rsa-3072"} {
		k := caKeys(b)[name]
		s := signer.New(k, &fakeReserver{}, signer.Options{})
		b.Run(name+"/computed", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = ssh.FingerprintSHA256(s.PublicKey())
			}
		})
		b.Run(name+"/kept", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = s.Fingerprint()
			}
		})
	}
}
