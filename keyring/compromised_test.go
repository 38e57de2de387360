package keyring_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/keyring"
	"github.com/sshca/sshca/kms"
	"github.com/sshca/sshca/revocation"
	"github.com/sshca/sshca/store"
)

// TestCompromisedStaysInKRL: a compromised user CA key stays in the revocation state, and so
// in the KRL (ssh-keygen -Q says REVOKED), long after max_user_ttl on an injected clock, also
// after later revocations pruned what expired (real redis-server).
func TestCompromisedStaysInKRL(t *testing.T) {
	keygen := testenv.Need(t, "ssh-keygen")
	ctx := context.Background()
	var mu sync.Mutex
	now := time.Now().UTC().Truncate(time.Second)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	db := store.NewRedis(rdb, store.RedisOptions{Now: clock})

	dir := t.TempDir()
	ref := kms.KeyRef{KMS: "softkms:", Key: "softkms:path=" + filepath.Join(dir, "user.pem")}
	seed, err := kms.Create(ctx, ref, kms.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	if err := keyring.Bootstrap(ctx, db, ca.UserCert, ref, seed); err != nil {
		t.Fatal(err)
	}
	bad := seed.Signer().PublicKey()
	m := &keyring.Manager{Store: db, KMS: "softkms:", KeyDir: dir, MaxUserTTL: time.Hour, MaxHostTTL: time.Hour, Now: clock}
	next, err := m.Generate(ctx, ca.UserCert, kms.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Promote(ctx, ca.UserCert, true); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Compromised(ctx, ssh.FingerprintSHA256(bad)); err != nil {
		t.Fatal(err)
	}
	active, err := next.SSHPublicKey()
	if err != nil {
		t.Fatal(err)
	}

	mu.Lock()
	now = now.Add(3 * time.Hour) // past max_user_ttl (1h) and the retired key's certificates
	mu.Unlock()
	// A later revocation prunes the scope up to now.
	if _, err := db.Revoke(ctx, active, []ca.RevocationEntry{{Kind: ca.RevokedSerial, Value: "5", Expiry: clock().Add(time.Minute)}}); err != nil {
		t.Fatal(err)
	}
	st, err := db.State(ctx, active)
	if err != nil {
		t.Fatal(err)
	}
	b, err := revocation.EncodeKRL(st)
	if err != nil {
		t.Fatal(err)
	}
	krlFile, keyFile := filepath.Join(dir, "revoked.krl"), filepath.Join(dir, "bad_ca.pub")
	if err := os.WriteFile(krlFile, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, ssh.MarshalAuthorizedKey(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _ := exec.Command(keygen, "-Q", "-f", krlFile, keyFile).CombinedOutput()
	if !strings.Contains(string(out), "REVOKED") {
		t.Fatalf("three hours after the compromise (max_user_ttl 1h): ssh-keygen -Q: %s; state %+v", out, st.Entries)
	}
}
