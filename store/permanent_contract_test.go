package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/revocation"
)

// TestPermanentRevocationContract: a permanent entry (a banned key: zero Expiry) survives
// pruning by later writes however far the clock moves, stays refused at signing time under
// every CA key, and is carried by the feed; LiftKey removes it from every scope (a host CA
// key's too: before stop 18 the Redis stores lifted it from the user CA keys' scopes alone, so
// the host KRL and known_hosts kept listing a lifted key) and from the signing-time check,
// with a version bump and a feed change that a follower applies. On every backend.
func TestPermanentRevocationContract(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newStore newStore) {
		ctx := context.Background()
		t0 := time.Now().UTC().Truncate(time.Second)
		c := &clock{t: t0}
		s := newStore(t, c)
		userCA, hostCA, otherCA, banned, other := testenv.PublicKey(t), testenv.PublicKey(t), testenv.PublicKey(t), testenv.PublicKey(t), testenv.PublicKey(t)
		ban := ca.RevocationEntry{Kind: ca.RevokedKey, Value: revocation.KeyEntry(banned)}
		// Registered as a host CA key, as serve registers its own: its scope is the host
		// KRL's, not listed among the user CA keys, and a lift must reach it all the same.
		if err := s.RegisterHostCA(ctx, hostCA); err != nil {
			t.Fatal(err)
		}
		short := ca.RevocationEntry{Kind: ca.RevokedSerial, Value: "7", Expiry: t0.Add(time.Minute)}
		if _, err := s.Revoke(ctx, userCA, []ca.RevocationEntry{ban, short}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Revoke(ctx, hostCA, []ca.RevocationEntry{ban}); err != nil {
			t.Fatal(err)
		}
		fp := ssh.FingerprintSHA256(userCA)
		_, pos, err := s.Snapshot(ctx, fp)
		if err != nil {
			t.Fatal(err)
		}

		// Ten years on, a later write prunes up to now: the ban stays, the serial goes.
		c.Set(t0.Add(10 * 365 * 24 * time.Hour))
		later := ca.RevocationEntry{Kind: ca.RevokedSerial, Value: "8", Expiry: c.Now().Add(time.Minute)}
		if _, err := s.Revoke(ctx, userCA, []ca.RevocationEntry{later}); err != nil {
			t.Fatal(err)
		}
		st, err := s.State(ctx, userCA)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]ca.RevocationEntry{ban, later}, st.Entries); diff != "" {
			t.Errorf("entries ten years on (-want +got):\n%s", diff)
		}
		for _, k := range []ssh.PublicKey{userCA, hostCA, otherCA} {
			why, err := s.Refused(ctx, k, nil, banned)
			if err != nil || why == "" {
				t.Errorf("ten years on, signing with %s: Refused = %q, %v; want a refusal", ssh.FingerprintSHA256(k), why, err)
			}
		}
		if why, _ := s.Refused(ctx, userCA, nil, other); why != "" {
			t.Errorf("another key is refused: %q", why)
		}
		// Re-banning a banned key changes nothing.
		v0 := st.Version
		if v, err := s.Revoke(ctx, userCA, []ca.RevocationEntry{ban}); err != nil || v != v0 {
			t.Errorf("re-banning: version %d, %v; want %d", v, err, v0)
		}

		// Lift: out of every scope, accepted at signing time, and the feed says so.
		versions, err := s.LiftKey(ctx, banned)
		if err != nil {
			t.Fatal(err)
		}
		if len(versions) != 2 || versions[fp] != v0+1 {
			t.Errorf("LiftKey versions = %v; want both scopes, the user CA's at %d", versions, v0+1)
		}
		for _, k := range []ssh.PublicKey{userCA, hostCA} {
			st, err := s.State(ctx, k)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range st.Entries {
				if e.Kind == ca.RevokedKey {
					t.Errorf("scope %s still holds %+v after the lift", ssh.FingerprintSHA256(k), e)
				}
			}
			if why, err := s.Refused(ctx, k, nil, banned); err != nil || why != "" {
				t.Errorf("after the lift, signing with %s: Refused = %q, %v", ssh.FingerprintSHA256(k), why, err)
			}
		}
		if again, err := s.LiftKey(ctx, banned); err != nil || len(again) != 0 {
			t.Errorf("lifting again = %v, %v; want no change", again, err)
		}
		changes, err := s.Changes(ctx, fp, pos, -1)
		if err != nil {
			t.Fatal(err)
		}
		// A follower that had the first snapshot applies the changes in order.
		followed := []ca.RevocationEntry{ban, short}
		for _, ch := range changes {
			followed = append(followed, ch.Entries...)
		}
		if diff := cmp.Diff([]ca.RevocationEntry{later}, revocation.LiveEntries(followed, c.Now())); diff != "" {
			t.Errorf("a follower's live entries after the lift (-want +got):\n%s", diff)
		}
		if n := len(changes); n != 2 || changes[n-1].Version != v0+1 {
			t.Errorf("feed after the snapshot: %+v; want the later revocation and the lift (version %d)", changes, v0+1)
		}
	})
}
