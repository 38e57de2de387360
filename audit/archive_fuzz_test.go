package audit_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/sshca/sshca/audit"
)

// archiveLines builds an archive of n records in each of the given stripes, then a signed
// base mark per stripe, as Archive writes one (the MACs computed here, from the package doc).
func archiveLines(t testing.TB, key []byte, stripes, n int) string {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	for s := range stripes {
		prev := ""
		var seq uint64
		for i := range n {
			seq = uint64(i + 1)
			rec := fmt.Sprintf(`{"v":4,"time":"2026-11-30T00:00:%02dZ","action":"user","outcome":"issued","identity":"u%d"}`, i, i)
			mac := docStripeMAC(key, prev, seq, s, rec)
			line := map[string]any{"seq": seq, "prev": prev, "mac": mac, "rec": json.RawMessage(rec)}
			if s > 0 {
				line["stripe"] = s
			}
			if err := enc.Encode(line); err != nil {
				t.Fatal(err)
			}
			prev = mac
		}
	}
	return b.String()
}

// FuzzVerifyArchive: VerifyArchive reads any input without panicking, hands out only records
// that are in it, and an archive that verifies still verifies once a line is dropped only if
// that line was the first or the last of its stripe (an archive may start anywhere in a
// stripe, the previous archive vouching for its start, but loses no record inside it unnoticed).
// Seeded from archives of one chain and of three stripes.
func FuzzVerifyArchive(f *testing.F) {
	key := []byte("0123456789abcdef0123456789abcdef")
	f.Add(archiveLines(f, key, 1, 3), 1)
	f.Add(archiveLines(f, key, 3, 2), 2)
	f.Add(`{"stripe":1,"base":"1 `+strings.Repeat("a", 64)+` `+strings.Repeat("b", 64)+`"}`, 0)
	f.Add(`{"stripe":2000,"seq":1}`, 0)
	f.Add(`{"seq":1,"prev":"","mac":"`+strings.Repeat("0", 64)+`","rec":{"checkpoint":{"stripes":2,"heads":[{"stripe":1,"seq":1,"mac":"x"}]}}}`, 0)
	l := audit.New(nil, audit.Options{Key: key})
	f.Fuzz(func(t *testing.T, archive string, drop int) {
		n := 0
		ar, err := l.VerifyArchive(strings.NewReader(archive), func(audit.Entry) { n++ })
		if err != nil {
			return
		}
		lines := strings.Split(strings.TrimRight(archive, "\n"), "\n")
		if n != ar.Records || n > len(lines) {
			t.Fatalf("%d records handed out, report %d, %d lines", n, ar.Records, len(lines))
		}
		if len(lines) < 2 || drop < 0 || drop >= len(lines)-1 {
			return
		}
		// Dropping a line of a stripe between two others of it breaks that stripe.
		var this, later struct {
			Stripe int    `json:"stripe"`
			Seq    uint64 `json:"seq"`
		}
		if json.Unmarshal([]byte(lines[drop]), &this) != nil || this.Seq == 0 {
			return
		}
		followed, preceded := false, false
		for _, line := range lines[drop+1:] {
			later.Stripe, later.Seq = 0, 0
			if json.Unmarshal([]byte(line), &later) == nil && later.Stripe == this.Stripe {
				followed = true
			}
		}
		for _, line := range lines[:drop] {
			later.Stripe, later.Seq = 0, 0
			if json.Unmarshal([]byte(line), &later) == nil && later.Stripe == this.Stripe && later.Seq > 0 {
				preceded = true
			}
		}
		rest := strings.Join(append(append([]string{}, lines[:drop]...), lines[drop+1:]...), "\n")
		if _, err := l.VerifyArchive(strings.NewReader(rest), nil); followed && preceded && err == nil {
			t.Fatalf("line %d (stripe %d, record %d) dropped, and the archive still verifies", drop, this.Stripe, this.Seq)
		}
	})
}
