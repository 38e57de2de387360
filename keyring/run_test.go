package keyring_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/keyring"
	"github.com/sshca/sshca/kms"
	"github.com/sshca/sshca/store"
)

// TestRunRefreshesOnItsClock: a key another replica adds to the keyring is published by this
// one at its next refresh tick, and not before; the ticker is the injected clock's, so the
// test advances it instead of waiting the interval.
func TestRunRefreshesOnItsClock(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	db := store.NewMemory(time.Now)
	ref := kms.KeyRef{KMS: "softkms:", Key: "softkms:path=" + filepath.Join(dir, "user.pem")}
	seed, err := kms.Create(ctx, ref, kms.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	if err := keyring.Bootstrap(ctx, db, ca.UserCert, ref, seed); err != nil {
		t.Fatal(err)
	}
	c, err := keyring.New(ctx, ca.UserCert, db, db, nil)
	if err != nil {
		t.Fatal(err)
	}
	clk := clockwork.NewFakeClock()
	done := make(chan struct{})
	go func() { c.Run(ctx, clk, time.Hour); close(done) }()
	bctx, bcancel := context.WithTimeout(ctx, 10*time.Second)
	defer bcancel()
	if err := clk.BlockUntilContext(bctx, 1); err != nil {
		t.Fatalf("Run does not tick on the clock it was given: %v", err)
	}
	m := &keyring.Manager{Store: db, KMS: "softkms:", KeyDir: dir, MaxUserTTL: time.Hour, MaxHostTTL: time.Hour}
	if _, err := m.Generate(ctx, ca.UserCert, kms.Ed25519); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Hour - time.Second)
	time.Sleep(20 * time.Millisecond) // room for a refresh that should not happen
	if n := len(c.Published()); n != 1 {
		t.Fatalf("%d keys published before the refresh tick, want 1", n)
	}
	clk.Advance(time.Second)
	for deadline := time.Now().Add(10 * time.Second); len(c.Published()) != 2; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the refresh tick did not publish the new next key: %d published", len(c.Published()))
		}
	}
	cancel()
	<-done
}
