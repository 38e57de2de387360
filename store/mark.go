package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
)

// The generation mark: how sshca notices a store that came back without its state (an empty
// restart, a restore from an old snapshot, a failover to a lagging replica).
//
// The store has a generation record (Keys.Generation): a random ID written once, when a
// process that has seen no generation finds none, and a generation number (epoch) that only a
// rebuild raises. Each hash tag that holds durable state (a revocation scope, identity blocks,
// revoked keys, the keyring: MarkedTags) has a mark (Keys.Mark): that generation and a counter
// that the same script (or MULTI/EXEC) that writes the tag's state checks and bumps, so a
// write and its mark are never apart.
//
// A mark kept only in Redis comes back with the snapshot it must detect, so the newest mark is
// also held outside: by every CA process in memory (Witness), by every bastion in the version
// of its installed KRL (the generation in the high 16 bits, revocation.GenerationShift). A
// store whose generation record or mark is missing, belongs to another generation ID, or is
// older than the witness has lost state: the witness remembers that until a newer generation
// (a rebuild) shows up, and the store then refuses issuance and KRLs with ErrStateLost while
// still accepting revocations (they are written; the mark is left as found).
//
// What it cannot see: every witness lost at once (every replica restarted and every bastion
// reinstalled while the store was rolled back), and a writer with the Redis password that
// rewrites the marks: the mark detects loss, not malice.

// ErrStateLost is the error of every read that issuance or a KRL depends on, once the store
// has been found to have lost durable state. It is a ca.Error of KindUnavailable (a 503), so
// ca passes it through with its message.
var ErrStateLost = &ca.Error{Kind: ca.KindUnavailable,
	Msg: "revocation state lost: the store came back without it; run sshca store rebuild"}

// Generation is a store's generation: its random ID and its generation number.
type Generation struct {
	ID    string
	Epoch uint16
}

// Mark is the generation mark of one hash tag.
type Mark struct {
	Generation
	N uint64 // bumped by every durable write in the tag
}

// Witness holds, outside the store, the newest generation and marks a process has seen, and
// whether the store was found to have lost state (sticky until a newer generation is seen).
// Every write and every read that issuance depends on compares against it. The zero value is
// ready to use; one per process (NewRedis makes one unless given).
//
// On a replicated Redis (RedisOptions.WaitReplicas), a mark the master answered may not be on
// the replica that a failover promotes: issuance's writes are not waited for. There the
// witness holds a mark only once the replicas confirmed it (confirmReplicated, after every
// waited write and ConfirmReplicated): a failover that loses writes made since the last
// confirmation is taken, one that goes back further is lost state.
type Witness struct {
	mu    sync.Mutex
	gen   Generation
	known bool              // gen is set
	marks map[string]uint64 // tag → newest counter seen in gen (replicated: confirmed)
	lost  map[string]string // tag → why it is lost
	// replicated is set by a store that waits for replicas; pending then holds, per tag, the
	// newest counter seen in gen and not yet confirmed.
	replicated bool
	pending    map[string]uint64
}

// expectation is what the witness knew when an operation started: comparing a read's answer
// only with what completed before it was sent keeps concurrent writes from looking like a
// rollback.
type expectation struct {
	gen   Generation
	known bool
	n     uint64
	seen  bool // the tag's mark was seen
}

func (w *Witness) expect(tag string) expectation {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, seen := w.marks[tag]
	return expectation{gen: w.gen, known: w.known, n: n, seen: seen}
}

// seenArg is the counter a write script must find at least (-1: the tag's mark was never seen,
// so a missing mark may be created).
func (e expectation) seenArg() int64 {
	if !e.seen {
		return -1
	}
	return int64(e.n)
}

// Generation returns the generation the witness holds.
func (w *Witness) Generation() (Generation, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.gen, w.known
}

// Lost returns ErrStateLost, wrapped with what was found, once any tag was found to have lost
// state; nil otherwise.
func (w *Witness) Lost() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for tag, why := range w.lost {
		return fmt.Errorf("%w (%s: %s)", ErrStateLost, tag, why)
	}
	return nil
}

