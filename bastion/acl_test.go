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

	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
)

// aclUsers returns the `user` lines of a shipped Redis file, split into words.
func aclUsers(t *testing.T, name string) [][]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "deploy", "redis", name))
	if err != nil {
		t.Fatal(err)
	}
	var users [][]string
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "user" {
			users = append(users, f[1:])
		}
	}
	return users
}

// TestShippedRedisACL loads the ACL users of deploy/redis/redis.conf into a real redis-server:
// the CA service's user can do all it does; the bastion user can follow revocations but write
// nothing. deploy/redis/users.acl must declare the same users.
func TestShippedRedisACL(t *testing.T) {
	users := aclUsers(t, "redis.conf")
	if diff := cmp.Diff(users, aclUsers(t, "users.acl")); diff != "" {
		t.Errorf("users.acl and redis.conf declare different users (-redis.conf +users.acl):\n%s", diff)
	}
	r := testenv.StartRedis(t)
	ctx := context.Background()
	root := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer root.Close()
	for _, u := range users {
		if u[0] == "default" {
			continue // turned off last, below: the test connects as default to set things up
		}
		args := []any{"ACL", "SETUSER"}
		for _, x := range u {
			args = append(args, x)
		}
		if err := root.Do(ctx, args...).Err(); err != nil {
			t.Fatalf("ACL SETUSER %s: %v", u[0], err)
		}
	}
	client := func(user, pass string) *redis.Client {
		c := redis.NewClient(&redis.Options{Addr: r.Addr, Username: user, Password: pass})
		t.Cleanup(func() { c.Close() })
		return c
	}
	svc := store.NewRedis(client("sshca", "CHANGE-ME-sshca"), store.RedisOptions{})
	bas := store.NewRedis(client("bastion", "CHANGE-ME-bastion"), store.RedisOptions{})

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
	if _, err := svc.Refused(ctx, caKey, []string{"bob"}, caKey); err != nil {
		t.Fatalf("service refused: %v", err)
	}
	if ok, err := svc.UseToken(ctx, "token-1", time.Time{}, exp); err != nil || !ok {
		t.Fatalf("service token replay mark: %v %v", ok, err)
	}
	if _, err := svc.UpdateKeyring(ctx, func(*ca.Keyring) error { return nil }); err != nil {
		t.Fatalf("service keyring (WATCH/MULTI): %v", err)
	}
	if err := svc.Check(ctx); err != nil {
		t.Fatalf("service health: %v", err)
	}
	// Everything the bastion does.
	if err := bas.Check(ctx); err != nil {
		t.Fatalf("bastion health: %v", err)
	}
	if _, err := bas.Keyring(ctx); err != nil {
		t.Fatalf("bastion keyring: %v", err)
	}
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
	// Command by command, for the bastion's raw credentials.
	raw := client("bastion", "CHANGE-ME-bastion")
	if err := raw.XRead(ctx, &redis.XReadArgs{Streams: []string{"sshca:any-stream", "0-0"}, Count: 1, Block: -1}).Err(); err != nil && err != redis.Nil {
		t.Errorf("bastion XREAD: %v", err)
	}
	if err := raw.Get(ctx, "sshca:anything").Err(); err != nil && err != redis.Nil {
		t.Errorf("bastion GET: %v", err)
	}
	for name, cmd := range map[string][]any{
		"SET":                {"SET", "sshca:x", "1"},
		"DEL":                {"DEL", "sshca:x"},
		"XADD":               {"XADD", "sshca:s", "*", "k", "v"},
		"ZREMRANGEBYSCORE":   {"ZREMRANGEBYSCORE", "sshca:z", "-inf", "+inf"},
		"GET outside sshca:": {"GET", "other:x"},
		"KEYS":               {"KEYS", "*"},
		"FLUSHALL":           {"FLUSHALL"},
		"CONFIG SET":         {"CONFIG", "SET", "maxmemory", "1"},
		"ACL SETUSER":        {"ACL", "SETUSER", "bastion", "+@all"},
		"EVAL":               {"EVAL", "return redis.call('SET','sshca:x','1')", "0"},
		"PUBLISH":            {"PUBLISH", "sshca:c", "x"},
	} {
		if err := raw.Do(ctx, cmd...).Err(); err == nil || !strings.Contains(err.Error(), "NOPERM") {
			t.Errorf("bastion %s: %v, want NOPERM", name, err)
		}
	}
	// The CA service's user stays in its keys and away from administration.
	rawSvc := client("sshca", "CHANGE-ME-sshca")
	for name, cmd := range map[string][]any{
		"SET outside sshca:": {"SET", "other:x", "1"},
		"FLUSHALL":           {"FLUSHALL"},
		"CONFIG SET":         {"CONFIG", "SET", "maxmemory", "1"},
		"KEYS":               {"KEYS", "*"},
	} {
		if err := rawSvc.Do(ctx, cmd...).Err(); err == nil || !strings.Contains(err.Error(), "NOPERM") {
			t.Errorf("sshca %s: %v, want NOPERM", name, err)
		}
	}
	// Last, the default user goes off: an unauthenticated connection can do nothing.
	if err := root.Do(ctx, "ACL", "SETUSER", "default", "off").Err(); err != nil {
		t.Fatal(err)
	}
	anon := redis.NewClient(&redis.Options{Addr: r.Addr, MaxRetries: -1})
	defer anon.Close()
	if err := anon.Get(ctx, "sshca:anything").Err(); err == nil || err == redis.Nil {
		t.Errorf("the default user still works: %v", err)
	}
}
