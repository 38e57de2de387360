package bastion_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/bastion"
	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/krl"
	"github.com/sshca/sshca/revocation"
	"github.com/sshca/sshca/store"
)

// gatedFeed holds the agent's first Follow call until released, and counts snapshots: the
// test decides what the agent missed while it was away.
type gatedFeed struct {
	*store.Memory
	entered, release chan struct{}
	once             sync.Once

	mu        sync.Mutex
	snapshots int
}

func (g *gatedFeed) Snapshot(ctx context.Context, fp string) (ca.RevocationState, string, error) {
	g.mu.Lock()
	g.snapshots++
	g.mu.Unlock()
	return g.Memory.Snapshot(ctx, fp)
}

func (g *gatedFeed) Follow(ctx context.Context, after map[string]string, block time.Duration) (map[string][]revocation.Change, error) {
	g.once.Do(func() {
		close(g.entered)
		select {
		case <-g.release:
		case <-ctx.Done():
		}
	})
	return g.Memory.Follow(ctx, after, block)
}

func (g *gatedFeed) snapshotCount() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.snapshots
}

// TestAgentReloadsAfterFeedGap: a bastion whose feed position was trimmed away while it was
// behind sees a version gap and reloads the whole state, so nothing revoked meanwhile is
// skipped (memory feed, no Redis).
func TestAgentReloadsAfterFeedGap(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	mem := store.NewMemory(time.Now)
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	caKey, _ := ssh.NewPublicKey(pub)
	fp := ssh.FingerprintSHA256(caKey)
	exp := time.Now().Add(time.Hour)
	revoke := func(serial int) {
		t.Helper()
		if _, err := mem.Revoke(ctx, caKey, []ca.RevocationEntry{{Kind: ca.RevokedSerial, Value: strconv.Itoa(serial), Expiry: exp}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := mem.RegisterCA(ctx, caKey); err != nil {
		t.Fatal(err)
	}
	revoke(1)

	feed := &gatedFeed{Memory: mem, entered: make(chan struct{}), release: make(chan struct{})}
	path := filepath.Join(t.TempDir(), "revoked.krl")
	a, err := bastion.NewAgent(bastion.Options{KRLPath: path, Feed: feed, CARefresh: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()

	select {
	case <-feed.entered: // snapshot at version 1 installed; following from its position
	case <-time.After(10 * time.Second):
		t.Fatal("the agent never followed the feed")
	}
	if v := a.Status().KRLVersion; v != 1 {
		t.Fatalf("KRL version after the snapshot = %d, want 1", v)
	}
	// While the agent is behind, four more revocations, and the feed keeps only the last.
	for s := 2; s <= 5; s++ {
		revoke(s)
	}
	if err := mem.TrimFeed(ctx, fp, 1); err != nil {
		t.Fatal(err)
	}
	close(feed.release)

	deadline := time.Now().Add(10 * time.Second)
	for a.Status().KRLVersion != 5 {
		if time.Now().After(deadline) {
			t.Fatalf("KRL version = %d, want 5 after the reload", a.Status().KRLVersion)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := feed.snapshotCount(); n < 2 {
		t.Errorf("%d snapshots: the gap did not make the agent reload", n)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	k, err := krl.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	for s := uint64(1); s <= 5; s++ {
		if !k.IsRevoked(&ssh.Certificate{Serial: s, SignatureKey: caKey, Key: caKey}) {
			t.Errorf("serial %d is not in the KRL: the gap skipped it", s)
		}
	}
}
