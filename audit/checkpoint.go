package audit

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/store"
)

// Checkpoints link the stripes of a log. Each stripe is a chain on its own: deleting the
// tail of one together with its head (or the whole stripe) leaves a shorter chain that
// verifies. So every CheckpointEvery, a Log that kept records since its last checkpoint
// appends to its stripe a checkpoint entry naming the head (sequence number and MAC) of every
// stripe, read in one pipeline. Chained and MACed like any record, it pins those heads: Verify,
// having walked every stripe, checks each checkpoint against the stripes it names. A named
// record beyond a stripe's end is a stripe cut short (or dropped); one that is not the record
// walked at that place is a stripe rewritten; a checkpoint taken with more stripes than the
// chain now has is a stripe count lowered. What a checkpoint cannot see: records appended to
// a stripe after the last checkpoint of every other stripe, which the stripe's own head alone
// vouches for, as it does for a log without stripes; and every stripe cut back together to
// one moment, since the checkpoints before it name only heads from before it.
//
// A checkpoint entry's rec is JSON, {"checkpoint":{"time":RFC 3339,"stripes":n,"heads":
// [{"stripe":j,"seq":s,"mac":"<64 hex>"},...]}}: the stripe count it was taken with, and the
// heads of the stripes that had records, in stripe order. Audit records (ca.AuditRecord) never
// start with {"checkpoint":, so the two cannot be confused.

// DefaultCheckpointEvery is Options.CheckpointEvery's default.
const DefaultCheckpointEvery = time.Second

// Checkpoint is a checkpoint entry: the heads of the stripes, as a Log read them just before
// appending it.
type Checkpoint struct {
	Time    time.Time        `json:"time"`
	Stripes int              `json:"stripes"` // the stripe count when it was taken
	Heads   []CheckpointHead `json:"heads"`   // by stripe, those with records
}

// CheckpointHead is one stripe's head in a checkpoint.
type CheckpointHead struct {
	Stripe int    `json:"stripe"`
	Seq    uint64 `json:"seq"`
	MAC    string `json:"mac"`
}

type checkpointRecord struct {
	Checkpoint *Checkpoint `json:"checkpoint"`
}

var checkpointPrefix = []byte(`{"checkpoint":`)

func isCheckpoint(body []byte) bool { return bytes.HasPrefix(body, checkpointPrefix) }

// parseCheckpoint reads a checkpoint entry's record, strictly: a checkpoint is written only by
// this package.
func parseCheckpoint(body []byte) (*Checkpoint, error) {
	var r checkpointRecord
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil || r.Checkpoint == nil {
		return nil, fmt.Errorf("malformed checkpoint: %v", err)
	}
	c := r.Checkpoint
	if c.Stripes < 1 || c.Stripes > MaxStripes {
		return nil, fmt.Errorf("malformed checkpoint: %d stripes", c.Stripes)
	}
	last := -1
	for _, h := range c.Heads {
		if h.Stripe <= last || h.Stripe >= c.Stripes || h.Seq == 0 || !isMAC(h.MAC) {
			return nil, fmt.Errorf("malformed checkpoint: head %+v of %d stripes", h, c.Stripes)
		}
		last = h.Stripe
	}
	return c, nil
}

// Checkpoint appends a checkpoint entry if this Log kept records since its last one (and has
// more than one stripe): the heads of every stripe, read in one pipeline of GETs (one slot
// each on Redis Cluster), then appended like a record, to whichever stripe the Log appends to.
// RunCheckpoints calls it every CheckpointEvery; the service calls it once more when it
// drains, so its last records are pinned too.
func (l *Log) Checkpoint(ctx context.Context) error {
	// A Log held to stripe 0 (the store's layout does not let it stripe yet) takes none: it
	// appends to one chain, and must not raise the stripe count (readCheckpoint).
	if len(l.stripes) < 2 || l.held.Load() || !l.dirty.Swap(false) {
		return nil
	}
	body, err := l.readCheckpoint(ctx)
	if err == nil {
		err = l.append(ctx, &pending{body: body})
	}
	if err != nil {
		l.dirty.Store(true) // the next one covers these records
		return fmt.Errorf("audit: checkpoint: %w", err)
	}
	return nil
}

