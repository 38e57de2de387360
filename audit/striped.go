package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/sshca/sshca/store"
)

// Striped marks make sshca that reads stripe 0 alone refuse a striped log. sshca of store
// layout 2 and before walks stripe 0 only, and it does not read the store's layout before
// reading the chain (its audit verify, archive, report and store rebuild), so raising the
// layout does not stop it: over a striped log it said "intact" having read one stripe, and its
// store rebuild dropped what the other stripes recorded. So before a Log first appends beyond
// stripe 0, it appends to stripe 0 a striped mark, an entry chained and MACed like a record,
// which such a reader cannot decode: its "time" is a sentence, and the decoder of an older
// sshca fails on it with that sentence in its error ("... parsing time \"this audit log is
// striped ...: upgrade sshca\" ..."), before it reads or restores anything. Archive appends
// another after it trims stripe 0 of a striped log, so the chain in Redis keeps one.
//
// A striped mark's rec is JSON, {"striped":{"layout":3,"stripes":n},"time":"<stripedNotice>"}:
// the store layout that lets a log stripe and the stripes the Log appends to. Audit records
// never start with {"striped":, so the two cannot be confused; Verify and VerifyArchive check
// it like any entry and hand it to no caller.

// StripedMark is a striped mark's content.
type StripedMark struct {
	Layout  int `json:"layout"`  // store.LayoutStripes when it was written
	Stripes int `json:"stripes"` // the stripes of the Log that wrote it (1 for Archive's)
}

// stripedNotice is the "time" of a striped mark: what an older sshca prints when it refuses
// the log.
const stripedNotice = "this audit log is striped (store layout 3): this sshca reads stripe 0 alone and would miss the other stripes; upgrade sshca"

type stripedRecord struct {
	Striped *StripedMark `json:"striped"`
	Time    string       `json:"time"`
}

var stripedPrefix = []byte(`{"striped":`)

func isStriped(body []byte) bool { return bytes.HasPrefix(body, stripedPrefix) }

// stripedBody is the rec of a striped mark written by a Log of n stripes.
func stripedBody(n int) []byte {
	b, _ := json.Marshal(stripedRecord{Striped: &StripedMark{Layout: store.LayoutStripes, Stripes: n}, Time: stripedNotice})
	return b
}

// parseStriped reads a striped mark's rec, strictly: only this package writes one.
func parseStriped(body []byte) (*StripedMark, error) {
	var r stripedRecord
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil || r.Striped == nil || r.Time != stripedNotice {
		return nil, fmt.Errorf("malformed striped mark: %.120s", body)
	}
	if m := r.Striped; m.Layout < store.LayoutStripes || m.Stripes < 1 || m.Stripes > MaxStripes {
		return nil, fmt.Errorf("malformed striped mark: layout %d, %d stripes", m.Layout, m.Stripes)
	}
	return r.Striped, nil
}

// appendStriped appends a striped mark to stripe 0 alone, whatever stripe the Log appends to.
// l.lock must be held.
func (l *Log) appendStriped(ctx context.Context) error {
	p := &pending{body: stripedBody(len(l.stripes)), ctx: ctx, done: make(chan error, 1)}
	raised := l.raised
	l.raised, l.pin0 = true, true // the mark goes first, alone in stripe 0
	defer func() { l.raised, l.pin0 = raised, false }()
	return l.commit([]*pending{p}, 0)
}

// markStriped appends a striped mark to stripe 0, taking the chain's lock (Archive).
func (l *Log) markStriped(ctx context.Context) error {
	select {
	case l.lock <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("mark stripe 0 as striped: %w", context.Cause(ctx))
	}
	defer func() { <-l.lock }()
	if err := l.appendStriped(ctx); err != nil {
		return fmt.Errorf("mark stripe 0 as striped: %w", err)
	}
	return nil
}

// stripedAlready reads the stripe count kept in Redis: above 1, whoever raised it appended a
// striped mark first. A count it cannot read is taken as not: a mark more costs one entry.
func (l *Log) stripedAlready(ctx context.Context) bool {
	v, err := l.rdb.Get(ctx, store.Keys{Prefix: l.prefix}.AuditStripes()).Result()
	if err != nil {
		return false
	}
	n, err := strconv.Atoi(v)
	return err == nil && n > 1
}
