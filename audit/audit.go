// Package audit keeps sshca's audit log in Redis as a hash chain: each record carries the MAC
// of the one before it, its own sequence number, and a MAC over both and its body (HMAC-SHA256
// with the audit key, which lives only on the CA servers; SHA-256 without one). Removing,
// reordering, inserting or changing a record breaks the chain at that record, and Verify says
// where. Appends to a chain are serialised optimistically (a script appends only if the head
// is the one the links were computed from), and within a replica the records appended at the
// same time share one script (group commit).
//
// A log is one chain, or several (stripes, Options.Stripes) so that CA replicas do not all
// race for one head. With one stripe, a replica that lost the race retries from the newer
// head; with several, the batch moves to the next stripe instead, so replicas that collide
// settle each on a stripe of its own. Each stripe is a chain as described here, with its own
// sequence numbers: an entry is identified by (stripe, seq), and the stripes together are not
// in time order (records carry their time).
//
// Layout of stripe 0, the one chain of a log without stripes: <prefix>:{audit}:log is a stream
// of entries {seq, prev, mac, rec}; <prefix>:{audit}:head is "<seq> <mac>" of the last entry,
// and <prefix>:{audit}:base the base mark: where the chain kept in Redis starts, after Archive
// wrote the entries before it to a file and trimmed them. Stripe i >= 1 has the same three keys
// under the hash tag {audit:i}. Each stripe's keys share one tag, so the scripts work on Redis
// Cluster and the stripes spread over its masters. <prefix>:{audit}:stripes is the number of
// stripes ever appended to (absent: one), raised before a Log first appends beyond it and
// never lowered, so readers walk every stripe whatever they are configured with. Since anyone
// with write access can lower or delete it, Verify also looks for the keys of every stripe
// beyond it up to MaxStripes (one EXISTS each, pipelined) and fails on any it finds.
//
// <prefix>:{audit}:once:<key> says that the record appended with that key (AppendOnce, the key
// in lowercase hex) is kept, for ca.AuditOnceWindow: a caller that appends a record again after
// an unknown outcome (an answer lost) gives it the same key, and the script, finding the key,
// does not keep it twice. Such a record is always kept in stripe 0, so every attempt checks the
// key in the same slot as the chain it would be appended to.
//
// A record's MAC is 64 lowercase hex characters: HMAC-SHA256(key, prev ‖ "\n" ‖ seq in decimal ‖
// "\n" ‖ rec), prev being the MAC of the record before ("" for the first) and rec the record's
// JSON (ca.AuditRecord; a record without "v" is version 1, later ones say their version). In
// stripe i >= 1 the sequence number is followed by "@" and i in decimal ("17@2"), so a record,
// or a whole stripe, moved to another stripe no longer verifies.
//
// Checkpoints (checkpoint.go) link the stripes: entries whose rec is {"checkpoint":{...}},
// naming the head of every stripe as one replica read them, which Verify checks against the
// stripes once it walked them all. They find a stripe cut short, dropped or rewritten, and a
// stripe count lowered; they are chained like records but never handed to callers as records.
//
// A Log appends beyond stripe 0 only once the store's layout lets it (store.LayoutStripes),
// and first appends to stripe 0 a striped mark (striped.go), {"striped":{...},"time":"..."}:
// sshca of an older layout reads stripe 0 alone, and fails to decode the mark with a message
// that says to upgrade, instead of calling a striped log intact or rebuilding from one stripe.
// Archive appends another after trimming stripe 0. Marks are chained like records and handed
// to no caller either. An archive of a striped log ends each run with a seal (seal.go), naming
// every stripe's first and last entry in the file, and VerifyArchive checks the checkpoints it
// holds as Verify does those in Redis.
//
// The base mark is "<seq> <mac> <base mac>" (single spaces): the sequence number in decimal and
// the MAC of the last record archived, and
//
//	base mac = hex(HMAC-SHA256(key, "sshca-audit-base-v1\x00" ‖ seq as 8 bytes big-endian ‖ mac))
//
// where mac is the record MAC's 64 hex characters as bytes; in stripe i >= 1, "@" and i in
// decimal follow the mac. The context string keeps any
// record's MAC from standing in for a base mac, so deleting the oldest records and pointing the
// base past them needs the key. Only Archive writes a base mark, and it writes it first as the
// archive's last line, {"base":"<seq> <mac> <base mac>"}, after the records it covers, so the
// archive shows where the chain in Redis must go on from. Marks of the older form "<seq> <mac>"
// (written before base marks were signed) cannot be authenticated: Verify refuses them unless
// Options.AcceptLegacyBase is set, or an archive that ends at exactly that record is given;
// Archive accepts one under the same conditions and replaces it with a signed mark.
//
// What the chain does not stop: someone with write access to Redis and the audit key can
// rewrite it, and without the key anyone with write access can recompute it (a chain kept
// without a key, base marks included, is plain SHA-256: it shows accidents, not an attacker).
// Truncating the tail together with the head goes unseen by Verify: every record since the
// last archive, or the whole log when there is no archive. With stripes, checkpoints find one
// stripe cut short while the others go on (another stripe's checkpoint names its lost
// records), but not the records of a stripe after the last checkpoint of another stripe that
// names them (its own replica's checkpoints sit in the tail cut off with them: a log whose
// other replicas keep nothing is pinned by nothing), nor every stripe cut back together to one
// moment (a checkpoint names only heads from before it, so the cut leaves none that names a
// record cut off): that is the single chain's tail again. Given the latest archive
// (VerifyAfter), an emptied or shortened log is found as long as the archive holds more than
// what is left. The service also logs each record's sequence number and MAC, so logs shipped
// elsewhere anchor the chain.
package audit

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/store"
)