// adoptLocked moves the witness to generation g (a first sight, or a rebuild's newer one):
// what was seen of an older generation no longer applies.
func (w *Witness) adoptLocked(g Generation) {
	w.gen, w.known = g, true
	w.marks = map[string]uint64{}
	w.pending = nil
	w.lost = nil
}

func (w *Witness) lose(tag, why string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.loseLocked(tag, why)
}

func (w *Witness) loseLocked(tag, why string) {
	if w.lost == nil {
		w.lost = map[string]string{}
	}
	if _, ok := w.lost[tag]; !ok {
		w.lost[tag] = why
	}
}

// observeGeneration compares the generation record read (present false: missing) with what
// was known when the read started.
func (w *Witness) observeGeneration(exp expectation, g Generation, present bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case !present:
		if exp.known {
			w.loseLocked(TagGeneration, "the generation record is missing")
		}
	case !w.known || g.Epoch > w.gen.Epoch:
		w.adoptLocked(g)
	case g.Epoch < exp.gen.Epoch || (exp.known && g.Epoch == exp.gen.Epoch && g.ID != exp.gen.ID):
		w.loseLocked(TagGeneration, fmt.Sprintf("generation %d/%s, the store had %d/%s", g.Epoch, g.ID, exp.gen.Epoch, exp.gen.ID))
	}
}

// observe compares a tag's mark read (present false: missing) with what was known when the
// read started, and keeps the newest.
func (w *Witness) observe(tag string, exp expectation, m Mark, present bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case !present:
		// Expected of the generation the witness still holds: one that a newer generation
		// (a rebuild, adopted by the same read) replaced says nothing of the new one's marks.
		if exp.seen && exp.gen == w.gen {
			w.loseLocked(tag, fmt.Sprintf("the mark is missing; it was at %d", exp.n))
		}
		return
	case !w.known || m.Epoch > w.gen.Epoch:
		w.adoptLocked(m.Generation)
	case m.Epoch < w.gen.Epoch || m.ID != w.gen.ID:
		w.loseLocked(tag, fmt.Sprintf("the mark is of generation %d/%s, the store had %d/%s", m.Epoch, m.ID, w.gen.Epoch, w.gen.ID))
		return
	case exp.seen && exp.gen == w.gen && m.N < exp.n:
		w.loseLocked(tag, fmt.Sprintf("the mark went back from %d to %d", exp.n, m.N))
		return
	}
	if w.replicated {
		if w.pending == nil {
			w.pending = map[string]uint64{}
		}
		if m.N >= w.pending[tag] {
			w.pending[tag] = m.N
		}
		return
	}
	if m.N >= w.marks[tag] {
		w.marks[tag] = m.N
	}
}

// pendingMark is what the witness saw of tag's mark and the replicas have not confirmed yet.
func (w *Witness) pendingMark(tag string) (Generation, uint64, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, ok := w.pending[tag]
	return w.gen, n, ok
}

// confirmReplicated holds tag's mark at n (seen in generation g before a WAIT that the
// replicas answered): a failover can no longer take it back.
func (w *Witness) confirmReplicated(tag string, g Generation, n uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.known || w.gen != g {
		return // a newer generation was adopted meanwhile
	}
	if cur, ok := w.marks[tag]; !ok || n > cur {
		w.marks[tag] = n
	}
}

func newGenerationID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// generationInitScript reads the generation record, creating it (epoch 0) only when it is
// missing and the process asking has never seen one; with it, on an empty store, the store's
// layout (KEYS[2], ARGV[2]; layout.go).
var generationInitScript = redis.NewScript(`
local g = redis.call('HMGET', KEYS[1], 'id', 'epoch')
if g[1] then return {g[1], g[2]} end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'epoch', 0)
if ARGV[2] ~= '' then redis.call('SET', KEYS[2], ARGV[2]) end
return {ARGV[1], '0'}
`)

