package keyring_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/keyring"
	"github.com/sshca/sshca/kms"
	"github.com/sshca/sshca/store"
)

// bootstrapUserCA starts a real redis-server and bootstraps a key ring holding one active
// user CA key (softkms Ed25519, its file in dir): the server, a client of it, the store, dir
// and the key's public half. Everything stops at the end of the test.
func bootstrapUserCA(t *testing.T) (srv *testenv.Redis, rdb *redis.Client, db *store.Redis, dir string, key ssh.PublicKey) {
	t.Helper()
	return bootstrapCA(t, ca.UserCert)
}

// bootstrapCA is bootstrapUserCA for a CA of either kind. A host CA key is also registered as
// one (store.Redis.RegisterHostCA), as serve does with its configured host key at start.
func bootstrapCA(t *testing.T, kind ca.CertKind) (srv *testenv.Redis, rdb *redis.Client, db *store.Redis, dir string, key ssh.PublicKey) {
	t.Helper()
	ctx := context.Background()
	srv = testenv.StartRedis(t)
	rdb = redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	db = store.NewRedis(rdb, store.RedisOptions{})
	dir = t.TempDir()
	ref := kms.KeyRef{KMS: "softkms:", Key: "softkms:path=" + filepath.Join(dir, string(kind)+".pem")}
	seed, err := kms.Create(ctx, ref, kms.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { seed.Close() })
	if err := keyring.Bootstrap(ctx, db, kind, ref, seed); err != nil {
		t.Fatal(err)
	}
	if kind == ca.HostCert {
		if err := db.RegisterHostCA(ctx, seed.Signer().PublicKey()); err != nil {
			t.Fatal(err)
		}
	}
	return srv, rdb, db, dir, seed.Signer().PublicKey()
}
