package store

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
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
// (Keys.Blocked, in the inventory's tag so that Record checks them in its own script; while
// the store's layout is 1 also Keys.LegacyBlocked, see layout.go) and every revoked public key
// under any scope (Keys.RevokedKeys). Every write prunes entries whose expiry has passed, and
// reads filter by score.

var (
	_ ca.RevocationStore = (*Redis)(nil)
	_ ca.RevocationStore = (*Memory)(nil)
)

// scoreLua reads a score as Redis (inf) or miniredis (+Inf) answers it, or as sent (+inf):
// a permanent entry's is +inf (revocation.Permanent), which Lua's tonumber need not parse.
const scoreLua = `
local function score(s)
  local l = string.lower(tostring(s))
  if string.find(l, 'inf', 1, true) then
    if string.sub(l, 1, 1) == '-' then return -math.huge end
    return math.huge
  end
  return tonumber(s)
end
`

// revokeScript: KEYS entries, version, stream, ca, mark; ARGV now, CA line, stream length,
// then the mark's id, epoch, seen, then member, expiry pairs. Answers the mark's {status, id,
// epoch, n} and the scope's version. The stream entry carries the generation (g) when it is
// not 0, so a follower composes the same versions as a snapshot.
var revokeScript = redis.NewScript(markLua + scoreLua + `
local r = mark(KEYS[5], ARGV[4], ARGV[5], ARGV[6])
if r[1] == 'newer' then table.insert(r, '0') return r end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
redis.call('SET', KEYS[4], ARGV[2])
local changed = {}
for i = 7, #ARGV, 2 do
  local m, e = ARGV[i], score(ARGV[i+1])
  local cur = redis.call('ZSCORE', KEYS[1], m)
  if (not cur) or score(cur) < e then
    redis.call('ZADD', KEYS[1], ARGV[i+1], m)
    table.insert(changed, m)
    table.insert(changed, ARGV[i+1])
  end
end
if #changed == 0 then
  table.insert(r, tostring(redis.call('GET', KEYS[2]) or '0'))
  return r
end
r = bump(KEYS[5], r)
local v = redis.call('INCR', KEYS[2])
local args = {'XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'v', tostring(v)}
if r[3] ~= '0' and r[3] ~= '' then table.insert(args, 'g') table.insert(args, r[3]) end
for _, x in ipairs(changed) do table.insert(args, x) end
redis.call(unpack(args))
table.insert(r, tostring(v))
return r
`)

// blockScript: KEYS blocked (Keys.ShardBlocked or LegacyBlocked), the mark of its tag, and
// for shard 0 the count of inventory shards (Keys.InventoryShards); ARGV now, the mark's id,
// epoch, seen, then until (unix ms), identity pairs. A block only ever lengthens (ZADD GT).
// Answers the mark's reply, then, given the count's key, the count ("1" when absent) read in
// the same step as the write (shards.go).
var blockScript = redis.NewScript(markLua + `
local r = mark(KEYS[2], ARGV[2], ARGV[3], ARGV[4])
if r[1] == 'newer' then return r end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for i = 5, #ARGV, 2 do redis.call('ZADD', KEYS[1], 'GT', ARGV[i], ARGV[i+1]) end
r = bump(KEYS[2], r)
if KEYS[3] then table.insert(r, redis.call('GET', KEYS[3]) or '1') end
return r
`)

// revokeKeysScript: KEYS revoked keys, mark; ARGV now, the mark's id, epoch, seen, then
// expiry, member pairs.
var revokeKeysScript = redis.NewScript(markLua + `
local r = mark(KEYS[2], ARGV[2], ARGV[3], ARGV[4])
if r[1] == 'newer' then return r end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for i = 5, #ARGV, 2 do redis.call('ZADD', KEYS[1], 'GT', ARGV[i], ARGV[i+1]) end
return bump(KEYS[2], r)
`)

