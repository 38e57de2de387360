package store

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/revocation"
)

// Revocation scopes (ca.RevocationStore): per CA key, what is revoked, all under the hash tag
// {ca:<fingerprint>} so that one script covers a scope on Redis Cluster (Keys.ScopeEntries,
// ScopeVersion, ScopeStream, ScopeCA); besides, the identities refused new certificates
// (Keys.Blocked) and every revoked public key under any scope (Keys.RevokedKeys). Every write
// prunes entries whose expiry has passed, and reads filter by score.

var (
	_ ca.RevocationStore = (*Redis)(nil)
	_ ca.RevocationStore = (*Memory)(nil)
)

var revokeScript = redis.NewScript(`
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
redis.call('SET', KEYS[4], ARGV[2])
local changed = {}
for i = 4, #ARGV, 2 do
  local m, e = ARGV[i], tonumber(ARGV[i+1])
  local cur = redis.call('ZSCORE', KEYS[1], m)
  if (not cur) or tonumber(cur) < e then
    redis.call('ZADD', KEYS[1], e, m)
    table.insert(changed, m)
    table.insert(changed, ARGV[i+1])
  end
end
if #changed == 0 then
  return tonumber(redis.call('GET', KEYS[2]) or '0')
end
local v = redis.call('INCR', KEYS[2])
local args = {'XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'v', tostring(v)}
for _, x in ipairs(changed) do table.insert(args, x) end
redis.call(unpack(args))
return v
`)

func member(e ca.RevocationEntry) string { return string(e.Kind) + ":" + e.Value }

func parseMember(m string, expiryMS float64) (ca.RevocationEntry, error) {
	kind, value, ok := strings.Cut(m, ":")
	if !ok {
		return ca.RevocationEntry{}, fmt.Errorf("store: malformed revocation entry %q", m)
	}
	return ca.RevocationEntry{Kind: ca.EntryKind(kind), Value: value, Expiry: time.UnixMilli(int64(expiryMS)).UTC()}, nil
}

func authorizedLine(k ssh.PublicKey) string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
}

// Revoke adds entries to the scope of caKey, bumps its version and appends the change to its
// feed, atomically. Entries already revoked (with an expiry at least as late) change
// nothing; then the version stays.
func (r *Redis) Revoke(ctx context.Context, caKey ssh.PublicKey, entries []ca.RevocationEntry) (uint64, error) {
	fp := ssh.FingerprintSHA256(caKey)
	args := []any{r.now().UnixMilli(), authorizedLine(caKey), StreamMaxLen}
	var keys []redis.Z
	for _, e := range entries {
		if err := revocation.ValidEntry(e); err != nil {
			return 0, err
		}
		args = append(args, member(e), e.Expiry.UnixMilli())
		if e.Kind == ca.RevokedKey {
			keys = append(keys, redis.Z{Score: float64(e.Expiry.UnixMilli()), Member: member(e)})
		}
	}
	if len(keys) > 0 {
		// Revoked public keys are refused at signing time whichever CA key signs next (a
		// rotation must not let a revoked key back in). Written before the scope: a failure
		// in between refuses more, never less.
		if _, err := r.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.ZRemRangeByScore(ctx, r.keys.RevokedKeys(), "-inf", strconv.FormatInt(r.now().UnixMilli(), 10))
			p.ZAddGT(ctx, r.keys.RevokedKeys(), keys...)
			return nil
		}); err != nil {
			return 0, fmt.Errorf("store: revoke keys: %w", err)
		}
	}
	scope := []string{r.keys.ScopeEntries(fp), r.keys.ScopeVersion(fp), r.keys.ScopeStream(fp), r.keys.ScopeCA(fp)}
	v, err := revokeScript.Run(ctx, r.rdb, scope, args...).Int64()
	if err != nil {
		return 0, fmt.Errorf("store: revoke: %w", err)
	}
	if err := r.rdb.SAdd(ctx, r.keys.CAs(), authorizedLine(caKey)).Err(); err != nil {
		return 0, fmt.Errorf("store: register CA: %w", err)
	}
	return uint64(v), nil
}

// State returns the scope's unexpired entries at its current version.
func (r *Redis) State(ctx context.Context, caKey ssh.PublicKey) (ca.RevocationState, error) {
	st, _, err := r.Snapshot(ctx, ssh.FingerprintSHA256(caKey))
	return st, err
}

// BlockIdentity refuses new certificates to identity until until.
func (r *Redis) BlockIdentity(ctx context.Context, identity string, until time.Time) error {
	key := r.keys.Blocked()
	_, err := r.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.ZRemRangeByScore(ctx, key, "-inf", strconv.FormatInt(r.now().UnixMilli(), 10))
		p.ZAddGT(ctx, key, redis.Z{Score: float64(until.UnixMilli()), Member: identity})
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: block identity: %w", err)
	}
	return nil
}

