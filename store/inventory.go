package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/ca"
)

// The inventory: who holds access now (ca.CertStore). Every key carries the hash tag of its
// shard ({inventory}, or {inventory:i} with RedisOptions.InventoryShards: shards.go), so the
// script of Record works on Redis Cluster: a record (Keys.Cert) expiring at
// its ValidBefore, a sorted set of serials per identity (Keys.Identity), one of every live
// serial (Keys.LiveCerts, for "who has access now" without knowing whom to ask about), one of
// identities per alias (Keys.Alias), and the identity blocks (Keys.Blocked) that Record checks.
// An identity's set is emptied (and so deleted) by the pruning of its next Record; the set of an
// identity that never returns keeps its expired serials, a few bytes each. The global set is
// pruned by every Record, so it holds about as many members as there are live certificates.

var (
	_ ca.CertStore = (*Redis)(nil)
	_ ca.CertStore = (*Memory)(nil)
)

// recordScript: KEYS record, identity index, blocked, the inventory's mark, the live index,
// then one alias index per alias; ARGV now (unix ms), the record's JSON, its valid_before and the index's end
// (unix ms), the serial, the mark's id, epoch and seen, then the identity and its aliases (one
// per alias index). Answers {'blocked', name, until} without writing anything when the
// identity or an alias is blocked beyond now, else {'ok'} and the mark's reply, checked and
// bumped (markLua; the record is written whatever it says). The check and the write are one
// step: a block written before it refuses the record, and a read of the inventory after a
// block sees every record written before it.
var (
	recordScript    = redis.NewScript(recordBlocksLua + recordWriteLua)
	recordNewScript = redis.NewScript(recordBlocksLua + `
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[2] then return {'taken'} end
` + recordWriteLua)
)

// recordBlocksLua and recordWriteLua are recordScript's two steps: the check of the blocks,
// and the writes. recordNewScript puts a third between them (Redis.Admit's record before
// signing): a serial already recorded with another record is not written over, and answers
// {'taken'}; the same record (a pipeline sent again after a lost reply) is written again.
const recordBlocksLua = scoreLua + markLua + `
local now = tonumber(ARGV[1])
for i = 9, #ARGV do
  local s = redis.call('ZSCORE', KEYS[3], ARGV[i])
  if s and score(s) > now then return {'blocked', ARGV[i], tostring(s)} end
end
`

const recordWriteLua = `redis.call('SET', KEYS[1], ARGV[2])
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[3], ARGV[5])
for i = 6, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', ARGV[1])
  redis.call('ZADD', KEYS[i], 'GT', ARGV[4], ARGV[9])
end
local r = bump(KEYS[4], mark(KEYS[4], ARGV[6], ARGV[7], ARGV[8]))
return {'ok', r[1], r[2], r[3], r[4]}
`

// Record stores c until its ValidBefore, in one script that first checks the identity blocks:
// when c's identity or one of its aliases is blocked (BlockIdentity), nothing is written and
// the answer is a ca.Error of KindDenied that says the identity was revoked. The same script
// checks and bumps the inventory's generation mark. With inventory shards the script runs in
// the shard of c's identity (shards.go), whose blocked set holds every block, after the first
// record beyond shard 0 (in this generation) has raised the store's layout and copied the
// blocks (ensureShards).
func (r *Redis) Record(ctx context.Context, c ca.Certificate) error {
	rc, err := r.prepareRecord(ctx, c)
	if err != nil {
		return err
	}
	res, err := recordScript.Run(ctx, r.rdb, rc.keys, rc.args...).StringSlice()
	if err != nil {
		return fmt.Errorf("store: record serial %d: %w", c.Serial, err)
	}
	if why := rc.blocked(res); why != "" {
		return ca.Denied("revoked", why)
	}
	return rc.finish(res)
}

// recordCall is one run of recordScript (or recordNewScript) for a certificate: its shard's
// marked write, the script's keys and arguments.
type recordCall struct {
	serial uint64
	mw     *MarkedWrite
	keys   []string
	args   []any
	cmd    *redis.Cmd // once queued in a pipeline (Admit)
}

