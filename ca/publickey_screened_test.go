package ca_test

import (
	"math/big"
	"testing"

	"github.com/sshca/sshca/ca"
)

// TestScreenedRSAOnlyRemembersGoodModuli: the set of screened moduli saves the small-factor gcd
// on a key's next submission; a weak modulus is refused every time, never remembered, and a
// good one stays good after the set is emptied.
func TestScreenedRSAOnlyRemembersGoodModuli(t *testing.T) {
	f := rsaFixtures()
	e := big.NewInt(65537)
	weak := rsaLine(e, new(big.Int).Mul(f.fact, f.bigPrime))
	good := rsaLine(e, f.key.N)
	ca.ForgetScreenedRSA()
	for i := range 3 {
		if _, err := ca.ParsePublicKey(weak); err == nil {
			t.Fatalf("submission %d: a modulus with the factor 65521 was accepted", i+1)
		}
		if _, err := ca.ParsePublicKey(good); err != nil {
			t.Fatalf("submission %d: good key refused: %v", i+1, err)
		}
	}
	ca.ForgetScreenedRSA()
	if _, err := ca.ParsePublicKey(good); err != nil {
		t.Fatalf("good key refused after forgetting: %v", err)
	}
}
