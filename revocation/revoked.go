package revocation

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
)

// Revocation state in Redis, per CA key, all under the hash tag {ca:<fingerprint>} so one
// script or transaction covers a scope on Redis Cluster:
//
//	<prefix>:{ca:FP}:entries  sorted set, member "<kind>:<value>", score = expiry (unix ms)
//	<prefix>:{ca:FP}:version  the scope's version, bumped by every change
//	<prefix>:{ca:FP}:stream   every change in order (trimmed): fields v=<version>, then
//	                          member=expiry pairs
//	<prefix>:{ca:FP}:ca       the CA public key (authorized_keys form), for building KRLs
//	<prefix>:{identities}:blocked   sorted set of identities refused new certificates
//	<prefix>:cas              set of CA public keys with revocation scopes (for bastions)
//
// Sorted-set members never expire by themselves; every write prunes entries whose expiry
// has passed, and reads filter by score.

// StreamMaxLen is the approximate length the change stream is trimmed to.
const StreamMaxLen = 10000

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

func (r *Redis) scope(fp string) string { return r.prefix + ":{ca:" + fp + "}:" }

func member(e ca.RevocationEntry) string { return string(e.Kind) + ":" + e.Value }

func parseMember(m string, expiryMS float64) (ca.RevocationEntry, error) {
	kind, value, ok := strings.Cut(m, ":")
	if !ok {
		return ca.RevocationEntry{}, fmt.Errorf("revocation: malformed entry %q", m)
	}
	return ca.RevocationEntry{Kind: ca.EntryKind(kind), Value: value, Expiry: time.UnixMilli(int64(expiryMS)).UTC()}, nil
}

// Revoke adds entries to the scope of caKey, bumps its version and appends the change to its
// stream, atomically. Entries already revoked (with an expiry at least as late) change
// nothing; then the version stays.
func (r *Redis) Revoke(ctx context.Context, caKey ssh.PublicKey, entries []ca.RevocationEntry) (uint64, error) {
	fp := ssh.FingerprintSHA256(caKey)
	s := r.scope(fp)
	args := []any{r.now().UnixMilli(), strings.TrimSpace(string(ssh.MarshalAuthorizedKey(caKey))), StreamMaxLen}
	var keys []redis.Z
	for _, e := range entries {
		if err := validEntry(e); err != nil {
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
			p.ZRemRangeByScore(ctx, r.revokedKeys(), "-inf", strconv.FormatInt(r.now().UnixMilli(), 10))
			p.ZAddGT(ctx, r.revokedKeys(), keys...)
			return nil
		}); err != nil {
			return 0, fmt.Errorf("revocation: revoke keys: %w", err)
		}
	}
	v, err := revokeScript.Run(ctx, r.rdb, []string{s + "entries", s + "version", s + "stream", s + "ca"}, args...).Int64()
	if err != nil {
		return 0, fmt.Errorf("revocation: revoke: %w", err)
	}
	if err := r.rdb.SAdd(ctx, r.prefix+":cas", strings.TrimSpace(string(ssh.MarshalAuthorizedKey(caKey)))).Err(); err != nil {
		return 0, fmt.Errorf("revocation: register CA: %w", err)
	}
	return uint64(v), nil
}

func validEntry(e ca.RevocationEntry) error {
	switch e.Kind {
	case ca.RevokedSerial:
		if n, err := strconv.ParseUint(e.Value, 10, 64); err != nil || n == 0 {
			return fmt.Errorf("revocation: serial %q is not a non-zero decimal", e.Value)
		}
	case ca.RevokedKeyID:
		if e.Value == "" {
			return errors.New("revocation: empty key ID")
		}
	case ca.RevokedKey:
		if _, err := keyFromEntry(e.Value); err != nil {
			return err
		}
	default:
		return fmt.Errorf("revocation: unknown entry kind %q", e.Kind)
	}
	return nil
}

// KeyEntry names a public key for a RevokedKey entry.
func KeyEntry(k ssh.PublicKey) string { return base64.StdEncoding.EncodeToString(k.Marshal()) }

func keyFromEntry(v string) (ssh.PublicKey, error) {
	b, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		return nil, fmt.Errorf("revocation: key entry is not base64: %w", err)
	}
	k, err := ssh.ParsePublicKey(b)
	if err != nil {
		return nil, fmt.Errorf("revocation: key entry: %w", err)
	}
	return k, nil
}

// State returns the scope's unexpired entries at its current version.
func (r *Redis) State(ctx context.Context, caKey ssh.PublicKey) (ca.RevocationState, error) {
	st, _, err := r.Snapshot(ctx, ssh.FingerprintSHA256(caKey))
	return st, err
}

// Snapshot returns the state of the scope with the given CA fingerprint, and the stream
// position it corresponds to ("0-0" when the stream is empty), read in one transaction.
func (r *Redis) Snapshot(ctx context.Context, fp string) (ca.RevocationState, string, error) {
	s := r.scope(fp)
	now := strconv.FormatInt(r.now().UnixMilli(), 10)
	var caCmd, verCmd *redis.StringCmd
	var zCmd *redis.ZSliceCmd
	var xCmd *redis.XMessageSliceCmd
	_, err := r.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		caCmd = p.Get(ctx, s+"ca")
		verCmd = p.Get(ctx, s+"version")
		zCmd = p.ZRangeByScoreWithScores(ctx, s+"entries", &redis.ZRangeBy{Min: "(" + now, Max: "+inf"})
		xCmd = p.XRevRangeN(ctx, s+"stream", "+", "-", 1)
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return ca.RevocationState{}, "", fmt.Errorf("revocation: snapshot: %w", err)
	}
	var st ca.RevocationState
	if line, err := caCmd.Result(); err == nil {
		k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
		if err != nil {
			return ca.RevocationState{}, "", fmt.Errorf("revocation: snapshot: CA key: %w", err)
		}
		st.CA = k
	}
	if v, err := verCmd.Uint64(); err == nil {
		st.Version = v
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
	}
	return st, pos, nil
}

