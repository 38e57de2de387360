// Package audit keeps sshca's audit log in Redis as a hash chain: each record carries the MAC
// of the one before it, its own sequence number, and a MAC over both and its body (HMAC-SHA256
// with the audit key, which lives only on the CA servers; SHA-256 without one). Removing,
// reordering, inserting or changing a record breaks the chain at that record, and Verify says
// where. Every CA replica appends to the one chain: appends are serialised optimistically
// (WATCH the head, MULTI/EXEC the entry and the new head, retry on a conflict).
//
// Layout: <prefix>:{audit}:log is a stream of entries {seq, prev, mac, rec}; <prefix>:{audit}:head
// is "<seq> <mac>" of the last entry, and <prefix>:{audit}:base that of the last entry archived
// away (Archive writes the entries to a file, then trims them). All carry the hash tag {audit},
// so the scripts work on Redis Cluster.
//
// What the chain does not stop: someone with write access to Redis and the audit key can
// rewrite it, and without the key anyone with write access can recompute it; truncating the
// tail together with the head goes unseen by Verify alone. The service also logs each
// record's sequence number and MAC, so logs shipped elsewhere anchor the chain.
package audit

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/ca"
)

// Log is the Redis audit log; it implements ca.AuditLog.
type Log struct {
	rdb    redis.UniversalClient
	key    []byte
	prefix string
	log    *slog.Logger

	mu    sync.Mutex
	known string // the head as this replica last saw it
}

// Options tune a Log.
type Options struct {
	Prefix string       // default "sshca"
	Key    []byte       // the HMAC key; nil for a plain SHA-256 chain
	Logger *slog.Logger // each appended record's seq and MAC are logged here (nil: not logged)
}

// KeySize is the size of a generated audit key.
const KeySize = 32

// New returns the audit log kept in rdb.
func New(rdb redis.UniversalClient, o Options) *Log {
	l := &Log{rdb: rdb, key: o.Key, prefix: o.Prefix, log: o.Logger}
	if l.prefix == "" {
		l.prefix = "sshca"
	}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	return l
}

func (l *Log) stream() string { return l.prefix + ":{audit}:log" }
func (l *Log) head() string   { return l.prefix + ":{audit}:head" }

// base is "<seq> <mac>" of the last record archived and trimmed away ("" when none was): where
// the chain kept in Redis starts.
func (l *Log) base() string { return l.prefix + ":{audit}:base" }

// mac is the chain's link: over the previous MAC, the sequence number and the record.
func (l *Log) mac(prev string, seq uint64, rec []byte) string {
	var h hash.Hash
	if l.key != nil {
		h = hmac.New(sha256.New, l.key)
	} else {
		h = sha256.New()
	}
	fmt.Fprintf(h, "%s\n%d\n", prev, seq)
	h.Write(rec)
	return hex.EncodeToString(h.Sum(nil))
}

// maxAttempts bounds the retries of an append that keeps losing the race for the head.
const maxAttempts = 100