// generation returns the store's generation: the witness's, or on first use by this process
// the store's record, created when the store has none. A store without a record whose marked
// tags carry marks was initialised and has lost it: ErrStateLost.
func (r *Redis) generation(ctx context.Context) (Generation, error) {
	if g, ok := r.witness.Generation(); ok {
		return g, nil
	}
	// A store with marks but no record was used before: do not start a new generation on it.
	// One with data of an older layout keeps its layout until migrated (layout.go).
	var cmds []*redis.IntCmd
	var older []*redis.IntCmd
	_, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		cmds = append(cmds, p.Exists(ctx, r.keys.Generation()))
		for _, tag := range MarkedTags {
			cmds = append(cmds, p.Exists(ctx, r.keys.Mark(tag)))
		}
		for _, k := range []string{r.keys.LegacyBlocked(), r.keys.Keyring(), r.keys.CAs()} {
			older = append(older, p.Exists(ctx, k)) // one by one: different slots on Cluster
		}
		return nil
	})
	if err != nil {
		return Generation{}, fmt.Errorf("store: generation: %w", err)
	}
	if cmds[0].Val() == 0 {
		for i, c := range cmds[1:] {
			if c.Val() == 0 {
				continue
			}
			// On a Cluster the record and the marks live on different nodes and the pipeline
			// reads them at different instants: another process (or request) that created the
			// record and wrote a mark in between looked like a lost record, and every
			// first request of a loaded replica failed closed. A mark is only written once the
			// record exists, so the record read again after the mark was seen is conclusive.
			again, err := r.rdb.Exists(ctx, r.keys.Generation()).Result()
			if err != nil {
				return Generation{}, fmt.Errorf("store: generation: %w", err)
			}
			if again == 0 {
				r.witness.lose(TagGeneration, "the generation record is missing but "+MarkedTags[i]+" has a mark")
				return Generation{}, r.witness.Lost()
			}
			break
		}
	}
	// A replica that shards the inventory or stripes the audit chain starts an empty store at
	// 3, since it uses them only at 3 and no replica of layout 2 has seen the store.
	layout := strconv.Itoa(unshardedLayout)
	if len(r.auditStripeTags) > 0 || r.invShards > 1 {
		layout = strconv.Itoa(LayoutStripes)
	}
	for _, c := range older {
		if c.Val() > 0 {
			layout = ""
		}
	}
	exp := r.witness.expect(TagGeneration)
	res, err := generationInitScript.Run(ctx, r.rdb, []string{r.keys.Generation(), r.keys.StoreLayout()}, newGenerationID(), layout).StringSlice()
	if err != nil {
		return Generation{}, fmt.Errorf("store: generation: %w", err)
	}
	g, err := parseGeneration(res[0], res[1])
	if err != nil {
		return Generation{}, err
	}
	r.witness.observeGeneration(exp, g, true)
	g, _ = r.witness.Generation()
	return g, nil
}

func parseGeneration(id, epoch string) (Generation, error) {
	e, err := strconv.ParseUint(epoch, 10, 16)
	if err != nil || id == "" {
		return Generation{}, fmt.Errorf("store: malformed generation %q/%q", id, epoch)
	}
	return Generation{ID: id, Epoch: uint16(e)}, nil
}

// parseMark reads HMGET id epoch n; present is false when the mark is missing.
func parseMark(vals []any) (m Mark, present bool, err error) {
	if len(vals) != 3 || vals[0] == nil {
		return Mark{}, false, nil
	}
	id, _ := vals[0].(string)
	epoch, _ := vals[1].(string)
	n, _ := vals[2].(string)
	g, err := parseGeneration(id, epoch)
	if err != nil {
		return Mark{}, false, err
	}
	m.Generation = g
	if m.N, err = strconv.ParseUint(n, 10, 64); err != nil {
		return Mark{}, false, fmt.Errorf("store: malformed mark counter %q", n)
	}
	return m, true, nil
}