// Change is one appended change of a scope's stream.
type Change struct {
	ID      string
	Version uint64
	Entries []ca.RevocationEntry
}

// Changes blocks up to block (0: forever, until ctx ends) for changes after stream position
// after, and returns them in order.
func (r *Redis) Changes(ctx context.Context, fp, after string, block time.Duration) ([]Change, error) {
	res, err := r.rdb.XRead(ctx, &redis.XReadArgs{Streams: []string{r.scope(fp) + "stream", after}, Block: block, Count: 1000}).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("revocation: follow: %w", err)
	}
	var out []Change
	for _, s := range res {
		for _, m := range s.Messages {
			c := Change{ID: m.ID}
			for k, v := range m.Values {
				str, _ := v.(string)
				if k == "v" {
					c.Version, _ = strconv.ParseUint(str, 10, 64)
					continue
				}
				ms, err := strconv.ParseFloat(str, 64)
				if err != nil {
					return nil, fmt.Errorf("revocation: follow: bad expiry in %s", m.ID)
				}
				e, err := parseMember(k, ms)
				if err != nil {
					return nil, err
				}
				c.Entries = append(c.Entries, e)
			}
			sortEntries(c.Entries)
			out = append(out, c)
		}
	}
	return out, nil
}

// CAs lists the CA keys that have revocation scopes. A scope stays listed when its key is no
// longer trusted, so the KRL keeps its entries (and its version keeps growing) until they
// expire.
func (r *Redis) CAs(ctx context.Context) ([]ssh.PublicKey, error) { return r.keySet(ctx, ":cas") }

// TrustedCAs lists the user CA keys sshd should trust now (TrustedUserCAKeys).
func (r *Redis) TrustedCAs(ctx context.Context) ([]ssh.PublicKey, error) {
	return r.keySet(ctx, ":trusted-user-cas")
}

func (r *Redis) keySet(ctx context.Context, suffix string) ([]ssh.PublicKey, error) {
	lines, err := r.rdb.SMembers(ctx, r.prefix+suffix).Result()
	if err != nil {
		return nil, fmt.Errorf("revocation: CA list: %w", err)
	}
	sort.Strings(lines)
	var out []ssh.PublicKey
	for _, l := range lines {
		k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(l))
		if err != nil {
			return nil, fmt.Errorf("revocation: CA list: %w", err)
		}
		out = append(out, k)
	}
	return out, nil
}

// RegisterCA makes a user CA key trusted by bastions, and its revocation scope followed,
// before anything is revoked in it.
func (r *Redis) RegisterCA(ctx context.Context, caKey ssh.PublicKey) error {
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(caKey)))
	s := r.scope(ssh.FingerprintSHA256(caKey))
	_, err := r.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.SAdd(ctx, r.prefix+":cas", line)
		p.SAdd(ctx, r.prefix+":trusted-user-cas", line)
		p.Set(ctx, s+"ca", line, 0)
		return nil
	})
	if err != nil {
		return fmt.Errorf("revocation: register CA: %w", err)
	}
	return nil
}

// BlockIdentity refuses new certificates to identity until until.
func (r *Redis) BlockIdentity(ctx context.Context, identity string, until time.Time) error {
	key := r.prefix + ":{identities}:blocked"
	_, err := r.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.ZRemRangeByScore(ctx, key, "-inf", strconv.FormatInt(r.now().UnixMilli(), 10))
		p.ZAddGT(ctx, key, redis.Z{Score: float64(until.UnixMilli()), Member: identity})
		return nil
	})
	if err != nil {
		return fmt.Errorf("revocation: block identity: %w", err)
	}
	return nil
}

// revokedKeys is the sorted set of every revoked public key, under any CA key (score: expiry).
func (r *Redis) revokedKeys() string { return r.prefix + ":{keys}:revoked" }

// Refused reports why a request must be refused at signing time, in one round trip: the key
// revoked under the signing CA key's scope or under any other (revokedKeys; the scope check
// also covers keys revoked before that set existed), or the identity blocked.
func (r *Redis) Refused(ctx context.Context, caKey ssh.PublicKey, identities []string, key ssh.PublicKey) (string, error) {
	var scopeCmd, anyCmd *redis.FloatCmd
	var idCmd *redis.FloatSliceCmd
	m := member(ca.RevocationEntry{Kind: ca.RevokedKey, Value: KeyEntry(key)})
	_, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		scopeCmd = p.ZScore(ctx, r.scope(ssh.FingerprintSHA256(caKey))+"entries", m)
		anyCmd = p.ZScore(ctx, r.revokedKeys(), m)
		if len(identities) > 0 {
			idCmd = p.ZMScore(ctx, r.prefix+":{identities}:blocked", identities...)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return "", fmt.Errorf("revocation: check: %w", err)
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