// Log is the Redis audit log; it implements ca.AuditLog.
type Log struct {
	rdb    redis.UniversalClient
	key    []byte
	prefix string
	log    *slog.Logger
	// acceptLegacy: Options.AcceptLegacyBase.
	acceptLegacy bool
	// lost: Options.LostStripes.
	lost map[int]bool

	// marks: Options.Marks; bans: Options.Bans.
	marks, bans *store.Redis

	// stripes are the chains this Log appends to (Options.Stripes, at least one), their key
	// names built once: every append names them.
	stripes []*stripe

	// lock, a channel of one, is held by the one caller that appends (commit) at a time: a
	// channel, so that a caller waiting for it also waits for its own record's outcome and
	// returns once a leader kept it, without waiting behind the next leader's round trip.
	// It also guards cur, raised and each stripe's known head.
	lock chan struct{}
	// cur is the stripe the next batch goes to: the home stripe until a batch there loses
	// the race for the head, then the next one, and so on. home is the home stripe.
	cur, home int
	// raised: the stripe count kept in Redis (Keys.AuditStripes) is known to be at least
	// len(stripes), so readers walk every stripe this Log may append to.
	raised bool
	// layouts reads the store's layout before the count is raised (the Marks store, or one
	// of its own): below store.LayoutStripes, tools and replicas of an older layout that read
	// stripe 0 alone may still run, so the Log is held to stripe 0 (held) and looks again at
	// recheck (guarded by lock). held is read by Checkpoint too: a held Log takes none.
	layouts *store.Redis
	held    atomic.Bool
	recheck time.Time
	// pin0: the batch being committed goes to stripe 0 (a striped mark, striped.go); guarded
	// by lock.
	pin0 bool

	// every and now: Options.CheckpointEvery and Now. dirty: records were kept since the
	// last checkpoint (checkpoint.go).
	every time.Duration
	now   func() time.Time
	dirty atomic.Bool
	// link and linkBuf compute the MACs of commit's records (linkMAC): one HMAC reset per
	// record rather than a new one (two SHA-256 states and their pads) each time.
	link    hash.Hash
	linkBuf []byte

	// qmu guards queue, the records waiting for the next commit in arrival order, and spare,
	// the array of the last batch committed, which the next takes over.
	qmu   sync.Mutex
	queue []*pending
	spare []*pending
}

// Options tune a Log.
type Options struct {
	Prefix string       // default "sshca"
	Key    []byte       // the HMAC key; nil for a plain SHA-256 chain
	Logger *slog.Logger // each appended record's seq and MAC are logged here (nil: not logged)
	// AcceptLegacyBase makes Verify and Archive accept a base mark of the old unsigned form
	// "<seq> <mac>" that no archive vouches for. Nothing then shows whether records before it
	// were removed: set it once, to move a log from before base marks were signed, after
	// checking the base against the archive by other means.
	AcceptLegacyBase bool
	// Marks, when set, is the store whose generation mark of the stripe's tag ({audit}, or
	// {audit:i}) each append checks and bumps in its own script (store.MarkedTags): a chain
	// that came back from an old snapshot is then noticed by the process's witness, as every
	// other durable tag is. The CA service sets it (and store.RedisOptions.AuditStripes, so
	// that issuance checks every stripe's mark before signing, and so that an empty store it
	// creates starts at the layout that lets the Log stripe: store.Redis.Layout); tools that
	// only read or archive the chain need not.
	Marks *store.Redis
	// Bans, when set, is the store whose CA key bans AppendIssued reads in the round trip of
	// the append (store.Redis.QueueCABans): the CA service sets it, to the store its admission
	// reads (the same Redis as rdb). Without it AppendIssued reads nothing and answers "not
	// banned".
	Bans *store.Redis
	// Stripes is the number of chains (stripes) appends spread over: 0 or 1 is one chain,
	// the keys and behaviour of a log without stripes. Set it to at least the number of CA
	// replicas appending at once: each settles on a stripe of its own, instead of all of
	// them racing for one head (and, on Redis Cluster, one master). Readers (Verify, Archive)
	// walk every stripe ever appended to, whatever this says. At most MaxStripes (more is
	// taken as MaxStripes). The Log appends beyond stripe 0 only once the store's layout is
	// at least store.LayoutStripes (an empty store starts there; an older one gets there by
	// `sshca store migrate`): until then it appends to stripe 0 alone, the chain that tools
	// and replicas of the older layout read, and looks at the layout again every 5 s.
	Stripes int
	// Home is the stripe a Log appends to first (taken modulo Stripes); nil picks one at
	// random, so replicas started together mostly start apart.
	Home *int
	// CheckpointEvery is how often RunCheckpoints appends a checkpoint (the heads of every
	// stripe, checkpoint.go) when records were kept since the last one; default 1 s. Only
	// with more than one stripe.
	CheckpointEvery time.Duration
	// Now is the clock of checkpoint records' time; default time.Now.
	Now func() time.Time
	// LostStripes are stripes known to have been lost (every key of the stripe's tag gone
	// with a Redis master that came back empty), for `sshca store rebuild --lost-stripe`:
	// Verify still checks each one's own chain, but sets aside what checkpoints of other
	// stripes say of it (counted in Report.SetAside), which would otherwise fail the walk
	// however much of the log is intact. A stripe cut short by someone with write access
	// looks the same: only the operator, who knows what failed, can say which it was.
	LostStripes []int
}

// stripe is one chain of a striped log: its keys, and its head as this Log last saw it.
type stripe struct {
	i                                    int
	tag                                  string
	headKey, streamKey, baseKey, markKey string
	known                                string // "<seq> <mac>"; guarded by Log.lock
}

func newStripe(prefix string, i int) *stripe {
	keys := store.Keys{Prefix: prefix}
	tag := store.TagAuditStripe(i)
	return &stripe{i: i, tag: tag, headKey: keys.AuditStripeHead(i), streamKey: keys.AuditStripeLog(i),
		baseKey: keys.AuditStripeBase(i), markKey: keys.Mark(tag)}
}

// KeySize is the size of a generated audit key.
const KeySize = 32