// markLua checks a tag's mark at the start of a write script: mark(key, id, epoch, seen)
// answers {status, id, epoch, n}. "ok": the mark is this generation's and at least seen (a
// missing one is created when the caller never saw it); "newer": a rebuild raised the
// generation, nothing may be written with the old one; "lost": missing though seen, another
// generation, or behind seen. bump(key, r) then counts an "ok" write.
const markLua = `
local function mark(k, id, epoch, seen)
  local m = redis.call('HMGET', k, 'id', 'epoch', 'n')
  seen = tonumber(seen)
  if not m[1] then
    if seen >= 0 then return {'lost', '', '0', '0'} end
    redis.call('HSET', k, 'id', id, 'epoch', epoch, 'n', 0)
    return {'ok', id, epoch, '0'}
  end
  local st = 'ok'
  if tonumber(m[2]) > tonumber(epoch) then st = 'newer'
  elseif m[1] ~= id or tonumber(m[2]) < tonumber(epoch) or tonumber(m[3]) < seen then st = 'lost' end
  return {st, m[1], m[2], m[3]}
end
local function bump(k, r)
  if r[1] == 'ok' then r[4] = tostring(redis.call('HINCRBY', k, 'n', 1)) end
  return r
end
`

// markedScript is a write script that starts with mark(); markArgs are its id, epoch and
// seen arguments, at the positions the script expects them.
func markArgs(g Generation, exp expectation) []any {
	return []any{g.ID, strconv.Itoa(int(g.Epoch)), exp.seenArg()}
}

// runMarked runs a write script on the tag's state whose reply starts with the mark's
// {status, id, epoch, n} and returns the rest; op names the write in a refusal. With
// RedisOptions.WaitReplicas, the write waits for the replicas (runWaited). args builds the script's arguments for a
// generation and the witness's expectation. A newer generation (a rebuild) is adopted and the
// write retried; a lost one is written anyway (revocations are accepted when state was lost)
// and remembered by the witness.
func (r *Redis) runMarked(ctx context.Context, op, tag string, s *redis.Script, keys []string, args func(g Generation, exp expectation) []any) ([]any, error) {
	for range 3 {
		g, err := r.generation(ctx)
		if err != nil && !errors.Is(err, ErrStateLost) {
			return nil, err
		}
		exp := r.witness.expect(tag)
		if err != nil {
			g, exp = lostArgs(exp) // lost already: write with what is known, the script says lost
		}
		var res []any
		if r.waitReplicas > 0 {
			// Not acknowledged, nor seen by the witness, before the replicas have it: a
			// failover must not lose what was acknowledged, nor make the witness expect a
			// mark the promoted master never had.
			res, err = r.runWaited(ctx, op, tag, s, keys, args(g, exp))
		} else {
			res, err = s.Run(ctx, r.rdb, keys, args(g, exp)...).Slice()
		}
		if err != nil {
			return nil, err
		}
		if len(res) < 4 {
			return nil, fmt.Errorf("store: short reply from a marked write: %v", res)
		}
		status, _ := res[0].(string)
		m, _, err := parseMark(res[1:4])
		if err != nil && status != "lost" {
			return nil, err
		}
		switch status {
		case "ok":
			r.witness.observe(tag, exp, m, true)
			return res[4:], nil
		case "newer":
			r.witness.observe(tag, exp, m, true) // adopts the newer generation
			continue
		case "lost":
			r.witness.lose(tag, fmt.Sprintf("a write found the mark %s/%d/%d, expected %s/%d and at least %d",
				m.ID, m.Epoch, m.N, g.ID, g.Epoch, exp.seenArg()))
			return res[4:], nil
		default:
			return nil, fmt.Errorf("store: unknown mark status %q", status)
		}
	}
	return nil, errors.New("store: the generation keeps changing")
}

// MarkLua is markLua for a write script outside this package that keeps its tag's mark
// (audit/): it defines mark(key, id, epoch, seen) and bump(key, r) (see markLua); the script
// passes MarkedWrite.Args as id, epoch, seen and answers mark's reply, bumped, first.
const MarkLua = markLua

// MarkedWrite is one write, by a script outside this package, that checks and bumps the mark
// of a tag in the same script (BeginMarked, Args, Finish).
type MarkedWrite struct {
	r   *Redis
	tag string
	g   Generation
	exp expectation
}