// liftScript: KEYS entries, version, stream, mark; ARGV the mark's id, epoch, seen, then the
// stream length and the member to lift. Answers the mark's {status, id, epoch, n}, then '1'
// and the scope's new version when the member was there (the feed carries it with the
// expiry 0, revocation.Lifted), else '0' and the version as it was.
var liftScript = redis.NewScript(markLua + `
local r = mark(KEYS[4], ARGV[1], ARGV[2], ARGV[3])
if r[1] == 'newer' then table.insert(r, '0') table.insert(r, '0') return r end
if redis.call('ZREM', KEYS[1], ARGV[5]) == 0 then
  table.insert(r, '0')
  table.insert(r, tostring(redis.call('GET', KEYS[2]) or '0'))
  return r
end
r = bump(KEYS[4], r)
local v = redis.call('INCR', KEYS[2])
local args = {'XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'v', tostring(v)}
if r[3] ~= '0' and r[3] ~= '' then table.insert(args, 'g') table.insert(args, r[3]) end
table.insert(args, ARGV[5])
table.insert(args, '0')
redis.call(unpack(args))
table.insert(r, '1')
table.insert(r, tostring(v))
return r
`)

// liftKeysScript: KEYS revoked keys, mark; ARGV the mark's id, epoch, seen, then the member.
var liftKeysScript = redis.NewScript(markLua + `
local r = mark(KEYS[2], ARGV[1], ARGV[2], ARGV[3])
if r[1] == 'newer' then return r end
if redis.call('ZREM', KEYS[1], ARGV[4]) == 0 then return r end
return bump(KEYS[2], r)
`)

func member(e ca.RevocationEntry) string { return string(e.Kind) + ":" + e.Value }

func parseMember(m string, expiryMS float64) (ca.RevocationEntry, error) {
	kind, value, ok := strings.Cut(m, ":")
	if !ok {
		return ca.RevocationEntry{}, fmt.Errorf("store: malformed revocation entry %q", m)
	}
	e := ca.RevocationEntry{Kind: ca.EntryKind(kind), Value: value}
	if !math.IsInf(expiryMS, 1) { // +inf: permanent, the zero Expiry
		e.Expiry = time.UnixMilli(int64(max(expiryMS, 0))).UTC()
	}
	return e, nil
}

// score is the sorted-set score of an entry's expiry: unix ms, or +inf for a permanent one
// (never pruned: writers prune up to now).
func score(e ca.RevocationEntry) any {
	if revocation.Permanent(e) {
		return "+inf"
	}
	return e.Expiry.UnixMilli()
}

func authorizedLine(k ssh.PublicKey) string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
}

// Revoke adds entries to the scope of caKey, bumps its version and appends the change to its
// feed, atomically. Entries already revoked (with an expiry at least as late) change
// nothing; then the version stays.
func (r *Redis) Revoke(ctx context.Context, caKey ssh.PublicKey, entries []ca.RevocationEntry) (uint64, error) {
	fp := ssh.FingerprintSHA256(caKey)
	now := r.now().UnixMilli()
	var members, keys []any
	for _, e := range entries {
		if err := revocation.ValidEntry(e); err != nil {
			return 0, err
		}
		members = append(members, member(e), score(e))
		if e.Kind == ca.RevokedKey {
			keys = append(keys, score(e), member(e))
		}
	}
	if len(keys) > 0 {
		// Revoked public keys are refused at signing time whichever CA key signs next (a
		// rotation must not let a revoked key back in). Written before the scope: a failure
		// in between refuses more, never less.
		_, err := r.runMarked(ctx, "revocation of a public key", TagKeys, revokeKeysScript, []string{r.keys.RevokedKeys(), r.keys.Mark(TagKeys)},
			func(g Generation, exp expectation) []any {
				return append(append([]any{now}, markArgs(g, exp)...), keys...)
			})
		if err != nil {
			return 0, fmt.Errorf("store: revoke keys: %w", err)
		}
	}
	tag := TagCA(fp)
	scope := []string{r.keys.ScopeEntries(fp), r.keys.ScopeVersion(fp), r.keys.ScopeStream(fp), r.keys.ScopeCA(fp), r.keys.Mark(tag)}
	res, err := r.runMarked(ctx, "revocation", tag, revokeScript, scope, func(g Generation, exp expectation) []any {
		return append(append([]any{now, authorizedLine(caKey), StreamMaxLen}, markArgs(g, exp)...), members...)
	})
	if err != nil {
		return 0, fmt.Errorf("store: revoke: %w", err)
	}
	var v uint64
	if len(res) == 1 {
		s, _ := res[0].(string)
		v, _ = strconv.ParseUint(s, 10, 64)
	}
	// Listed for the user KRL, unless it is a host CA key (RegisterHostCA).
	line := authorizedLine(caKey)
	host, err := r.rdb.SIsMember(ctx, r.keys.HostCAs(), line).Result()
	if err != nil {
		return 0, fmt.Errorf("store: register CA: %w", err)
	}
	if !host {
		if err := r.rdb.SAdd(ctx, r.keys.CAs(), line).Err(); err != nil {
			return 0, fmt.Errorf("store: register CA: %w", err)
		}
	}
	g, _ := r.witness.Generation()
	return revocation.ComposeVersion(g.Epoch, v), nil
}

