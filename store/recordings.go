package store

// Session recordings (issue 18 §1): what bastion agents ship, kept on a Redis of their own
// (recordings.redis), never on the one issuance and revocation depend on, so that a session
// that prints without end can at worst fill this one. Per session: its record (a hash
// {received, rec, exp}: the lines received so far, ca.SessionRecording as JSON, when its keys
// expire) and its kept lines (a list), both under the session's hash tag so that one script
// appends to them; an index of sessions by start; each host's byte total; and the recording
// proofs spent.
//
// Retention (recordings.retention): with one set, a session's record and lines expire (Redis
// PEXPIREAT, set by the append script) at retention after the last batch the CA received of it
// (its end line's batch, or its last line's if it never ended), on the CA's clock, not the
// agent's. Beside them RecordingExpiry and RecordingSizes say when each session goes and what
// it added to its host's total; the prune (PruneRecordings, run at most once a minute by the
// append of a new session) takes expired sessions out of the index and their bytes off their
// host's total, and deletes their keys itself too (a store whose keys do not expire with real
// time, miniredis, or a clock ahead of Redis's). The audit records of a session (start and
// end, on the main Redis) are not touched: the audit log has its own archive.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/ca"
)

// Recordings is the Redis recording store (ca.RecordingStore), on its own client.
type Recordings struct {
	rdb       redis.UniversalClient
	keys      Keys
	now       func() time.Time
	retention time.Duration

	pruneMu   sync.Mutex
	lastPrune time.Time // CA clock
}

// recordingPruneEvery is how often at most an append prunes expired sessions: a prune reads the
// expiry index, so one per new session would cost a round trip each for nothing.
const recordingPruneEvery = time.Minute

// recordingPruneBatch is how many expired sessions a prune takes per read of the expiry index
// (and an append's prune at most).
const recordingPruneBatch = 100

// WithRetention sets how long a session's keys are kept after its last batch (0: forever, as
// before) and returns r; call it before the store is used.
func (r *Recordings) WithRetention(d time.Duration) *Recordings {
	r.retention = max(0, d)
	return r
}

var (
	_ ca.RecordingStore = (*Recordings)(nil)
	_ ca.RecordingStore = (*MemoryRecordings)(nil)
)

// NewRecordings returns the recording store on rdb (the recordings Redis, not the main one),
// its keys under prefix ("" for DefaultPrefix).
func NewRecordings(rdb redis.UniversalClient, prefix string, now func() time.Time) *Recordings {
	if now == nil {
		now = time.Now
	}
	return &Recordings{rdb: rdb, keys: Keys{Prefix: prefix}, now: now}
}

// Check pings the recordings Redis.
func (r *Recordings) Check(ctx context.Context) error {
	if err := r.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("store: recordings redis: %w", err)
	}
	return nil
}

// appendRecording checks the received count and appends in one step. KEYS: record, lines.
// ARGV: prev received, new received, record JSON, replace last (0/1), expire at (unix ms, "0":
// never), lines...
var appendRecording = redis.NewScript(`
local cur = redis.call('HGET', KEYS[1], 'received')
if ARGV[1] == '0' then
  if cur then return 0 end
elseif cur ~= ARGV[1] then
  return 0
end
local first = 6
if ARGV[4] == '1' and #ARGV >= 6 then
  redis.call('LSET', KEYS[2], -1, ARGV[6])
  first = 7
end
for i = first, #ARGV, 1000 do
  redis.call('RPUSH', KEYS[2], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
redis.call('HSET', KEYS[1], 'received', ARGV[2], 'rec', ARGV[3])
if ARGV[5] ~= '0' then
  redis.call('HSET', KEYS[1], 'exp', ARGV[5])
  redis.call('PEXPIREAT', KEYS[1], ARGV[5])
  redis.call('PEXPIREAT', KEYS[2], ARGV[5])
end
return 1
`)

// takeHostBytes takes a pruned session's bytes off its host's total, and the total away once
// nothing is left (a host that stopped recording leaves no key). KEYS: host total. ARGV: bytes.
var takeHostBytes = redis.NewScript(`
local n = redis.call('DECRBY', KEYS[1], ARGV[1])
if n <= 0 then redis.call('DEL', KEYS[1]) end
return n
`)