// New returns the audit log kept in rdb.
func New(rdb redis.UniversalClient, o Options) *Log {
	l := &Log{rdb: rdb, key: o.Key, prefix: o.Prefix, log: o.Logger, acceptLegacy: o.AcceptLegacyBase, marks: o.Marks, bans: o.Bans,
		lock: make(chan struct{}, 1), every: o.CheckpointEvery, now: o.Now}
	if l.every <= 0 {
		l.every = DefaultCheckpointEvery
	}
	if l.now == nil {
		l.now = time.Now
	}
	for _, i := range o.LostStripes {
		if l.lost == nil {
			l.lost = map[int]bool{}
		}
		l.lost[i] = true
	}
	if l.prefix == "" {
		l.prefix = "sshca"
	}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	n := min(max(o.Stripes, 1), MaxStripes) // beyond MaxStripes, readers would refuse the count
	for i := range n {
		l.stripes = append(l.stripes, newStripe(l.prefix, i))
	}
	switch {
	case o.Home != nil:
		l.cur = ((*o.Home % n) + n) % n
	case n > 1:
		l.cur = rand.IntN(n)
	}
	l.home = l.cur
	// One stripe is the chain as it was before stripes: nothing to raise.
	l.raised = n == 1
	l.layouts = o.Marks
	if l.layouts == nil && n > 1 {
		l.layouts = store.NewRedis(rdb, store.RedisOptions{Prefix: l.prefix, AuditStripes: n})
	}
	return l
}

// layoutRecheck is how often a Log held to stripe 0 looks at the store's layout again: after
// `sshca store migrate`, the replicas start striping within this.
const layoutRecheck = 5 * time.Second

// raise makes sure readers walk every stripe this Log may append to before it appends beyond
// stripe 0: once the store's layout lets it stripe (store.LayoutStripes, read first, so that a
// count above 1 never sits in a store that older tools still read as one chain), it raises
// the stripe count. Until then the Log is held to stripe 0 and looks again every
// layoutRecheck. l.lock must be held.
func (l *Log) raise(ctx context.Context) error {
	if now := l.now(); l.held.Load() && now.Before(l.recheck) {
		return nil
	}
	layout, err := l.layouts.Layout(ctx)
	if err != nil {
		return fmt.Errorf("audit: append: %w", err)
	}
	if layout < store.LayoutStripes {
		if !l.held.Swap(true) {
			l.log.WarnContext(ctx, "audit: the store's layout is older than audit stripes: appending to stripe 0 alone, which sshca of that layout reads, until `sshca store migrate` moves the store to the layout that stripes (run it once every CA replica is upgraded)", "layout", layout, "stripes_layout", store.LayoutStripes, "stripes", len(l.stripes))
		}
		l.recheck = l.now().Add(layoutRecheck)
		return nil
	}
	// Stripe 0 says the log is striped before anything is appended beyond it, so that sshca
	// reading stripe 0 alone refuses the log (striped.go): when this Log is the first to
	// stripe, or the store was migrated while it was held (stripes of replicas of layout 2,
	// which wrote no mark, may be there).
	if !l.stripedAlready(ctx) || l.held.Load() {
		if err := l.appendStriped(ctx); err != nil {
			return fmt.Errorf("audit: append: mark stripe 0 as striped: %w", err)
		}
	}
	if err := raiseStripesScript.Run(ctx, l.rdb, []string{store.Keys{Prefix: l.prefix}.AuditStripes()}, len(l.stripes)).Err(); err != nil {
		return fmt.Errorf("audit: append: raise the stripe count: %w", err)
	}
	if l.held.Swap(false) {
		l.log.InfoContext(ctx, "audit: the store's layout lets the chain stripe: appending to every stripe", "layout", layout, "stripes", len(l.stripes))
		l.cur = l.home
	}
	l.raised = true
	return nil
}

// The chain's keys are named, with every other key of sshca, in store/keys.go. A stripe's
// base is the base mark "<seq> <mac> <base mac>" of its last record archived and trimmed away
// (none when none was): where that stripe kept in Redis starts.

// mac is the chain's link: over the previous MAC, the sequence number (with the stripe's
// number after it beyond stripe 0, so a record cannot be moved to another stripe) and the
// record.
func (l *Log) mac(stripe int, prev string, seq uint64, rec []byte) string {
	h := l.hash()
	fmt.Fprintf(h, "%s\n%d%s\n", prev, seq, stripeSuffix(stripe))
	h.Write(rec)
	return hex.EncodeToString(h.Sum(nil))
}

// stripeSuffix follows the sequence number in the MAC input of a record of stripe i, and
// the MAC in a base mark's: nothing for stripe 0 (the chain as it was before stripes), "@i"
// beyond.
func stripeSuffix(i int) string {
	if i == 0 {
		return ""
	}
	return "@" + strconv.Itoa(i)
}

// linkMAC is mac, computed with the HMAC and buffer that commit reuses; l.lock must be held.
func (l *Log) linkMAC(stripe int, prev string, seq uint64, rec []byte) string {
	if l.link == nil {
		l.link = l.hash()
	}
	l.link.Reset()
	b := append(l.linkBuf[:0], prev...)
	b = append(b, '\n')
	b = strconv.AppendUint(b, seq, 10)
	if stripe > 0 {
		b = append(b, '@')
		b = strconv.AppendInt(b, int64(stripe), 10)
	}
	b = append(b, '\n')
	l.linkBuf = b
	l.link.Write(b)
	l.link.Write(rec)
	var sum [sha256.Size]byte
	var out [2 * sha256.Size]byte
	hex.Encode(out[:], l.link.Sum(sum[:0]))
	return string(out[:])
}

// maxAttempts bounds the retries of an append that keeps losing the race for the head.
const maxAttempts = 100

// maxBatch bounds the records of one appendScript call: its arguments stay small (a few
// hundred kilobytes at most), and Redis is not held long by one script.
const maxBatch = 128