// RunCheckpoints calls Checkpoint on every tick (nil: every CheckpointEvery) until ctx ends.
// A checkpoint that fails is logged and tried again at the next tick.
func (l *Log) RunCheckpoints(ctx context.Context, tick <-chan time.Time) {
	if len(l.stripes) < 2 {
		return
	}
	if tick == nil {
		t := time.NewTicker(l.every)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick:
			if err := l.Checkpoint(ctx); err != nil {
				l.log.Warn("audit checkpoint failed; trying again at the next tick", "err", err)
			}
		}
	}
}

// readHeads reads the heads of stripes 0 to n-1 and the stripe count, in one pipeline.
func (l *Log) readHeads(ctx context.Context, n int) (heads []string, count int, err error) {
	keys := store.Keys{Prefix: l.prefix}
	cmds := make([]*redis.StringCmd, n)
	var countCmd *redis.StringCmd
	_, err = l.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		countCmd = p.Get(ctx, keys.AuditStripes())
		for i := range n {
			cmds[i] = p.Get(ctx, keys.AuditStripeHead(i))
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, 0, fmt.Errorf("read the heads: %w", err)
	}
	heads = make([]string, n)
	for i, c := range cmds {
		if heads[i], err = c.Result(); err != nil && !errors.Is(err, redis.Nil) {
			return nil, 0, fmt.Errorf("read the heads: %w", err)
		}
	}
	var v any
	if c, err := countCmd.Result(); err == nil {
		v = c
	} else if !errors.Is(err, redis.Nil) {
		return nil, 0, fmt.Errorf("read the stripe count: %w", err)
	}
	count, err = parseStripes(v)
	return heads, count, err
}

// readCheckpoint builds a checkpoint's record from the heads as they stand.
func (l *Log) readCheckpoint(ctx context.Context) ([]byte, error) {
	heads, count, err := l.readHeads(ctx, len(l.stripes))
	if err != nil {
		return nil, err
	}
	if count < len(heads) {
		// This Log raised the count before its first append and remembers that it did, so
		// it would go on appending beyond a count lowered or lost since (deleted by someone,
		// or its slot back from an older copy): raise it again, so that readers walk the
		// stripes it appends to.
		if err := raiseStripesScript.Run(ctx, l.rdb, []string{store.Keys{Prefix: l.prefix}.AuditStripes()}, len(l.stripes)).Err(); err != nil {
			return nil, fmt.Errorf("raise the stripe count again: %w", err)
		}
		l.log.WarnContext(ctx, "audit: the stripe count kept in Redis was below the stripes this replica appends to (lowered or lost); raised again", "found", count, "stripes", len(l.stripes))
	}
	if count > len(heads) {
		// Another replica appends to more stripes than this one: name them too.
		if heads, _, err = l.readHeads(ctx, count); err != nil {
			return nil, err
		}
	}
	c := &Checkpoint{Time: l.now().UTC(), Stripes: len(heads)}
	for i, h := range heads {
		seq, mac, err := parseHead(h)
		if err != nil {
			return nil, fmt.Errorf("stripe %d: %w", i, err)
		}
		if seq > 0 {
			c.Heads = append(c.Heads, CheckpointHead{Stripe: i, Seq: seq, MAC: mac})
		}
	}
	return json.Marshal(checkpointRecord{c})
}