// dropExpired deletes a session's keys unless the record says they expire after now (its
// "exp", written by the append script with their PEXPIREAT): the expiry index is moved on only
// after the script, so a prune between the two finds an old score for a session just
// extended, and deleted a batch the CA had acknowledged. Answers 1 when the keys are gone
// (now, or before), else the session's "exp" (unix ms, as text), where the prune moves it on in
// the expiry index when the append that extended it did not get there. KEYS: record, lines.
// ARGV: now ms.
var dropExpired = redis.NewScript(`
local e = redis.call('HGET', KEYS[1], 'exp')
if e and tonumber(e) > tonumber(ARGV[1]) then return e end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
`)

// takeExpired removes a session from the expiry index if its score is still at most now, so
// that of two replicas pruning at once only one takes its bytes off the host's total, and a
// session whose expiry an append just moved on is left alone. KEYS: expiry. ARGV: id, now ms.
var takeExpired = redis.NewScript(`
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s and tonumber(s) <= tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 1
end
return 0
`)

// SessionRecording is the session's record; false when none.
func (r *Recordings) SessionRecording(ctx context.Context, id string) (ca.SessionRecording, bool, error) {
	var rec ca.SessionRecording
	b, err := r.rdb.HGet(ctx, r.keys.RecordingSession(id), "rec").Bytes()
	if errors.Is(err, redis.Nil) {
		return rec, false, nil
	}
	if err != nil {
		return rec, false, fmt.Errorf("store: recording %s: %w", id, err)
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		return rec, false, fmt.Errorf("store: recording %s: %w", id, err)
	}
	return rec, true, nil
}

// AppendRecording stores rec and appends lines if the stored record's Received is still prev
// (ca.RecordingStore). The host's total and the index are written after the script, each by
// one command: on a Cluster they sit in other slots, and both only grow.
func (r *Recordings) AppendRecording(ctx context.Context, rec ca.SessionRecording, prev int64, replaceLast bool, lines [][]byte) (bool, error) {
	b, err := json.Marshal(rec)
	if err != nil {
		return false, fmt.Errorf("store: recording %s: %w", rec.ID, err)
	}
	now := r.now()
	expireAt := "0"
	if r.retention > 0 {
		expireAt = strconv.FormatInt(now.Add(r.retention).UnixMilli(), 10)
	}
	args := []any{strconv.FormatInt(prev, 10), strconv.FormatInt(rec.Received, 10), b, boolArg(replaceLast), expireAt}
	var n int64
	for i, l := range lines {
		args = append(args, l)
		if i > 0 || !replaceLast {
			n += int64(len(l))
		}
	}
	ok, err := appendRecording.Run(ctx, r.rdb, []string{r.keys.RecordingSession(rec.ID), r.keys.RecordingLines(rec.ID)}, args...).Int()
	if err != nil {
		return false, fmt.Errorf("store: recording %s append: %w", rec.ID, err)
	}
	if ok != 1 {
		return false, nil
	}
	if n > 0 {
		if err := r.rdb.IncrBy(ctx, r.keys.RecordingHostBytes(rec.Host), n).Err(); err != nil {
			return true, fmt.Errorf("store: recording host total: %w", err)
		}
	}
	if prev == 0 {
		z := redis.Z{Score: float64(rec.Header.Start.UnixMilli()), Member: rec.ID}
		if err := r.rdb.ZAdd(ctx, r.keys.RecordingIndex(), z).Err(); err != nil {
			return true, fmt.Errorf("store: recording index: %w", err)
		}
	}
	if r.retention == 0 {
		return true, nil
	}
	_, err = r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.ZAdd(ctx, r.keys.RecordingExpiry(), redis.Z{Score: float64(now.Add(r.retention).UnixMilli()), Member: rec.ID})
		if n > 0 {
			p.HIncrBy(ctx, r.keys.RecordingSizes(), "b:"+rec.ID, n)
		}
		if prev == 0 {
			p.HSet(ctx, r.keys.RecordingSizes(), "h:"+rec.ID, rec.Host)
		}
		return nil
	})
	if err != nil {
		return true, fmt.Errorf("store: recording expiry: %w", err)
	}
	if prev == 0 && r.pruneDue(now) {
		// One batch, best effort: the answer waits for four round trips at most; what is left
		// goes at the next new session's (at once when the batch was full).
		if _, full, _ := r.pruneBatch(ctx); full {
			r.pruneMu.Lock()
			r.lastPrune = time.Time{}
			r.pruneMu.Unlock()
		}
	}
	return true, nil
}

