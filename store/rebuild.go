package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/revocation"
)

// Rebuilding a store that lost its state (`sshca store rebuild`): the state itself is written
// back through the store's own writers (Revoke, BlockIdentity, LiftKey, Record), and then
// NewGeneration moves the store to a generation above every one it shows, so that CA
// replicas whose witness found the loss adopt it (and serve again), and bastions install the
// KRLs it publishes (their versions carry the generation in their high 16 bits). What a
// rebuild cannot know, the single-use tokens spent before the loss, RefuseTokensUntil covers.

// NextGeneration returns a new generation (a new random ID) whose number is above the
// store's generation record, above every mark the store holds (Keys.Mark, found by SCAN), and
// above floor (the newest generation a witness outside the store showed: a bastion's KRL
// version, revocation.SplitVersion). It writes nothing.
func (r *Redis) NextGeneration(ctx context.Context, floor uint16) (Generation, error) {
	top := int(floor)
	vals, err := r.rdb.HMGet(ctx, r.keys.Generation(), "id", "epoch").Result()
	if err != nil {
		return Generation{}, fmt.Errorf("store: rebuild: generation: %w", err)
	}
	if len(vals) == 2 && vals[0] != nil {
		id, _ := vals[0].(string)
		epoch, _ := vals[1].(string)
		g, err := parseGeneration(id, epoch)
		if err != nil {
			return Generation{}, err
		}
		top = max(top, int(g.Epoch))
	}
	marks, err := r.markKeys(ctx)
	if err != nil {
		return Generation{}, err
	}
	for _, k := range marks {
		e, err := r.rdb.HGet(ctx, k, "epoch").Int()
		if err != nil && !errors.Is(err, redis.Nil) {
			return Generation{}, fmt.Errorf("store: rebuild: mark %s: %w", k, err)
		}
		top = max(top, e)
	}
	if top >= 1<<16-1 {
		return Generation{}, fmt.Errorf("store: rebuild: the generation number is at its limit (%d)", top)
	}
	return Generation{ID: newGenerationID(), Epoch: uint16(top + 1)}, nil
}