// appendScript adds a batch of entries only if the head is still the one their links were
// computed from; otherwise it answers the current head, from which the caller computes the
// links again. ARGV: the head expected, the new head, the number of entries n, then seq, prev,
// mac and rec of each entry in chain order. With a third key (the stripe's generation mark)
// and the three ARGV after the entries (its id, epoch and seen), it checks and bumps the mark
// once when it appends, and answers the mark's reply after the head (store.MarkLua); the
// records are appended whatever the mark says.
var appendScript = redis.NewScript(store.MarkLua + appendLua("KEYS[3]", ""))

// appendOnceScript is appendScript for one entry whose Once key (Keys.AuditOnce) is KEYS[3],
// the mark, if any, being KEYS[4]. When the key is present (an earlier attempt kept the entry
// and its answer was lost) it appends nothing and answers {2, head, the seq the key holds};
// otherwise it sets the key to the entry's seq, expiring after ca.AuditOnceWindow, in the step
// that appends the entry.
var appendOnceScript = redis.NewScript(store.MarkLua + `
local kept = redis.call('GET', KEYS[3])
if kept then return {2, redis.call('GET', KEYS[1]) or '', kept} end
` + appendLua("KEYS[4]", `redis.call('SET', KEYS[3], ARGV[4], 'PX', `+strconv.FormatInt(ca.AuditOnceWindow.Milliseconds(), 10)+`)`))

// appendLua is the body of the append scripts: the generation mark is the key named mark, and
// kept runs in the step that appends, once the head is found to be the one expected.
func appendLua(mark, kept string) string {
	return `
local cur = redis.call('GET', KEYS[1])
if not cur then cur = '' end
if cur ~= ARGV[1] then return {0, cur} end
local n = tonumber(ARGV[3])
for i = 0, n - 1 do
  local b = 4 + i * 4
  redis.call('XADD', KEYS[2], '*', 'seq', ARGV[b], 'prev', ARGV[b + 1], 'mac', ARGV[b + 2], 'rec', ARGV[b + 3])
end
` + kept + `
redis.call('SET', KEYS[1], ARGV[2])
if ` + mark + ` then
  local m = 4 + n * 4
  local r = bump(` + mark + `, mark(` + mark + `, ARGV[m], ARGV[m + 1], ARGV[m + 2]))
  return {1, ARGV[2], r[1], r[2], r[3], r[4]}
end
return {1, ARGV[2]}
`
}

// pending is one record waiting to be appended by a group commit.
type pending struct {
	body     []byte
	rec      *ca.AuditRecord // for the log line; nil for a checkpoint
	ctx      context.Context // its caller's: for the log line (the request's ID), and alone, for the round trip
	deadline time.Time       // its caller's deadline (zero: none)
	done     chan error      // receives the outcome once, buffered
	seq      uint64          // its place in the chain and its MAC, once linked (commit)
	mac      string
	stripe   int // the stripe it was kept in
	// caKey, when set (AppendIssued), is the CA key whose ban the commit reads with the
	// append, and banned its answer once kept.
	caKey  ssh.PublicKey
	banAt  int // its CA key's index in the commit's read of bans (Log.run)
	banned bool
	banErr error
}

// Append adds rec at the end of the chain, and returns once it is kept (or failed). Records
// that callers append at the same time share one round trip (group commit): whoever holds the
// chain's lock appends every record queued meanwhile, in one script, and tells each caller
// its own outcome, so a caller's answer still waits for its own record. It links the records
// to the head this replica last saw: one round trip when no other replica appended in between,
// one more per head it missed. A record without a version (V 0) is written as
// ca.AuditRecordVersion, the shape it is marshalled in.
func (l *Log) Append(ctx context.Context, rec ca.AuditRecord) error {
	if rec.V == 0 {
		rec.V = ca.AuditRecordVersion
	}
	body, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	return l.append(ctx, &pending{body: body, rec: &rec})
}

var _ ca.BanCheckedAuditLog = (*Log)(nil)

// AppendIssued is Append for the record of an issued certificate, rec.CAFingerprint naming
// caKey, the CA key that signed it: the round trip that appends it also reads whether caKey is
// banned now (store.Redis.QueueCABans, with Options.Bans; a batch of records reads the bans of
// its CA keys in one command, in the pipeline of its one script). banned is meaningful only
// when err is nil; a ban that could not be read fails the append's answer (the record may be
// kept).
func (l *Log) AppendIssued(ctx context.Context, rec ca.AuditRecord, caKey ssh.PublicKey) (banned bool, err error) {
	if rec.V == 0 {
		rec.V = ca.AuditRecordVersion
	}
	body, err := json.Marshal(rec)
	if err != nil {
		return false, fmt.Errorf("audit: %w", err)
	}
	p := &pending{body: body, rec: &rec, caKey: caKey}
	if err := l.append(ctx, p); err != nil {
		return false, err
	}
	// Written by the commit before it sent the outcome that append received.
	return p.banned, p.banErr
}

var _ ca.OnceAuditLog = (*Log)(nil)

// AppendOnce is Append for a record that its caller may append again after an unknown outcome
// (its answer lost, or late past the caller's deadline, when the record may have been kept):
// every attempt with the same key, non-zero and unique to the record (ca.NewOnceKey), keeps it
// at most once within ca.AuditOnceWindow of the attempt that kept it; an attempt that finds it
// kept returns nil without appending it again. It checks the key in the step that appends
// (Keys.AuditOnce), appends the record alone rather than in a group commit, and always to
// stripe 0 (relinked there when it loses the race), so that every attempt checks the same key.
func (l *Log) AppendOnce(ctx context.Context, rec ca.AuditRecord, once uint64) error {
	if once == 0 {
		return errors.New("audit: AppendOnce needs a key other than 0 (ca.NewOnceKey)")
	}
	if rec.V == 0 {
		rec.V = ca.AuditRecordVersion
	}
	body, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	p := &pending{body: body, rec: &rec, ctx: ctx, done: make(chan error, 1)}
	select {
	case l.lock <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("audit: append: %w", context.Cause(ctx))
	}
	defer func() { <-l.lock }()
	return l.commit([]*pending{p}, once)
}

