package services

import (
	"bytes"
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

// FuzzCertBytes: for any certificate fields (nonce, serial, type, key ID, principals, validity,
// critical options and extensions with and without values, reserved bytes, each kind of key
// and signature key, any signature), certBytes is x/crypto's c.Marshal(), byte for byte.
func FuzzCertBytes(f *testing.F) {
	_, edPriv, _ := ed25519.GenerateKey(rand.Reader)
	ecPriv, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsaPriv, _ := rsa.GenerateKey(rand.Reader, 1024)
	var keys []ssh.PublicKey
	for _, k := range []any{edPriv, ecPriv, rsaPriv} {
		s, err := ssh.NewSignerFromKey(k)
		if err != nil {
			f.Fatal(err)
		}
		keys = append(keys, s.PublicKey())
	}
	f.Add([]byte("nonce"), uint64(1)<<63, uint32(1), "alice@example.com#9", "alice,root", uint64(0), uint64(1)<<40,
		"source-address=10.0.0.0/8;force-command=/bin/true", "permit-pty=;permit-agent-forwarding=", []byte(nil), byte(0), byte(1), "ssh-ed25519", []byte("sig"), []byte(nil))
	f.Add([]byte(nil), uint64(0), uint32(2), "", "", uint64(1), uint64(0), "", "", []byte("r"), byte(2), byte(2), "rsa-sha2-512", []byte(nil), []byte("rest"))
	f.Add(bytes.Repeat([]byte{0xff}, 32), uint64(7), uint32(1), "k", ",,", ^uint64(0), ^uint64(0), "=;=x;b=", "z=1;a=", []byte{}, byte(1), byte(0), "", []byte{0}, []byte{})
	f.Fuzz(func(t *testing.T, nonce []byte, serial uint64, certType uint32, keyID, principals string, after, before uint64,
		options, extensions string, reserved []byte, key, sigKey byte, format string, blob, rest []byte) {
		tuples := func(s string) map[string]string {
			if s == "" {
				return nil
			}
			m := map[string]string{}
			for _, kv := range strings.Split(s, ";") {
				k, v, _ := strings.Cut(kv, "=")
				m[k] = v
			}
			return m
		}
		var ps []string
		if principals != "" {
			ps = strings.Split(principals, ",")
		}
		c := &ssh.Certificate{Nonce: nonce, Key: keys[int(key)%len(keys)], Serial: serial, CertType: certType, KeyId: keyID,
			ValidPrincipals: ps, ValidAfter: after, ValidBefore: before,
			Permissions: ssh.Permissions{CriticalOptions: tuples(options), Extensions: tuples(extensions)},
			Reserved:    reserved, SignatureKey: keys[int(sigKey)%len(keys)], Signature: &ssh.Signature{Format: format, Blob: blob, Rest: rest}}
		if got, want := certBytes(c), c.Marshal(); !bytes.Equal(got, want) {
			t.Fatalf("certBytes differs from Marshal:\n got %x\nwant %x", got, want)
		}
	})
}