// State returns the scope's unexpired entries at its current version.
func (r *Redis) State(ctx context.Context, caKey ssh.PublicKey) (ca.RevocationState, error) {
	st, _, err := r.Snapshot(ctx, ssh.FingerprintSHA256(caKey))
	return st, err
}

// StatePage is State a page at a time: at most limit unexpired entries (0: all) after the
// position after, in ca.EntryCursor order, with the scope's CA key and version, and where the
// next page starts (zero: none is left). One transaction reads the mark, the key, the version
// and the page (pageScript on Keys.ScopeEntries: the position by rank, so nothing revoked,
// lifted or pruned in between shifts it), all in the scope's tag.
func (r *Redis) StatePage(ctx context.Context, caKey ssh.PublicKey, after ca.EntryCursor, limit int) (ca.RevocationState, ca.EntryCursor, error) {
	fp := ssh.FingerprintSHA256(caKey)
	tag := TagCA(fp)
	exp := r.witness.expect(tag)
	pos := "+inf"
	if after.Expiry != ca.PermanentExpiry {
		pos = strconv.FormatInt(after.Expiry, 10)
	}
	var caCmd, verCmd *redis.StringCmd
	var markCmd *redis.SliceCmd
	var pageCmd *redis.Cmd
	_, err := r.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		markCmd = p.HMGet(ctx, r.keys.Mark(tag), "id", "epoch", "n")
		caCmd = p.Get(ctx, r.keys.ScopeCA(fp))
		verCmd = p.Get(ctx, r.keys.ScopeVersion(fp))
		pageCmd = pageScript.Eval(ctx, p, []string{r.keys.ScopeEntries(fp)}, r.now().UnixMilli(), pos, after.Member, limit)
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return ca.RevocationState{}, ca.EntryCursor{}, fmt.Errorf("store: revocations page: %w", err)
	}
	st, err := r.scopeHeader(tag, exp, markCmd, caCmd, verCmd)
	if err != nil {
		return ca.RevocationState{}, ca.EntryCursor{}, err
	}
	page, more, err := pageAnswer(pageCmd)
	if err != nil {
		return ca.RevocationState{}, ca.EntryCursor{}, fmt.Errorf("store: revocations page: %w", err)
	}
	for _, z := range page {
		e, err := parseMember(z.member, z.score)
		if err != nil {
			return ca.RevocationState{}, ca.EntryCursor{}, err
		}
		st.Entries = append(st.Entries, e)
	}
	var next ca.EntryCursor
	if more && len(st.Entries) > 0 {
		next = ca.EntryCursorOf(st.Entries[len(st.Entries)-1])
	}
	return st, next, nil
}