// BeginMarked starts a marked write in tag: the store's generation (read once per process)
// and what the witness expects of the tag's mark.
func (r *Redis) BeginMarked(ctx context.Context, tag string) (*MarkedWrite, error) {
	g, err := r.generation(ctx)
	if err != nil && !errors.Is(err, ErrStateLost) {
		return nil, err
	}
	exp := r.witness.expect(tag)
	if err != nil {
		g, exp = lostArgs(exp)
	}
	return &MarkedWrite{r: r, tag: tag, g: g, exp: exp}, nil
}

// lostArgs are the generation and expectation a write passes once the store was found to
// have lost state: the script must only report the mark, never create one (a mark created
// now, with no generation known, would make the lost store look initialised to a process that
// reads it next), so a missing mark counts as seen and an unknown generation matches none.
func lostArgs(exp expectation) (Generation, expectation) {
	g := exp.gen
	if !exp.known {
		g = Generation{ID: "-"}
	}
	exp.seen = true
	return g, exp
}

// Args are the script's mark arguments: the generation's id, its epoch, and the counter the
// mark must be at least at (-1: never seen, a missing mark may be created).
func (m *MarkedWrite) Args() []any {
	b := m.r.genArgs.Load()
	if b == nil || b.g != m.g {
		b = &boxedGeneration{g: m.g, id: m.g.ID, epoch: strconv.Itoa(int(m.g.Epoch))}
		m.r.genArgs.Store(b)
	}
	return []any{b.id, b.epoch, m.exp.seenArg()}
}

// boxedGeneration is a generation's id and epoch as script arguments (markArgs), converted
// once per generation rather than on each of the three marked writes of every certificate.
type boxedGeneration struct {
	g         Generation
	id, epoch any
}

// Finish takes the mark's reply {status, id, epoch, n} (status "ok": checked and bumped;
// "newer": a rebuild's generation, adopted; "lost": remembered by the witness, so that
// issuance and KRLs fail with ErrStateLost until a rebuild). The write itself stands in every
// case: an error is only a malformed reply.
func (m *MarkedWrite) Finish(reply []any) error {
	if len(reply) < 4 {
		return fmt.Errorf("store: short reply from a marked write: %v", reply)
	}
	status, _ := reply[0].(string)
	mk, _, err := parseMark(reply[1:4])
	switch {
	case status == "lost":
		m.r.witness.lose(m.tag, fmt.Sprintf("a write found the mark %s/%d/%d, expected %s/%d and at least %d",
			mk.ID, mk.Epoch, mk.N, m.g.ID, m.g.Epoch, m.exp.seenArg()))
		return nil
	case err != nil:
		return err
	case status == "ok" || status == "newer":
		m.r.witness.observe(m.tag, m.exp, mk, true)
		return nil
	}
	return fmt.Errorf("store: unknown mark status %q", status)
}

// Witness is the process's witness of the store's marks.
func (r *Redis) Witness() *Witness { return r.witness }

