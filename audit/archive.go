package audit

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/store"
)

// archived is one line of an archive: an entry with what its link needs, or (Base set, nothing
// else) the signed base mark of the record before it; Stripe is the stripe of either (absent:
// stripe 0, so archives written before stripes read as they did).
type archived struct {
	Stripe int             `json:"stripe,omitempty"`
	Seq    uint64          `json:"seq,omitempty"`
	Prev   string          `json:"prev,omitempty"`
	MAC    string          `json:"mac,omitempty"`
	Rec    json.RawMessage `json:"rec,omitempty"`
	Base   string          `json:"base,omitempty"`
	// Seal and SealMAC make a seal line (seal.go): the last entry of every stripe the file
	// holds, signed, written by Archive at the end of each run on a striped log.
	Seal    []SealHead `json:"seal,omitempty"`
	SealMAC string     `json:"seal_mac,omitempty"`
}

// stripeSays prefixes a message about stripe i beyond stripe 0 with the stripe, so that the
// messages of a log without stripes stay what they were.
func stripeSays(i int) string {
	if i == 0 {
		return ""
	}
	return "stripe " + strconv.Itoa(i) + ": "
}

// VerifyAfter is Verify for a chain in Redis that must go on from the latest archive, as
// VerifyArchive found it: the base mark of each stripe the archive holds must name the
// archive's last record of that stripe (sequence number and MAC), so a log emptied or cut
// short (the base, head and stream deleted, or the base moved) fails, as does a stripe the
// archive holds that the chain in Redis no longer has. A legacy base mark that names exactly
// that record is accepted, the archive vouching for it. An archive with nothing of a stripe
// constrains nothing of it; but the archive must hold the seal that Redis recorded for the
// last completed archive run of a striped log (CheckSealed), so a stripe that run archived
// cannot be cut out of it with the run's seal. Report.SealRecorded says Redis had one.
//
// An archive that goes beyond the base marks, its extra records still in Redis as it holds
// them, is an archive run interrupted before it trimmed (a crash between writing the file and
// trimming Redis): *UnfinishedArchiveError, which the next Archive to the file clears.
func (l *Log) VerifyAfter(ctx context.Context, ar ArchiveReport, each func(Entry)) (Report, error) {
	recorded, err := l.CheckSealed(ctx, ar)
	if err != nil {
		return Report{}, err
	}
	// ahead: the stripes whose archive goes on beyond the base mark in Redis, and whether
	// the chain in Redis holds the archive's last record of each (found).
	type aheadOf struct {
		seq   uint64
		mac   string
		found bool
	}
	ahead := map[int]*aheadOf{}
	rep, err := l.walk(ctx, &ar, func(stripe int, b baseMark) (bool, error) {
		as := ar.stripe(stripe)
		if !as.positioned() {
			return false, nil
		}
		if as.LastSeq > b.seq && (b.seq > 0 || as.Entries > 0 && as.FirstSeq == 1) {
			// Either an interrupted run (Redis still holds the records the file has beyond
			// the base: the walk finds them) or records removed from Redis (it does not).
			ahead[stripe] = &aheadOf{seq: as.LastSeq, mac: as.LastMAC}
			return false, nil
		}
		if b.seq == 0 {
			return false, fmt.Errorf("audit: %sthe chain in Redis has no base mark, but the archive ends at record %d: the log was emptied or lost (or the archive is not of this log)", stripeSays(stripe), as.LastSeq)
		}
		if b.seq != as.LastSeq || b.mac != as.LastMAC {
			return false, fmt.Errorf("audit: %sthe base mark says the chain in Redis goes on from record %d (%.16s…), the archive ends at record %d (%.16s…): records were removed, or this is not the latest archive", stripeSays(stripe), b.seq, b.mac, as.LastSeq, as.LastMAC)
		}
		return true, nil
	}, func(e Entry) {
		if a := ahead[e.Stripe]; a != nil && e.Seq == a.seq && e.MAC == a.mac {
			a.found = true
		}
		if each != nil && e.isRecord() {
			each(e)
		}
	})
	rep.SealRecorded = recorded
	// lost is the error for an ahead stripe whose records Redis does not hold.
	lost := func(i int, a *aheadOf) error {
		sr := rep.Stripes[i]
		if sr.BaseSeq == 0 {
			return fmt.Errorf("audit: %sthe chain in Redis has no base mark, but the archive ends at record %d: the log was emptied or lost (or the archive is not of this log)", stripeSays(i), a.seq)
		}
		return fmt.Errorf("audit: %sthe base mark says the chain in Redis goes on from record %d, the archive ends at record %d (%.16s…), which the chain in Redis does not hold (it ends at %d): records were removed from Redis, or the archive is not of this log", stripeSays(i), sr.BaseSeq, a.seq, a.mac, sr.HeadSeq)
	}
	if err != nil {
		// A stripe emptied in Redis also breaks the checkpoints' claims on it; that it was
		// emptied is the better answer.
		var cut *StripeCutError
		if errors.As(err, &cut) {
			for i := range rep.Stripes {
				if a := ahead[i]; a != nil && !a.found {
					return rep, lost(i, a)
				}
			}
		}
		return rep, err
	}
	for i := len(rep.Stripes); i < len(ar.Stripes); i++ {
		if ar.Stripes[i].positioned() {
			return rep, fmt.Errorf("audit: the archive holds stripe %d, the chain in Redis has %d stripes: the stripe count was lowered, or the stripe lost", i, len(rep.Stripes))
		}
	}
	for i := range rep.Stripes {
		a := ahead[i]
		if a == nil {
			continue
		}
		if !a.found {
			return rep, lost(i, a)
		}
		return rep, &UnfinishedArchiveError{Stripe: i, Base: rep.Stripes[i].BaseSeq, Last: a.seq}
	}
	return rep, nil
}