// BlockIdentity refuses new certificates to identity until until: once it has returned, Record
// refuses every certificate of the identity (the block and the records share the inventory's
// tag), so a read of the inventory that follows sees every certificate recorded before it.
// With inventory shards the block goes into every shard in use, shard 0 first (blockAll).
// While the store's layout is 1 (replicas of layout 1 may still run), the block is also
// written where they look (Keys.LegacyBlocked); a failure in between refuses more, never less.
func (r *Redis) BlockIdentity(ctx context.Context, identity string, until time.Time) error {
	if err := r.blockAll(ctx, []any{until.UnixMilli(), identity}); err != nil {
		return fmt.Errorf("store: block identity: %w", err)
	}
	if r.migrated.Load() {
		return nil
	}
	layout, err := r.storeLayout(ctx)
	if err != nil {
		return fmt.Errorf("store: block identity: %w", err)
	}
	if layout < unshardedLayout {
		if err := r.block(ctx, TagIdentities, r.keys.LegacyBlocked(), []any{until.UnixMilli(), identity}); err != nil {
			return fmt.Errorf("store: block identity for replicas of layout %d: %w", layout, err)
		}
	}
	return nil
}

// blockAll writes until, identity pairs into the blocked set of every inventory shard in use:
// shard 0's, by the script that reads the count of shards ever used in the same step, then
// each other shard up to that count or the configured number, whichever is higher (the rules
// in shards.go). Each write waits for the replicas (runMarked). A failure part way leaves the
// block in shard 0, which Refused reads before any signature: it refuses more, never less, and
// running it again finishes it.
func (r *Redis) blockAll(ctx context.Context, pairs []any) error {
	now := r.now().UnixMilli()
	res, err := r.runMarked(ctx, "identity block", TagInventory, blockScript,
		[]string{r.shardBlocked[0], r.mark(TagInventory), r.keys.InventoryShards()}, func(g Generation, exp expectation) []any {
			return append(append([]any{now}, markArgs(g, exp)...), pairs...)
		})
	if err != nil {
		return err
	}
	n := 1
	if len(res) == 1 {
		s, _ := res[0].(string)
		if n, err = parseShards(s, nil); err != nil {
			return err
		}
	}
	for i := 1; i < max(n, r.invShards); i++ {
		tag := TagInventoryShard(i)
		if err := r.block(ctx, tag, r.keys.ShardBlocked(i), pairs); err != nil {
			return fmt.Errorf("inventory shard %d: %w", i, err)
		}
	}
	return nil
}

// block runs blockScript on a set of blocks in tag with until, identity pairs.
func (r *Redis) block(ctx context.Context, tag, key string, pairs []any) error {
	now := r.now().UnixMilli()
	_, err := r.runMarked(ctx, "identity block", tag, blockScript, []string{key, r.keys.Mark(tag)}, func(g Generation, exp expectation) []any {
		return append(append([]any{now}, markArgs(g, exp)...), pairs...)
	})
	return err
}

// Refused reports why a request must be refused at signing time, in one round trip: the key
// revoked under the signing CA key's scope or under any other (Keys.RevokedKeys; the scope
// check also covers keys revoked before that set existed), or the identity blocked. The same
// round trip reads the marks of the tags it depends on, and of the tags issuance writes to
// (token ledger, audit, each of its stripes: RedisOptions.AuditStripes; the inventory is one of
// the first): a store that lost any of them is
// ErrStateLost (no certificate until it is rebuilt), found before anything is signed. While the store's layout is 1, it also
// reads the blocks that replicas of layout 1 write (Keys.LegacyBlocked) and the store's
// layout; once that says the store is migrated, neither is read again. The identity check
// here saves the signing of a certificate that Record would refuse; Record's check is the
// one that cannot be raced.
func (r *Redis) Refused(ctx context.Context, caKey ssh.PublicKey, identities []string, key ssh.PublicKey) (string, error) {
	if _, err := r.generation(ctx); err != nil {
		return "", fmt.Errorf("store: check: %w", err)
	}
	var rc *refusedCmds
	_, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		rc = r.queueRefused(ctx, p, ssh.FingerprintSHA256(caKey), caKey, identities, key)
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return "", fmt.Errorf("store: check: %w", err)
	}
	return r.refusedResult(ctx, rc)
}