// appendScript adds an entry only if the head is still the one its link was computed from;
// otherwise it answers the current head, from which the caller computes the link again.
var appendScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if not cur then cur = '' end
if cur ~= ARGV[1] then return {0, cur} end
redis.call('XADD', KEYS[2], '*', 'seq', ARGV[3], 'prev', ARGV[4], 'mac', ARGV[5], 'rec', ARGV[6])
redis.call('SET', KEYS[1], ARGV[2])
return {1, ARGV[2]}
`)

// Append adds rec at the end of the chain. It links rec to the head this replica last saw:
// one round trip when no other replica appended in between, one more per head it missed.
func (l *Log) Append(ctx context.Context, rec ca.AuditRecord) error {
	body, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for range maxAttempts {
		prevSeq, prev, err := parseHead(l.known)
		if err != nil {
			return err
		}
		seq := prevSeq + 1
		mac := l.mac(prev, seq, body)
		head := strconv.FormatUint(seq, 10) + " " + mac
		res, err := appendScript.Run(ctx, l.rdb, []string{l.head(), l.stream()},
			l.known, head, strconv.FormatUint(seq, 10), prev, mac, body).Slice()
		if err != nil {
			return fmt.Errorf("audit: append: %w", err)
		}
		if len(res) != 2 {
			return fmt.Errorf("audit: append: unexpected answer %v", res)
		}
		ok, _ := res[0].(int64)
		l.known, _ = res[1].(string)
		if ok == 1 {
			l.log.InfoContext(ctx, "audit", "seq", seq, "mac", mac, "action", rec.Action, "outcome", rec.Outcome, "identity", rec.Identity)
			return nil
		}
	}
	return errors.New("audit: append: too much contention for the head of the chain")
}

// parseHead reads "<seq> <mac>" ("" is the empty log).
func parseHead(v string) (uint64, string, error) {
	if v == "" {
		return 0, "", nil
	}
	seqStr, mac, ok := strings.Cut(v, " ")
	seq, err := strconv.ParseUint(seqStr, 10, 64)
	if !ok || err != nil {
		return 0, "", fmt.Errorf("audit: the head of the chain is malformed: %q", v)
	}
	return seq, mac, nil
}

func (l *Log) readBase(ctx context.Context) (uint64, string, error) {
	v, err := l.rdb.Get(ctx, l.base()).Result()
	if errors.Is(err, redis.Nil) {
		return 0, "", nil
	}
	if err != nil {
		return 0, "", fmt.Errorf("audit: read: %w", err)
	}
	return parseHead(v)
}

// Report is what Verify found.
type Report struct {
	Records int    // entries checked
	Head    string // MAC of the last entry ("" for an empty log)
}

// Entry is one record as kept, with its place in the chain.
type Entry struct {
	ID     string
	Seq    uint64
	Prev   string
	MAC    string
	Raw    json.RawMessage // the record as chained
	Record ca.AuditRecord
}

// Verify walks the whole chain kept in Redis and reports the first entry that breaks it. each,
// when not nil, sees every entry that checks out, in order. It checks up to the head it read
// first, so records appended while it runs do not trouble it.
func (l *Log) Verify(ctx context.Context, each func(Entry)) (Report, error) {
	var rep Report
	marks, err := l.rdb.MGet(ctx, l.base(), l.head()).Result()
	if err != nil {
		return rep, fmt.Errorf("audit: read: %w", err)
	}
	mark := func(v any) string { s, _ := v.(string); return s }
	seq, prev, err := parseHead(mark(marks[0]))
	if err != nil {
		return rep, err
	}
	headSeq, headMAC, err := parseHead(mark(marks[1]))
	if err != nil {
		return rep, err
	}
	from := "-"
	for seq < headSeq {
		msgs, err := l.rdb.XRangeN(ctx, l.stream(), from, "+", 1000).Result()
		if err != nil {
			return rep, fmt.Errorf("audit: read: %w", err)
		}
		for _, m := range msgs {
			if seq == headSeq {
				break // appended after the head was read
			}
			e, err := l.check(m, prev, seq+1)
			if err != nil {
				return rep, fmt.Errorf("audit: entry %s (after %d good records): %w", m.ID, rep.Records, err)
			}
			if each != nil {
				each(e)
			}
			prev, seq = e.MAC, e.Seq
			rep.Records++
			rep.Head = e.MAC
		}
		if len(msgs) < 1000 {
			break
		}
		from = "(" + msgs[len(msgs)-1].ID
	}
	if headSeq != seq || headMAC != prev {
		return rep, fmt.Errorf("audit: the head says record %d (%.16s…) is the last, the log ends at %d (%.16s…): records were removed from the end", headSeq, headMAC, seq, prev)
	}
	return rep, nil
}

func (l *Log) check(m redis.XMessage, prev string, wantSeq uint64) (Entry, error) {
	field := func(k string) string { s, _ := m.Values[k].(string); return s }
	seq, err := strconv.ParseUint(field("seq"), 10, 64)
	if err != nil {
		return Entry{}, fmt.Errorf("malformed sequence number %q", field("seq"))
	}
	switch {
	case seq != wantSeq:
		return Entry{}, fmt.Errorf("record %d where %d should be: records were removed or inserted", seq, wantSeq)
	case field("prev") != prev:
		return Entry{}, errors.New("it does not follow the record before it: records were removed or reordered")
	}
	body := []byte(field("rec"))
	mac := field("mac")
	if !hmac.Equal([]byte(mac), []byte(l.mac(prev, seq, body))) {
		return Entry{}, errors.New("its MAC does not match its content: the record was changed, or the audit key is not the one it was written with")
	}
	e := Entry{ID: m.ID, Seq: seq, Prev: prev, MAC: mac, Raw: body}
	if err := json.Unmarshal(body, &e.Record); err != nil {
		return Entry{}, fmt.Errorf("malformed record: %w", err)
	}
	return e, nil
}

// archived is one line of an archive: an entry with what its link needs.
type archived struct {
	Seq  uint64          `json:"seq"`
	Prev string          `json:"prev"`
	MAC  string          `json:"mac"`
	Rec  json.RawMessage `json:"rec"`
}

// trimScript removes the archived entries up to and including the last one, and moves the base
// to it, unless someone else archived in between.
var trimScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if not cur then cur = '' end
if cur ~= ARGV[1] then return 0 end
redis.call('XTRIM', KEYS[2], 'MINID', ARGV[3])
redis.call('XDEL', KEYS[2], ARGV[3])
redis.call('SET', KEYS[1], ARGV[2])
return 1
`)

