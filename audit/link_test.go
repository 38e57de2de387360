package audit

import (
	"strings"
	"testing"
)

// TestLinkMACIsMAC: the MAC commit computes with its reused HMAC (linkMAC) is the chain's MAC
// (mac, which Verify recomputes from scratch), record after record, with and without a key,
// in stripe 0 and beyond: nothing of one record's MAC is carried into the next.
func TestLinkMACIsMAC(t *testing.T) {
	for _, key := range [][]byte{nil, []byte(strings.Repeat("k", KeySize))} {
		for _, stripe := range []int{0, 1, 12} {
			l := New(nil, Options{Key: key})
			prev := ""
			for i, rec := range []string{`{"v":2,"action":"user"}`, "", `{"a":1}`, strings.Repeat("x", 300), `{"v":2}`} {
				seq := uint64(i*1000 + 1)
				got, want := l.linkMAC(stripe, prev, seq, []byte(rec)), l.mac(stripe, prev, seq, []byte(rec))
				if got != want {
					t.Fatalf("key %v, record %d: linkMAC = %s, mac = %s", key != nil, i, got, want)
				}
				// The same record again after another: the same MAC.
				if again := l.linkMAC(stripe, prev, seq, []byte(rec)); i > 0 && again != want {
					t.Fatalf("key %v, record %d again: %s, want %s", key != nil, i, again, want)
				}
				prev = got
			}
		}
	}
	// A record's MAC depends on its stripe.
	l := New(nil, Options{Key: []byte("k")})
	if l.mac(0, "", 1, nil) == l.mac(1, "", 1, nil) || l.mac(1, "", 1, nil) == l.mac(2, "", 1, nil) {
		t.Fatal("the same record has the same MAC in two stripes")
	}
}
