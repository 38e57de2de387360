package audit

import (
	"strings"
	"testing"
)

// TestLinkMACIsMAC: the MAC commit computes with its reused HMAC (linkMAC) is the chain's MAC
// (mac, which Verify recomputes from scratch), record after record, with and without a key:
// nothing of one record's MAC is carried into the next.
func TestLinkMACIsMAC(t *testing.T) {
	for _, key := range [][]byte{nil, []byte(strings.Repeat("k", KeySize))} {
		l := New(nil, Options{Key: key})
		prev := ""
		for i, rec := range []string{`{"v":2,"action":"user"}`, "", `{"a":1}`, strings.Repeat("x", 300), `{"v":2}`} {
			seq := uint64(i*1000 + 1)
			got, want := l.linkMAC(prev, seq, []byte(rec)), l.mac(prev, seq, []byte(rec))
			if got != want {
				t.Fatalf("key %v, record %d: linkMAC = %s, mac = %s", key != nil, i, got, want)
			}
			// The same record again after another: the same MAC.
			if again := l.linkMAC(prev, seq, []byte(rec)); i > 0 && again != want {
				t.Fatalf("key %v, record %d again: %s, want %s", key != nil, i, again, want)
			}
			prev = got
		}
	}
}
