package keyring_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/audit"
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

// twoReplicas is a CA replica under test, its key ring, audit log and authority on a store of
// kind's bootstrapped CA key (bootstrapCA), and another replica's administrator: its own store
// client and key manager on the same redis-server. req asks for a certificate of kind.
type twoReplicas struct {
	rdb   *redis.Client
	db    *store.Redis
	first ssh.PublicKey // the bootstrapped CA key
	kr    *keyring.CA
	al    *audit.Log
	a     *ca.Authority
	req   ca.Request
	db2   *store.Redis     // the other replica's store client
	m     *keyring.Manager // the other replica's administrator
}

// newTwoReplicas starts them; admission wraps the authority's Admission (nil: the store's),
// and bans says whether the audit log reads CA key bans (audit.Options.Bans), as serve's does.
func newTwoReplicas(t *testing.T, kind ca.CertKind, bans bool, admission func(ca.Admission) ca.Admission) *twoReplicas {
	t.Helper()
	ctx := context.Background()
	srv, rdb, db, dir, first := bootstrapCA(t, kind)
	r := &twoReplicas{rdb: rdb, db: db, first: first}
	var err error
	if r.kr, err = keyring.New(ctx, kind, db, db, nil); err != nil {
		t.Fatal(err)
	}
	o := audit.Options{Key: make([]byte, audit.KeySize), Marks: db}
	if bans {
		o.Bans = db
	}
	r.al = audit.New(rdb, o)
	var adm ca.Admission = db
	if admission != nil {
		adm = admission(db)
	}
	if r.a, err = ca.New(ca.Config{Authenticator: singleUse{}, Policy: grantRequested{}, UserSigner: r.kr, HostSigner: r.kr,
		Store: db, Revocations: db, Tokens: db, Admission: adm, Audit: r.al}); err != nil {
		t.Fatal(err)
	}
	_, certified, _ := newKey(t)
	r.req = ca.Request{Kind: kind, PublicKey: certified, TTL: 5 * time.Minute}
	if kind == ca.HostCert {
		r.req.Principals = []string{"web1.example.com"}
	}
	rdb2 := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb2.Close() })
	r.db2 = store.NewRedis(rdb2, store.RedisOptions{})
	r.m = &keyring.Manager{Store: r.db2, KMS: "softkms:", KeyDir: dir, MaxUserTTL: time.Hour, MaxHostTTL: time.Hour}
	return r
}

// promoteNew has the other replica's administrator generate a key of kind and promote it at
// once (force: no wait for trust_refresh), and returns it.
func (r *twoReplicas) promoteNew(t *testing.T, kind ca.CertKind) ca.CAKey {
	t.Helper()
	ctx := context.Background()
	next, err := r.m.Generate(ctx, kind, kms.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.m.Promote(ctx, kind, true); err != nil {
		t.Fatal(err)
	}
	return next
}
