package bastion_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/revocation"
)

// TestShippedRedisACL loads deploy/redis/users.acl into a real redis-server: the CA service's
// user can do all it does; the bastion user can follow revocations but write nothing.
func TestShippedRedisACL(t *testing.T) {
	r := testenv.StartRedis(t)
	ctx := context.Background()
	root := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer root.Close()
	b, err := os.ReadFile(filepath.Join("..", "deploy", "redis", "users.acl"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "user" || f[1] == "default" {
			continue
		}
		args := []any{"ACL", "SETUSER"}
		for _, x := range f[1:] {
			args = append(args, x)
		}
		if err := root.Do(ctx, args...).Err(); err != nil {
			t.Fatalf("ACL SETUSER %s: %v", f[1], err)
		}
	}
	client := func(user, pass string) *redis.Client {
		c := redis.NewClient(&redis.Options{Addr: r.Addr, Username: user, Password: pass})
		t.Cleanup(func() { c.Close() })
		return c
	}
	svc := revocation.NewRedis(client("sshca", "CHANGE-ME-sshca"), revocation.RedisOptions{})
	bas := revocation.NewRedis(client("bastion", "CHANGE-ME-bastion"), revocation.RedisOptions{})

	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	caKey, _ := ssh.NewPublicKey(pub)
	fp := ssh.FingerprintSHA256(caKey)
	exp := time.Now().Add(time.Hour)
	// Everything the service does.
	if err := svc.RegisterCA(ctx, caKey); err != nil {
		t.Fatalf("service: %v", err)
	}
	if _, err := svc.Revoke(ctx, caKey, []ca.RevocationEntry{{Kind: ca.RevokedSerial, Value: "7", Expiry: exp}}); err != nil {
		t.Fatalf("service revoke: %v", err)
	}
	if err := svc.Record(ctx, ca.Certificate{Serial: 7, Identity: "alice", ValidBefore: exp}); err != nil {
		t.Fatalf("service record: %v", err)
	}
	if ok, err := svc.ReserveSerial(ctx, 8, exp); err != nil || !ok {
		t.Fatalf("service reserve: %v %v", ok, err)
	}
	if err := svc.BlockIdentity(ctx, "bob", exp); err != nil {
		t.Fatalf("service block: %v", err)
	}
	if _, err := svc.Refused(ctx, caKey, "bob", caKey); err != nil {
		t.Fatalf("service refused: %v", err)
	}
	// Everything the bastion does.
	if cas, err := bas.CAs(ctx); err != nil || len(cas) != 1 {
		t.Fatalf("bastion CAs: %v %v", cas, err)
	}
	st, pos, err := bas.Snapshot(ctx, fp)
	if err != nil || len(st.Entries) != 1 {
		t.Fatalf("bastion snapshot: %+v %v", st, err)
	}
	if _, err := bas.Changes(ctx, fp, "0-0", 10*time.Millisecond); err != nil {
		t.Fatalf("bastion follow: %v", err)
	}
	_ = pos
	// And nothing more.
	if _, err := bas.Revoke(ctx, caKey, []ca.RevocationEntry{{Kind: ca.RevokedSerial, Value: "9", Expiry: exp}}); err == nil || !strings.Contains(err.Error(), "NOPERM") {
		t.Errorf("bastion revoke: %v, want NOPERM", err)
	}
	if err := bas.Record(ctx, ca.Certificate{Serial: 9, Identity: "x", ValidBefore: exp}); err == nil {
		t.Error("bastion could write the inventory")
	}
}