// refusedCmds are the reads of Refused, queued on a pipeline (queueRefused) and answered by
// refusedResult once it ran: Refused sends them alone, Admit beside the token ledger's.
type refusedCmds struct {
	identities       []string
	tags             []string
	exps             []expectation
	markCmds         []*redis.SliceCmd
	scopeCmd, anyCmd *redis.FloatSliceCmd // anyCmd: the key's score, then the CA key's
	idCmd, legacyCmd *redis.FloatSliceCmd
	caFP             string
	layoutCmd        *redis.StringCmd
	// agreedCmd reads the store's number of inventory shards (Keys.ShardsAgreed), which the
	// configured one must be: the serial this admission reserves goes to a key that depends
	// on it.
	agreedCmd *redis.StringCmd
}

// queueRefused queues Refused's reads on p for the scope of the CA key caKey of fingerprint
// fp. The caller has made sure of the generation (r.generation) first.
func (r *Redis) queueRefused(ctx context.Context, p redis.Pipeliner, fp string, caKey ssh.PublicKey, identities []string, key ssh.PublicKey) *refusedCmds {
	// The tags issuance writes (inventory, token ledger, audit) are checked here too, before
	// anything is signed, at no extra round trip.
	rc := &refusedCmds{identities: identities, caFP: fp, tags: []string{TagCA(fp), TagKeys, TagInventory, TagTokens, TagAudit}}
	rc.tags = append(rc.tags, r.auditStripeTags...)
	rc.tags = append(rc.tags, r.shardTags[1:]...)
	rc.tags = append(rc.tags, r.tokenTags[1:]...)
	legacy := !r.migrated.Load()
	if legacy {
		rc.tags = append(rc.tags, TagIdentities)
	}
	rc.exps = make([]expectation, len(rc.tags))
	rc.markCmds = make([]*redis.SliceCmd, len(rc.tags))
	for i, tag := range rc.tags {
		rc.exps[i] = r.witness.expect(tag)
	}
	m := member(ca.RevocationEntry{Kind: ca.RevokedKey, Value: revocation.KeyEntry(key)})
	// ZMSCORE rather than ZSCORE: a key not revoked, the usual answer, is a nil element (0,
	// an expiry long past) instead of a nil reply, which go-redis makes the pipeline's error
	// and runs through its retry classification (about 17 allocations) on every certificate.
	rc.scopeCmd = p.ZMScore(ctx, r.keys.ScopeEntries(fp), m)
	// The CA key itself in the same read: a key marked compromised (keyring.Manager.Compromised
	// bans it for good, under the scope of the key promoted in its place) by another replica
	// still signs on this one until its keyring refreshes (keyring.refresh), unless the
	// admission refuses it here, before the signature.
	rc.anyCmd = p.ZMScore(ctx, r.fixed.revokedKeys, m, r.caMember(fp, caKey))
	if len(identities) > 0 {
		rc.idCmd = p.ZMScore(ctx, r.fixed.blocked, identities...)
		if legacy {
			rc.legacyCmd = p.ZMScore(ctx, r.keys.LegacyBlocked(), identities...)
		}
	}
	if legacy || (r.invShards > 1 && !r.current.Load()) {
		// Until the store is at LayoutVersion a replica of several shards records in shard 0
		// (shards.go): reading the layout here, at no extra round trip, is how it learns.
		rc.layoutCmd = p.Get(ctx, r.keys.StoreLayout())
	}
	rc.agreedCmd = r.readAgreed(ctx, p)
	for i, tag := range rc.tags {
		rc.markCmds[i] = r.readMark(ctx, p, tag)
	}
	return rc
}