// pruneDue says whether a prune is due at now (at most one per recordingPruneEvery per replica).
func (r *Recordings) pruneDue(now time.Time) bool {
	r.pruneMu.Lock()
	defer r.pruneMu.Unlock()
	if now.Sub(r.lastPrune) < recordingPruneEvery {
		return false
	}
	r.lastPrune = now
	return true
}

// PruneRecordings takes every session whose retention has passed (on the store's clock) out of
// the index, its bytes off its host's total, and deletes its keys; it returns how many it took.
// Nothing without a retention.
func (r *Recordings) PruneRecordings(ctx context.Context) (int, error) {
	taken := 0
	for {
		n, full, err := r.pruneBatch(ctx)
		taken += n
		if err != nil || !full {
			return taken, err
		}
	}
}

// pruneBatch prunes up to recordingPruneBatch expired sessions in five round trips (the
// expiry index, then one pipeline per step); full says there may be more. The keys go first,
// each session's in one step that an append cannot land inside (dropExpired): an append after
// it finds no record and is refused, one before it extended the session, which is left.
func (r *Recordings) pruneBatch(ctx context.Context) (taken int, full bool, err error) {
	if r.retention == 0 {
		return 0, false, nil
	}
	now := strconv.FormatInt(r.now().UnixMilli(), 10)
	ids, err := r.rdb.ZRangeByScore(ctx, r.keys.RecordingExpiry(), &redis.ZRangeBy{Min: "-inf", Max: now, Count: recordingPruneBatch}).Result()
	if err != nil || len(ids) == 0 {
		return 0, false, wrapPrune(err)
	}
	full = len(ids) == recordingPruneBatch
	drops := make([]*redis.Cmd, len(ids))
	if _, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range ids {
			drops[i] = dropExpired.Eval(ctx, p, []string{r.keys.RecordingSession(id), r.keys.RecordingLines(id)}, now)
		}
		return nil
	}); err != nil {
		return 0, full, wrapPrune(err)
	}
	var dropped []string
	var lives []redis.Z
	for i, c := range drops {
		switch v := c.Val().(type) {
		case int64:
			dropped = append(dropped, ids[i])
		case string:
			// Extended since its score was written: moved on here too (GT: never back), or
			// an append that failed after its script would leave it to every prune's batch,
			// which would never be empty of it.
			if e, err := strconv.ParseInt(v, 10, 64); err == nil {
				lives = append(lives, redis.Z{Score: float64(e), Member: ids[i]})
			}
		}
	}
	if len(lives) > 0 {
		if err := r.rdb.ZAddArgs(ctx, r.keys.RecordingExpiry(), redis.ZAddArgs{GT: true, Members: lives}).Err(); err != nil {
			return 0, full, wrapPrune(err)
		}
	}
	if len(dropped) == 0 {
		return 0, full, nil
	}
	// Take each out of the expiry index unless an append moved it on; only the replica that
	// took one forgets it.
	takes := make([]*redis.Cmd, len(dropped))
	if _, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range dropped {
			takes[i] = takeExpired.Eval(ctx, p, []string{r.keys.RecordingExpiry()}, id, now)
		}
		return nil
	}); err != nil {
		return 0, full, wrapPrune(err)
	}
	var gone []string
	for i, c := range takes {
		if n, _ := c.Int(); n == 1 {
			gone = append(gone, dropped[i])
		}
	}
	if len(gone) == 0 {
		return 0, full, nil
	}
	sizes := make([]*redis.SliceCmd, len(gone))
	if _, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range gone {
			sizes[i] = p.HMGet(ctx, r.keys.RecordingSizes(), "b:"+id, "h:"+id)
		}
		return nil
	}); err != nil {
		return 0, full, wrapPrune(err)
	}
	// Each key is its own command: on a Cluster they sit in different slots.
	if _, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range gone {
			v := sizes[i].Val()
			bs, _ := v[0].(string)
			host, _ := v[1].(string)
			if n, _ := strconv.ParseInt(bs, 10, 64); n > 0 && host != "" {
				takeHostBytes.Eval(ctx, p, []string{r.keys.RecordingHostBytes(host)}, n)
			}
			p.HDel(ctx, r.keys.RecordingSizes(), "b:"+id, "h:"+id)
			p.ZRem(ctx, r.keys.RecordingIndex(), id)
		}
		return nil
	}); err != nil {
		return 0, full, wrapPrune(err)
	}
	return len(gone), full, nil
}

