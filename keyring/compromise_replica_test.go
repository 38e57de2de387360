package keyring_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/keyring"
	"github.com/sshca/sshca/kms"
	"github.com/sshca/sshca/store"
)

// TestCompromiseOnAnotherReplica: the user CA key is promoted away from and marked
// compromised through another replica (the administrator's command), and this replica's
// keyring has not refreshed yet (keyring.refresh apart): its request must not be signed by
// the compromised key. Against a real redis-server; before the admission read the CA key's
// ban beside the user key's, this replica signed with the compromised key until its next
// refresh. Then, refreshed, it signs with the new key: the check refuses only the banned key.
func TestCompromiseOnAnotherReplica(t *testing.T) {
	ctx := context.Background()
	srv, rdb, db, dir, first := bootstrapUserCA(t)
	old := ssh.FingerprintSHA256(first)
	kr, err := keyring.New(ctx, ca.UserCert, db, db, nil)
	if err != nil {
		t.Fatal(err)
	}
	al := audit.New(rdb, audit.Options{Key: make([]byte, audit.KeySize), Marks: db})
	a, err := ca.New(ca.Config{Authenticator: singleUse{}, Policy: allowAlice{}, UserSigner: kr, HostSigner: kr,
		Store: db, Revocations: db, Tokens: db, Admission: db, Audit: al})
	if err != nil {
		t.Fatal(err)
	}
	_, userKey, _ := newKey(t)
	req := ca.Request{Kind: ca.UserCert, PublicKey: userKey, TTL: 5 * time.Minute}
	if _, err := a.Issue(ctx, "before", req); err != nil {
		t.Fatalf("issue before the rotation: %v", err)
	}

	// Another replica's administrator: its own store client, its own manager.
	rdb2 := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb2.Close() })
	db2 := store.NewRedis(rdb2, store.RedisOptions{})
	m := &keyring.Manager{Store: db2, KMS: "softkms:", KeyDir: dir, MaxUserTTL: time.Hour, MaxHostTTL: time.Hour}
	next, err := m.Generate(ctx, ca.UserCert, kms.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Promote(ctx, ca.UserCert, true); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Compromised(ctx, old); err != nil {
		t.Fatal(err)
	}
	if got := ssh.FingerprintSHA256(kr.PublicKey()); got != old {
		t.Fatalf("this replica's keyring refreshed by itself (active %s): the test shows nothing", got)
	}

	iss, err := a.Issue(ctx, "after", req)
	if err == nil {
		t.Fatalf("issued a certificate signed by %s after it was marked compromised", ssh.FingerprintSHA256(iss.Cert.SignatureKey))
	}
	if ca.KindOf(err) != ca.KindUnavailable || !strings.Contains(err.Error(), "compromised") || !strings.Contains(err.Error(), old) {
		t.Fatalf("issue: %v (%v), want unavailable naming key %s as compromised", err, ca.KindOf(err), old)
	}
	// The admission recorded the certificate before it refused: the record is withdrawn.
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := a.DrainRetries(dctx); err != nil {
		t.Fatal(err)
	}
	live, err := db.AllLive(ctx, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(live) != 1 {
		t.Errorf("inventory holds %+v, want the one certificate issued before the rotation", live)
	}

	if err := kr.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	iss, err = a.Issue(ctx, "refreshed", req)
	if err != nil || ssh.FingerprintSHA256(iss.Cert.SignatureKey) != next.Fingerprint {
		t.Fatalf("after the refresh: %v, want signed by %s", err, next.Fingerprint)
	}
}
