package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/revocation"
)

// The change feed: every change of a revocation scope is also appended, in the same script,
// to the scope's stream (Keys.ScopeStream), trimmed to about StreamMaxLen. A consumer reads a
// snapshot and the feed position it corresponds to, then follows the feed from there; a
// consumer that finds a version gap (its position was trimmed away) reloads the snapshot
// rather than skip anything. Bastions follow it with read-only credentials
// (bastion.Feed).

// StreamMaxLen is the approximate length a scope's feed is trimmed to.
const StreamMaxLen = 10000

// maxChangesRead bounds one Changes answer.
const maxChangesRead = 1000

// CAs lists the CA keys that have revocation scopes. A scope stays listed when its key is no
// longer trusted, so the KRL keeps its entries (and its version keeps growing) until they
// expire.
func (r *Redis) CAs(ctx context.Context) ([]ssh.PublicKey, error) {
	return r.keySet(ctx, r.keys.CAs())
}

// Snapshot returns the state of the scope with the given CA fingerprint, and the feed
// position it corresponds to ("0-0" when the feed is empty), read in one transaction with the
// scope's mark: the version carries the mark's generation, and a mark that the process's
// witness finds missing or older is ErrStateLost (a KRL built from it would be emptier than
// the ones bastions hold). Bastions read it with read-only credentials: it writes nothing.
func (r *Redis) Snapshot(ctx context.Context, fp string) (ca.RevocationState, string, error) {
	now := strconv.FormatInt(r.now().UnixMilli(), 10)
	var caCmd, verCmd *redis.StringCmd
	var zCmd *redis.ZSliceCmd
	var xCmd *redis.XMessageSliceCmd
	var markCmd *redis.SliceCmd
	tag := TagCA(fp)
	exp := r.witness.expect(tag)
	_, err := r.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		markCmd = p.HMGet(ctx, r.keys.Mark(tag), "id", "epoch", "n")
		caCmd = p.Get(ctx, r.keys.ScopeCA(fp))
		verCmd = p.Get(ctx, r.keys.ScopeVersion(fp))
		zCmd = p.ZRangeByScoreWithScores(ctx, r.keys.ScopeEntries(fp), &redis.ZRangeBy{Min: "(" + now, Max: "+inf"})
		xCmd = p.XRevRangeN(ctx, r.keys.ScopeStream(fp), "+", "-", 1)
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return ca.RevocationState{}, "", fmt.Errorf("store: snapshot: %w", err)
	}
	st, err := r.scopeHeader(tag, exp, markCmd, caCmd, verCmd)
	if err != nil {
		return ca.RevocationState{}, "", err
	}
	for _, z := range zCmd.Val() {
		e, err := parseMember(z.Member.(string), z.Score)
		if err != nil {
			return ca.RevocationState{}, "", err
		}
		st.Entries = append(st.Entries, e)
	}
	sortEntries(st.Entries)
	pos := "0-0"
	if msgs := xCmd.Val(); len(msgs) > 0 {
		pos = msgs[0].ID
		st.Changed = streamTime(pos)
	}
	return st, pos, nil
}

// scopeHeader is a scope's state without its entries, from the reads of its mark, CA key
// and version in one transaction: ErrStateLost (the witness's) when the scope's tag lost its
// state.
func (r *Redis) scopeHeader(tag string, exp expectation, markCmd *redis.SliceCmd, caCmd, verCmd *redis.StringCmd) (ca.RevocationState, error) {
	mk, present, err := parseMark(markCmd.Val())
	if err != nil {
		return ca.RevocationState{}, err
	}
	r.witness.observe(tag, exp, mk, present)
	if err := r.witness.Lost(); err != nil {
		return ca.RevocationState{}, err
	}
	var st ca.RevocationState
	if line, err := caCmd.Result(); err == nil {
		k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
		if err != nil {
			return ca.RevocationState{}, fmt.Errorf("store: snapshot: CA key: %w", err)
		}
		st.CA = k
	}
	if v, err := verCmd.Uint64(); err == nil {
		st.Version = revocation.ComposeVersion(mk.Epoch, v)
	}
	return st, nil
}

