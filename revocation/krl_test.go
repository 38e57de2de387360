package revocation_test

import (
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/revocation"
)

// TestVersionOrdersGenerations: the version of several scopes keeps the generation in its high
// bits (a sum of composed versions would carry two scopes of generation 1 into generation 2,
// and let a store rolled back to generation 1 with busier scopes outrank a rebuilt one), and
// every version of a rebuilt store's scopes is above every version of the lost store's, however
// busy those were; BuildKRL writes the same number into the KRL.
func TestVersionOrdersGenerations(t *testing.T) {
	user, host := testenv.PublicKey(t), testenv.PublicKey(t)
	st := func(k ssh.PublicKey, gen uint16, n uint64) ca.RevocationState {
		return ca.RevocationState{CA: k, Version: revocation.ComposeVersion(gen, n)}
	}
	old := revocation.Version(st(user, 1, 1<<40), st(host, 1, 1<<40))
	if g, n := revocation.SplitVersion(old); g != 1 || n != 2<<40 {
		t.Errorf("two scopes of generation 1: version %d is generation %d counter %d, want 1 and %d", old, g, n, uint64(2<<40))
	}
	rebuilt := revocation.Version(st(user, 2, 1), st(host, 2, 0))
	if rebuilt <= old {
		t.Errorf("rebuilt store's version %d is not above the lost store's %d", rebuilt, old)
	}
	// A scope not written since the rebuild (still of generation 1) does not hold it back.
	mixed := revocation.Version(st(user, 2, 0), st(host, 1, 7))
	if g, _ := revocation.SplitVersion(mixed); g != 2 || mixed <= old {
		t.Errorf("mixed generations: version %d (generation %d), want generation 2 above %d", mixed, g, old)
	}
	k, err := revocation.BuildKRL(st(user, 2, 1), st(host, 2, 0))
	if err != nil {
		t.Fatal(err)
	}
	if k.Version != rebuilt {
		t.Errorf("BuildKRL wrote version %d, Version says %d", k.Version, rebuilt)
	}
}

// TestBuildKRLDateFromState: a KRL's generation date is the newest change of its states, not
// the encoder's clock: the same states encoded at different times are the same bytes, and
// states that never changed give date 0.
func TestBuildKRLDateFromState(t *testing.T) {
	user, retired := testenv.PublicKey(t), testenv.PublicKey(t)
	older := time.Date(2026, 11, 29, 20, 0, 0, 0, time.UTC)
	newer := older.Add(90*time.Minute + 700*time.Millisecond)
	states := []ca.RevocationState{
		{CA: user, Version: 3, Changed: older, Entries: []ca.RevocationEntry{{Kind: ca.RevokedSerial, Value: "7", Expiry: newer.Add(time.Hour)}}},
		{CA: retired, Version: 1, Changed: newer, Entries: []ca.RevocationEntry{{Kind: ca.RevokedKeyID, Value: "a#1", Expiry: newer.Add(time.Hour)}}},
	}
	k, err := revocation.BuildKRL(states...)
	if err != nil {
		t.Fatal(err)
	}
	if want := newer.Truncate(time.Second); !k.GeneratedDate.Equal(want) {
		t.Errorf("generated %v, want the newest change %v", k.GeneratedDate, want)
	}
	first, err := revocation.EncodeKRL(states...)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // a clock-dated encoder would now write another second
	again, err := revocation.EncodeKRL(states...)
	if err != nil {
		t.Fatal(err)
	}
	if string(first) != string(again) {
		t.Error("the same states encoded a second apart give different bytes")
	}
	k, err = revocation.BuildKRL(ca.RevocationState{CA: user})
	if err != nil || !k.GeneratedDate.IsZero() {
		t.Errorf("a scope that never changed: generated %v (%v), want 0", k.GeneratedDate, err)
	}
}