// markKeys lists the mark keys the store holds (every hash tag's, scopes included).
func (r *Redis) markKeys(ctx context.Context) ([]string, error) {
	var out []string
	var mu sync.Mutex // ForEachMaster scans the masters at once
	scan := func(ctx context.Context, c *redis.Client) error {
		it := c.Scan(ctx, 0, r.keys.p()+":*:mark", 1000).Iterator()
		for it.Next(ctx) {
			mu.Lock()
			out = append(out, it.Val())
			mu.Unlock()
		}
		return it.Err()
	}
	var err error
	if cc, ok := r.rdb.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, scan)
	} else {
		it := r.rdb.Scan(ctx, 0, r.keys.p()+":*:mark", 1000).Iterator()
		for it.Next(ctx) {
			out = append(out, it.Val())
		}
		err = it.Err()
	}
	if err != nil {
		return nil, fmt.Errorf("store: rebuild: list marks: %w", err)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// switchScript moves the store to a new generation at once: KEYS the generation record, then
// ARGV[3] mark keys, then (scope version, scope stream) pairs; ARGV id, epoch, the number of
// marks, the stream length. Every mark becomes {id, epoch, n=0}, every scope's version is
// bumped with a change of no entries in its feed carrying the new generation (a bastion
// following the feed sees a newer version and reloads the snapshot), and the record is
// written last.
var switchScript = redis.NewScript(`
local m = tonumber(ARGV[3])
for i = 2, m + 1 do
  redis.call('DEL', KEYS[i])
  redis.call('HSET', KEYS[i], 'id', ARGV[1], 'epoch', ARGV[2], 'n', 0)
end
for j = m + 2, #KEYS, 2 do
  local v = redis.call('INCR', KEYS[j])
  redis.call('XADD', KEYS[j+1], 'MAXLEN', '~', ARGV[4], '*', 'v', tostring(v), 'g', ARGV[2])
end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'epoch', ARGV[2])
return 1
`)

// maxAuditStripes bounds the stripe count taken from Redis (audit.MaxStripes, which this
// package cannot import).
const maxAuditStripes = 1024

// SwitchGeneration moves the store to generation g (from NextGeneration), after the rebuild
// wrote the state back: the marks of MarkedTags, of every audit stripe in use (the count kept
// in Redis or RedisOptions.AuditStripes), of every inventory and token ledger shard in use (the count,
// RedisOptions.InventoryShards, or the highest shard whose mark is found, whichever is higher;
// the count is raised to it), of the scopes of scopes and of the CA keys
// listed in Keys.CAs, and every other mark found, then the generation record. On a single
// Redis (or Sentinel) one script does it all, so a CA replica never sees half of it; on a
// Cluster the keys lie in different slots and are written one tag at a time, marks first: a
// replica that read the store in between may keep reporting lost state, and is restarted.
// The process's own witness adopts g.
func (r *Redis) SwitchGeneration(ctx context.Context, g Generation, scopes ...ssh.PublicKey) error {
	found, err := r.markKeys(ctx)
	if err != nil {
		return err
	}
	marks := map[string]bool{}
	for _, k := range found {
		marks[k] = true
	}
	for _, t := range MarkedTags {
		marks[r.keys.Mark(t)] = true
	}
	// Every inventory shard in use, also one whose master came back empty (its mark is not
	// found by SCAN): replicas that saw its mark expect one of the new generation. The count
	// of shards ever used is put back as high as any shard found still holds a mark: it lives
	// in shard 0, whose master may be the one that came back empty, and without it a replica
	// of fewer shards would neither read the shards that survived nor write its blocks there.
	shards, err := parseShards(r.rdb.Get(ctx, r.keys.InventoryShards()).Result())
	if err != nil {
		return fmt.Errorf("store: rebuild: %w", err)
	}
	shards = max(shards, r.invShards)
	for _, k := range found {
		if i, ok := r.shardOfMark(k); ok {
			shards = max(shards, i+1)
		}
	}
	for i := 1; i < shards; i++ {
		marks[r.keys.Mark(TagInventoryShard(i))] = true
		marks[r.keys.Mark(TagTokensShard(i))] = true
	}
	if shards > 1 {
		if err := raiseShardsScript.Run(ctx, r.rdb, []string{r.keys.InventoryShards(), r.shardBlocked[0]}, shards, r.now().UnixMilli()).Err(); err != nil {
			return fmt.Errorf("store: rebuild: the count of inventory shards: %w", err)
		}
	}
	// Every audit stripe in use too, also one whose master came back empty (`store rebuild
	// --lost-stripe`): the stripes ever used (Keys.AuditStripes, in stripe 0's tag, which may
	// be the one lost) or RedisOptions.AuditStripes, whichever is higher. Replicas that saw a
	// stripe's mark expect one of the new generation, and fail closed on a missing one.
	stripes := len(r.auditStripeTags) + 1
	if v, err := r.rdb.Get(ctx, r.keys.AuditStripes()).Int(); err == nil {
		stripes = max(stripes, min(v, maxAuditStripes))
	} else if !errors.Is(err, redis.Nil) {
		return fmt.Errorf("store: rebuild: the count of audit stripes: %w", err)
	}
	for i := 1; i < stripes; i++ {
		marks[r.keys.Mark(TagAuditStripe(i))] = true
	}
	cas, err := r.CAs(ctx)
	if err != nil {
		return fmt.Errorf("store: rebuild: %w", err)
	}
	fps := map[string]bool{}
	for _, k := range append(cas, scopes...) {
		fps[ssh.FingerprintSHA256(k)] = true
	}
	for fp := range fps {
		marks[r.keys.Mark(TagCA(fp))] = true
	}
	markList := make([]string, 0, len(marks))
	for k := range marks {
		markList = append(markList, k)
	}
	slices.Sort(markList)
	fpList := make([]string, 0, len(fps))
	for fp := range fps {
		fpList = append(fpList, fp)
	}
	slices.Sort(fpList)
	epoch := strconv.Itoa(int(g.Epoch))
	if _, cluster := r.rdb.(*redis.ClusterClient); cluster {
		for _, k := range markList {
			if err := r.rdb.HSet(ctx, k, "id", g.ID, "epoch", epoch, "n", 0).Err(); err != nil {
				return fmt.Errorf("store: rebuild: mark %s: %w", k, err)
			}
		}
		for _, fp := range fpList {
			v, err := r.rdb.Incr(ctx, r.keys.ScopeVersion(fp)).Result()
			if err != nil {
				return fmt.Errorf("store: rebuild: scope %s: %w", fp, err)
			}
			if err := r.rdb.XAdd(ctx, &redis.XAddArgs{Stream: r.keys.ScopeStream(fp), MaxLen: StreamMaxLen, Approx: true,
				Values: []any{"v", strconv.FormatInt(v, 10), "g", epoch}}).Err(); err != nil {
				return fmt.Errorf("store: rebuild: scope %s: %w", fp, err)
			}
		}
		if err := r.rdb.HSet(ctx, r.keys.Generation(), "id", g.ID, "epoch", epoch).Err(); err != nil {
			return fmt.Errorf("store: rebuild: generation: %w", err)
		}
	} else {
		keys := append([]string{r.keys.Generation()}, markList...)
		for _, fp := range fpList {
			keys = append(keys, r.keys.ScopeVersion(fp), r.keys.ScopeStream(fp))
		}
		if err := switchScript.Run(ctx, r.rdb, keys, g.ID, epoch, len(markList), StreamMaxLen).Err(); err != nil {
			return fmt.Errorf("store: rebuild: new generation: %w", err)
		}
	}
	r.witness.mu.Lock()
	r.witness.adoptLocked(g)
	r.witness.mu.Unlock()
	return nil
}

// refuseScript: KEYS the refusal; ARGV since, until (unix ms). Each only moves later.
var refuseScript = redis.NewScript(`
local f = redis.call('HMGET', KEYS[1], 'since', 'until')
local s, u = ARGV[1], ARGV[2]
if f[1] and tonumber(f[1]) > tonumber(s) then s = f[1] end
if f[2] and tonumber(f[2]) > tonumber(u) then u = f[2] end
redis.call('HSET', KEYS[1], 'since', s, 'until', u)
redis.call('PEXPIREAT', KEYS[1], tonumber(u) + 60000)
return {s, u}
`)

// RefuseTokens records that the token ledger refuses the single-use tokens that may have
// been spent before the store lost them (Keys.TokensRefused: since and until, unix ms; a
// later call never moves either earlier). A rebuild gives since = its own time and until =
// since plus the longest token lifetime. A token with an iat is refused when issued before
// since: it may have been spent before the loss; one issued after is taken whatever its
// lifetime. A token without iat cannot be placed: it is refused when it expires before until
// (any token that may have been issued before since expires by then), so shorter-lived
// tokens without iat are refused until until. The record is gone a minute after until,
// when nothing it covers is valid any more.
func (r *Redis) RefuseTokens(ctx context.Context, since, until time.Time) error {
	if err := refuseScript.Run(ctx, r.rdb, []string{r.keys.TokensRefused()}, since.UnixMilli(), until.UnixMilli()).Err(); err != nil {
		return fmt.Errorf("store: refuse tokens: %w", err)
	}
	return nil
}

// Restore collects, from verified audit records in chain order (Add), what a store that lost
// its state must hold again, and writes it back (Apply): the certificates still live (from
// the records of issuance), the serials and key IDs revoked, the public keys banned and not
// lifted since, and the identities still blocked with the serials their revocation covered.
// Every revocation record it cannot restore exactly is listed in Skipped with the reason.
//
// A record of issuance written before records carried the CA fingerprint is taken to be
// signed by the active key of its kind (UserCA, HostCA), and counted in Assumed. A ban
// recorded before records carried the public key (only its fingerprint) cannot be restored.
type Restore struct {
	// UserCA and HostCA are the active CA keys: bans go into both scopes (as a revocation
	// does), and certificates whose record names no CA are taken to be theirs.
	UserCA, HostCA ssh.PublicKey
	// OtherCAs are further CA keys (retired ones) that a record's CA fingerprint may name.
	OtherCAs []ssh.PublicKey
	// IdentityBlock is how long an identity revocation blocks, for records that do not say
	// (limits.identity_block of the CA, default 24h).
	IdentityBlock time.Duration

	// KMSURIs maps a KMS URI as the records keep it, secrets redacted (kms.Redact), to the URI
	// itself (keyring.kms, PIN included): a restored key whose URI was redacted gets it back
	// from here, else from the same key in the store's key ring.
	KMSURIs map[string]string

	issued map[uint64]ca.AuditRecord
	// withheld are certificates signed but not handed out (serial → key ID): a record of the
	// certificate's action that names its serial with an outcome other than "issued" (the
	// authority's settleSigned, kept after an "issued" record too when the CA key turned out
	// banned in the audit append's round trip, or when that append's answer was lost). Their
	// "issued" record, if any, is not restored, whatever the order the stripes put them in.
	withheld map[uint64]string
	actions  []restoreAction
	// access holds, per access request, the records that changed it (rebuild_requests.go).
	access map[string]*accessTrail
	// keyring is the key ring the latest key-ring change left (its "done" record, of the
	// highest version); changes are the allowed key-ring changes seen after it with no record
	// of what they left.
	keyring *ca.Keyring
	changes []ca.AuditRecord
	// Records counts the records read.
	Records int
	Skipped []Skip
}

// Skip is a record Restore did not restore, and why.
type Skip struct {
	Time   time.Time
	Target string
	Why    string
}

type restoreAction struct {
	rec    ca.AuditRecord
	kind   string // serial, key_id, ban, lift, identity
	arg    string
	stripe int // the audit stripe the record was kept in (AddFrom)
}

// RestoreClockSkew is the largest difference between the clocks of two CA replicas that a
// rebuild allows for. Records kept in one audit stripe are in chain order, which is the order
// they were made in; records of different stripes are ordered only by their time, each taken
// from its own replica's clock (audit.InTimeOrder), so two of them closer than this may have
// happened in either order. Where that order decides what is in force, Restore takes the
// order that revokes more: a lift closer than this after a ban of the same key from another
// stripe is not applied (listed in Skipped), a certificate issued closer than this after an
// identity revocation or an access request's end counts as covered by it, and an access
// request's changes are folded from its creation whatever their times. 30 s, as the
// signer's allowance for clock skew (signer.Options.Skew).
const RestoreClockSkew = 30 * time.Second

// Add takes one verified audit record of a log without stripes (stripe 0), in chain order.
func (s *Restore) Add(rec ca.AuditRecord) { s.AddFrom(0, rec) }

// AddFrom takes one verified audit record kept in the given audit stripe. Records come in
// chain order within each stripe, and across stripes by time (audit.InTimeOrder): which of
// two records of different stripes came first is known only up to RestoreClockSkew.
func (s *Restore) AddFrom(stripe int, rec ca.AuditRecord) {
	s.Records++
	if s.issued == nil {
		s.issued = map[uint64]ca.AuditRecord{}
	}
	s.addAccess(rec)
	switch {
	case rec.Outcome == "issued" && rec.Serial != 0:
		s.issued[rec.Serial] = rec
	case rec.Serial != 0 && (rec.Action == ca.ActionUser || rec.Action == ca.ActionHost || rec.Action == ca.ActionRenew):
		if s.withheld == nil {
			s.withheld = map[uint64]string{}
		}
		s.withheld[rec.Serial] = rec.KeyID
	case rec.Action == ca.ActionAdmin && rec.Outcome == ca.OutcomeDone && rec.Keyring != nil:
		// The whole ring as the change left it: the one of the highest version, since changes
		// kept in different stripes are in the order of their replicas' clocks.
		if s.keyring == nil || rec.Keyring.Version >= s.keyring.Version {
			s.keyring, s.changes = rec.Keyring, nil
		}
	case rec.Action == ca.ActionAdmin && rec.Outcome == "allowed" && keyringChange(rec.Target):
		s.changes = append(s.changes, rec)
	case rec.Action == ca.ActionAdmin && keyringChange(rec.Target):
		// A change that failed: its decision settled with the failure; nothing to restore.
		if i := slices.IndexFunc(s.changes, func(c ca.AuditRecord) bool { return c.Target == rec.Target && c.Identity == rec.Identity }); i >= 0 {
			s.changes = slices.Delete(s.changes, i, i+1)
		}
	case rec.Action == ca.ActionRevoke && (rec.Outcome == "unavailable" || rec.Outcome == "internal"):
		// A lift that failed once allowed is settled by a second record of the same decision:
		// the ban stands. (A revocation that failed is restored anyway: revoking more is safe.)
		if arg, ok := strings.CutPrefix(rec.Target, "unrevoke public_key:"); ok {
			for i := len(s.actions) - 1; i >= 0; i-- {
				a := s.actions[i]
				if a.arg != arg {
					continue
				}
				if a.kind == "lift" && a.rec.Identity == rec.Identity && a.rec.Reason == rec.Reason {
					s.actions = slices.Delete(s.actions, i, i+1)
				}
				break
			}
		}
	case rec.Action == ca.ActionRevoke && rec.Outcome == "allowed":
		kind, arg, ok := strings.Cut(rec.Target, ":")
		switch {
		case !ok:
			return // a read audited by versions before kind "read" (list revocations, …): nothing to restore
		case kind == "unrevoke public_key":
			s.actions = append(s.actions, restoreAction{rec, "lift", arg, stripe})
		case kind == "public_key":
			s.actions = append(s.actions, restoreAction{rec, "ban", arg, stripe})
		case kind == "serial" || kind == "key_id" || kind == "identity":
			s.actions = append(s.actions, restoreAction{rec, kind, arg, stripe})
		}
	}
}

// keyringChange: an admin record's target names a change of the key ring (generate,
// promote, retire, compromised), not a listing.
func keyringChange(target string) bool {
	return strings.Contains(target, "CA key") && !strings.HasPrefix(target, "list ")
}

// RestoreReport says what Apply wrote back.
type RestoreReport struct {
	// KeyringVersion is the version of the key ring written back from the last record of a
	// key-ring change (0: none was written: no record, or the store's is the same).
	KeyringVersion uint64
	KeyringKeys    int
	Certificates   int // live certificates recorded in the inventory again
	Assumed        int // of those, whose record named no CA key (the active key of the kind was taken)
	Revocations    int // revocation records restored (serial, key ID, ban, identity)
	Lifts          int // bans lifted since, applied
	Expired        int // revocation records whose effect has ended (nothing to restore)
	Blocks         int // identity names blocked again
	NoAliases      int // live certificates whose record names no alias (found by canonical name only)
	// AccessRequests counts the access requests written back (those still kept: pending,
	// in their window, or ended within ca.AccessRequestRetention).
	AccessRequests int
}

// caKeyFor is the CA key of an issuance record: the one it names, else the active key of its
// kind (assumed true).
func (s *Restore) caKeyFor(rec ca.AuditRecord) (k ssh.PublicKey, assumed bool, err error) {
	if rec.CAFingerprint != "" {
		for _, k := range append([]ssh.PublicKey{s.UserCA, s.HostCA}, s.OtherCAs...) {
			if k != nil && ssh.FingerprintSHA256(k) == rec.CAFingerprint {
				return k, false, nil
			}
		}
		return nil, false, fmt.Errorf("signed by CA key %s, which is not among the CA keys given", rec.CAFingerprint)
	}
	if rec.Action == ca.ActionUser {
		return s.UserCA, true, nil
	}
	return s.HostCA, true, nil
}

// Apply writes back what the records added say is in force at now, through r's writers
// (each idempotent: a store restored from an old snapshot keeps what it has, and Apply may
// run again). It does not touch the generation: SwitchGeneration does, once Apply is done.
func (s *Restore) Apply(ctx context.Context, r *Redis, now time.Time) (RestoreReport, error) {
	var rep RestoreReport
	if s.UserCA == nil || s.HostCA == nil {
		return rep, errors.New("store: rebuild: the user and host CA keys are required")
	}
	block := s.IdentityBlock
	if block <= 0 {
		block = ca.DefaultLimits.IdentityBlock
	}
	skip := func(a restoreAction, why string) {
		s.Skipped = append(s.Skipped, Skip{a.rec.Time, a.rec.Target, why})
	}
	// The host CA key is registered as such before anything is revoked in its scope (the bans
	// below, the key ring's compromised keys): Revoke lists a scope whose key is not among the
	// user CA keys the user KRL is built from, where nothing of a host CA key's belongs.
	if err := r.RegisterHostCA(ctx, s.HostCA); err != nil {
		return rep, fmt.Errorf("store: rebuild: %w", err)
	}
	// The key ring first: a compromised CA key, user or host, is revoked in its own scope and
	// the active key's of its kind (revocation.CompromiseScopes).
	if err := s.applyKeyring(ctx, r, now, &rep); err != nil {
		return rep, err
	}
	// The inventory first: revocations by identity below read nothing from it, but an
	// operator's next revocation does.
	serials := make([]uint64, 0, len(s.issued))
	for n, rec := range s.issued {
		if keyID, ok := s.withheld[n]; ok && keyID == rec.KeyID {
			continue
		}
		if rec.ValidBefore.After(now) {
			serials = append(serials, n)
		}
	}
	slices.Sort(serials)
	for _, n := range serials {
		rec := s.issued[n]
		k, assumed, err := s.caKeyFor(rec)
		if err != nil {
			s.Skipped = append(s.Skipped, Skip{rec.Time, "certificate serial:" + strconv.FormatUint(n, 10), err.Error()})
			continue
		}
		kind := ca.UserCert
		if rec.Action != ca.ActionUser {
			kind = ca.HostCert
		}
		c := ca.Certificate{Serial: n, KeyID: rec.KeyID, Kind: kind, Identity: rec.Identity, Principals: rec.Principals,
			KeyFingerprint: rec.KeyFingerprint, CAFingerprint: ssh.FingerprintSHA256(k),
			ValidAfter: rec.Time, ValidBefore: rec.ValidBefore, Ticket: rec.Ticket, Reason: rec.Reason, PolicyRevision: rec.PolicyRevision,
			Aliases: rec.Aliases, IndexUntil: rec.Time.Add(block), AccessRequest: rec.AccessRequest, Approvers: rec.Approvers}
		if err := r.Record(ctx, c); err != nil {
			return rep, err
		}
		rep.Certificates++
		if len(rec.Aliases) == 0 {
			rep.NoAliases++
		}
		if assumed {
			rep.Assumed++
		}
	}
	// Bans: the last word per fingerprint wins (a lift undoes the bans before it), unless a
	// ban since the last lift came from another stripe less than RestoreClockSkew before the
	// lift: that ban may have been made after it (a key lifted, then banned again on a
	// replica whose clock is behind), so the key stays banned.
	type ban struct {
		key   ssh.PublicKey
		a     restoreAction
		live  bool
		since []restoreAction // the bans since the last lift applied
	}
	bans := map[string]*ban{}
	var order []string
	// revokeCert revokes a certificate by serial or key ID from its record of issuance: true
	// when it was revoked; false when it had expired (counted) or cannot be (listed).
	revokeCert := func(a restoreAction, kind ca.EntryKind, serial uint64, keyID string) (bool, error) {
		rec, ok := s.issued[serial]
		if !ok || (keyID != "" && rec.KeyID != keyID) {
			skip(a, "no record of the certificate's issuance in the audit trail (give the archive that holds it with --archive); its expiry and CA key are unknown")
			return false, nil
		}
		if !rec.ValidBefore.After(now) {
			return false, nil
		}
		k, _, err := s.caKeyFor(rec)
		if err != nil {
			skip(a, err.Error())
			return false, nil
		}
		value := strconv.FormatUint(serial, 10)
		if kind == ca.RevokedKeyID {
			value = keyID
		}
		if _, err := r.Revoke(ctx, k, []ca.RevocationEntry{{Kind: kind, Value: value, Expiry: rec.ValidBefore}}); err != nil {
			return false, err
		}
		return true, nil
	}
	// one counts a revocation by serial or key ID.
	one := func(a restoreAction, kind ca.EntryKind, serial uint64, keyID string) error {
		before := len(s.Skipped)
		done, err := revokeCert(a, kind, serial, keyID)
		switch {
		case err != nil:
			return err
		case done:
			rep.Revocations++
		case len(s.Skipped) == before:
			rep.Expired++
		}
		return nil
	}
	for _, a := range s.actions {
		switch a.kind {
		case "serial":
			n, err := strconv.ParseUint(a.arg, 10, 64)
			if err != nil || n == 0 {
				skip(a, "malformed serial")
				continue
			}
			if err := one(a, ca.RevokedSerial, n, ""); err != nil {
				return rep, err
			}
		case "key_id":
			i := strings.LastIndexByte(a.arg, '#')
			n, err := strconv.ParseUint(a.arg[i+1:], 10, 64)
			if i < 0 || err != nil {
				skip(a, "the key ID does not end in #<serial>")
				continue
			}
			if err := one(a, ca.RevokedKeyID, n, a.arg); err != nil {
				return rep, err
			}
		case "ban":
			if a.rec.PublicKey == "" {
				skip(a, "the record holds only the key's fingerprint (written before records carried the key): ban it again with sshca revoke --public-key FILE")
				continue
			}
			k, err := revocation.ParseKeyEntry(a.rec.PublicKey)
			if err != nil || ssh.FingerprintSHA256(k) != a.arg {
				skip(a, "the record's public key does not match its target")
				continue
			}
			b := bans[a.arg]
			if b == nil {
				order = append(order, a.arg)
				b = &ban{}
				bans[a.arg] = b
			}
			b.key, b.a, b.live, b.since = k, a, true, append(b.since, a)
		case "lift":
			b := bans[a.arg]
			if b == nil || !b.live {
				continue
			}
			if slices.ContainsFunc(b.since, func(x restoreAction) bool {
				return x.stripe != a.stripe && a.rec.Time.Sub(x.rec.Time) < RestoreClockSkew
			}) {
				skip(a, "not applied: a ban of the key kept in another audit stripe is less than "+RestoreClockSkew.String()+" older, by the clocks of the replicas that kept them, so it may have come after the lift; the key stays banned: lift it again if it should not be")
				continue
			}
			b.live, b.since = false, nil
			rep.Lifts++
		case "identity":
			until := a.rec.BlockedUntil
			if until.IsZero() {
				until = a.rec.Time.Add(block)
			}
			canonical, alias := ca.IdentityForm(a.arg)
			names := append(slices.Clone(a.rec.Matches), canonical+alias)
			slices.Sort(names)
			names = slices.Compact(names)
			if until.After(now) {
				for _, name := range names {
					if err := r.BlockIdentity(ctx, name, until); err != nil {
						return rep, err
					}
					rep.Blocks++
				}
			}
			// The certificates the revocation covered: those of its identities issued before it
			// and still valid then.
			covered := append(names, a.arg)
			n := 0
			for _, serial := range serials {
				rec := s.issued[serial]
				// Issued before it, allowing for the clocks of the replicas: a certificate
				// issued on another replica just before the revocation may carry a later time.
				if !slices.Contains(covered, rec.Identity) || !rec.Time.Before(a.rec.Time.Add(RestoreClockSkew)) || !rec.ValidBefore.After(a.rec.Time) {
					continue
				}
				done, err := revokeCert(a, ca.RevokedSerial, serial, "")
				if err != nil {
					return rep, err
				}
				if done {
					n++
				}
			}
			if !until.After(now) && n == 0 {
				rep.Expired++
			} else {
				rep.Revocations++
			}
		}
	}
	// Access requests, and the revocation of the certificates of those ended since: that
	// revocation has no record of its own (the request's cancel or revoke record covers it).
	if err := s.applyAccess(ctx, r, now, &rep, revokeCert); err != nil {
		return rep, err
	}
	for _, fp := range order {
		b := bans[fp]
		if !b.live {
			// A store restored from a snapshot may still hold a ban lifted since.
			if _, err := r.LiftKey(ctx, b.key); err != nil {
				return rep, err
			}
			continue
		}
		e := []ca.RevocationEntry{{Kind: ca.RevokedKey, Value: revocation.KeyEntry(b.key)}}
		for _, k := range []ssh.PublicKey{s.UserCA, s.HostCA} {
			if _, err := r.Revoke(ctx, k, e); err != nil {
				return rep, err
			}
		}
		rep.Revocations++
	}
	return rep, nil
}

// applyKeyring writes back the key ring the last recorded key-ring change left, unless the
// store holds the same keys: with a version above both the recorded one and the store's
// (replicas reload a ring whose version changed), the PINs of KMS URIs put back
// (KeyringKMS, or the store's own key), the user CA keys published to bastions as the ring
// says, the host CA keys registered as such (Redis.RegisterHostCA), and each compromised CA key,
// user or host, revoked for good in its own scope and the active key's of its kind
// (revocation.CompromiseScopes), as keyring.Manager.Compromised does.
func (s *Restore) applyKeyring(ctx context.Context, r *Redis, now time.Time, rep *RestoreReport) error {
	for _, c := range s.changes {
		s.Skipped = append(s.Skipped, Skip{c.Time, c.Target, "a key-ring change recorded without the key ring it left (written before records carried it, or that record was not kept): check the key ring with sshca keys list and make the change again"})
	}
	if s.keyring == nil {
		return nil
	}
	cur, err := r.Keyring(ctx)
	if err != nil {
		return fmt.Errorf("store: rebuild: keyring: %w", err)
	}
	want := *s.keyring
	want.Keys = slices.Clone(want.Keys)
	for i, k := range want.Keys {
		if !strings.Contains(k.KMS, "=REDACTED") {
			continue
		}
		if real, ok := s.KMSURIs[k.KMS]; ok {
			want.Keys[i].KMS = real
			continue
		}
		if j := slices.IndexFunc(cur.Keys, func(c ca.CAKey) bool { return c.Fingerprint == k.Fingerprint }); j >= 0 {
			want.Keys[i].KMS = cur.Keys[j].KMS
			continue
		}
		s.Skipped = append(s.Skipped, Skip{now, "CA key " + k.Fingerprint, "its KMS URI was recorded with the PIN redacted and --keyring-kms does not give it back: the key ring holds it redacted; set it right before the key is promoted"})
	}
	if !slices.EqualFunc(cur.Keys, want.Keys, func(a, b ca.CAKey) bool { return a == b }) {
		written, err := r.UpdateKeyring(ctx, func(k *ca.Keyring) error {
			v := max(want.Version, k.Version+1)
			*k = want
			k.Version = v - 1 // UpdateKeyring adds one
			return nil
		})
		if err != nil {
			return fmt.Errorf("store: rebuild: keyring: %w", err)
		}
		rep.KeyringVersion, rep.KeyringKeys = written.Version, len(written.Keys)
	}
	published := want.Published(ca.UserCert, now)
	activeOf := map[ca.CertKind]ssh.PublicKey{}
	for _, kind := range []ca.CertKind{ca.UserCert, ca.HostCert} {
		if a, ok := want.Active(kind); ok {
			pub, err := a.SSHPublicKey()
			if err != nil {
				return fmt.Errorf("store: rebuild: active %s CA key: %w", kind, err)
			}
			activeOf[kind] = pub
		}
	}
	// Host CA keys are registered as such before anything is revoked in their scopes: Revoke
	// lists a scope whose key is not among the user CA keys the user KRL is built from.
	if k := activeOf[ca.HostCert]; k != nil {
		if err := r.RegisterHostCA(ctx, k); err != nil {
			return fmt.Errorf("store: rebuild: %w", err)
		}
	}
	for _, k := range want.Keys {
		pub, err := k.SSHPublicKey()
		if err != nil {
			s.Skipped = append(s.Skipped, Skip{now, "CA key " + k.Fingerprint, err.Error()})
			continue
		}
		if k.CA == ca.UserCert {
			// Registered first in every case: its scope is followed (Keys.CAs) even when it is
			// no longer trusted.
			if err := r.RegisterCA(ctx, pub); err != nil {
				return fmt.Errorf("store: rebuild: %w", err)
			}
			if !slices.ContainsFunc(published, func(p ca.CAKey) bool { return p.Fingerprint == k.Fingerprint }) {
				if err := r.UnregisterCA(ctx, authorizedLine(pub)); err != nil {
					return fmt.Errorf("store: rebuild: %w", err)
				}
			}
		} else if err := r.RegisterHostCA(ctx, pub); err != nil {
			return fmt.Errorf("store: rebuild: %w", err)
		}
		// The ban every replica's admission reads before it signs, for user and host CA keys
		// alike (keyring.Manager.Compromised).
		if scope := activeOf[k.CA]; k.State == ca.KeyCompromised && scope != nil {
			for _, sc := range revocation.CompromiseScopes(pub, scope) {
				if _, err := r.Revoke(ctx, sc, []ca.RevocationEntry{{Kind: ca.RevokedKey, Value: revocation.KeyEntry(pub)}}); err != nil {
					return fmt.Errorf("store: rebuild: compromised CA key: %w", err)
				}
			}
		}
	}
	return nil
}
