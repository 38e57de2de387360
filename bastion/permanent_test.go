package bastion_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/bastion"
	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/revocation"
	"github.com/sshca/sshca/store"
)

// TestAgentKeepsBanUntilLifted: a banned public key (a permanent entry) followed from a real
// redis-server stays in the KRL the agent builds ten days later, after a later change made it
// rebuild (ssh-keygen -Q says REVOKED); once lifted, the next KRL no longer holds it.
func TestAgentKeepsBanUntilLifted(t *testing.T) {
	keygen := testenv.Need(t, "ssh-keygen")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	clock := clockwork.NewFakeClockAt(time.Now())
	st := store.NewRedis(rdb, store.RedisOptions{Now: clock.Now})
	userCA, banned := testenv.PublicKey(t), testenv.PublicKey(t)
	if err := st.RegisterCA(ctx, userCA); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Revoke(ctx, userCA, []ca.RevocationEntry{{Kind: ca.RevokedKey, Value: revocation.KeyEntry(banned)}}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "banned.pub")
	if err := os.WriteFile(keyFile, ssh.MarshalAuthorizedKey(banned), 0o644); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "revoked.krl")
	a, err := bastion.NewAgent(bastion.Options{KRLPath: path, Feed: st, CARefresh: time.Hour, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	query := func() string {
		out, _ := exec.Command(keygen, "-Q", "-f", path, keyFile).CombinedOutput()
		return string(out)
	}
	waitUntil(t, "the ban in the first KRL", func() bool { return a.Status().KRLVersion == 1 })
	if out := query(); !strings.Contains(out, "REVOKED") {
		t.Fatalf("first KRL: ssh-keygen -Q: %s", out)
	}

	clock.Advance(10 * 24 * time.Hour)
	if _, err := st.Revoke(ctx, userCA, []ca.RevocationEntry{{Kind: ca.RevokedSerial, Value: "9", Expiry: clock.Now().Add(time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "a KRL rebuilt ten days later", func() bool { return a.Status().KRLVersion == 2 })
	if out := query(); !strings.Contains(out, "REVOKED") {
		t.Fatalf("KRL built ten days later: ssh-keygen -Q: %s (the ban lapsed)", out)
	}

	if _, err := st.LiftKey(ctx, banned); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the KRL after the lift", func() bool { return a.Status().KRLVersion == 3 })
	if out := query(); strings.Contains(out, "REVOKED") || !strings.Contains(out, "ok") {
		t.Fatalf("KRL after the lift: ssh-keygen -Q: %s", out)
	}
}