// prepareRecord finds c's shard and the marked write of its tag, and lays out the record
// script's keys and arguments.
func (r *Redis) prepareRecord(ctx context.Context, c ca.Certificate) (*recordCall, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("store: record: %w", err)
	}
	now := r.now()
	until := c.ValidBefore
	if c.IndexUntil.After(until) {
		until = c.IndexUntil
	}
	shard, err := r.recordShard(ctx, c.Identity)
	if err != nil {
		return nil, fmt.Errorf("store: record serial %d: %w", c.Serial, err)
	}
	tag := r.shardTags[shard]
	mw, err := r.BeginMarked(ctx, tag)
	if err != nil {
		return nil, fmt.Errorf("store: record serial %d: %w", c.Serial, err)
	}
	if shard > 0 {
		if err := r.ensureShards(ctx, mw.g); err != nil {
			return nil, fmt.Errorf("store: record serial %d: %w", c.Serial, err)
		}
	}
	keys := make([]string, 0, 5+len(c.Aliases))
	keys = append(keys, r.keys.ShardCert(shard, c.Serial), r.keys.ShardIdentity(shard, c.Identity), r.shardBlocked[shard], r.mark(tag), r.shardLive[shard])
	args := make([]any, 0, 9+len(c.Aliases))
	args = append(args, now.UnixMilli(), b, c.ValidBefore.UnixMilli(), until.UnixMilli(), strconv.FormatUint(c.Serial, 10))
	args = append(append(args, mw.Args()...), c.Identity)
	for _, a := range c.Aliases {
		keys = append(keys, r.keys.ShardAlias(shard, a))
		args = append(args, a)
	}
	return &recordCall{serial: c.Serial, mw: mw, keys: keys, args: args}, nil
}

// blocked is why the script refused the record (an identity or alias blocked), "" when it did
// not.
func (rc *recordCall) blocked(res []string) string {
	if len(res) == 3 && res[0] == "blocked" {
		until, _ := strconv.ParseFloat(res[2], 64)
		return identityRefusal(res[1], until)
	}
	return ""
}

// finish judges the script's answer once it wrote the record ({'ok'} and the mark's reply).
func (rc *recordCall) finish(res []string) error {
	if len(res) != 5 || res[0] != "ok" {
		return fmt.Errorf("store: record serial %d: unexpected answer %q", rc.serial, res)
	}
	return rc.mw.Finish([]any{res[1], res[2], res[3], res[4]})
}

// queueNew queues recordNewScript on p (Admit's pipeline).
func (rc *recordCall) queueNew(ctx context.Context, p redis.Pipeliner) {
	rc.cmd = recordNewScript.EvalSha(ctx, p, rc.keys, rc.args...)
}

// newResult is the answer of the record queued by queueNew: recorded, or why the identity is
// refused, or neither (the serial taken by another record). A script the server did not have
// (NOSCRIPT) never ran: it is run now, alone, by its body.
func (r *Redis) newResult(ctx context.Context, rc *recordCall) (recorded bool, refusal string, _ error) {
	res, err := rc.cmd.StringSlice()
	if isNoScript(err) {
		res, err = recordNewScript.Eval(ctx, r.rdb, rc.keys, rc.args...).StringSlice()
	}
	if err != nil {
		return false, "", fmt.Errorf("store: record serial %d: %w", rc.serial, err)
	}
	if why := rc.blocked(res); why != "" {
		return false, why, nil
	}
	if len(res) == 1 && res[0] == "taken" {
		return false, "", nil
	}
	if err := rc.finish(res); err != nil {
		return false, "", err
	}
	return true, "", nil
}

