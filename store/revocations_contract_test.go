package store_test

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/revocation"
)

// TestRevocationContract: revocation scopes and signing-time refusals (ca.RevocationStore)
// on every backend.
func TestRevocationContract(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newStore newStore) {
		testRevocations(t, func(t *testing.T, c *clock) ca.RevocationStore { return newStore(t, c) })
	})
}

func testRevocations(t *testing.T, newStore func(*testing.T, *clock) ca.RevocationStore) {
	ctx := context.Background()
	t0 := time.Now().UTC().Truncate(time.Second)
	caKey, otherCA, userKey := testenv.PublicKey(t), testenv.PublicKey(t), testenv.PublicKey(t)

	t.Run("revoke, idempotent, versioned, scoped", func(t *testing.T) {
		c := &clock{t: t0}
		s := newStore(t, c)
		e1 := ca.RevocationEntry{Kind: ca.RevokedSerial, Value: "42", Expiry: t0.Add(time.Hour)}
		e2 := ca.RevocationEntry{Kind: ca.RevokedKeyID, Value: "alice@example.com#42", Expiry: t0.Add(time.Hour)}
		v1, err := s.Revoke(ctx, caKey, []ca.RevocationEntry{e1, e2})
		if err != nil || v1 != 1 {
			t.Fatalf("Revoke = %d, %v; want version 1", v1, err)
		}
		if v, _ := s.Revoke(ctx, caKey, []ca.RevocationEntry{e1}); v != v1 {
			t.Errorf("re-revoking bumped the version to %d", v)
		}
		e3 := ca.RevocationEntry{Kind: ca.RevokedSerial, Value: "43", Expiry: t0.Add(time.Minute)}
		if v, _ := s.Revoke(ctx, caKey, []ca.RevocationEntry{e3}); v != v1+1 {
			t.Errorf("version after a new entry = %d, want %d", v, v1+1)
		}
		st, err := s.State(ctx, caKey)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]ca.RevocationEntry{e2, e1, e3}, st.Entries); diff != "" {
			t.Errorf("entries (-want +got):\n%s", diff)
		}
		if st.Version != 2 || st.CA == nil || ssh.FingerprintSHA256(st.CA) != ssh.FingerprintSHA256(caKey) {
			t.Errorf("state version %d CA %v", st.Version, st.CA)
		}
		if other, _ := s.State(ctx, otherCA); len(other.Entries) != 0 || other.Version != 0 {
			t.Errorf("another CA's scope is not empty: %+v", other)
		}
		c.Set(t0.Add(2 * time.Minute))
		st, _ = s.State(ctx, caKey)
		if len(st.Entries) != 2 {
			t.Errorf("expired entry still listed: %+v", st.Entries)
		}
	})

	t.Run("bad entries", func(t *testing.T) {
		s := newStore(t, &clock{t: t0})
		for _, e := range []ca.RevocationEntry{{Kind: ca.RevokedSerial, Value: "0"}, {Kind: ca.RevokedSerial, Value: "x"}, {Kind: "bogus", Value: "1"}, {Kind: ca.RevokedKey, Value: "!!"}} {
			if _, err := s.Revoke(ctx, caKey, []ca.RevocationEntry{e}); err == nil {
				t.Errorf("%+v accepted", e)
			}
		}
	})

	// Pages of a scope (GET /v1/revocations): entries of several expiries and permanent bans,
	// read 3 at a time while entries are revoked, lifted and expire between pages: each entry
	// present throughout is listed once and in order, an entry added after the position is
	// listed, and a lifted cursor entry (permanent, so its score is +inf) still places the next
	// page right after it.
	t.Run("pages", func(t *testing.T) {
		c := &clock{t: t0}
		s := newStore(t, c)
		var all []ca.RevocationEntry
		for i := range 7 {
			all = append(all, ca.RevocationEntry{Kind: ca.RevokedSerial, Value: strconv.Itoa(100 + i), Expiry: t0.Add(time.Duration(1+i%3) * time.Hour)})
			all = append(all, ca.RevocationEntry{Kind: ca.RevokedKeyID, Value: "k" + strconv.Itoa(i), Expiry: t0.Add(time.Duration(1+i%3) * time.Hour)})
		}
		var banned []ca.RevocationEntry
		for range 4 {
			banned = append(banned, ca.RevocationEntry{Kind: ca.RevokedKey, Value: revocation.KeyEntry(testenv.PublicKey(t))})
		}
		soon := ca.RevocationEntry{Kind: ca.RevokedSerial, Value: "9", Expiry: t0.Add(time.Minute)}
		if _, err := s.Revoke(ctx, caKey, append(append(slices.Clone(all), banned...), soon)); err != nil {
			t.Fatal(err)
		}
		whole, err := s.State(ctx, caKey)
		if err != nil {
			t.Fatal(err)
		}
		want := slices.Clone(whole.Entries)
		slices.SortFunc(want, func(x, y ca.RevocationEntry) int { return ca.EntryCursorOf(x).Compare(ca.EntryCursorOf(y)) })
		if got, next, err := s.StatePage(ctx, caKey, ca.EntryCursor{}, 0); err != nil || !next.IsZero() || got.Version != whole.Version || !cmp.Equal(want, got.Entries) {
			t.Fatalf("StatePage of all: %v next %+v version %d (want %d)\n%s", err, next, got.Version, whole.Version, cmp.Diff(want, got.Entries))
		}
		var seen []ca.RevocationEntry
		var after ca.EntryCursor
		late := ca.RevocationEntry{Kind: ca.RevokedKeyID, Value: "zz-late", Expiry: t0.Add(5 * time.Hour)}
		for pages := 1; ; pages++ {
			page, next, err := s.StatePage(ctx, caKey, after, 3)
			if err != nil || len(page.Entries) > 3 || page.CA == nil || pages > 20 {
				t.Fatalf("page %d: %d entries, CA %v, %v", pages, len(page.Entries), page.CA, err)
			}
			seen = append(seen, page.Entries...)
			switch pages {
			case 1:
				// Between pages: one revoked after the position, the soonest expires, and a
				// permanent ban not yet listed is lifted.
				if _, err := s.Revoke(ctx, caKey, []ca.RevocationEntry{late}); err != nil {
					t.Fatal(err)
				}
				c.Set(t0.Add(2 * time.Minute))
				k, _ := revocation.ParseKeyEntry(banned[3].Value)
				if _, err := s.LiftKey(ctx, k); err != nil {
					t.Fatal(err)
				}
			}
			if next.IsZero() {
				break
			}
			if next != ca.EntryCursorOf(page.Entries[len(page.Entries)-1]) {
				t.Fatalf("page %d: next %+v, want its last entry's position", pages, next)
			}
			after = next
		}
		lifted := ca.EntryCursorOf(banned[3])
		expect := slices.DeleteFunc(slices.Clone(want), func(e ca.RevocationEntry) bool {
			return ca.EntryCursorOf(e) == lifted
		})
		expect = append(expect, late)
		slices.SortFunc(expect, func(x, y ca.RevocationEntry) int { return ca.EntryCursorOf(x).Compare(ca.EntryCursorOf(y)) })
		if seen[0] != soon {
			t.Errorf("first entry %+v, want the soonest to expire", seen[0])
		}
		if diff := cmp.Diff(expect, seen); diff != "" {
			t.Errorf("entries over the pages (-want +got):\n%s", diff)
		}

		// A cursor whose entry is gone (lifted: a permanent one) and a made-up one of the
		// right shape: the page starts at the first entry after the position.
		perm := slices.DeleteFunc(slices.Clone(seen), func(e ca.RevocationEntry) bool { return !e.Expiry.IsZero() })
		k, _ := revocation.ParseKeyEntry(perm[0].Value)
		if _, err := s.LiftKey(ctx, k); err != nil {
			t.Fatal(err)
		}
		page, _, err := s.StatePage(ctx, caKey, ca.EntryCursorOf(perm[0]), 0)
		if err != nil || !cmp.Equal(perm[1:], page.Entries) {
			t.Errorf("after a lifted permanent entry: %v\n%s", err, cmp.Diff(perm[1:], page.Entries))
		}
		page, next, err := s.StatePage(ctx, caKey, ca.EntryCursor{Expiry: ca.PermanentExpiry, Member: "\xff"}, 1)
		if err != nil || len(page.Entries) != 0 || !next.IsZero() || page.Version == 0 {
			t.Errorf("after the end: %+v next %+v, %v; want no entry, the version", page, next, err)
		}
	})

	t.Run("refused at signing", func(t *testing.T) {
		c := &clock{t: t0}
		s := newStore(t, c)
		if why, err := s.Refused(ctx, caKey, []string{"alice"}, userKey); err != nil || why != "" {
			t.Fatalf("Refused = %q, %v before any revocation", why, err)
		}
		if _, err := s.Revoke(ctx, caKey, []ca.RevocationEntry{{Kind: ca.RevokedKey, Value: revocation.KeyEntry(userKey), Expiry: t0.Add(time.Hour)}}); err != nil {
			t.Fatal(err)
		}
		if why, _ := s.Refused(ctx, caKey, []string{"alice"}, userKey); !strings.Contains(why, "public key has been revoked") {
			t.Errorf("revoked key: %q", why)
		}
		// After a CA key rotation the next CA key signs: the key stays refused.
		if why, _ := s.Refused(ctx, testenv.PublicKey(t), []string{"alice"}, userKey); !strings.Contains(why, "public key has been revoked") {
			t.Errorf("revoked key, asked of another CA key: %q", why)
		}
		if err := s.BlockIdentity(ctx, "bob", t0.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if why, _ := s.Refused(ctx, caKey, []string{"bob"}, testenv.PublicKey(t)); !strings.Contains(why, "bob were revoked") {
			t.Errorf("blocked identity: %q", why)
		}
		c.Set(t0.Add(2 * time.Hour))
		if why, _ := s.Refused(ctx, caKey, []string{"bob"}, userKey); why != "" {
			t.Errorf("after expiry: %q", why)
		}
	})
}