// refusedResult is Refused's answer from the reads that queueRefused queued, once they ran.
func (r *Redis) refusedResult(ctx context.Context, rc *refusedCmds) (string, error) {
	// The pipeline's own error is its first failed command's, redis.Nil when a read finds
	// nothing: a later read that failed (an ACL that refuses it, a reply cut off) is seen only
	// here, and must fail the check rather than read as nothing revoked or blocked.
	cmds := []redis.Cmder{rc.scopeCmd, rc.anyCmd, rc.agreedCmd}
	for _, c := range []*redis.FloatSliceCmd{rc.idCmd, rc.legacyCmd} {
		if c != nil {
			cmds = append(cmds, c)
		}
	}
	if rc.layoutCmd != nil {
		cmds = append(cmds, rc.layoutCmd)
	}
	for _, c := range rc.markCmds {
		cmds = append(cmds, c)
	}
	for _, c := range cmds {
		if err := c.Err(); err != nil && !errors.Is(err, redis.Nil) {
			return "", fmt.Errorf("store: check: %w", err)
		}
	}
	for i, tag := range rc.tags {
		mk, present, err := parseMark(rc.markCmds[i].Val())
		if err != nil {
			return "", err
		}
		r.witness.observe(tag, rc.exps[i], mk, present)
	}
	if err := r.witness.Lost(); err != nil {
		return "", err
	}
	if rc.layoutCmd != nil {
		if _, err := r.observeLayout(rc.layoutCmd.Result()); err != nil {
			return "", fmt.Errorf("store: check: %w", err)
		}
	}
	agreed, err := parseAgreed(rc.agreedCmd.Result())
	if err != nil {
		return "", fmt.Errorf("store: check: inventory shards: %w", err)
	}
	if err := r.agreeShards(ctx, agreed); err != nil {
		return "", err
	}
	// The key's latest expiry under the scope or any other; 0 (ZMSCORE's nil) when it is in
	// neither, which refuses nothing: refusal asks for an expiry after now.
	anyExp, caExp := 0.0, 0.0
	if v := rc.anyCmd.Val(); len(v) == 2 {
		anyExp, caExp = v[0], v[1]
	}
	if caExp > float64(r.now().UnixMilli()) {
		return "", caBanned(rc.caFP)
	}
	keyExp := max(onlyScore(rc.scopeCmd.Val()), anyExp)
	keyFound := keyExp > 0
	// ZMSCORE answers nil (0 here) for a name that is not blocked: take the latest block.
	var idExp float64
	identity := ""
	for _, cmd := range []*redis.FloatSliceCmd{rc.idCmd, rc.legacyCmd} {
		if cmd == nil {
			continue
		}
		for i, exp := range cmd.Val() {
			if exp > idExp {
				idExp, identity = exp, rc.identities[i]
			}
		}
	}
	return refusal(r.now(), keyExp, keyFound, idExp, identity != "", identity), nil
}

// caBanned is the refusal of a CA key that is itself revoked (marked compromised, which bans
// it for good; or an administrator's ban of its public key, which every KRL carries, so that
// sshd would refuse what it signs): an Unavailable, not the caller's fault, since a replica
// signs with another key once its keyring names one. A token the admission spent beside it is
// given back (ca.Admission.ReturnToken), and the authority's answer says so.
func caBanned(fp string) error {
	return ca.Unavailable(fmt.Sprintf("the CA key %s that would sign is banned (marked compromised, or its public key revoked) and this replica's key ring has not yet moved to another key; nothing was signed: ask again", fp), nil)
}

// caMember is the revocation member that bans the CA key of fingerprint fp (its KeyEntry),
// marshalled once per key rather than per certificate.
func (r *Redis) caMember(fp string, caKey ssh.PublicKey) string {
	if m, ok := r.caMembers.Load(fp); ok {
		return m.(string)
	}
	m := member(ca.RevocationEntry{Kind: ca.RevokedKey, Value: revocation.KeyEntry(caKey)})
	r.caMembers.Store(fp, m)
	return m
}

// CABan is one CA key whose ban QueueCABans reads: its fingerprint (ssh.FingerprintSHA256, as
// the key computed it once) and the key.
type CABan struct {
	Fingerprint string
	Key         ssh.PublicKey
}