// Archive verifies the chain, writes every entry to w (JSON lines that VerifyArchive checks,
// without Redis), syncs w when it can (a file), and then trims the entries from Redis, moving
// the chain's base past them. Records appended meanwhile stay. Once trimmed, the archive is
// the only copy.
func (l *Log) Archive(ctx context.Context, w io.Writer) (Report, error) {
	baseSeq, baseMAC, err := l.readBase(ctx)
	if err != nil {
		return Report{}, err
	}
	enc := json.NewEncoder(w)
	var last Entry
	var werr error
	rep, err := l.Verify(ctx, func(e Entry) {
		if werr == nil {
			werr = enc.Encode(archived{Seq: e.Seq, Prev: e.Prev, MAC: e.MAC, Rec: e.Raw})
		}
		last = e
	})
	if err != nil {
		return rep, err
	}
	if werr != nil {
		return rep, fmt.Errorf("audit: archive: %w", werr)
	}
	if rep.Records == 0 {
		return rep, nil
	}
	// The archive must be on disk before the records leave Redis.
	if f, ok := w.(interface{ Sync() error }); ok {
		if err := f.Sync(); err != nil {
			return rep, fmt.Errorf("audit: archive: %w", err)
		}
	}
	old := ""
	if baseSeq > 0 {
		old = strconv.FormatUint(baseSeq, 10) + " " + baseMAC
	}
	ok, err := trimScript.Run(ctx, l.rdb, []string{l.base(), l.stream()}, old,
		strconv.FormatUint(last.Seq, 10)+" "+last.MAC, last.ID).Int()
	if err != nil {
		return rep, fmt.Errorf("audit: trim: %w", err)
	}
	if ok != 1 {
		return rep, errors.New("audit: trim: another archive ran at the same time; nothing was trimmed")
	}
	return rep, nil
}

// ArchiveReport is what VerifyArchive found: the records, and where the archive sits in the
// chain (First's predecessor is the previous archive's Last).
type ArchiveReport struct {
	Records   int
	FirstSeq  uint64
	FirstPrev string
	LastSeq   uint64
	LastMAC   string
}

// VerifyArchive checks an archive written by Archive (or several, concatenated in order).
func (l *Log) VerifyArchive(r io.Reader, each func(Entry)) (ArchiveReport, error) {
	var rep ArchiveReport
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for line := 1; sc.Scan(); line++ {
		var a archived
		if err := json.Unmarshal(sc.Bytes(), &a); err != nil {
			return rep, fmt.Errorf("audit: archive line %d: %w", line, err)
		}
		if rep.Records == 0 {
			rep.FirstSeq, rep.FirstPrev = a.Seq, a.Prev
		} else if a.Seq != rep.LastSeq+1 || a.Prev != rep.LastMAC {
			return rep, fmt.Errorf("audit: archive line %d: record %d does not follow record %d: records were removed, inserted or reordered", line, a.Seq, rep.LastSeq)
		}
		e, err := l.check(redis.XMessage{ID: strconv.Itoa(line), Values: map[string]any{
			"seq": strconv.FormatUint(a.Seq, 10), "prev": a.Prev, "mac": a.MAC, "rec": string(a.Rec)}}, a.Prev, a.Seq)
		if err != nil {
			return rep, fmt.Errorf("audit: archive line %d: %w", line, err)
		}
		if each != nil {
			each(e)
		}
		rep.Records++
		rep.LastSeq, rep.LastMAC = a.Seq, a.MAC
	}
	if err := sc.Err(); err != nil {
		return rep, fmt.Errorf("audit: archive: %w", err)
	}
	return rep, nil
}