// append queues p (its body, and rec: the record it encodes, nil for a checkpoint) for the
// next group commit and returns its outcome.
func (l *Log) append(ctx context.Context, p *pending) error {
	p.ctx, p.done = ctx, make(chan error, 1)
	p.deadline, _ = ctx.Deadline()
	l.qmu.Lock()
	l.queue = append(l.queue, p)
	l.qmu.Unlock()

	for {
		// Either a leader keeps p along with its own records, or this caller leads.
		select {
		case err := <-p.done:
			return err
		case l.lock <- struct{}{}:
		}
		if kept, err := l.lead(p); kept {
			return err
		}
	}
}

// lead holds the chain's lock (taken by its caller, released here): unless p was kept
// meanwhile (kept, with its outcome), it commits the records queued, up to maxBatch, and tells
// each caller its outcome.
func (l *Log) lead(p *pending) (kept bool, _ error) {
	defer func() { <-l.lock }()
	select {
	case err := <-p.done:
		return true, err
	default:
	}
	l.qmu.Lock()
	var batch []*pending
	if n := len(l.queue); n <= maxBatch {
		// The whole queue: take its array and queue into the spare one meanwhile (the
		// two swap, so a steady load allocates none).
		batch, l.queue, l.spare = l.queue, l.spare[:0], nil
	} else {
		batch = slices.Clone(l.queue[:maxBatch])
		l.queue = slices.Delete(l.queue, 0, maxBatch)
	}
	l.qmu.Unlock()
	err := l.commit(batch, 0)
	for _, b := range batch {
		b.done <- err
	}
	clear(batch)
	l.qmu.Lock()
	l.spare = batch[:0]
	l.qmu.Unlock()
	return false, nil
}

// commit appends batch, in order, in one script (retried from the newer head when another
// replica appended meanwhile). once, when not 0, is the Once key of a batch of one record
// (AppendOnce): appendOnceScript, in stripe 0. A record alone runs under its caller's context. A batch runs
// under the latest deadline of its callers (none when one of them has none), not under any
// one caller's cancellation: the caller that happens to commit must not fail the records of
// the others by giving up on its own.
func (l *Log) commit(batch []*pending, once uint64) error {
	ctx := batch[0].ctx
	if len(batch) > 1 {
		var latest time.Time
		for _, b := range batch {
			if b.deadline.IsZero() {
				latest = time.Time{}
				break
			}
			if b.deadline.After(latest) {
				latest = b.deadline
			}
		}
		ctx = context.WithoutCancel(ctx)
		if !latest.IsZero() {
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(ctx, latest)
			defer cancel()
		}
	}
	if !l.raised {
		if err := l.raise(ctx); err != nil {
			return err
		}
	}
	held := l.held.Load() || l.pin0
	script := appendScript
	var onceKey string
	if once != 0 {
		script, onceKey = appendOnceScript, store.Keys{Prefix: l.prefix}.AuditOnce(once)
	}
	for range maxAttempts {
		s := l.stripes[l.cur]
		if once != 0 || held {
			// Stripe 0, and relinked there when it loses the race: every attempt at the
			// record checks its key in the slot of the chain an earlier one may have kept it in.
			s = l.stripes[0]
		}
		prevSeq, prev, err := parseHead(s.known)
		if err != nil {
			return err
		}
		keys := []string{s.headKey, s.streamKey}
		if once != 0 {
			keys = append(keys, onceKey)
		}
		args := make([]any, 0, 3+4*len(batch)+3)
		args = append(args, s.known, "", len(batch))
		for i, b := range batch {
			b.seq = prevSeq + 1 + uint64(i)
			b.mac = l.linkMAC(s.i, prev, b.seq, b.body)
			args = append(args, strconv.FormatUint(b.seq, 10), prev, b.mac, b.body)
			prev = b.mac
		}
		head := strconv.FormatUint(batch[len(batch)-1].seq, 10) + " " + prev
		args[1] = head
		var mw *store.MarkedWrite
		if l.marks != nil {
			if mw, err = l.marks.BeginMarked(ctx, s.tag); err != nil {
				return fmt.Errorf("audit: append: %w", err)
			}
			keys = append(keys, s.markKey)
			args = append(args, mw.Args()...)
		}
		res, bans, asked, err := l.run(ctx, script, keys, args, batch)
		if err != nil {
			return fmt.Errorf("audit: append: %w", err)
		}
		if len(res) < 2 {
			return fmt.Errorf("audit: append: unexpected answer %v", res)
		}
		ok, _ := res[0].(int64)
		s.known, _ = res[1].(string)
		if ok != 1 && s.known == head {
			// The head is the one this batch makes: its MAC chains these very records from
			// the head they were linked to. An earlier run of this script appended them and
			// its answer was lost (go-redis runs a script again after a read timeout), so
			// they are in; appending them again would put them in the chain twice. (An
			// AppendOnce record's own earlier run answers 2 here, having set its key. That
			// run's mark answer is lost with it: the witness reads the mark at the next check.)
			ok, mw = 1, nil
		}
		if ok == 2 {
			// An earlier attempt kept this record (its answer lost): it is in, once. (That
			// attempt's mark answer is lost with it, as below.)
			return nil
		}
		if ok == 1 && mw != nil {
			// The records are in; a lost mark is the witness's to remember, not this append's
			// failure.
			if err := mw.Finish(res[2:]); err != nil {
				return fmt.Errorf("audit: append: %w", err)
			}
		}
		if ok == 1 && asked {
			// The bans read in this very round trip, after the records were appended. A read
			// that failed fails the answer of the records that asked for it alone.
			for _, b := range batch {
				if b.caKey != nil && b.banAt >= 0 {
					banned, err := bans.Banned(b.banAt)
					b.banned = banned
					if err != nil {
						b.banErr = fmt.Errorf("audit: append: the record is kept, but %w", err)
					}
				}
			}
		}
		if ok == 1 {
			// At debug level: the record itself, chained and MACed in the stream, is the
			// durable trace, and the decision it records has its own info line (the
			// request's, which names the same request ID).
			for _, b := range batch {
				b.stripe = s.i
				if b.rec == nil {
					l.log.DebugContext(b.ctx, "audit checkpoint", "stripe", s.i, "seq", b.seq, "mac", b.mac)
					continue
				}
				l.dirty.Store(true)
				if l.log.Enabled(b.ctx, slog.LevelDebug) {
					l.log.DebugContext(b.ctx, "audit", "stripe", s.i, "seq", b.seq, "mac", b.mac, "action", b.rec.Action, "outcome", b.rec.Outcome, "identity", b.rec.Identity)
				}
			}
			return nil
		}
		// Another replica moved this stripe's head. With one stripe the batch is linked again
		// to the head the script answered; with several it moves on to the next stripe, so
		// replicas that collide settle on different stripes instead of racing for one head
		// (a record with a Once key stays on stripe 0, and moves no batch after it).
		if once == 0 && !held {
			l.cur = (l.cur + 1) % len(l.stripes)
		}
	}
	return errors.New("audit: append: too much contention for the head of the chain")
}