// QueueCABans queues on p, a pipeline that carries other commands (the audit append's, after
// the signature), the read of whether each CA key of keys is banned now: marked compromised
// (keyring.Manager.Compromised) or its public key revoked, the member of Keys.RevokedKeys the
// admission reads beside the certified key's (queueRefused). One ZMSCORE, no round trip of its
// own. Once p ran, the answer says per key, by its index in keys, whether it is banned.
func (r *Redis) QueueCABans(ctx context.Context, p redis.Pipeliner, keys []CABan) CABanRead {
	members := make([]string, len(keys))
	for i, k := range keys {
		members[i] = r.caMember(k.Fingerprint, k.Key)
	}
	return CABanRead{r: r, cmd: p.ZMScore(ctx, r.fixed.revokedKeys, members...)}
}

// CABanRead is the read QueueCABans queued, answered once its pipeline ran.
type CABanRead struct {
	r   *Redis
	cmd *redis.FloatSliceCmd
}

// Banned says whether the CA key of index i (in the keys given to QueueCABans) is banned now
// (a ban's expiry after now: a compromise's is +inf). A read that failed is an error, never
// "not banned".
func (c CABanRead) Banned(i int) (bool, error) {
	v, err := c.cmd.Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return false, fmt.Errorf("store: CA key bans: %w", err)
	}
	if i < 0 || i >= len(v) {
		return false, fmt.Errorf("store: CA key bans: no score for key %d of %d", i, len(v))
	}
	return v[i] > float64(c.r.now().UnixMilli()), nil
}

// onlyScore is the one score of a ZMSCORE of one member (0: none).
func onlyScore(v []float64) float64 {
	if len(v) != 1 {
		return 0
	}
	return v[0]
}

// LiftKey removes every revocation of key: from each CA key's scope, the user CA keys' (CAs)
// and the host CA keys' (Keys.HostCAs: a ban goes into the active host key's scope too, and
// the admission of a host certificate reads that scope), each removal bumping the scope's
// version and going to its feed in the same script, then from the keys refused at signing
// time. Scopes first: a failure in between leaves the key refused at signing time, never the
// other way round; running it again finishes it.
func (r *Redis) LiftKey(ctx context.Context, key ssh.PublicKey) (map[string]uint64, error) {
	m := member(ca.RevocationEntry{Kind: ca.RevokedKey, Value: revocation.KeyEntry(key)})
	cas, err := r.CAs(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: lift key: %w", err)
	}
	hosts, err := r.keySet(ctx, r.keys.HostCAs())
	if err != nil {
		return nil, fmt.Errorf("store: lift key: host CA keys: %w", err)
	}
	cas = append(cas, hosts...)
	versions := map[string]uint64{}
	for _, caKey := range cas {
		fp := ssh.FingerprintSHA256(caKey)
		tag := TagCA(fp)
		scope := []string{r.keys.ScopeEntries(fp), r.keys.ScopeVersion(fp), r.keys.ScopeStream(fp), r.keys.Mark(tag)}
		res, err := r.runMarked(ctx, "lift of a revoked key", tag, liftScript, scope, func(g Generation, exp expectation) []any {
			return append(markArgs(g, exp), StreamMaxLen, m)
		})
		if err != nil {
			return nil, fmt.Errorf("store: lift key: %w", err)
		}
		if len(res) == 2 && res[0] == "1" {
			s, _ := res[1].(string)
			v, _ := strconv.ParseUint(s, 10, 64)
			g, _ := r.witness.Generation()
			versions[fp] = revocation.ComposeVersion(g.Epoch, v)
		}
	}
	_, err = r.runMarked(ctx, "lift of a revoked key", TagKeys, liftKeysScript, []string{r.keys.RevokedKeys(), r.keys.Mark(TagKeys)},
		func(g Generation, exp expectation) []any { return append(markArgs(g, exp), m) })
	if err != nil {
		return nil, fmt.Errorf("store: lift key: %w", err)
	}
	return versions, nil
}

func refusal(now time.Time, keyExp float64, keyFound bool, idExp float64, idFound bool, identity string) string {
	ms := float64(now.UnixMilli())
	switch {
	case keyFound && keyExp > ms:
		return "this public key has been revoked; generate a new key"
	case idFound && idExp > ms:
		return identityRefusal(identity, idExp)
	}
	return ""
}