// unrecordScript: KEYS record, identity index, live index; ARGV the record's JSON, the serial.
// Deletes the record and its serial from both indexes only when the record is still that JSON
// (never another certificate's of the same serial). Answers 1 when it deleted, else 0.
var unrecordScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
return 1
`)

// Unrecord deletes the record of c that Admit wrote before signing (ca.AdmissionRequest.Record)
// when the certificate was then not signed or not handed out: a refusal, a spent token, a
// failed signature. The alias index entries stay (they only lead a revocation by alias to the
// identity, as any earlier certificate's do). A record admitted while the store was below
// LayoutVersion is in shard 0 even when the store was raised since (sshca store migrate, read
// by this replica between Admit and Unrecord): Unrecord looks there too when the identity's
// own shard does not hold it, one more round trip on that rare path.
func (r *Redis) Unrecord(ctx context.Context, c ca.Certificate) error {
	b, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("store: unrecord: %w", err)
	}
	shard, err := r.recordShard(ctx, c.Identity)
	if err != nil {
		return fmt.Errorf("store: unrecord serial %d: %w", c.Serial, err)
	}
	for {
		keys := []string{r.keys.ShardCert(shard, c.Serial), r.keys.ShardIdentity(shard, c.Identity), r.shardLive[shard]}
		n, err := unrecordScript.Run(ctx, r.rdb, keys, b, strconv.FormatUint(c.Serial, 10)).Int()
		if err != nil {
			return fmt.Errorf("store: unrecord serial %d: %w", c.Serial, err)
		}
		if n == 1 || shard == 0 {
			return nil
		}
		shard = 0
	}
}

// blockedErr is the refusal of a certificate for an identity blocked until untilMS (unix ms),
// the same whether found before signing (Refused) or when recording (Record).
func blockedErr(name string, untilMS float64) error {
	return ca.Denied("revoked", identityRefusal(name, untilMS))
}

// Live returns the identity's certificates still valid at now, by serial, from its index in
// every shard ever recorded in (its own, and shard 0 for those recorded while the store was
// below layout 3, or issued under an access request by a replica before stop 17, or while the
// configured shards were other).
func (r *Redis) Live(ctx context.Context, identity string, now time.Time) ([]ca.Certificate, error) {
	return r.liveIn(ctx, func(shard int) string { return r.keys.ShardIdentity(shard, identity) }, now)
}

// AllLive returns every certificate still valid at now, by serial, from each shard's index
// (Keys.ShardLiveCerts): one ZRANGEBYSCORE per shard in one pipeline, then the records in
// MGETs of up to liveBatch keys (each in one shard's hash tag, so one slot on Redis Cluster),
// again in one pipeline.
func (r *Redis) AllLive(ctx context.Context, now time.Time) ([]ca.Certificate, error) {
	return r.liveIn(ctx, r.keys.ShardLiveCerts, now)
}

// LivePage returns a page of the certificates still valid at now after the position after,
// at most limit (0: all), in ca.CertCursor order, and where the next page starts (zero: none
// is left). Every shard's index (Keys.ShardLiveCerts) answers its first limit members after
// the position (pageScript, one EVAL a shard in one pipeline); the page is the first limit
// of their merge (any shard's members up to its last are among that shard's first limit), and
// its records are read in MGETs of up to liveBatch keys of one shard. A serial whose record
// expired meanwhile is skipped, but still moves the position.
func (r *Redis) LivePage(ctx context.Context, now time.Time, after ca.CertCursor, limit int) ([]ca.Certificate, ca.CertCursor, error) {
	return r.livePageIn(ctx, r.keys.ShardLiveCerts, now, after, limit)
}

// LivePageOf is LivePage of one identity's index in each shard (Keys.ShardIdentity), which
// holds its serials scored as the live index does.
func (r *Redis) LivePageOf(ctx context.Context, identity string, now time.Time, after ca.CertCursor, limit int) ([]ca.Certificate, ca.CertCursor, error) {
	return r.livePageIn(ctx, func(shard int) string { return r.keys.ShardIdentity(shard, identity) }, now, after, limit)
}

func (r *Redis) livePageIn(ctx context.Context, index func(shard int) string, now time.Time, after ca.CertCursor, limit int) ([]ca.Certificate, ca.CertCursor, error) {
	member := ""
	if !after.IsZero() {
		member = strconv.FormatUint(after.Serial, 10)
	}
	var cmds []*redis.Cmd
	_, err := r.inShards(ctx, func(p redis.Pipeliner, shard int) {
		cmds = append(cmds, pageScript.Eval(ctx, p, []string{index(shard)}, now.UnixMilli(), after.ValidBefore, member, limit))
	})
	if err != nil {
		return nil, ca.CertCursor{}, fmt.Errorf("store: live certificates: %w", err)
	}
	type entry struct {
		pos   ca.CertCursor
		shard int
	}
	var merged []entry
	more := false
	for shard, cmd := range cmds {
		page, m, err := pageAnswer(cmd)
		if err != nil {
			return nil, ca.CertCursor{}, fmt.Errorf("store: live certificates: %w", err)
		}
		more = more || m
		for _, z := range page {
			n, err := strconv.ParseUint(z.member, 10, 64)
			if err != nil {
				return nil, ca.CertCursor{}, fmt.Errorf("store: live certificates: bad serial %q in index", z.member)
			}
			merged = append(merged, entry{ca.CertCursor{ValidBefore: int64(z.score), Serial: n}, shard})
		}
	}
	if len(cmds) > 1 {
		slices.SortFunc(merged, func(x, y entry) int { return x.pos.Compare(y.pos) })
		// One certificate kept in two shards (compactRecords) is listed once.
		merged = slices.CompactFunc(merged, func(x, y entry) bool { return x.pos == y.pos })
	}
	if limit > 0 && len(merged) > limit {
		merged, more = merged[:limit], true
	}
	if len(merged) == 0 {
		return nil, ca.CertCursor{}, nil
	}
	// The records, in the page's order: MGETs of one shard's keys each, in one pipeline.
	type batch struct {
		at   []int // positions in merged
		keys []string
	}
	var batches []batch
	byShard := map[int]int{} // shard -> index in batches of its open batch
	for i, e := range merged {
		bi, ok := byShard[e.shard]
		if !ok || len(batches[bi].keys) == liveBatch {
			batches = append(batches, batch{})
			bi = len(batches) - 1
			byShard[e.shard] = bi
		}
		batches[bi].at = append(batches[bi].at, i)
		batches[bi].keys = append(batches[bi].keys, r.keys.ShardCert(e.shard, e.pos.Serial))
	}
	gets := make([]*redis.SliceCmd, len(batches))
	if _, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, b := range batches {
			gets[i] = p.MGet(ctx, b.keys...)
		}
		return nil
	}); err != nil {
		return nil, ca.CertCursor{}, fmt.Errorf("store: live certificates: %w", err)
	}
	found := make([]*ca.Certificate, len(merged))
	for j, cmd := range gets {
		for i, v := range cmd.Val() {
			s, ok := v.(string)
			if !ok {
				continue // expired since the index was read
			}
			var c ca.Certificate
			if err := json.Unmarshal([]byte(s), &c); err != nil {
				return nil, ca.CertCursor{}, fmt.Errorf("store: corrupt record %s: %w", batches[j].keys[i], err)
			}
			if c.ValidBefore.After(now) {
				found[batches[j].at[i]] = &c
			}
		}
	}
	out := make([]ca.Certificate, 0, len(merged))
	for _, c := range found {
		if c != nil {
			out = append(out, *c)
		}
	}
	if !more {
		return out, ca.CertCursor{}, nil
	}
	return out, merged[len(merged)-1].pos, nil
}

// liveBatch bounds the keys of one MGET, so that a large inventory does not make one reply of
// many megabytes that blocks Redis while it is written.
const liveBatch = 512

// liveIn reads the records of the serials of each shard's index (a sorted set scored by
// ValidBefore in unix ms, index(shard)) that are valid at now. A serial whose record has
// expired meanwhile is skipped.
func (r *Redis) liveIn(ctx context.Context, index func(shard int) string, now time.Time) ([]ca.Certificate, error) {
	var idx []*redis.StringSliceCmd
	by := &redis.ZRangeBy{Min: "(" + strconv.FormatInt(now.UnixMilli(), 10), Max: "+inf"}
	_, err := r.inShards(ctx, func(p redis.Pipeliner, shard int) {
		idx = append(idx, p.ZRangeByScore(ctx, index(shard), by))
	})
	if err != nil {
		return nil, fmt.Errorf("store: live certificates: %w", err)
	}
	var batches [][]string
	for shard, cmd := range idx {
		serials, err := cmd.Result()
		if err != nil {
			return nil, fmt.Errorf("store: live certificates: %w", err)
		}
		keys := make([]string, len(serials))
		for i, s := range serials {
			n, err := strconv.ParseUint(s, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("store: live certificates: bad serial %q in index", s)
			}
			keys[i] = r.keys.ShardCert(shard, n)
		}
		batches = slices.AppendSeq(batches, slices.Chunk(keys, liveBatch))
	}
	if len(batches) == 0 {
		return nil, nil
	}
	gets := make([]*redis.SliceCmd, len(batches))
	_, err = r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, b := range batches {
			gets[i] = p.MGet(ctx, b...)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: live certificates: %w", err)
	}
	var out []ca.Certificate
	for j, cmd := range gets {
		for i, v := range cmd.Val() {
			s, ok := v.(string)
			if !ok {
				continue // expired since the index was read
			}
			var c ca.Certificate
			if err := json.Unmarshal([]byte(s), &c); err != nil {
				return nil, fmt.Errorf("store: corrupt record %s: %w", batches[j][i], err)
			}
			if c.ValidBefore.After(now) {
				out = append(out, c)
			}
		}
	}
	sortBySerial(out)
	return compactRecords(out), nil
}

// compactRecords drops the second record of one certificate (the same serial and key ID) from
// cs, sorted by serial: a certificate may be kept in two shards, its own and the one a rebuild
// with another number of shards restored it into (sshca store rebuild --inventory-shards).
func compactRecords(cs []ca.Certificate) []ca.Certificate {
	return slices.CompactFunc(cs, func(a, b ca.Certificate) bool { return a.Serial == b.Serial && a.KeyID == b.KeyID })
}

// ResolveAlias returns the canonical names of the identities recorded under alias whose index
// entries last beyond now, sorted, from every shard ever recorded in.
func (r *Redis) ResolveAlias(ctx context.Context, alias string, now time.Time) ([]string, error) {
	var cmds []*redis.StringSliceCmd
	by := &redis.ZRangeBy{Min: "(" + strconv.FormatInt(now.UnixMilli(), 10), Max: "+inf"}
	_, err := r.inShards(ctx, func(p redis.Pipeliner, shard int) {
		cmds = append(cmds, p.ZRangeByScore(ctx, r.keys.ShardAlias(shard, alias), by))
	})
	if err != nil {
		return nil, fmt.Errorf("store: resolve identity alias: %w", err)
	}
	var ids []string
	for _, c := range cmds {
		v, err := c.Result()
		if err != nil {
			return nil, fmt.Errorf("store: resolve identity alias: %w", err)
		}
		ids = append(ids, v...)
	}
	slices.Sort(ids)
	return slices.Compact(ids), nil
}

// Get returns the record of a serial, if it is still kept, from whichever shard holds it (every
// shard ever recorded in is asked, in one pipeline).
func (r *Redis) Get(ctx context.Context, serial uint64) (ca.Certificate, bool, error) {
	var cmds []*redis.StringCmd
	_, err := r.inShards(ctx, func(p redis.Pipeliner, shard int) {
		cmds = append(cmds, p.Get(ctx, r.keys.ShardCert(shard, serial)))
	})
	if err != nil {
		return ca.Certificate{}, false, fmt.Errorf("store: get serial %d: %w", serial, err)
	}
	for _, cmd := range cmds {
		b, err := cmd.Bytes()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			return ca.Certificate{}, false, fmt.Errorf("store: get serial %d: %w", serial, err)
		}
		var c ca.Certificate
		if err := json.Unmarshal(b, &c); err != nil {
			return ca.Certificate{}, false, fmt.Errorf("store: corrupt record for serial %d: %w", serial, err)
		}
		return c, true, nil
	}
	return ca.Certificate{}, false, nil
}

// Record stores c until its ValidBefore, unless its identity or one of its aliases is blocked
// (see Redis.Record): the check and the write hold the same lock as BlockIdentity.
func (m *Memory) Record(_ context.Context, c ca.Certificate) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.blockedLocked(c); err != nil {
		return err
	}
	m.recordLocked(c)
	return nil
}

// blockedLocked refuses c when its identity or one of its aliases is blocked (Record).
func (m *Memory) blockedLocked(c ca.Certificate) error {
	if why := m.blockedWhyLocked(c); why != "" {
		return ca.Denied("revoked", why)
	}
	return nil
}

// blockedWhyLocked says why c is refused when its identity or one of its aliases is blocked,
// "" when it is not.
func (m *Memory) blockedWhyLocked(c ca.Certificate) string {
	now := m.now()
	if t, ok := m.blocked[c.Identity]; ok && t.After(now) {
		return identityRefusal(c.Identity, float64(t.UnixMilli()))
	}
	for _, a := range c.Aliases {
		if t, ok := m.blocked[a]; ok && t.After(now) {
			return identityRefusal(a, float64(t.UnixMilli()))
		}
	}
	return ""
}

func (m *Memory) recordLocked(c ca.Certificate) {
	m.pruneLocked(m.now())
	until := c.ValidBefore
	if c.IndexUntil.After(until) {
		until = c.IndexUntil
	}
	c.IndexUntil = time.Time{} // not part of the record, as in Redis
	m.certs[c.Serial] = c
	for _, a := range c.Aliases {
		if m.aliases == nil {
			m.aliases = map[string]map[string]time.Time{}
		}
		if m.aliases[a] == nil {
			m.aliases[a] = map[string]time.Time{}
		}
		if until.After(m.aliases[a][c.Identity]) {
			m.aliases[a][c.Identity] = until
		}
	}
}

// ResolveAlias returns the identities recorded under alias whose entries last beyond now.
func (m *Memory) ResolveAlias(_ context.Context, alias string, now time.Time) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for id, until := range m.aliases[alias] {
		if until.After(now) {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out, nil
}

// Live returns the identity's certificates still valid at now, by serial.
func (m *Memory) Live(_ context.Context, identity string, now time.Time) ([]ca.Certificate, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []ca.Certificate
	for _, c := range m.certs {
		if c.Identity == identity && c.ValidBefore.After(now) {
			out = append(out, c)
		}
	}
	sortBySerial(out)
	return out, nil
}

// AllLive returns every certificate still valid at now, by serial.
func (m *Memory) AllLive(_ context.Context, now time.Time) ([]ca.Certificate, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []ca.Certificate
	for _, c := range m.certs {
		if c.ValidBefore.After(now) {
			out = append(out, c)
		}
	}
	sortBySerial(out)
	return out, nil
}

// LivePage returns a page of the certificates still valid at now after the position after,
// in ca.CertCursor order (see Redis.LivePage).
func (m *Memory) LivePage(ctx context.Context, now time.Time, after ca.CertCursor, limit int) ([]ca.Certificate, ca.CertCursor, error) {
	return m.livePageOf(nil, now, after, limit)
}

// LivePageOf is LivePage of one identity's certificates.
func (m *Memory) LivePageOf(_ context.Context, identity string, now time.Time, after ca.CertCursor, limit int) ([]ca.Certificate, ca.CertCursor, error) {
	return m.livePageOf(&identity, now, after, limit)
}

func (m *Memory) livePageOf(identity *string, now time.Time, after ca.CertCursor, limit int) ([]ca.Certificate, ca.CertCursor, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []ca.Certificate
	for _, c := range m.certs {
		if (identity == nil || c.Identity == *identity) && c.ValidBefore.After(now) && (after.IsZero() || ca.CursorOf(c).Compare(after) > 0) {
			out = append(out, c)
		}
	}
	slices.SortFunc(out, func(x, y ca.Certificate) int { return ca.CursorOf(x).Compare(ca.CursorOf(y)) })
	if limit > 0 && len(out) > limit {
		out = out[:limit]
		return out, ca.CursorOf(out[len(out)-1]), nil
	}
	return out, ca.CertCursor{}, nil
}

// Get returns the record of a serial, if it is still kept.
func (m *Memory) Get(_ context.Context, serial uint64) (ca.Certificate, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c, ok := m.certs[serial]
	return c, ok, nil
}
