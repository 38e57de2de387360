package keyring_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/keyring"
	"github.com/sshca/sshca/kms"
	"github.com/sshca/sshca/store"
)

// TestRotationOnPKCS11: the seed key is softkms; the next key is created on a SoftHSM2 token
// through PKCS#11, promoted, picked up by a refresh, and signs.
func TestRotationOnPKCS11(t *testing.T) {
	uri := testenv.SoftHSMToken(t, "sshca-rotation")
	ctx := context.Background()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	db := store.NewRedis(rdb, store.RedisOptions{})

	ref := kms.KeyRef{KMS: "softkms:", Key: "softkms:path=" + filepath.Join(t.TempDir(), "user.pem")}
	seed, err := kms.Create(ctx, ref, kms.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	if err := keyring.Bootstrap(ctx, db, ca.UserCert, ref, seed); err != nil {
		t.Fatal(err)
	}
	if err := keyring.Bootstrap(ctx, db, ca.UserCert, ref, seed); err != nil { // idempotent
		t.Fatal(err)
	}
	c, err := keyring.New(ctx, ca.UserCert, db, db, nil)
	if err != nil {
		t.Fatal(err)
	}
	first := ssh.FingerprintSHA256(c.PublicKey())

	m := &keyring.Manager{Store: db, KMS: uri, MaxUserTTL: time.Hour, MaxHostTTL: time.Hour}
	next, err := m.Generate(ctx, ca.UserCert, kms.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	if next.State != ca.KeyNext || next.Algorithm != ssh.KeyAlgoECDSA256 {
		t.Fatalf("generated %+v", next)
	}
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if len(c.Published()) != 2 || ssh.FingerprintSHA256(c.PublicKey()) != first {
		t.Fatalf("after generate: %d published, active %s", len(c.Published()), ssh.FingerprintSHA256(c.PublicKey()))
	}
	if _, err := m.Promote(ctx, ca.UserCert, false); err != nil {
		t.Fatal(err)
	}
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if ssh.FingerprintSHA256(c.PublicKey()) != next.Fingerprint {
		t.Fatal("the promoted PKCS#11 key is not active after a refresh")
	}
	_, userKey, _ := newKey(t)
	cert, err := c.Sign(ctx, &ssh.Certificate{Key: userKey, CertType: ssh.UserCert, KeyId: "alice", ValidPrincipals: []string{"alice"}}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if ssh.FingerprintSHA256(cert.SignatureKey) != next.Fingerprint {
		t.Error("not signed by the new key")
	}
	if _, err := m.Compromised(ctx, first); err != nil {
		t.Fatal(err)
	}
	st, err := db.State(ctx, c.PublicKey())
	if err != nil || len(st.Entries) != 1 || st.Entries[0].Kind != ca.RevokedKey {
		t.Fatalf("the compromised key is not in the KRL state: %+v %v", st, err)
	}
}
