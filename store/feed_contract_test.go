package store_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/revocation"
)

// feed is what bastions consume (bastion.Feed), with Revoke and TrimFeed to drive it.
type feed interface {
	CAs(ctx context.Context) ([]ssh.PublicKey, error)
	TrustedCAs(ctx context.Context) ([]ssh.PublicKey, error)
	Snapshot(ctx context.Context, fp string) (ca.RevocationState, string, error)
	Changes(ctx context.Context, fp, after string, block time.Duration) ([]revocation.Change, error)
	Follow(ctx context.Context, after map[string]string, block time.Duration) (map[string][]revocation.Change, error)
	RegisterCA(ctx context.Context, caKey ssh.PublicKey) error
	Revoke(ctx context.Context, caKey ssh.PublicKey, entries []ca.RevocationEntry) (uint64, error)
	TrimFeed(ctx context.Context, fp string, maxLen int64) error
}

// TestFeedContract: a consumer that snapshots and then follows the feed sees every change in
// order, and a version gap tells it that it must reload, on every backend.
func TestFeedContract(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newStore newStore) {
		testFeed(t, func(t *testing.T, c *clock) feed { return newStore(t, c) })
	})
}

func testFeed(t *testing.T, newStore func(*testing.T, *clock) feed) {
	ctx := context.Background()
	t0 := time.Now().UTC().Truncate(time.Second)
	serial := func(n int) []ca.RevocationEntry {
		return []ca.RevocationEntry{{Kind: ca.RevokedSerial, Value: strconv.Itoa(n), Expiry: t0.Add(time.Hour)}}
	}

	t.Run("follow every scope in one read", func(t *testing.T) {
		s := newStore(t, &clock{t: t0})
		a, b := testenv.PublicKey(t), testenv.PublicKey(t)
		fa, fb := ssh.FingerprintSHA256(a), ssh.FingerprintSHA256(b)
		after := map[string]string{}
		for _, k := range []ssh.PublicKey{a, b} {
			if err := s.RegisterCA(ctx, k); err != nil {
				t.Fatal(err)
			}
			_, pos, err := s.Snapshot(ctx, ssh.FingerprintSHA256(k))
			if err != nil {
				t.Fatal(err)
			}
			after[ssh.FingerprintSHA256(k)] = pos
		}
		// Nothing yet: the read waits out its block and returns nothing.
		if got, err := s.Follow(ctx, after, 50*time.Millisecond); err != nil || len(got) != 0 {
			t.Fatalf("follow before any change = %+v, %v", got, err)
		}
		// A read that is waiting wakes on a change of either scope.
		woke := make(chan map[string][]revocation.Change, 1)
		go func() {
			got, err := s.Follow(ctx, after, 5*time.Second)
			if err != nil {
				t.Error(err)
			}
			woke <- got
		}()
		time.Sleep(100 * time.Millisecond)
		if _, err := s.Revoke(ctx, b, serial(1)); err != nil {
			t.Fatal(err)
		}
		select {
		case got := <-woke:
			if len(got[fb]) != 1 || len(got[fa]) != 0 {
				t.Fatalf("follow woken by a change of b = %+v", got)
			}
		case <-time.After(3 * time.Second):
			t.Fatal("a waiting follow did not wake on a change")
		}
		if _, err := s.Revoke(ctx, a, serial(2)); err != nil {
			t.Fatal(err)
		}
		got, err := s.Follow(ctx, after, -1)
		if err != nil || len(got[fa]) != 1 || len(got[fb]) != 1 {
			t.Fatalf("follow after a change in each scope = %+v, %v", got, err)
		}
		// A state's Changed is its newest change's At: what the KRL's date is taken from.
		st, _, err := s.Snapshot(ctx, fa)
		if err != nil {
			t.Fatal(err)
		}
		if at := got[fa][0].At; at.IsZero() || !st.Changed.Equal(at) {
			t.Errorf("snapshot Changed %v, want the change's At %v (not zero)", st.Changed, at)
		}
		if _, err := s.Follow(ctx, map[string]string{}, -1); err == nil {
			t.Error("follow of no scope: no error")
		}
	})

	t.Run("snapshot and follow", func(t *testing.T) {
		s := newStore(t, &clock{t: t0})
		caKey := testenv.PublicKey(t)
		fp := ssh.FingerprintSHA256(caKey)
		if err := s.RegisterCA(ctx, caKey); err != nil {
			t.Fatal(err)
		}
		st, pos, err := s.Snapshot(ctx, fp)
		if err != nil || st.Version != 0 || pos != "0-0" || st.CA == nil {
			t.Fatalf("empty snapshot = %+v %q %v", st, pos, err)
		}
		for i := range 3 {
			if _, err := s.Revoke(ctx, caKey, serial(i+1)); err != nil {
				t.Fatal(err)
			}
		}
		changes, err := s.Changes(ctx, fp, pos, 100*time.Millisecond)
		if err != nil || len(changes) != 3 {
			t.Fatalf("changes = %+v, %v", changes, err)
		}
		for i, c := range changes {
			if c.Version != uint64(i+1) || len(c.Entries) != 1 || c.Entries[0].Value != strconv.Itoa(i+1) {
				t.Errorf("change %d = %+v", i, c)
			}
		}
		if more, _ := s.Changes(ctx, fp, changes[2].ID, 50*time.Millisecond); len(more) != 0 {
			t.Errorf("changes after the last one: %+v", more)
		}
		st, pos, _ = s.Snapshot(ctx, fp)
		if st.Version != 3 || len(st.Entries) != 3 || pos != changes[2].ID {
			t.Errorf("snapshot after 3 changes = %+v at %q, want version 3 at %q", st, pos, changes[2].ID)
		}
		cas, err := s.CAs(ctx)
		if err != nil || len(cas) != 1 {
			t.Fatalf("CAs = %v %v", cas, err)
		}
	})

	t.Run("a blocked reader wakes on a change", func(t *testing.T) {
		s := newStore(t, &clock{t: t0})
		caKey := testenv.PublicKey(t)
		fp := ssh.FingerprintSHA256(caKey)
		_ = s.RegisterCA(ctx, caKey)
		_, pos, _ := s.Snapshot(ctx, fp)
		got := make(chan []revocation.Change, 1)
		go func() {
			cs, _ := s.Changes(ctx, fp, pos, 5*time.Second)
			got <- cs
		}()
		time.Sleep(100 * time.Millisecond)
		if _, err := s.Revoke(ctx, caKey, serial(9)); err != nil {
			t.Fatal(err)
		}
		select {
		case cs := <-got:
			if len(cs) != 1 || cs[0].Version != 1 {
				t.Errorf("woke with %+v", cs)
			}
		case <-time.After(3 * time.Second):
			t.Fatal("the reader did not wake")
		}
	})

	t.Run("a trimmed position shows as a version gap", func(t *testing.T) {
		s := newStore(t, &clock{t: t0})
		caKey := testenv.PublicKey(t)
		fp := ssh.FingerprintSHA256(caKey)
		_, _ = s.Revoke(ctx, caKey, serial(1))
		_, pos, _ := s.Snapshot(ctx, fp) // a consumer at version 1
		for i := 2; i <= 5; i++ {
			_, _ = s.Revoke(ctx, caKey, serial(i))
		}
		if err := s.TrimFeed(ctx, fp, 2); err != nil {
			t.Fatal(err)
		}
		cs, err := s.Changes(ctx, fp, pos, 100*time.Millisecond)
		if err != nil || len(cs) != 2 {
			t.Fatalf("changes after trimming = %+v, %v", cs, err)
		}
		if cs[0].Version != 4 {
			t.Errorf("first change kept is version %d, want 4 (a gap after 1)", cs[0].Version)
		}
		st, _, _ := s.Snapshot(ctx, fp)
		if st.Version != 5 || len(st.Entries) != 5 {
			t.Errorf("the snapshot lost something: %+v", st)
		}
	})
}