// run runs script once for a commit, alone, or, when records of batch ask for the ban of their
// CA key (AppendIssued) and the Log has the store (Options.Bans), in one pipeline with the
// read of those bans queued after it (store.Redis.QueueCABans): one round trip either way.
// With asked, bans answers each such record by its banAt once run returned. A pipeline cannot
// fall back from EVALSHA to EVAL by itself: on NOSCRIPT (a Redis that restarted or flushed its
// scripts) it is sent again with EVAL, which reads the bans again; EVALSHA's NOSCRIPT wrote
// nothing.
func (l *Log) run(ctx context.Context, script *redis.Script, keys []string, args []any, batch []*pending) (res []any, bans store.CABanRead, asked bool, err error) {
	var buf [4]store.CABan
	checks := buf[:0]
	if l.bans != nil {
		for _, b := range batch {
			b.banAt = -1
			if b.caKey == nil || b.rec == nil {
				continue
			}
			fp := b.rec.CAFingerprint
			if fp == "" {
				fp = ssh.FingerprintSHA256(b.caKey)
			}
			b.banAt = len(checks)
			for j, c := range checks {
				if c.Fingerprint == fp {
					b.banAt = j
				}
			}
			if b.banAt == len(checks) {
				checks = append(checks, store.CABan{Fingerprint: fp, Key: b.caKey})
			}
		}
	}
	if len(checks) == 0 {
		res, err = script.Run(ctx, l.rdb, keys, args...).Slice()
		return res, bans, false, err
	}
	for _, sha := range [2]bool{true, false} {
		p := l.rdb.Pipeline()
		var cmd *redis.Cmd
		if sha {
			cmd = script.EvalSha(ctx, p, keys, args...)
		} else {
			cmd = script.Eval(ctx, p, keys, args...)
		}
		bans = l.bans.QueueCABans(ctx, p, checks)
		_, _ = p.Exec(ctx) // each command's own error is read: the script's here, the read's by Banned
		if e := cmd.Err(); sha && e != nil && redis.HasErrorPrefix(e, "NOSCRIPT") {
			continue
		}
		if res, err = cmd.Slice(); err != nil {
			return nil, bans, false, err
		}
		return res, bans, true, nil
	}
	return nil, bans, false, errors.New("NOSCRIPT after EVAL") // not reached: EVAL sends the script
}

// raiseStripesScript raises the stripe count (Keys.AuditStripes, absent: 1) to ARGV[1] and
// never lowers it; it answers the count kept.
var raiseStripesScript = redis.NewScript(`
local cur = tonumber(redis.call('GET', KEYS[1]) or '1') or 1
local n = tonumber(ARGV[1])
if n > cur then
  redis.call('SET', KEYS[1], ARGV[1])
  return n
end
return cur
`)

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

// baseContext starts every base MAC, so that no record's MAC (whose input starts with the
// previous MAC's hex) is ever one.
const baseContext = "sshca-audit-base-v1\x00"

// ErrBaseNotSigned: the base mark's third field is not the base MAC of its record.
var ErrBaseNotSigned = errors.New("audit: the base mark of the chain is not signed with the audit key: records before it may have been removed")

// ErrLegacyBase: the base mark is of the older unsigned form "<seq> <mac>".
var ErrLegacyBase = errors.New("audit: the base mark of the chain is in the old unsigned form \"<seq> <mac>\", which cannot be authenticated: records before it may have been removed")

// hash is HMAC-SHA256 with the key, or SHA-256 without one.
func (l *Log) hash() hash.Hash {
	if l.key != nil {
		return hmac.New(sha256.New, l.key)
	}
	return sha256.New()
}

// baseMAC signs a base mark of a stripe (see the package doc for the exact bytes).
func (l *Log) baseMAC(stripe int, seq uint64, recMAC string) string {
	h := l.hash()
	h.Write([]byte(baseContext))
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], seq)
	h.Write(b[:])
	h.Write([]byte(recMAC))
	h.Write([]byte(stripeSuffix(stripe)))
	return hex.EncodeToString(h.Sum(nil))
}

// signedBase is the base mark of a stripe for record seq whose MAC is recMAC.
func (l *Log) signedBase(stripe int, seq uint64, recMAC string) string {
	return strconv.FormatUint(seq, 10) + " " + recMAC + " " + l.baseMAC(stripe, seq, recMAC)
}

// baseMark is a parsed base mark; the zero value is "no base" (a log never archived).
type baseMark struct {
	raw string // as kept in Redis
	seq uint64
	mac string // the MAC of record seq
	sig string // the base MAC; "" in a legacy mark
}

func (b baseMark) legacy() bool { return b.seq > 0 && b.sig == "" }