// identityRefusal says that the certificates of identity (a canonical name or an alias) were
// revoked, and until when (unix ms) it gets no new ones.
func identityRefusal(identity string, untilMS float64) string {
	return fmt.Sprintf("the certificates of %s were revoked; no new ones until %s", identity, time.UnixMilli(int64(untilMS)).UTC().Format(time.RFC3339))
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
	changed time.Time                     // of the last change ever appended
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
		if !revocation.Live(e, now) {
			delete(s.entries, k)
		}
	}
	var changed []ca.RevocationEntry
	for _, e := range entries {
		e.Expiry = e.Expiry.UTC().Truncate(time.Millisecond)
		if cur, ok := s.entries[member(e)]; !ok || memScore(cur) < memScore(e) {
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

// StatePage is State a page at a time, in ca.EntryCursor order (as Redis.StatePage).
func (m *Memory) StatePage(_ context.Context, caKey ssh.PublicKey, after ca.EntryCursor, limit int) (ca.RevocationState, ca.EntryCursor, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	st, _ := m.snapshotLocked(ssh.FingerprintSHA256(caKey))
	slices.SortFunc(st.Entries, func(x, y ca.RevocationEntry) int { return ca.EntryCursorOf(x).Compare(ca.EntryCursorOf(y)) })
	st.Entries = slices.DeleteFunc(st.Entries, func(e ca.RevocationEntry) bool { return ca.EntryCursorOf(e).Compare(after) <= 0 })
	var next ca.EntryCursor
	if limit > 0 && len(st.Entries) > limit {
		st.Entries = st.Entries[:limit]
		next = ca.EntryCursorOf(st.Entries[limit-1])
	}
	if len(st.Entries) == 0 {
		st.Entries = nil
	}
	return st, next, nil
}

func (m *Memory) snapshotLocked(fp string) (ca.RevocationState, string) {
	s := m.scopes[fp]
	if s == nil {
		return ca.RevocationState{}, "0-0"
	}
	st := ca.RevocationState{CA: s.ca, Version: s.version, Changed: s.changed}
	now := m.now()
	for _, e := range s.entries {
		if revocation.Live(e, now) {
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
func (m *Memory) Refused(_ context.Context, caKey ssh.PublicKey, identities []string, key ssh.PublicKey) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var keyExp, idExp float64
	var keyFound, idFound bool
	if caKey != nil {
		cm := member(ca.RevocationEntry{Kind: ca.RevokedKey, Value: revocation.KeyEntry(caKey)})
		for _, s := range m.scopes {
			if e, ok := s.entries[cm]; ok && memScore(e) > float64(m.now().UnixMilli()) {
				return "", caBanned(ssh.FingerprintSHA256(caKey))
			}
		}
	}
	// Under any CA key's scope: a rotation must not let a revoked key back in.
	mk := member(ca.RevocationEntry{Kind: ca.RevokedKey, Value: revocation.KeyEntry(key)})
	for _, s := range m.scopes {
		if e, ok := s.entries[mk]; ok && (!keyFound || memScore(e) > keyExp) {
			keyExp, keyFound = memScore(e), true
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

// memScore is an entry's expiry as Redis scores it: unix ms, +inf when permanent.
func memScore(e ca.RevocationEntry) float64 {
	if revocation.Permanent(e) {
		return math.Inf(1)
	}
	return float64(e.Expiry.UnixMilli())
}

// LiftKey removes every revocation of key; see Redis.LiftKey.
func (m *Memory) LiftKey(_ context.Context, key ssh.PublicKey) (map[string]uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	lifted := ca.RevocationEntry{Kind: ca.RevokedKey, Value: revocation.KeyEntry(key), Expiry: revocation.Lifted}
	versions := map[string]uint64{}
	for fp, s := range m.scopes {
		if _, ok := s.entries[member(lifted)]; !ok {
			continue
		}
		delete(s.entries, member(lifted))
		s.version++
		m.appendLocked(s, []ca.RevocationEntry{lifted})
		versions[fp] = s.version
	}
	return versions, nil
}