// CheckState is the readiness check of the store's state: it reads the generation record and
// the marks of the marked tags, of the audit stripes that issuance checks
// (RedisOptions.AuditStripes), of the scopes of caKeys, and of every tag the witness has seen,
// in one round trip (after one GET of the count of inventory shards: every shard ever used
// is read, the configured ones and those beyond), and fails with ErrStateLost when any is
// missing or older than the witness. A stripe's tag is read whether or not the witness saw it
// yet: on a Cluster it may sit on a master that came back from another generation, which
// issuance would refuse.
func (r *Redis) CheckState(ctx context.Context, caKeys ...ssh.PublicKey) error {
	if _, err := r.generation(ctx); err != nil {
		return err
	}
	tags := slices.Concat(MarkedTags, r.auditStripeTags, r.shardTags[1:], r.tokenTags[1:])
	// The inventory shards beyond the configured ones that another replica recorded in (the
	// count): this replica reads them (lists, revocation by identity), so it watches their
	// marks too, and a shard rolled back alone fails its readiness as well as the writer's.
	shards, err := parseShards(r.rdb.Get(ctx, r.keys.InventoryShards()).Result())
	if err != nil {
		return fmt.Errorf("store: state check: %w", err)
	}
	for i := r.invShards; i < shards; i++ {
		tags = append(tags, TagInventoryShard(i), TagTokensShard(i))
	}
	for _, k := range caKeys {
		tags = append(tags, TagCA(ssh.FingerprintSHA256(k)))
	}
	r.witness.mu.Lock()
	for tag := range r.witness.marks {
		tags = append(tags, tag)
	}
	r.witness.mu.Unlock()
	genExp := r.witness.expect(TagGeneration)
	exps := make([]expectation, len(tags))
	for i, tag := range tags {
		exps[i] = r.witness.expect(tag)
	}
	var genCmd *redis.SliceCmd
	cmds := make([]*redis.SliceCmd, len(tags))
	_, err = r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		genCmd = p.HMGet(ctx, r.keys.Generation(), "id", "epoch")
		for i, tag := range tags {
			cmds[i] = r.readMark(ctx, p, tag)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: state check: %w", err)
	}
	if v := genCmd.Val(); len(v) == 2 && v[0] != nil {
		id, _ := v[0].(string)
		epoch, _ := v[1].(string)
		g, err := parseGeneration(id, epoch)
		if err != nil {
			return err
		}
		r.witness.observeGeneration(genExp, g, true)
	} else {
		r.witness.observeGeneration(genExp, Generation{}, false)
	}
	for i, tag := range tags {
		m, present, err := parseMark(cmds[i].Val())
		if err != nil {
			return err
		}
		r.witness.observe(tag, exps[i], m, present)
	}
	return r.witness.Lost()
}

// Witnessed reads the store's generation record and every mark it holds (found by SCAN, on
// each master of a Cluster) of that generation: what an audit archive keeps as a witness
// outside the store (ca.StoreWitness). Marks of another generation are left out: they are
// already a loss, which the witness of the process that wrote them reports.
func (r *Redis) Witnessed(ctx context.Context) (ca.StoreWitness, error) {
	vals, err := r.rdb.HMGet(ctx, r.keys.Generation(), "id", "epoch").Result()
	if err != nil {
		return ca.StoreWitness{}, fmt.Errorf("store: witness: %w", err)
	}
	if len(vals) != 2 || vals[0] == nil {
		return ca.StoreWitness{}, errors.New("store: witness: the store has no generation record (never used, or lost)")
	}
	id, _ := vals[0].(string)
	epoch, _ := vals[1].(string)
	g, err := parseGeneration(id, epoch)
	if err != nil {
		return ca.StoreWitness{}, err
	}
	keys, err := r.markKeys(ctx)
	if err != nil {
		return ca.StoreWitness{}, err
	}
	out := ca.StoreWitness{Generation: g.ID, Epoch: g.Epoch, Marks: map[string]uint64{}}
	prefix := r.keys.p() + ":"
	for _, k := range keys {
		m, present, err := parseMark(r.rdb.HMGet(ctx, k, "id", "epoch", "n").Val())
		if err != nil || !present || m.Generation != g {
			continue
		}
		out.Marks[strings.TrimSuffix(strings.TrimPrefix(k, prefix), ":mark")] = m.N
	}
	return out, nil
}

// Seed makes the witness start from w (an audit archive's record of the store), unless it
// has already seen a generation: every later read compares the store with it, so a store
// found without that generation record, with an older one, or with a mark missing or behind
// w's has lost state (ErrStateLost), exactly as if this process had seen w itself.
func (w *Witness) Seed(sw ca.StoreWitness) error {
	if sw.Generation == "" {
		return errors.New("store: witness without a generation")
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.known {
		return nil
	}
	w.adoptLocked(Generation{ID: sw.Generation, Epoch: sw.Epoch})
	for tag, n := range sw.Marks {
		w.marks[tag] = n
	}
	return nil
}