func boolArg(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

func wrapPrune(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("store: recordings prune: %w", err)
}

// HostRecordingBytes is the bytes of lines kept of the host's sessions.
func (r *Recordings) HostRecordingBytes(ctx context.Context, host string) (int64, error) {
	n, err := r.rdb.Get(ctx, r.keys.RecordingHostBytes(host)).Int64()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("store: recording host total: %w", err)
	}
	return n, nil
}

// RecordingLines are the session's kept lines, in order.
func (r *Recordings) RecordingLines(ctx context.Context, id string) ([][]byte, error) {
	ss, err := r.rdb.LRange(ctx, r.keys.RecordingLines(id), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("store: recording %s lines: %w", id, err)
	}
	out := make([][]byte, len(ss))
	for i, s := range ss {
		out[i] = []byte(s)
	}
	return out, nil
}

// SessionRecordings lists the records of sessions started (agent clock) at or after since,
// oldest first (by start, then ID), after the position after, at most limit (0: all), and
// where the next page starts (zero: none is left): one script reads the page of the index
// (pageScript, the position by rank), one pipeline the records.
func (r *Recordings) SessionRecordings(ctx context.Context, since time.Time, after ca.RecordingCursor, limit int) ([]ca.SessionRecording, ca.RecordingCursor, error) {
	head := "-inf"
	if !since.IsZero() {
		head = "(" + strconv.FormatInt(since.UnixMilli(), 10)
	}
	page, more, err := pageAnswer(pageScript.Run(ctx, r.rdb, []string{r.keys.RecordingIndex()}, head, after.Start, after.ID, limit))
	if err != nil {
		return nil, ca.RecordingCursor{}, fmt.Errorf("store: recording index: %w", err)
	}
	var last ca.RecordingCursor
	cmds := make([]*redis.StringCmd, 0, len(page))
	if _, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, z := range page {
			last = ca.RecordingCursor{Start: int64(z.score), ID: z.member}
			cmds = append(cmds, p.HGet(ctx, r.keys.RecordingSession(z.member), "rec"))
		}
		return nil
	}); err != nil && !errors.Is(err, redis.Nil) {
		return nil, ca.RecordingCursor{}, fmt.Errorf("store: recordings: %w", err)
	}
	out := []ca.SessionRecording{}
	for _, cmd := range cmds {
		b, err := cmd.Bytes()
		if errors.Is(err, redis.Nil) {
			continue // expired since the index was read
		}
		if err != nil {
			return nil, ca.RecordingCursor{}, fmt.Errorf("store: recordings: %w", err)
		}
		var rec ca.SessionRecording
		if err := json.Unmarshal(b, &rec); err != nil {
			return nil, ca.RecordingCursor{}, fmt.Errorf("store: corrupt recording record: %w", err)
		}
		out = append(out, rec)
	}
	if !more {
		last = ca.RecordingCursor{}
	}
	return out, last, nil
}

// UseRecordProof spends a proof's jti until its expiry (SET NX, one key per proof).
func (r *Recordings) UseRecordProof(ctx context.Context, id string, until time.Time) (bool, error) {
	ttl := until.Sub(r.now())
	if ttl < time.Second {
		ttl = time.Second
	}
	sum := sha256.Sum256([]byte(id))
	ok, err := r.rdb.SetNX(ctx, r.keys.RecordingProof(hex.EncodeToString(sum[:])), "1", ttl).Result()
	if err != nil {
		return false, fmt.Errorf("store: recording proof: %w", err)
	}
	return ok, nil
}

// MemoryRecordings is the in-memory recording store, for tests and `sshca dev`.
type MemoryRecordings struct {
	now       func() time.Time
	retention time.Duration

	mu      sync.Mutex
	expires map[string]time.Time // with a retention: when the session goes
	sizes   map[string]int64     // what it added to its host's total
	recs    map[string][]byte    // JSON, as in Redis
	got     map[string]int64     // received
	lines   map[string][][]byte
	hosts   map[string]int64
	proofs  map[string]time.Time
}

// NewMemoryRecordings returns an empty in-memory recording store on the clock now.
func NewMemoryRecordings(now func() time.Time) *MemoryRecordings {
	if now == nil {
		now = time.Now
	}
	return &MemoryRecordings{now: now, recs: map[string][]byte{}, got: map[string]int64{}, lines: map[string][][]byte{},
		hosts: map[string]int64{}, proofs: map[string]time.Time{}, expires: map[string]time.Time{}, sizes: map[string]int64{}}
}