// UnfinishedArchiveError is VerifyAfter's error for an archive that goes on beyond the base
// mark of a stripe in Redis while Redis still holds those records, as the file has them: an
// archive run wrote (and may have sealed) them and was interrupted before it trimmed Redis.
// Nothing is lost; Archive to the same file completes the run.
type UnfinishedArchiveError struct {
	Stripe     int
	Base, Last uint64 // the base mark in Redis; the archive's last record of the stripe
}

func (e *UnfinishedArchiveError) Error() string {
	return fmt.Sprintf("audit: %sthe archive holds records up to %d, which the chain in Redis still holds after its base mark (record %d): an archive run was interrupted after writing the file and before trimming Redis; nothing is lost: run `sshca audit archive` to this file again to complete it", stripeSays(e.Stripe), e.Last, e.Base)
}

// trimScript moves the base mark from ARGV[1] (what the archive started from) to ARGV[2] and
// removes the entries up to and including ARGV[3] (none when it is ""), unless someone else
// archived in between; given KEYS[3], KEYS[4], ... (Keys.AuditSealed, Keys.AuditArchiveFile,
// stripe 0's tag), it sets each to ARGV[4], ARGV[5], ... in the same step.
var trimScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if not cur then cur = '' end
if cur ~= ARGV[1] then return 0 end
if ARGV[3] ~= '' then
  redis.call('XTRIM', KEYS[2], 'MINID', ARGV[3])
  redis.call('XDEL', KEYS[2], ARGV[3])