// Changes blocks up to block (0: until ctx ends; negative: not at all) for changes after
// feed position after, and returns them in order.
func (r *Redis) Changes(ctx context.Context, fp, after string, block time.Duration) ([]revocation.Change, error) {
	res, err := r.rdb.XRead(ctx, &redis.XReadArgs{Streams: []string{r.keys.ScopeStream(fp), after}, Block: block, Count: maxChangesRead}).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("store: follow: %w", err)
	}
	var out []revocation.Change
	for _, s := range res {
		cs, err := parseChanges(s.Messages)
		if err != nil {
			return nil, err
		}
		out = append(out, cs...)
	}
	return out, nil
}

// Follow is Changes over many scopes in one XREAD: it blocks up to block (0: until ctx ends;
// negative: not at all) for changes after the given positions (CA fingerprint → feed
// position), and returns them by fingerprint, each scope's in order. A CA replica follows every
// scope with it in one loop, however many agents wait on it (services' long poll of GET
// /v1/krl).
func (r *Redis) Follow(ctx context.Context, after map[string]string, block time.Duration) (map[string][]revocation.Change, error) {
	if len(after) == 0 {
		return nil, errors.New("store: follow: no scope to follow")
	}
	fps := make([]string, 0, len(after))
	for fp := range after {
		fps = append(fps, fp)
	}
	slices.Sort(fps)
	streams := make([]string, 2*len(fps))
	byStream := make(map[string]string, len(fps))
	for i, fp := range fps {
		streams[i], streams[len(fps)+i] = r.keys.ScopeStream(fp), after[fp]
		byStream[r.keys.ScopeStream(fp)] = fp
	}
	res, err := r.rdb.XRead(ctx, &redis.XReadArgs{Streams: streams, Block: block, Count: maxChangesRead}).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("store: follow: %w", err)
	}
	out := map[string][]revocation.Change{}
	for _, s := range res {
		cs, err := parseChanges(s.Messages)
		if err != nil {
			return nil, err
		}
		if fp, ok := byStream[s.Stream]; ok && len(cs) > 0 {
			out[fp] = append(out[fp], cs...)
		}
	}
	return out, nil
}

// parseChanges turns a scope's feed messages into changes. A change's At is the time of its
// stream ID (Redis's clock, to the millisecond).
func parseChanges(msgs []redis.XMessage) ([]revocation.Change, error) {
	var out []revocation.Change
	for _, m := range msgs {
		c := revocation.Change{ID: m.ID}
		var gen uint64
		for k, v := range m.Values {
			str, _ := v.(string)
			switch k {
			case "v":
				c.Version, _ = strconv.ParseUint(str, 10, 64)
				continue
			case "g": // the generation, when not 0 (members always hold a colon)
				gen, _ = strconv.ParseUint(str, 10, 16)
				continue
			}
			ms, err := strconv.ParseFloat(str, 64)
			if err != nil {
				return nil, fmt.Errorf("store: follow: bad expiry in %s", m.ID)
			}
			e, err := parseMember(k, ms)
			if err != nil {
				return nil, err
			}
			c.Entries = append(c.Entries, e)
		}
		c.Version = revocation.ComposeVersion(uint16(gen), c.Version)
		c.At = streamTime(m.ID)
		sortEntries(c.Entries)
		out = append(out, c)
	}
	return out, nil
}

// streamTime is the time part of a stream ID ("<ms>-<seq>"); zero when it has none.
func streamTime(id string) time.Time {
	ms, _, _ := strings.Cut(id, "-")
	n, err := strconv.ParseInt(ms, 10, 64)
	if err != nil || n <= 0 {
		return time.Time{}
	}
	return time.UnixMilli(n).UTC()
}

