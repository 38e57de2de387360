package keyring_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/keyring"
	"github.com/sshca/sshca/kms"
	"github.com/sshca/sshca/store"
)

// staleDoc is the store's key ring document, except that the read named stale (counting from
// 1) answers the key ring as it was when armed, once release is closed: a Refresh that read
// before a change and finishes after another Refresh read it.
type staleDoc struct {
	*store.Redis
	mu      sync.Mutex
	reads   int
	stale   int
	old     ca.Keyring
	reading chan struct{} // closed when the stale read starts
	release chan struct{}
}

func (d *staleDoc) Keyring(ctx context.Context) (ca.Keyring, error) {
	d.mu.Lock()
	d.reads++
	n := d.reads
	d.mu.Unlock()
	if n == d.stale {
		close(d.reading)
		<-d.release
		return d.old, nil
	}
	return d.Redis.Keyring(ctx)
}

// TestRefreshesOverlap: two Refreshes of one replica's key ring that overlap (the periodic one
// and the one an unrevoke asks for, ca.RefreshingPublisher) leave the newer key ring in force
// whatever order they finish in. Against a real redis-server: one reads the key ring before a
// promotion and a compromise made through another replica, and finishes after the other
// installed them; before, the older view came back: the compromised key active again and no
// longer listed as compromised (so an unrevoke at that moment lifted its ban).
func TestRefreshesOverlap(t *testing.T) {
	ctx := context.Background()
	_, _, db, dir, first := bootstrapUserCA(t)
	doc := &staleDoc{Redis: db, reading: make(chan struct{}), release: make(chan struct{})}
	kr, err := keyring.New(ctx, ca.UserCert, doc, db, nil) // read 1
	if err != nil {
		t.Fatal(err)
	}
	if doc.old, err = db.Keyring(ctx); err != nil {
		t.Fatal(err)
	}
	doc.stale = 2
	m := &keyring.Manager{Store: db, KMS: "softkms:", KeyDir: dir, MaxUserTTL: time.Hour, MaxHostTTL: time.Hour}
	if _, err := m.Generate(ctx, ca.UserCert, kms.Ed25519); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Promote(ctx, ca.UserCert, true); err != nil {
		t.Fatal(err)
	}
	old := ssh.FingerprintSHA256(first)
	if _, err := m.Compromised(ctx, old); err != nil {
		t.Fatal(err)
	}

	slow := make(chan error, 1)
	go func() { slow <- kr.Refresh(ctx) }() // read 2: the key ring before the change
	<-doc.reading
	if err := kr.Refresh(ctx); err != nil { // read 3: the key ring now
		t.Fatal(err)
	}
	close(doc.release)
	if err := <-slow; err != nil {
		t.Fatal(err)
	}
	if got := ssh.FingerprintSHA256(kr.PublicKey()); got == old {
		t.Errorf("the compromised key %s is active again after the overlapping refreshes", old)
	}
	if !slices.ContainsFunc(kr.Compromised(), func(k ssh.PublicKey) bool { return ssh.FingerprintSHA256(k) == old }) {
		t.Errorf("the key %s is no longer listed as compromised after the overlapping refreshes", old)
	}
}
