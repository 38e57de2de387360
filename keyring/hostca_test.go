package keyring_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/keyring"
	"github.com/sshca/sshca/kms"
	"github.com/sshca/sshca/store"
)

// TestGeneratedHostCAKeyNeverInUserKRL: a host CA key made by `sshca keys generate --ca host`
// is registered as a host CA key at once, so a host revocation under it before the next serve
// start does not list its scope among the user CA keys that the user KRL is built from.
func TestGeneratedHostCAKeyNeverInUserKRL(t *testing.T) {
	ctx := context.Background()
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	backends := map[string]interface {
		keyring.ManagerStore
		CAs(context.Context) ([]ssh.PublicKey, error)
	}{
		"redis-server": store.NewRedis(rdb, store.RedisOptions{}),
		"memory":       store.NewMemory(time.Now),
	}
	for name, db := range backends {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			ref := kms.KeyRef{KMS: "softkms:", Key: "softkms:path=" + filepath.Join(dir, "host.pem")}
			seed, err := kms.Create(ctx, ref, kms.Ed25519)
			if err != nil {
				t.Fatal(err)
			}
			if err := keyring.Bootstrap(ctx, db, ca.HostCert, ref, seed); err != nil {
				t.Fatal(err)
			}
			m := &keyring.Manager{Store: db, KMS: "softkms:", KeyDir: dir, MaxUserTTL: time.Hour, MaxHostTTL: time.Hour}
			next, err := m.Generate(ctx, ca.HostCert, kms.Ed25519)
			if err != nil {
				t.Fatal(err)
			}
			pub, err := next.SSHPublicKey()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := db.Revoke(ctx, pub, []ca.RevocationEntry{{Kind: ca.RevokedSerial, Value: "7", Expiry: time.Now().Add(time.Hour)}}); err != nil {
				t.Fatal(err)
			}
			cas, err := db.CAs(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range cas {
				if ssh.FingerprintSHA256(k) == next.Fingerprint {
					t.Fatalf("the generated host CA key %s is listed among the user KRL's CA keys", next.Fingerprint)
				}
			}
		})
	}
}