// Refused reports why a request must be refused at signing time, in one round trip: the key
// revoked under the signing CA key's scope or under any other (Keys.RevokedKeys; the scope
// check also covers keys revoked before that set existed), or the identity blocked.
func (r *Redis) Refused(ctx context.Context, caKey ssh.PublicKey, identities []string, key ssh.PublicKey) (string, error) {
	var scopeCmd, anyCmd *redis.FloatCmd
	var idCmd *redis.FloatSliceCmd
	m := member(ca.RevocationEntry{Kind: ca.RevokedKey, Value: revocation.KeyEntry(key)})
	_, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		scopeCmd = p.ZScore(ctx, r.keys.ScopeEntries(ssh.FingerprintSHA256(caKey)), m)
		anyCmd = p.ZScore(ctx, r.keys.RevokedKeys(), m)
		if len(identities) > 0 {
			idCmd = p.ZMScore(ctx, r.keys.Blocked(), identities...)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return "", fmt.Errorf("store: check: %w", err)
	}
	keyExp, keyFound := scopeCmd.Val(), scopeCmd.Err() == nil
	if anyCmd.Err() == nil && (!keyFound || anyCmd.Val() > keyExp) {
		keyExp, keyFound = anyCmd.Val(), true
	}
	// ZMSCORE answers nil (0 here) for a name that is not blocked: take the latest block.
	var idExp float64
	identity := ""
	if idCmd != nil {
		for i, exp := range idCmd.Val() {
			if exp > idExp {
				idExp, identity = exp, identities[i]
			}
		}
	}
	return refusal(r.now(), keyExp, keyFound, idExp, identity != "", identity), nil
}

func refusal(now time.Time, keyExp float64, keyFound bool, idExp float64, idFound bool, identity string) string {
	ms := float64(now.UnixMilli())
	switch {
	case keyFound && keyExp > ms:
		return "this public key has been revoked; generate a new key"
	case idFound && idExp > ms:
		return fmt.Sprintf("the certificates of %s were revoked; no new ones until %s", identity, time.UnixMilli(int64(idExp)).UTC().Format(time.RFC3339))
	}
	return ""
}

func sortEntries(es []ca.RevocationEntry) {
	sort.Slice(es, func(i, j int) bool {
		if es[i].Kind != es[j].Kind {
			return es[i].Kind < es[j].Kind
		}
		return es[i].Value < es[j].Value
	})
}

// memScope is a CA key's revocation scope in memory, with its feed.
type memScope struct {
	ca      ssh.PublicKey
	version uint64
	entries map[string]ca.RevocationEntry // by member
	feed    []memChange                   // oldest first, at most Memory.feedMax
	lastSeq uint64                        // of the last change ever appended
}

// Revoke adds entries to the scope of caKey; see Redis.Revoke.
func (m *Memory) Revoke(_ context.Context, caKey ssh.PublicKey, entries []ca.RevocationEntry) (uint64, error) {
	for _, e := range entries {
		if err := revocation.ValidEntry(e); err != nil {
			return 0, err
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.scopeLocked(caKey)
	now := m.now()
	for k, e := range s.entries {
		if !e.Expiry.After(now) {
			delete(s.entries, k)
		}
	}
	var changed []ca.RevocationEntry
	for _, e := range entries {
		e.Expiry = e.Expiry.UTC().Truncate(time.Millisecond)
		if cur, ok := s.entries[member(e)]; !ok || cur.Expiry.Before(e.Expiry) {
			s.entries[member(e)] = e
			changed = append(changed, e)
		}
	}
	if len(changed) > 0 {
		s.version++
		m.appendLocked(s, changed)
	}
	return s.version, nil
}

func (m *Memory) scopeLocked(caKey ssh.PublicKey) *memScope {
	if m.scopes == nil {
		m.scopes = map[string]*memScope{}
	}
	fp := ssh.FingerprintSHA256(caKey)
	s := m.scopes[fp]
	if s == nil {
		s = &memScope{ca: caKey, entries: map[string]ca.RevocationEntry{}}
		m.scopes[fp] = s
	}
	return s
}

// State returns the scope's unexpired entries at its current version.
func (m *Memory) State(_ context.Context, caKey ssh.PublicKey) (ca.RevocationState, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	st, _ := m.snapshotLocked(ssh.FingerprintSHA256(caKey))
	return st, nil
}

func (m *Memory) snapshotLocked(fp string) (ca.RevocationState, string) {
	s := m.scopes[fp]
	if s == nil {
		return ca.RevocationState{}, "0-0"
	}
	st := ca.RevocationState{CA: s.ca, Version: s.version}
	now := m.now()
	for _, e := range s.entries {
		if e.Expiry.After(now) {
			st.Entries = append(st.Entries, e)
		}
	}
	sortEntries(st.Entries)
	pos := "0-0"
	if n := len(s.feed); n > 0 {
		pos = s.feed[n-1].ID
	}
	return st, pos
}

// BlockIdentity refuses new certificates to identity until until.
func (m *Memory) BlockIdentity(_ context.Context, identity string, until time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.blocked == nil {
		m.blocked = map[string]time.Time{}
	}
	if until.After(m.blocked[identity]) {
		m.blocked[identity] = until
	}
	return nil
}

// Refused reports why a request must be refused at signing time.
func (m *Memory) Refused(_ context.Context, _ ssh.PublicKey, identities []string, key ssh.PublicKey) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var keyExp, idExp float64
	var keyFound, idFound bool
	// Under any CA key's scope: a rotation must not let a revoked key back in.
	mk := member(ca.RevocationEntry{Kind: ca.RevokedKey, Value: revocation.KeyEntry(key)})
	for _, s := range m.scopes {
		if e, ok := s.entries[mk]; ok && float64(e.Expiry.UnixMilli()) > keyExp {
			keyExp, keyFound = float64(e.Expiry.UnixMilli()), true
		}
	}
	identity := ""
	now := float64(m.now().UnixMilli())
	for _, name := range identities {
		if t, ok := m.blocked[name]; ok && float64(t.UnixMilli()) > now {
			idExp, idFound, identity = float64(t.UnixMilli()), true, name
			break
		}
	}
	return refusal(m.now(), keyExp, keyFound, idExp, idFound, identity), nil
}