end
redis.call('SET', KEYS[1], ARGV[2])
for i = 3, #KEYS do redis.call('SET', KEYS[i], ARGV[i + 1]) end
return 1
`)

// ArchiveFile is what Redis records of the file that the last completed archive run wrote
// (Keys.AuditArchiveFile), so that a run or a verification given that file gone, emptied,
// cut back or replaced finds out: nothing in a file that is no longer there can say so, and an
// empty file otherwise reads as a new one. It names a file; it vouches for no record (the
// chain, the base marks and the seals do).
type ArchiveFile struct {
	Path string `json:"path"` // absolute, as given (a symbolic link is not resolved)
	Host string `json:"host"` // the host the run ran on (told in errors, not matched: a container's changes)
	Size int64  `json:"size"` // bytes, once the run synced it
	// Tail is the lowercase hex SHA-256 of the file's last line (its newline included) at Size.
	Tail string    `json:"tail"`
	Seal string    `json:"seal,omitempty"` // the MAC of the run's seal (striped logs)
	Seq  uint64    `json:"seq"`            // stripe 0's last record in the file
	At   time.Time `json:"at"`
}

// RecordedArchiveFile is the file the last completed archive run wrote, as Redis records it:
// nil when it records none (never archived, or archived by sshca before stop 18).
func (l *Log) RecordedArchiveFile(ctx context.Context) (*ArchiveFile, error) {
	key := store.Keys{Prefix: l.prefix}.AuditArchiveFile()
	v, err := l.rdb.Get(ctx, key).Bytes()
	if err == redis.Nil {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("audit: read %s: %w", key, err)
	}
	var f ArchiveFile
	if err := json.Unmarshal(v, &f); err != nil || f.Path == "" || f.Size <= 0 || len(f.Tail) != 64 {
		return nil, fmt.Errorf("audit: the record of the last archive run's file in Redis (%s) is malformed: %.200q", key, v)
	}
	return &f, nil
}

// ArchiveOptions are Archive's choices beyond the file.
type ArchiveOptions struct {
	// Synced, when not nil, is called once the file is synced and before anything in Redis
	// changes. An error stops the run, nothing trimmed (the file was replaced while the run
	// wrote it, say). The file it describes (Path, Host, Size, Tail; Archive fills Seal and
	// Seq) is recorded in Redis in the step that trims stripe 0, as the seal is.
	Synced func() (*ArchiveFile, error)
}

// archiving is what Archive keeps of one stripe while it walks it.
type archiving struct {
	prior  ArchiveStripe // what the file holds of it
	pos    bool          // prior is positioned
	base   baseMark
	last   Entry
	sawEnd bool
	// first is the first entry this run wrote of it (0: none); end, once the run's lines are
	// written, where the file ends of it (seq 0: the file holds nothing of it), for the seal.
	first uint64
	end   baseMark
}

// Archive verifies the chain, writes every entry of every stripe to w (JSON lines that
// VerifyArchive checks, without Redis, each naming its stripe beyond stripe 0) followed by the
// signed base mark of each stripe's last one, syncs w when it can (a file), and then trims the
// entries from Redis and moves each stripe's base mark to its last one, one stripe at a time.
// Records appended meanwhile stay. Once trimmed, the archive is the only copy.
//
// prior is what VerifyArchive found in what w appends to (nil or empty for a new file). When
// given, each stripe must go on from it: entries it already holds (an earlier run that wrote
// them but did not trim, or trimmed only some stripes) are checked against its end and not
// written again, and an archive that ends before the base mark, or after the head, is refused.
// A legacy base mark is accepted when prior ends at exactly its record, or with
// Options.AcceptLegacyBase; it is replaced by a signed one even when there is nothing to trim.
func (l *Log) Archive(ctx context.Context, w io.Writer, prior *ArchiveReport) (Report, error) {
	return l.ArchiveWith(ctx, w, prior, ArchiveOptions{})
}

// ArchiveWith is Archive with options.
func (l *Log) ArchiveWith(ctx context.Context, w io.Writer, prior *ArchiveReport, o ArchiveOptions) (Report, error) {
	// A file that lacks the seal Redis recorded was cut back before it: appending would seal
	// the cut. A new (empty) file goes on from another one and holds no seal yet.
	if prior != nil && (prior.positioned() || prior.Seals > 0) {
		if _, err := l.CheckSealed(ctx, *prior); err != nil {
			return Report{}, fmt.Errorf("audit: archive: nothing appended: %w", err)
		}
	}
	var st []*archiving
	at := func(i int) *archiving {
		for len(st) <= i {
			a := &archiving{}
			if prior != nil {
				a.prior = prior.stripe(len(st))
				a.pos = a.prior.positioned()
			}
			a.sawEnd = !a.pos
			st = append(st, a)
		}
		return st[i]
	}
	written := make(map[int]int)
	enc := json.NewEncoder(w)
	var werr error
	rep, err := l.walk(ctx, prior, func(i int, b baseMark) (bool, error) {
		a := at(i)
		a.base = b
		if !a.pos {
			return false, nil
		}
		switch {
		case a.prior.LastSeq < b.seq:
			return false, fmt.Errorf("audit: archive: %sthe file ends at record %d, the chain in Redis goes on from record %d: the records between are in a later archive; archive to that one or to a new file", stripeSays(i), a.prior.LastSeq, b.seq)
		case a.prior.LastSeq == b.seq && a.prior.LastMAC != b.mac:
			return false, fmt.Errorf("audit: archive: %sthe file ends at record %d (%.16s…), the base mark names another record %d (%.16s…)", stripeSays(i), a.prior.LastSeq, a.prior.LastMAC, b.seq, b.mac)
		}
		a.sawEnd = a.prior.LastSeq == b.seq
		return a.sawEnd, nil
	}, func(e Entry) {
		a := at(e.Stripe)
		a.last = e
		if a.pos && e.Seq <= a.prior.LastSeq {
			if e.Seq == a.prior.LastSeq {
				if e.MAC != a.prior.LastMAC && werr == nil {
					werr = fmt.Errorf("%sthe file's record %d (%.16s…) is not the chain's (%.16s…)", stripeSays(e.Stripe), e.Seq, a.prior.LastMAC, e.MAC)
				}
				a.sawEnd = true
			}
			return
		}
		if werr == nil {
			if a.first == 0 {
				a.first = e.Seq
			}
			werr = enc.Encode(archived{Stripe: e.Stripe, Seq: e.Seq, Prev: e.Prev, MAC: e.MAC, Rec: e.Raw})
			if e.isRecord() {
				written[e.Stripe]++
			}
		}
	})
	if err != nil {
		return Report{}, err
	}
	if werr != nil {
		return Report{}, fmt.Errorf("audit: archive: %w", werr)
	}
	if prior != nil {
		for i := len(rep.Stripes); i < len(prior.Stripes); i++ {
			if prior.Stripes[i].positioned() {
				return Report{}, fmt.Errorf("audit: archive: the file holds stripe %d, the chain in Redis has %d stripes: the stripe count was lowered, or the stripe lost", i, len(rep.Stripes))
			}
		}
	}
	type trim struct {
		stripe        int
		from, to, end string
	}
	var trims []trim
	out := Report{LegacyBase: rep.LegacyBase}
	for i, sr := range rep.Stripes {
		a := at(i)
		if !a.sawEnd {
			return Report{}, fmt.Errorf("audit: archive: %sthe file holds records up to %d, the chain in Redis ends at record %d: the log was cut short", stripeSays(i), a.prior.LastSeq, sr.HeadSeq)
		}
		entries := sr.Records + sr.Checkpoints + sr.StripedMarks
		endSeq, endMAC := a.base.seq, a.base.mac
		if entries > 0 {
			endSeq, endMAC = a.last.Seq, a.last.MAC
		}
		if a.pos {
			a.end = baseMark{seq: a.prior.LastSeq, mac: a.prior.LastMAC}
		}
		if entries > 0 {
			a.end = baseMark{seq: endSeq, mac: endMAC}
		}
		out.Records += written[i]
		out.Stripes = append(out.Stripes, StripeReport{Stripe: i, Records: written[i], HeadSeq: sr.HeadSeq, Head: sr.Head, BaseSeq: endSeq, LegacyBase: sr.LegacyBase})
		if i == 0 {
			out.Head, out.BaseSeq = sr.Head, endSeq
		}
		if entries == 0 && !a.base.legacy() {
			continue // nothing to trim, nothing to sign
		}
		newBase := l.signedBase(i, endSeq, endMAC)
		a.end = baseMark{seq: endSeq, mac: endMAC}
		if !(a.pos && a.prior.EndsSigned && a.prior.LastSeq == endSeq) {
			if err := enc.Encode(archived{Stripe: i, Base: newBase}); err != nil {
				return Report{}, fmt.Errorf("audit: archive: %w", err)
			}
		}
		trims = append(trims, trim{i, a.base.raw, newBase, a.last.ID})
	}
	// A striped log's run ends with a seal naming every stripe's end in the file, so that
	// lines of one stripe cut out, or one stripe cut back, no longer verify (seal.go). It is
	// written even when nothing else was: it seals a file written before seals.
	var seal *archived
	if len(rep.Stripes) > 1 && (len(trims) > 0 || (prior != nil && !prior.Sealed && prior.positioned())) {
		var heads []SealHead
		for i := range rep.Stripes {
			a := at(i)
			if a.end.seq == 0 {
				continue
			}
			first := a.first
			if a.pos && a.prior.Entries > 0 {
				first = a.prior.FirstSeq
			}
			heads = append(heads, SealHead{Stripe: i, First: first, Seq: a.end.seq, MAC: a.end.mac})
		}
		seal = &archived{Seal: heads, SealMAC: l.sealMAC(heads)}
		if err := enc.Encode(*seal); err != nil {
			return Report{}, fmt.Errorf("audit: archive: %w", err)
		}
	}
	if len(trims) == 0 && seal == nil {
		return out, nil
	}
	// The archive must be on disk before the records leave Redis, and its seal before Redis
	// records it (a recorded seal the file lacks would refuse the file).
	if f, ok := w.(interface{ Sync() error }); ok {
		if err := f.Sync(); err != nil {
			return Report{}, fmt.Errorf("audit: archive: %w", err)
		}
	}
	// Redis records the seal no later than it trims anything the seal covers: a record
	// trimmed is then always under a seal that Redis names, so cutting that seal (and the
	// records) out of the file is found (CheckSealed). Stripe 0, trimmed first, records it in
	// the step that trims it, so a run that another run beat to the trim records nothing
	// (its seal, recorded, would refuse the other run's file); a run that trims no stripe 0
	// records it alone, first. A crash before leaves Redis naming an earlier seal the file
	// still holds, and the records untrimmed.
	// The file the run wrote is recorded the same way (ArchiveFile), so that it cannot go
	// (deleted, emptied, cut back) without the next run or verification seeing it.
	keys := store.Keys{Prefix: l.prefix}
	var recKeys []string
	var recVals []any
	if seal != nil {
		sealJSON, err := json.Marshal(*seal)
		if err != nil {
			return Report{}, fmt.Errorf("audit: archive: %w", err)
		}
		recKeys, recVals = append(recKeys, keys.AuditSealed()), append(recVals, sealJSON)
	}
	if o.Synced != nil {
		af, err := o.Synced()
		if err != nil {
			return Report{}, fmt.Errorf("audit: archive: nothing trimmed: %w", err)
		}
		if af != nil {
			if seal != nil {
				af.Seal = seal.SealMAC
			}
			af.Seq = out.BaseSeq
			b, err := json.Marshal(af)
			if err != nil {
				return Report{}, fmt.Errorf("audit: archive: %w", err)
			}
			recKeys, recVals = append(recKeys, keys.AuditArchiveFile()), append(recVals, b)
		}
	}
	if len(recKeys) > 0 && (len(trims) == 0 || trims[0].stripe != 0) {
		pairs := make([]any, 0, 2*len(recKeys))
		for i := range recKeys {
			pairs = append(pairs, recKeys[i], recVals[i])
		}
		if err := l.rdb.MSet(ctx, pairs...).Err(); err != nil {
			return Report{}, fmt.Errorf("audit: archive: the record of the seal and the file in Redis (nothing was trimmed): %w", err)
		}
	}
	if len(trims) == 0 {
		return out, nil
	}
	trimmed0 := false
	for _, t := range trims {
		s := newStripe(l.prefix, t.stripe)
		keys, args := []string{s.baseKey, s.streamKey}, []any{t.from, t.to, t.end}
		if t.stripe == 0 {
			keys, args = append(keys, recKeys...), append(args, recVals...)
		}
		ok, err := trimScript.Run(ctx, l.rdb, keys, args...).Int()
		if err != nil {
			return Report{}, fmt.Errorf("audit: trim: %s%w", stripeSays(t.stripe), err)
		}
		if ok != 1 {
			return Report{}, fmt.Errorf("audit: trim: %sanother archive ran at the same time; nothing was trimmed", stripeSays(t.stripe))
		}
		trimmed0 = trimmed0 || t.stripe == 0
	}
	// The chain in Redis of a striped log keeps a striped mark in stripe 0 (striped.go): the
	// trim took the one there was, or the stripes were appended by replicas that wrote none.
	if len(rep.Stripes) > 1 && (trimmed0 || rep.Stripes[0].StripedMarks == 0) {
		if err := l.markStriped(ctx); err != nil {
			return out, fmt.Errorf("audit: archive: the archive is written and Redis trimmed, but %w", err)
		}
	}
	return out, nil
}

// ArchiveStripe is what an archive holds of one stripe, and where it sits in that stripe's
// chain (First's predecessor is the previous archive's Last).
type ArchiveStripe struct {
	Entries   int // entries of the chain: records and checkpoints
	Records   int // of those, audit records
	FirstSeq  uint64
	FirstPrev string
	LastSeq   uint64 // the last entry, or the base mark after it
	LastMAC   string
	// Bases counts the signed base marks; EndsSigned says the stripe's last line is one (an
	// archive written by Archive since base marks are signed ends so; one cut short, or
	// written before, does not).
	Bases      int
	EndsSigned bool
}

// positioned: the archive says where the stripe stands after it.
func (r ArchiveStripe) positioned() bool { return r.Entries > 0 || r.Bases > 0 }

// ArchiveReport is what VerifyArchive found: the records, and where the archive sits in the
// chain. Its fields but Records, Bases and Stripes are stripe 0's (the whole chain of a log
// without stripes), and what Archive and VerifyAfter take as stripe 0's position.
type ArchiveReport struct {
	Records   int // audit records, over every stripe
	FirstSeq  uint64
	FirstPrev string
	LastSeq   uint64 // the last entry, or the base mark after it
	LastMAC   string
	// Bases counts the signed base marks, over every stripe; EndsSigned says stripe 0's last
	// line is one.
	Bases      int
	EndsSigned bool
	// Stripes is what the archive holds of each stripe, by stripe number (none: nothing).
	Stripes []ArchiveStripe
	// Seals counts the seal lines checked (seal.go); Sealed says the file ends with one, so
	// every stripe's end in it is vouched for. A striped archive that does not was written
	// before seals, or its last run was cut short before its seal.
	Seals  int
	Sealed bool

	// cps and macs are the archive's checkpoints and MACs, for VerifyAfter to check claims
	// that cross from the archive into Redis and back (checkClaims).
	cps  []walkedCheckpoint
	macs [][]uint64
	// sealMACs are the MACs of the seals checked, in file order, for CheckSealed.
	sealMACs []string
}

// positioned: the archive holds something of some stripe.
func (r ArchiveReport) positioned() bool {
	for _, s := range r.Stripes {
		if s.positioned() {
			return true
		}
	}
	return r.Records > 0 || r.Bases > 0
}

// stripe is what the archive holds of stripe i (nothing beyond Stripes). Stripe 0's position
// is the one in r's own fields, which a caller may have set (Stripes[0] repeats them).
func (r ArchiveReport) stripe(i int) ArchiveStripe {
	var s ArchiveStripe
	if i < len(r.Stripes) {
		s = r.Stripes[i]
	}
	if i == 0 {
		if len(r.Stripes) == 0 {
			s.Entries, s.Records, s.Bases = r.Records, r.Records, r.Bases
		}
		s.FirstSeq, s.FirstPrev, s.LastSeq, s.LastMAC, s.EndsSigned = r.FirstSeq, r.FirstPrev, r.LastSeq, r.LastMAC, r.EndsSigned
	}
	return s
}

// VerifyArchive checks an archive written by Archive (or several, concatenated in order):
// each stripe's lines form its chain. Archives written before base marks were signed have
// none and still verify; every base mark present must be signed and name the entry of its
// stripe just before it. Every seal (seal.go) must be signed and name the end, in the file up
// to it, of every stripe the file holds there. The checkpoints in the file are checked as
// Verify checks them (checkArchiveClaims): a record they name that the file holds must be the
// one named; one beyond the file's end of its stripe is an error when the file is sealed and
// the stripe was walked after the checkpoint's (Archive walks them in order, so nothing was
// appended to it meanwhile that the checkpoint could name); the rest is for VerifyAfter, in
// Redis. each sees the audit records, not the checkpoints or striped marks.
func (l *Log) VerifyArchive(r io.Reader, each func(Entry)) (ArchiveReport, error) {
	each = recordsOnly(each)
	var rep ArchiveReport
	// macs[j] are the 8-byte MAC prefixes of stripe j's entries from its first in the file
	// (FirstSeq) on, for the checkpoints' claims (checkArchiveClaims).
	var macs [][]uint64
	lr := &lastByte{r: r}
	sc := bufio.NewScanner(lr)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for line := 1; sc.Scan(); line++ {
		var a archived
		if err := json.Unmarshal(sc.Bytes(), &a); err != nil {
			if lr.eof && lr.last != '\n' && !sc.Scan() {
				return rep, &PartialLineError{Line: line, Err: err}
			}
			return rep, fmt.Errorf("audit: archive line %d: %w", line, err)
		}
		if a.Seal != nil || a.SealMAC != "" {
			if a.Stripe != 0 || a.Seq != 0 || a.Prev != "" || a.MAC != "" || a.Rec != nil || a.Base != "" {
				return rep, fmt.Errorf("audit: archive line %d: a seal with a record in it", line)
			}
			if err := l.checkSeal(a, rep.Stripes); err != nil {
				return rep, fmt.Errorf("audit: archive line %d: %w", line, err)
			}
			if err := checkArchiveClaims(rep.cps, rep.Stripes, macs, true); err != nil {
				return rep, fmt.Errorf("%w (sealed at archive line %d)", err, line)
			}
			rep.Seals++
			rep.Sealed = true
			rep.sealMACs = append(rep.sealMACs, a.SealMAC)
			continue
		}
		rep.Sealed = false
		if a.Stripe < 0 || a.Stripe >= MaxStripes {
			return rep, fmt.Errorf("audit: archive line %d: stripe %d (want 0 to %d)", line, a.Stripe, MaxStripes-1)
		}
		for len(rep.Stripes) <= a.Stripe {
			rep.Stripes = append(rep.Stripes, ArchiveStripe{})
			macs = append(macs, nil)
		}
		st := &rep.Stripes[a.Stripe]
		says := stripeSays(a.Stripe)
		if a.Base != "" {
			if a.Seq != 0 || a.Prev != "" || a.MAC != "" || a.Rec != nil {
				return rep, fmt.Errorf("audit: archive line %d: a base mark with a record in it", line)
			}
			b, err := parseBase(a.Base)
			if err != nil {
				return rep, fmt.Errorf("audit: archive line %d: %w", line, err)
			}
			if l.checkSigned(a.Stripe, b) != nil {
				return rep, fmt.Errorf("audit: archive line %d: %sthe base mark is not signed with the audit key: records before it may have been removed", line, says)
			}
			if st.positioned() && (b.seq != st.LastSeq || b.mac != st.LastMAC) {
				return rep, fmt.Errorf("audit: archive line %d: %sthe base mark names record %d, the record before it is %d: records were removed, inserted or reordered", line, says, b.seq, st.LastSeq)
			}
			st.LastSeq, st.LastMAC = b.seq, b.mac
			st.Bases++
			st.EndsSigned = true
			continue
		}
		if st.positioned() && (a.Seq != st.LastSeq+1 || a.Prev != st.LastMAC) {
			return rep, fmt.Errorf("audit: archive line %d: %srecord %d does not follow record %d: records were removed, inserted or reordered", line, says, a.Seq, st.LastSeq)
		}
		if st.Entries == 0 {
			st.FirstSeq, st.FirstPrev = a.Seq, a.Prev
		}
		e, err := l.check(a.Stripe, redis.XMessage{ID: strconv.Itoa(line), Values: map[string]any{
			"seq": strconv.FormatUint(a.Seq, 10), "prev": a.Prev, "mac": a.MAC, "rec": string(a.Rec)}}, a.Prev, a.Seq)
		if err != nil {
			return rep, fmt.Errorf("audit: archive line %d: %s%w", line, says, err)
		}
		e.Stripe = a.Stripe
		if each != nil {
			each(e)
		}
		macs[a.Stripe] = append(macs[a.Stripe], macPrefix(e.MAC))
		if e.Checkpoint != nil {
			rep.cps = append(rep.cps, walkedCheckpoint{e.Stripe, e.Seq, e.Checkpoint})
		}
		st.Entries++
		if e.isRecord() {
			st.Records++
		}
		st.LastSeq, st.LastMAC = a.Seq, a.MAC
		st.EndsSigned = false
	}
	if err := sc.Err(); err != nil {
		return rep, fmt.Errorf("audit: archive: %w", err)
	}
	for _, st := range rep.Stripes {
		rep.Records += st.Records
		rep.Bases += st.Bases
	}
	if len(rep.Stripes) > 0 {
		s0 := rep.Stripes[0]
		rep.FirstSeq, rep.FirstPrev, rep.LastSeq, rep.LastMAC, rep.EndsSigned = s0.FirstSeq, s0.FirstPrev, s0.LastSeq, s0.LastMAC, s0.EndsSigned
	}
	rep.macs = macs
	if err := checkArchiveClaims(rep.cps, rep.Stripes, macs, false); err != nil {
		return rep, err
	}
	return rep, nil
}

// PartialLineError is VerifyArchive's error for a last line that does not parse and ends the
// file without its newline: what a write interrupted mid-line leaves (Archive writes whole
// lines, each ending in one), or a file truncated. Everything before it verified.
type PartialLineError struct {
	Line int
	Err  error
}

func (e *PartialLineError) Error() string {
	return fmt.Sprintf("audit: archive line %d, the last, is cut short (the file ends inside it, without a newline: %v): an archive run was interrupted while writing (then `sshca audit archive` to the file drops the line and completes the run), or the file was truncated", e.Line, e.Err)
}

func (e *PartialLineError) Unwrap() error { return e.Err }

// lastByte remembers the last byte read from r, and whether r ended.
type lastByte struct {
	r    io.Reader
	last byte
	eof  bool
}

func (l *lastByte) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	if n > 0 {
		l.last = p[n-1]
	}
	if err == io.EOF {
		l.eof = true
	}
	return n, err
}