// WithRetention is Recordings.WithRetention in memory.
func (m *MemoryRecordings) WithRetention(d time.Duration) *MemoryRecordings {
	m.retention = max(0, d)
	return m
}

// PruneRecordings is Recordings.PruneRecordings in memory.
func (m *MemoryRecordings) PruneRecordings(context.Context) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.pruneLocked(), nil
}

// pruneLocked forgets the sessions whose retention has passed; every method runs it first, so
// an expired session is gone as it would be from Redis.
func (m *MemoryRecordings) pruneLocked() int {
	now, n := m.now(), 0
	for id, end := range m.expires {
		if now.Before(end) {
			continue
		}
		var rec ca.SessionRecording
		if json.Unmarshal(m.recs[id], &rec) == nil {
			m.hosts[rec.Host] -= m.sizes[id]
		}
		delete(m.expires, id)
		delete(m.sizes, id)
		delete(m.recs, id)
		delete(m.got, id)
		delete(m.lines, id)
		n++
	}
	return n
}

// SessionRecording is the session's record; false when none.
func (m *MemoryRecordings) SessionRecording(_ context.Context, id string) (ca.SessionRecording, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.pruneLocked()
	var rec ca.SessionRecording
	b, ok := m.recs[id]
	if !ok {
		return rec, false, nil
	}
	return rec, true, json.Unmarshal(b, &rec)
}

// AppendRecording is Recordings.AppendRecording in memory.
func (m *MemoryRecordings) AppendRecording(_ context.Context, rec ca.SessionRecording, prev int64, replaceLast bool, lines [][]byte) (bool, error) {
	b, err := json.Marshal(rec)
	if err != nil {
		return false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.pruneLocked()
	cur, exists := m.got[rec.ID]
	if (prev == 0 && exists) || (prev != 0 && cur != prev) {
		return false, nil
	}
	kept := m.lines[rec.ID]
	if replaceLast && len(lines) > 0 && len(kept) > 0 {
		kept[len(kept)-1] = lines[0]
		lines = lines[1:]
	}
	for _, l := range lines {
		kept = append(kept, append([]byte(nil), l...))
		m.hosts[rec.Host] += int64(len(l))
		m.sizes[rec.ID] += int64(len(l))
	}
	m.lines[rec.ID], m.recs[rec.ID], m.got[rec.ID] = kept, b, rec.Received
	if m.retention > 0 {
		m.expires[rec.ID] = m.now().Add(m.retention)
	}
	return true, nil
}

// HostRecordingBytes is the bytes of lines kept of the host's sessions.
func (m *MemoryRecordings) HostRecordingBytes(_ context.Context, host string) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.pruneLocked()
	return m.hosts[host], nil
}

// RecordingLines are the session's kept lines, in order.
func (m *MemoryRecordings) RecordingLines(_ context.Context, id string) ([][]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.pruneLocked()
	return append([][]byte{}, m.lines[id]...), nil
}

// SessionRecordings lists the records of sessions started at or after since, oldest first,
// a page after the position after (see Recordings.SessionRecordings).
func (m *MemoryRecordings) SessionRecordings(_ context.Context, since time.Time, after ca.RecordingCursor, limit int) ([]ca.SessionRecording, ca.RecordingCursor, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.pruneLocked()
	out := []ca.SessionRecording{}
	for _, b := range m.recs {
		var rec ca.SessionRecording
		if err := json.Unmarshal(b, &rec); err != nil {
			return nil, ca.RecordingCursor{}, err
		}
		if (since.IsZero() || rec.Header.Start.UnixMilli() >= since.UnixMilli()) && (after.IsZero() || ca.RecordingCursorOf(rec).Compare(after) > 0) {
			out = append(out, rec)
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		return ca.RecordingCursorOf(out[i]).Compare(ca.RecordingCursorOf(out[j])) < 0
	})
	if limit > 0 && len(out) > limit {
		out = out[:limit]
		return out, ca.RecordingCursorOf(out[len(out)-1]), nil
	}
	return out, ca.RecordingCursor{}, nil
}

// UseRecordProof spends a proof's jti until its expiry.
func (m *MemoryRecordings) UseRecordProof(_ context.Context, id string, until time.Time) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	if u, ok := m.proofs[id]; ok && now.Before(u) {
		return false, nil
	}
	m.proofs[id] = until
	return true, nil
}
