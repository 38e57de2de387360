package kms_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.step.sm/crypto/pemutil"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/kms"
)

func softRef(dir, name string) kms.KeyRef {
	return kms.KeyRef{KMS: "softkms:", Key: "softkms:path=" + filepath.Join(dir, name)}
}

func TestSoftKMS(t *testing.T) {
	ctx := context.Background()
	for _, tt := range []struct {
		typ     kms.KeyType
		sshType string
	}{
		{kms.Ed25519, ssh.KeyAlgoED25519},
		{kms.ECDSAP256, ssh.KeyAlgoECDSA256},
		{kms.ECDSAP384, ssh.KeyAlgoECDSA384},
		{kms.RSA3072, ssh.KeyAlgoRSA},
	} {
		t.Run(string(tt.typ), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "state")
			ref := softRef(dir, "ca.pem")
			k, err := kms.OpenOrCreate(ctx, ref, tt.typ)
			if err != nil {
				t.Fatal(err)
			}
			defer k.Close()
			if got := k.Signer().PublicKey().Type(); got != tt.sshType {
				t.Errorf("type = %s, want %s", got, tt.sshType)
			}
			st, err := os.Stat(filepath.Join(dir, "ca.pem"))
			if err != nil || st.Mode().Perm() != 0o600 {
				t.Errorf("key file mode = %v (%v), want 0600", st.Mode().Perm(), err)
			}
			if st, _ := os.Stat(dir); st.Mode().Perm() != 0o700 {
				t.Errorf("state dir mode = %v, want 0700", st.Mode().Perm())
			}
			again, err := kms.OpenOrCreate(ctx, ref, tt.typ)
			if err != nil {
				t.Fatal(err)
			}
			defer again.Close()
			if ssh.FingerprintSHA256(again.Signer().PublicKey()) != ssh.FingerprintSHA256(k.Signer().PublicKey()) {
				t.Error("reopening gave a different key: CA keys must survive restarts")
			}
			if err := k.Check(ctx); err != nil {
				t.Errorf("Check: %v", err)
			}
			if _, err := kms.Create(ctx, ref, tt.typ); err == nil {
				t.Error("Create overwrote an existing key file")
			}
		})
	}
}

func TestSoftKMSRefusesSmallRSA(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "small.pem")
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pemutil.Serialize(key, pemutil.ToFile(path, 0o600)); err != nil {
		t.Fatal(err)
	}
	_, err = kms.Open(context.Background(), kms.KeyRef{KMS: "softkms:", Key: "softkms:path=" + path})
	if err == nil || !strings.Contains(err.Error(), "at least 3072") {
		t.Fatalf("err = %v, want a refusal of a 2048-bit RSA CA key", err)
	}
}

func TestUnknownKeyType(t *testing.T) {
	if _, err := kms.ParseKeyType("dsa"); err == nil {
		t.Fatal("dsa accepted")
	}
}

// signAndVerify signs a user certificate with the CA key, and has ssh-keygen read it back
// (ssh-keygen -L verifies the signature). It returns ssh-keygen's listing.
func signAndVerify(t *testing.T, ca ssh.Signer) (string, *ssh.Certificate) {
	t.Helper()
	dir := t.TempDir()
	keygen := testenv.Need(t, "ssh-keygen")
	testenv.Run(t, keygen, "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, "user"))
	b, _ := os.ReadFile(filepath.Join(dir, "user.pub"))
	pub, _, _, _, err := ssh.ParseAuthorizedKey(b)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	cert := &ssh.Certificate{Key: pub, Serial: 77, CertType: ssh.UserCert, KeyId: "test#77", ValidPrincipals: []string{"alice"},
		ValidAfter: uint64(now.Add(-time.Minute).Unix()), ValidBefore: uint64(now.Add(time.Hour).Unix()),
		Permissions: ssh.Permissions{Extensions: map[string]string{"permit-pty": ""}}}
	if err := cert.SignCert(rand.Reader, ca); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "user-cert.pub")
	if err := os.WriteFile(path, ssh.MarshalAuthorizedKey(cert), 0o644); err != nil {
		t.Fatal(err)
	}
	return testenv.Run(t, keygen, "-L", "-f", path), cert
}

// TestPKCS11SoftHSM: keys created on a SoftHSM2 token through PKCS#11 sign certificates that
// ssh-keygen verifies; RSA signs with rsa-sha2-512; Ed25519 gets a clear refusal.
func TestPKCS11SoftHSM(t *testing.T) {
	uri := testenv.SoftHSMToken(t, "ssh-ca")
	ctx := context.Background()
	for _, tt := range []struct {
		typ     kms.KeyType
		id      string
		sigAlgo string
	}{
		{kms.ECDSAP256, "7331", "ecdsa-sha2-nistp256"},
		{kms.ECDSAP384, "7332", "ecdsa-sha2-nistp384"},
		{kms.RSA3072, "7333", ssh.KeyAlgoRSASHA512},
	} {
		t.Run(string(tt.typ), func(t *testing.T) {
			ref := kms.KeyRef{KMS: uri, Key: "pkcs11:id=" + tt.id + ";object=ssh-ca-" + string(tt.typ)}
			k, err := kms.Create(ctx, ref, tt.typ)
			if err != nil {
				t.Fatal(err)
			}
			k.Close()
			k, err = kms.Open(ctx, ref) // a fresh session finds the key on the token
			if err != nil {
				t.Fatal(err)
			}
			defer k.Close()
			out, cert := signAndVerify(t, k.Signer())
			if !strings.Contains(out, "Signing CA: ") || !strings.Contains(out, "alice") {
				t.Errorf("ssh-keygen -L:\n%s", out)
			}
			if cert.Signature.Format != tt.sigAlgo {
				t.Errorf("signature algorithm = %s, want %s", cert.Signature.Format, tt.sigAlgo)
			}
			if tt.typ == kms.RSA3072 && !strings.Contains(out, "using rsa-sha2-512") {
				t.Errorf("ssh-keygen does not report rsa-sha2-512:\n%s", out)
			}
			if err := k.Check(ctx); err != nil {
				t.Errorf("Check: %v", err)
			}
		})
	}
	t.Run("ed25519 refused clearly", func(t *testing.T) {
		_, err := kms.Create(ctx, kms.KeyRef{KMS: uri, Key: "pkcs11:id=7334;object=ed"}, kms.Ed25519)
		if err == nil || !strings.Contains(err.Error(), "does not support Ed25519") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("errors never show the PIN", func(t *testing.T) {
		_, err := kms.Open(ctx, kms.KeyRef{KMS: uri, Key: "pkcs11:id=9999;object=missing"})
		if err == nil {
			t.Fatal("opened a key that does not exist")
		}
		if strings.Contains(err.Error(), "1234") {
			t.Fatalf("error leaks the PIN: %v", err)
		}
	})
}
