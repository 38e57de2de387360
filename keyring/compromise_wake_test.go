package keyring_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/keyring"
	"github.com/sshca/sshca/kms"
	"github.com/sshca/sshca/revocation"
)

// TestCompromiseWakesFollowers: a user CA key is marked compromised right after a new key was
// generated and promoted, while a follower of the revocation feed (a replica's long poll of
// GET /v1/krl; a Redis-mode agent reads the same feed) is blocked in a read of the scopes it
// knew, the old key's only. The ban must wake it at once ("within a second", README), not
// after its read times out (Block, 30 s here, 5 s in serve; an agent's --ca-refresh, 15 s).
// Before the ban went into the compromised key's own scope as well, it went only into the new
// key's, which the blocked read did not cover. Real redis-server.
func TestCompromiseWakesFollowers(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv, _, db, dir, bad := bootstrapUserCA(t)
	if err := db.RegisterCA(ctx, bad); err != nil { // as serve does at start
		t.Fatal(err)
	}

	f := revocation.NewFollower(db, nil)
	f.Block = 30 * time.Second
	done := make(chan struct{})
	go func() { defer close(done); f.Run(ctx) }()
	t.Cleanup(func() { cancel(); srv.Stop(); <-done }) // the stopped server ends its 30 s read
	// The follower follows the old key's scope once a revocation there wakes it (one made
	// before its first snapshot does not).
	for serial := 1; ; serial++ {
		woke := f.Changed()
		if _, err := db.Revoke(ctx, bad, []ca.RevocationEntry{{Kind: ca.RevokedSerial, Value: strconv.Itoa(serial), Expiry: time.Now().Add(time.Hour)}}); err != nil {
			t.Fatal(err)
		}
		select {
		case <-woke:
		case <-time.After(500 * time.Millisecond):
			if serial == 20 {
				t.Fatal("the follower did not follow the first key's scope")
			}
			continue
		}
		break
	}
	time.Sleep(300 * time.Millisecond) // back in its blocking read, of the old scope alone

	m := &keyring.Manager{Store: db, KMS: "softkms:", KeyDir: dir, MaxUserTTL: time.Hour, MaxHostTTL: time.Hour}
	next, err := m.Generate(ctx, ca.UserCert, kms.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Promote(ctx, ca.UserCert, true); err != nil {
		t.Fatal(err)
	}
	woke := f.Changed()
	begin := time.Now()
	if _, err := m.Compromised(ctx, ssh.FingerprintSHA256(bad)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-woke:
		t.Logf("the follower woke %v after the compromise", time.Since(begin).Round(time.Millisecond))
	case <-time.After(time.Second):
		t.Fatalf("the follower blocked on the old key's scope did not wake within 1s of the compromise (its read ends after %v)", f.Block)
	}

	// Banned in both scopes, and listed once in the KRL built from them.
	active, err := next.SSHPublicKey()
	if err != nil {
		t.Fatal(err)
	}
	var states []ca.RevocationState
	for _, sc := range []ssh.PublicKey{bad, active} {
		st, err := db.State(ctx, sc)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, e := range st.Entries {
			found = found || (e.Kind == ca.RevokedKey && e.Value == revocation.KeyEntry(bad))
		}
		if !found {
			t.Errorf("scope %s holds no ban of the compromised key: %+v", ssh.FingerprintSHA256(sc), st.Entries)
		}
		states = append(states, st)
	}
	k, err := revocation.BuildKRL(states...)
	if err != nil {
		t.Fatal(err)
	}
	if len(k.RevokedKeys) != 1 {
		t.Errorf("the KRL lists %d revoked keys, want the compromised key once", len(k.RevokedKeys))
	}
}