// claims is what a walk keeps to check the checkpoints once every stripe is walked: the
// checkpoints, and of each stripe its base and, from there on, the first 8 bytes of each
// entry's MAC (8 bytes an entry: a chain of a million entries keeps 8 MB; matching 64 bits
// of an HMAC by chance is out of reach, and whoever holds the key can rewrite the whole
// chain anyway).
type claims struct {
	keepMACs bool // more than one stripe is walked
	// archive is the archive the chain in Redis goes on from (VerifyAfter; nil: none): its
	// checkpoints and MACs are checked across, both ways.
	archive *ArchiveReport
	cps     []walkedCheckpoint
	base    []baseMark // by stripe walked
	macs    [][]uint64 // by stripe walked: entries base.seq+1, base.seq+2, ...
}

type walkedCheckpoint struct {
	stripe int
	seq    uint64
	c      *Checkpoint
}

func macPrefix(mac string) uint64 {
	var b [8]byte
	_, _ = hex.Decode(b[:], []byte(mac[:16])) // a MAC that checked out: 64 hex characters
	return binary.BigEndian.Uint64(b[:])
}

// keep remembers e, an entry of the stripe walked last that checked out.
func (c *claims) keep(e Entry) {
	if c.keepMACs {
		c.macs[e.Stripe] = append(c.macs[e.Stripe], macPrefix(e.MAC))
	}
	if e.Checkpoint != nil {
		c.cps = append(c.cps, walkedCheckpoint{e.Stripe, e.Seq, e.Checkpoint})
	}
}

// checkClaims checks every checkpoint walked against the stripes it names, reps being what
// the walk found of each. The stripes' heads are read again first: a checkpoint walked was
// taken before the head read at the start of its stripe's walk, and heads only grow, so it
// names no record beyond the heads read now, however appends interleaved with the walk.
func (l *Log) checkClaims(ctx context.Context, c *claims, rep *Report) error {
	n := len(rep.Stripes)
	heads, count, err := l.readHeads(ctx, n)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	if err := l.checkBeyond(ctx, n, count); err != nil {
		return err
	}
	check := func(cp walkedCheckpoint, archived bool) error {
		// (An archive's checkpoints taken with more stripes than Redis has: VerifyAfter names
		// the stripe the archive holds and Redis does not.)
		if cp.c.Stripes > n && !archived {
			return fmt.Errorf("audit: stripe %d's checkpoint (record %d) was taken with %d stripes, the chain in Redis has %d: the stripe count was lowered, or stripes dropped", cp.stripe, cp.seq, cp.c.Stripes, n)
		}
		for _, h := range cp.c.Heads {
			j := h.Stripe
			if j >= n {
				continue // archived only: see above
			}
			if l.lost[j] {
				// Set aside, unless the stripe still holds the very record named: then it
				// was not lost (its keys gone) but cut short, or not touched at all.
				b := c.base[j]
				if h.Seq > b.seq && h.Seq <= b.seq+uint64(len(c.macs[j])) && c.macs[j][h.Seq-b.seq-1] == macPrefix(h.MAC) {
					return fmt.Errorf("audit: stripe %d is taken as lost, but it holds its record %d that stripe %d's checkpoint (record %d) names: it was cut short, not lost with its keys", j, h.Seq, cp.stripe, cp.seq)
				}
				rep.SetAside++
				continue
			}
			end, _, err := parseHead(heads[j])
			if err != nil {
				return err
			}
			b := c.base[j]
			walked := b.seq + uint64(len(c.macs[j]))
			switch {
			case archived && h.Seq <= b.seq:
				// In the archive (VerifyArchive checked it there), or in an earlier one.
			case h.Seq > end:
				return &StripeCutError{j, fmt.Sprintf("audit: stripe %d was cut short: stripe %d's checkpoint (record %d%s) names its record %d (%.16s…), and it ends at record %d", j, cp.stripe, cp.seq, inArchive(archived), h.Seq, h.MAC, end)}
			case h.Seq < b.seq:
				// Archived and trimmed: the archive holds it, when given.
				if a := c.archive; a != nil && j < len(a.Stripes) && j < len(a.macs) {
					as, m := a.Stripes[j], a.macs[j]
					if as.Entries > 0 && h.Seq >= as.FirstSeq && h.Seq < as.FirstSeq+uint64(len(m)) && m[h.Seq-as.FirstSeq] != macPrefix(h.MAC) {
						return &StripeCutError{j, fmt.Sprintf("audit: stripe %d was rewritten: its record %d in the archive is not the one stripe %d's checkpoint (record %d) names (%.16s…)", j, h.Seq, cp.stripe, cp.seq, h.MAC)}
					}
				}
			case h.Seq == b.seq && h.MAC != b.mac,
				h.Seq > b.seq && h.Seq <= walked && c.macs[j][h.Seq-b.seq-1] != macPrefix(h.MAC):
				return &StripeCutError{j, fmt.Sprintf("audit: stripe %d was rewritten: its record %d is not the one stripe %d's checkpoint (record %d%s) names (%.16s…)", j, h.Seq, cp.stripe, cp.seq, inArchive(archived), h.MAC)}
			}
			// Beyond what was walked: appended while the walk ran, nothing to compare.
		}
		return nil
	}
	for _, cp := range c.cps {
		if err := check(cp, false); err != nil {
			return err
		}
	}
	// The archive's checkpoints name records that Redis holds now: those appended while the
	// archive ran, to stripes walked before the checkpoint's (checkArchiveClaims).
	if c.archive != nil {
		for _, cp := range c.archive.cps {
			if err := check(cp, true); err != nil {
				return err
			}
		}
	}
	return nil
}