// TrimFeed keeps only the last maxLen changes of a scope's feed (exactly; Revoke trims to
// about StreamMaxLen by itself). For operators and tests of consumers that fall behind.
func (r *Redis) TrimFeed(ctx context.Context, fp string, maxLen int64) error {
	if err := r.rdb.XTrimMaxLen(ctx, r.keys.ScopeStream(fp), maxLen).Err(); err != nil {
		return fmt.Errorf("store: trim feed: %w", err)
	}
	return nil
}

// memChange is one change of a memory feed; its position is "<seq>-0".
type memChange struct {
	seq uint64
	revocation.Change
}

// appendLocked appends a change to the scope's feed, trims it, and wakes readers.
func (m *Memory) appendLocked(s *memScope, entries []ca.RevocationEntry) {
	s.lastSeq++
	// To the millisecond, as Redis's stream IDs: the same state gives the same KRL bytes.
	s.changed = m.now().UTC().Truncate(time.Millisecond)
	sortEntries(entries)
	s.feed = append(s.feed, memChange{seq: s.lastSeq, Change: revocation.Change{
		ID: strconv.FormatUint(s.lastSeq, 10) + "-0", Version: s.version, Entries: entries, At: s.changed}})
	if over := len(s.feed) - m.feedMax; over > 0 {
		s.feed = slices.Delete(s.feed, 0, over)
	}
	close(m.changed)
	m.changed = make(chan struct{})
}

// CAs lists the CA keys that have revocation scopes, as Redis.CAs.
func (m *Memory) CAs(context.Context) ([]ssh.PublicKey, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	lines := make([]string, 0, len(m.scopes))
	for _, s := range m.scopes {
		if l := authorizedLine(s.ca); !m.hostCAs[l] {
			lines = append(lines, l)
		}
	}
	return parseKeyLines(lines)
}

// Snapshot returns the state of a scope and the feed position it corresponds to.
func (m *Memory) Snapshot(_ context.Context, fp string) (ca.RevocationState, string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	st, pos := m.snapshotLocked(fp)
	return st, pos, nil
}

// Changes blocks up to block (0: until ctx ends; negative: not at all) for changes after feed
// position after, and returns them in order.
func (m *Memory) Changes(ctx context.Context, fp, after string, block time.Duration) ([]revocation.Change, error) {
	changes, err := m.Follow(ctx, map[string]string{fp: after}, block)
	return changes[fp], err
}

func parseFeedPosition(pos string) (uint64, error) {
	s, _, _ := strings.Cut(pos, "-")
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("store: follow: bad feed position %q", pos)
	}
	return n, nil
}

// TrimFeed keeps only the last maxLen changes of a scope's feed.
func (m *Memory) TrimFeed(_ context.Context, fp string, maxLen int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if s := m.scopes[fp]; s != nil {
		if over := int64(len(s.feed)) - maxLen; over > 0 {
			s.feed = slices.Delete(s.feed, 0, int(over))
		}
	}
	return nil
}

// Follow is Changes over many scopes at once, as Redis.Follow.
func (m *Memory) Follow(ctx context.Context, after map[string]string, block time.Duration) (map[string][]revocation.Change, error) {
	if len(after) == 0 {
		return nil, errors.New("store: follow: no scope to follow")
	}
	seqs := make(map[string]uint64, len(after))
	for fp, pos := range after {
		seq, err := parseFeedPosition(pos)
		if err != nil {
			return nil, err
		}
		seqs[fp] = seq
	}
	var timeout <-chan time.Time
	if block > 0 {
		t := time.NewTimer(block)
		defer t.Stop()
		timeout = t.C
	}
	for {
		m.mu.Lock()
		out := map[string][]revocation.Change{}
		for fp, seq := range seqs {
			s := m.scopes[fp]
			if s == nil {
				continue
			}
			for _, c := range s.feed {
				if c.seq > seq && len(out[fp]) < maxChangesRead {
					c.Entries = slices.Clone(c.Entries)
					out[fp] = append(out[fp], c.Change)
				}
			}
		}
		wake := m.changed
		m.mu.Unlock()
		if len(out) > 0 || block < 0 {
			return out, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("store: follow: %w", ctx.Err())
		case <-timeout:
			return nil, nil
		case <-wake:
		}
	}
}