// parseBase reads "<seq> <mac> <base mac>", or the legacy "<seq> <mac>"; it does not check the
// base MAC.
func parseBase(v string) (baseMark, error) {
	if v == "" {
		return baseMark{}, nil
	}
	f := strings.Split(v, " ")
	var seq uint64
	var err error
	if len(f) == 2 || len(f) == 3 {
		seq, err = strconv.ParseUint(f[0], 10, 64)
	}
	if (len(f) != 2 && len(f) != 3) || err != nil || seq == 0 || !isMAC(f[1]) {
		return baseMark{}, fmt.Errorf("audit: the base mark of the chain is malformed: %.120q", v)
	}
	b := baseMark{raw: v, seq: seq, mac: f[1]}
	if len(f) == 3 {
		b.sig = f[2]
	}
	return b, nil
}

// isMAC: 64 lowercase hex characters.
func isMAC(s string) bool {
	if len(s) != 2*sha256.Size {
		return false
	}
	for _, c := range []byte(s) {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// checkSigned is nil when b carries a valid base MAC for the stripe.
func (l *Log) checkSigned(stripe int, b baseMark) error {
	if b.sig == "" || !hmac.Equal([]byte(b.sig), []byte(l.baseMAC(stripe, b.seq, b.mac))) {
		return ErrBaseNotSigned
	}
	return nil
}

// Report is what Verify found.
type Report struct {
	Records int // audit records checked, over every stripe (Archive: entries written to the archive)
	// Checkpoints counts the checkpoint entries checked, besides Records (checkpoint.go).
	Checkpoints int
	// StripedMarks counts the striped marks checked, besides Records (striped.go).
	StripedMarks int
	Head         string // MAC of stripe 0's last entry ("" when none was checked)
	// BaseSeq is the record stripe 0 in Redis goes on from (0: it starts at the first record).
	BaseSeq uint64
	// LegacyBase: a base mark was of the old unsigned form and was accepted because
	// Options.AcceptLegacyBase is set; nothing proves that no records before it were removed.
	LegacyBase bool
	// Stripes is what each stripe walked held, by stripe number: one for a log without
	// stripes.
	Stripes []StripeReport
	// SetAside counts the heads named by checkpoints that were not checked, their stripe
	// being one of Options.LostStripes.
	SetAside int
	// SealRecorded (VerifyAfter): Redis holds the seal of the last completed archive run
	// (Keys.AuditSealed), and the archive holds it. Without one (a log archived by sshca
	// before stop 17, or never archived while striped) only the base marks vouch for the
	// archive's end.
	SealRecorded bool
}

// StripeCutError is Verify's error when a checkpoint names a record of a stripe that the
// stripe in Redis does not hold as named: cut short, dropped, rewritten, or lost.
type StripeCutError struct {
	Stripe int
	msg    string
}

func (e *StripeCutError) Error() string { return e.msg }

// StripeReport is what one stripe of the chain held.
type StripeReport struct {
	Stripe      int
	Records     int // audit records checked
	Checkpoints int // checkpoint entries checked
	// StripedMarks counts the striped marks checked (stripe 0 only, striped.go).
	StripedMarks int
	HeadSeq      uint64 // the last entry's sequence number (BaseSeq when none was checked)
	Head         string // the last entry's MAC ("" when none was checked)
	BaseSeq      uint64 // the record the stripe in Redis goes on from (0: its first)
	// LegacyBase: as Report's, for this stripe.
	LegacyBase bool
}

// Entry is one record as kept, with its place in the chain: its stripe and, within the
// stripe, its sequence number (an entry is identified by both).
type Entry struct {
	ID      string
	Stripe  int
	Seq     uint64
	Prev    string
	MAC     string
	Raw     json.RawMessage // the record as chained
	Version int             // the record's version: its "v", 1 when it has none
	Record  ca.AuditRecord
	// Checkpoint is set, and Record empty, for a checkpoint entry (checkpoint.go): Verify
	// and VerifyArchive hand only records to their callers, never these.
	Checkpoint *Checkpoint
	// Striped is set, and Record empty, for a striped mark (striped.go), which callers are
	// not handed either.
	Striped *StripedMark
}

// isRecord: e is an audit record, not a checkpoint or a striped mark.
func (e Entry) isRecord() bool { return e.Checkpoint == nil && e.Striped == nil }

// Verify walks the whole chain kept in Redis, every stripe ever appended to in turn (stripe
// 0's entries first, then stripe 1's, and so on: not in time order), and reports the first
// entry that breaks it. each, when not nil, sees every entry that checks out, in that order.
// It checks each stripe up to the head it read first, so records appended while it runs do
// not trouble it. A base mark must be signed (ErrBaseNotSigned); a legacy one is refused
// (ErrLegacyBase) unless Options.AcceptLegacyBase.
func (l *Log) Verify(ctx context.Context, each func(Entry)) (Report, error) {
	return l.walk(ctx, nil, func(int, baseMark) (bool, error) { return false, nil }, recordsOnly(each))
}

// recordsOnly passes each the audit records, not the checkpoints.
func recordsOnly(each func(Entry)) func(Entry) {
	if each == nil {
		return nil
	}
	return func(e Entry) {
		if e.isRecord() {
			each(e)
		}
	}
}

// MaxStripes bounds the stripe count a reader takes from Redis: a count beyond it is damage,
// not a deployment.
const MaxStripes = 1024

// parseStripes reads the stripe count kept in Redis (nil: absent, one stripe).
func parseStripes(v any) (int, error) {
	str, ok := v.(string)
	if !ok {
		return 1, nil
	}
	n, err := strconv.Atoi(str)
	if err != nil || n < 1 || n > MaxStripes {
		return 0, fmt.Errorf("audit: the stripe count of the chain is malformed: %.40q (want 1 to %d)", str, MaxStripes)
	}
	return n, nil
}

// walk verifies every stripe of the chain, each in turn. start sees each stripe's base mark
// before anything else of it: it answers whether a legacy mark is vouched for, or an error
// that ends the walk.
func (l *Log) walk(ctx context.Context, ar *ArchiveReport, start func(stripe int, b baseMark) (bool, error), each func(Entry)) (Report, error) {
	var rep Report
	// A store of a layout newer than this code's may keep the chain where this code does not
	// look (as layout 3's stripes were to layout 2's readers): refuse it rather than verify a
	// part of it.
	if _, err := store.ReadLayout(ctx, l.rdb, store.Keys{Prefix: l.prefix}); err != nil {
		return rep, fmt.Errorf("audit: read: %w", err)
	}
	s0 := newStripe(l.prefix, 0)
	// Stripe 0's marks and the stripe count share the tag {audit}: one MGET.
	vals, err := l.rdb.MGet(ctx, s0.baseKey, s0.headKey, store.Keys{Prefix: l.prefix}.AuditStripes()).Result()
	if err != nil {
		return rep, fmt.Errorf("audit: read: %w", err)
	}
	n, err := parseStripes(vals[2])
	if err != nil {
		return rep, err
	}
	n = max(n, len(l.stripes))
	// A log of one stripe keeps no MACs: a checkpoint found in it was taken with more
	// stripes, which is enough to fail.
	cps := &claims{keepMACs: n > 1, archive: ar}
	for i := range n {
		s, marks := s0, vals[:2]
		if i > 0 {
			s = newStripe(l.prefix, i)
			if marks, err = l.rdb.MGet(ctx, s.baseKey, s.headKey).Result(); err != nil {
				return rep, fmt.Errorf("audit: read: %w", err)
			}
		}
		sr, err := l.walkStripe(ctx, s, marks, start, each, cps)
		rep.Stripes = append(rep.Stripes, sr)
		rep.Records += sr.Records
		rep.Checkpoints += sr.Checkpoints
		rep.StripedMarks += sr.StripedMarks
		rep.LegacyBase = rep.LegacyBase || sr.LegacyBase
		if i == 0 {
			rep.Head, rep.BaseSeq = sr.Head, sr.BaseSeq
		}
		if err != nil {
			if n > 1 {
				err = fmt.Errorf("stripe %d: %w", i, err)
			}
			return rep, err
		}
	}
	if err := l.checkClaims(ctx, cps, &rep); err != nil {
		return rep, err
	}
	return rep, nil
}

// walkStripe verifies one stripe, whose base mark and head are marks (as MGET answered them).
// It keeps in cps what checkClaims needs: the checkpoints' claims, and its MACs.
func (l *Log) walkStripe(ctx context.Context, s *stripe, marks []any, start func(int, baseMark) (bool, error), each func(Entry), cps *claims) (StripeReport, error) {
	rep := StripeReport{Stripe: s.i}
	mark := func(v any) string { s, _ := v.(string); return s }
	b, err := parseBase(mark(marks[0]))
	if err != nil {
		return rep, err
	}
	headSeq, headMAC, err := parseHead(mark(marks[1]))
	if err != nil {
		return rep, err
	}
	vouched, err := start(s.i, b)
	if err != nil {
		return rep, err
	}
	switch {
	case b.legacy() && !vouched && !l.acceptLegacy:
		return rep, fmt.Errorf("%w (record %d)", ErrLegacyBase, b.seq)
	case b.legacy():
		rep.LegacyBase = !vouched
	case b.seq > 0:
		if err := l.checkSigned(s.i, b); err != nil {
			return rep, err
		}
	}
	rep.BaseSeq, rep.HeadSeq = b.seq, b.seq
	seq, prev := b.seq, b.mac
	cps.base = append(cps.base, b)
	cps.macs = append(cps.macs, nil)
	from := "-"
	for seq < headSeq {
		msgs, err := l.rdb.XRangeN(ctx, s.streamKey, from, "+", 1000).Result()
		if err != nil {
			return rep, fmt.Errorf("audit: read: %w", err)
		}
		for _, m := range msgs {
			if seq == headSeq {
				break // appended after the head was read
			}
			e, err := l.check(s.i, m, prev, seq+1)
			if err != nil {
				return rep, fmt.Errorf("audit: entry %s (after %d good records): %w", m.ID, rep.Records, err)
			}
			e.Stripe = s.i
			if each != nil {
				each(e)
			}
			cps.keep(e)
			prev, seq = e.MAC, e.Seq
			switch {
			case e.Checkpoint != nil:
				rep.Checkpoints++
			case e.Striped != nil:
				rep.StripedMarks++
			default:
				rep.Records++
			}
			rep.Head, rep.HeadSeq = e.MAC, e.Seq
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

func (l *Log) check(stripe int, m redis.XMessage, prev string, wantSeq uint64) (Entry, error) {
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
	if !hmac.Equal([]byte(mac), []byte(l.mac(stripe, prev, seq, body))) {
		return Entry{}, errors.New("its MAC does not match its content: the record was changed, or the audit key is not the one it was written with")
	}
	e := Entry{ID: m.ID, Seq: seq, Prev: prev, MAC: mac, Raw: body}
	if isStriped(body) {
		m, err := parseStriped(body)
		if err != nil {
			return Entry{}, err
		}
		e.Striped, e.Version = m, 1
		return e, nil
	}
	if isCheckpoint(body) {
		c, err := parseCheckpoint(body)
		if err != nil {
			return Entry{}, err
		}
		e.Checkpoint, e.Version = c, 1
		return e, nil
	}
	if err := json.Unmarshal(body, &e.Record); err != nil {
		return Entry{}, fmt.Errorf("malformed record: %w", err)
	}
	var v struct {
		V *int `json:"v"`
	}
	_ = json.Unmarshal(body, &v) // it decoded above
	switch {
	case v.V == nil:
		e.Version = 1
	case *v.V < 1:
		return Entry{}, fmt.Errorf("malformed record: version %d", *v.V)
	default:
		e.Version = *v.V
	}
	return e, nil
}