// inArchive qualifies a checkpoint that an archive holds.
func inArchive(archived bool) string {
	if archived {
		return ", in the archive"
	}
	return ""
}

// checkBeyond looks for keys of the stripes beyond the n walked, up to MaxStripes, in one
// pipeline (one EXISTS of each stripe's head, stream and base mark, which share its tag): a
// stripe that holds any is one the stripe count, count as read after the walk, leaves out.
// The count is the one key that tells readers how many stripes to walk, and anyone with
// write access can lower or delete it without the audit key; a stripe beyond it would be
// neither verified, archived, reported nor rebuilt from. Checkpoints taken with more stripes
// find that only when a stripe walked holds one, which a log whose replicas all appended
// beyond the count lacks. (A stripe raised after the walk began is within the count read
// now.)
func (l *Log) checkBeyond(ctx context.Context, n, count int) error {
	if n >= MaxStripes {
		return nil
	}
	cmds := make([]*redis.IntCmd, 0, MaxStripes-n)
	keys := store.Keys{Prefix: l.prefix}
	_, err := l.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := n; i < MaxStripes; i++ {
			cmds = append(cmds, p.Exists(ctx, keys.AuditStripeHead(i), keys.AuditStripeLog(i), keys.AuditStripeBase(i)))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("audit: look for stripes beyond the %d walked: %w", n, err)
	}
	beyond := func(count int) (first, last int) {
		first, last = -1, -1
		for j, c := range cmds {
			if i := n + j; c.Val() > 0 && count <= i {
				last = i
				if first < 0 {
					first = i
				}
			}
		}
		return first, last
	}
	first, last := beyond(count)
	if first < 0 {
		return nil
	}
	// A Log raises the count before it first appends beyond it, so a stripe that began
	// between the count's read and the EXISTS is within the count read after them: read it
	// again before calling it left out.
	v, err := l.rdb.Get(ctx, keys.AuditStripes()).Result()
	var again any = v
	if errors.Is(err, redis.Nil) {
		again = nil
	} else if err != nil {
		return fmt.Errorf("audit: read the stripe count: %w", err)
	}
	if count, err = parseStripes(again); err != nil {
		return err
	}
	if first, last = beyond(count); first < 0 {
		return nil
	}
	return fmt.Errorf("audit: stripe %d holds records, but the stripe count (%s) says %d: the count was lowered or deleted, and readers miss stripes; find out who changed it, then set it to %d", first, keys.AuditStripes(), count, last+1)
}
