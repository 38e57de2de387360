package store

import (
	"strconv"
)

// LayoutVersion is the version of the Redis layout this file lists. A change that a replica
// running the previous layout cannot read (a key renamed, a value re-encoded) bumps it and
// comes with a migration that a rolling upgrade of several replicas survives; the store says
// which layouts may still write to it in Keys.StoreLayout (layout.go).
//
// 1: identity blocks in {identities} (Keys.LegacyBlocked).
// 2: identity blocks in {inventory} (Keys.Blocked), beside the records they refuse, so that
// the script recording a certificate checks them in the same atomic step (Redis.Record). While
// the store's layout is 1, replicas of layout 2 also write and read the blocks of layout 1;
// `sshca store migrate` (Redis.Migrate) copies the remaining ones over and moves the store to 2.
// 3: the inventory in several shards ({inventory:i}, RedisOptions.InventoryShards) and the
// count of shards ever used (Keys.InventoryShards), and the audit chain in several stripes
// ({audit:i}, Keys.AuditStripes). New keys only, but a replica or tool of layout 2 reads shard 0
// and stripe 0 alone (lists, revocation by identity and a rebuild would miss certificates;
// audit verify would call a striped log intact having read a part of it, and store rebuild
// drop what the other stripes recorded), and a replica of layout 2 that has seen the store at 2
// never reads the layout again, so it would not notice a raise. So neither is used beyond its
// first before the store is at 3: a replica configured with shards records in shard 0, and an
// audit Log appends to stripe 0 alone (LayoutStripes), until `sshca store migrate` moves the
// store to 3 once no replica of layout 2 runs; older replicas started after that refuse it. An
// empty store that a replica configured with shards or stripes creates starts at 3. A store
// used with one shard and one stripe stays at 2.
const LayoutVersion = 3

// unshardedLayout is the layout of a store whose inventory is one shard and whose audit chain
// is one stripe (the keys of layout 2): an empty store starts there unless its first replica
// shards or stripes, and from it on identity blocks are kept in the inventory alone (no legacy
// blocks).
const unshardedLayout = 2

// LayoutStripes is the first layout whose replicas read every stripe of the audit chain: an
// audit Log appends beyond stripe 0 only once the store's layout is at least this (layout.go).
const LayoutStripes = 3

// DefaultPrefix is the first part of every key unless configured otherwise.
const DefaultPrefix = "sshca"

// The hash tags of sshca's keys. Keys that one transaction or script touches share a tag, so
// that it runs on Redis Cluster: the inventory (a record and its indexes), a CA key's revocation
// scope ({ca:<fingerprint>}), the revoked public keys, the keyring document, and the audit
// chain. An identity's block shares the inventory's tag with its records: the script that
// records a certificate refuses a blocked identity in the same step (layout 2). The token
// ledger's tag holds its mark and a rebuild's refusal. Spent tokens and the CA sets are
// single-key writes, untagged.
const (
	TagInventory = "{inventory}"
	// TagIdentities held the identity blocks of layout 1 (Keys.LegacyBlocked), still written
	// and read while the store's layout is 1.
	TagIdentities = "{identities}"
	TagKeys       = "{keys}"
	TagKeyring    = "{keyring}"
	TagAudit      = "{audit}"
	// TagTokens holds the token ledger's mark and a rebuild's refusal; the spent tokens
	// themselves are untagged (Keys.Token).
	TagTokens = "{tokens}"
	// TagGeneration holds the store's generation record (Keys.Generation), alone in its slot.
	TagGeneration = "{gen}"
)

// TagAuditStripe is the hash tag of audit chain stripe i (audit.Options.Stripes): stripe 0 is
// the one chain of a log that has a single stripe, TagAudit, so a single chain's keys are what
// they were before stripes; stripe i >= 1 is "{audit:i}". One tag per stripe, so the stripes
// of a Redis Cluster spread over its masters and no append names keys of two stripes.
func TagAuditStripe(i int) string {
	if i == 0 {
		return TagAudit
	}
	return "{audit:" + strconv.Itoa(i) + "}"
}

// TagInventoryShard is the hash tag of inventory shard i (RedisOptions.InventoryShards): shard
// 0 is TagInventory, so an inventory of one shard has the keys it had before shards; shard i
// >= 1 is "{inventory:i}". One tag per shard, so the shards of a Redis Cluster spread over its
// masters while an identity's record, indexes and blocks stay in one slot.
func TagInventoryShard(i int) string {
	if i == 0 {
		return TagInventory
	}
	return "{inventory:" + strconv.Itoa(i) + "}"
}

// TagTokensShard is the hash tag of the token ledger's shard i (the spends of tokens whose
// hash falls in it carry its mark, RedisOptions.InventoryShards): shard 0 is TagTokens, shard
// i >= 1 is "{tokens:i}". Only the marks are sharded: the spent tokens are untagged already,
// and a rebuild's refusal stays in TagTokens, read beside every spend.
func TagTokensShard(i int) string {
	if i == 0 {
		return TagTokens
	}
	return "{tokens:" + strconv.Itoa(i) + "}"
}

// TagCA is the hash tag of the revocation scope of the CA key with this SHA256 fingerprint.
func TagCA(fp string) string { return "{ca:" + fp + "}" }

// DurableTags are the fixed hash tags that hold durable state (besides one TagCA per CA key):
// a write probe in each of them tells whether every write that matters would succeed.
var DurableTags = []string{TagInventory, TagAudit, TagIdentities, TagKeys, TagKeyring, TagTokens, TagGeneration}

// MarkedTags are the fixed hash tags whose writes carry the generation mark (Keys.Mark),
// besides one TagCA per revocation scope: identity blocks (in the inventory's tag; those of
// layout 1 in {identities}), revoked public keys, the keyring, the inventory, the token ledger
// and the audit chain: every tag that holds durable state (on Redis Cluster each may sit on
// another shard, and be lost or rolled back alone).
var MarkedTags = []string{TagInventory, TagIdentities, TagKeys, TagKeyring, TagTokens, TagAudit}

// Keys builds every Redis key of sshca under one prefix. It is the one place that names them:
// the stores here, audit/ and the readiness probe use it, and a test keeps deploy/redis's ACL
// patterns in step with it.
type Keys struct{ Prefix string }

func (k Keys) p() string {
	if k.Prefix == "" {
		return DefaultPrefix
	}
	return k.Prefix
}

// Cert is the JSON record of a certificate, expiring at its ValidBefore (inventory), in shard
// 0 (ShardCert).
func (k Keys) Cert(serial uint64) string { return k.ShardCert(0, serial) }

// ShardCert is Cert in inventory shard i (TagInventoryShard): the shard of the certificate's
// identity.
func (k Keys) ShardCert(i int, serial uint64) string {
	return k.p() + ":" + TagInventoryShard(i) + ":cert:" + strconv.FormatUint(serial, 10)
}

// Identity is the sorted set of an identity's serials, scored by ValidBefore in unix ms
// (inventory), in shard 0 (ShardIdentity).
func (k Keys) Identity(id string) string { return k.ShardIdentity(0, id) }

// ShardIdentity is Identity in inventory shard i.
func (k Keys) ShardIdentity(i int, id string) string {
	return k.p() + ":" + TagInventoryShard(i) + ":id:" + id
}

// LiveCerts is the sorted set of the serials of every recorded certificate, scored by
// ValidBefore in unix ms and pruned up to now by every Record (inventory): "who has access
// now" across identities (GET /v1/certs without an identity). Shard 0's (ShardLiveCerts).
func (k Keys) LiveCerts() string { return k.ShardLiveCerts(0) }

// ShardLiveCerts is LiveCerts of inventory shard i: the serials recorded in that shard.
func (k Keys) ShardLiveCerts(i int) string { return k.p() + ":" + TagInventoryShard(i) + ":live" }

// Alias is the sorted set of the canonical identities recorded under an alias ("email:…",
// "username:…"), scored by how long each entry lasts in unix ms (inventory). Shard 0's
// (ShardAlias).
func (k Keys) Alias(alias string) string { return k.ShardAlias(0, alias) }

// ShardAlias is Alias in inventory shard i: the identities of that shard recorded under it.
func (k Keys) ShardAlias(i int, alias string) string {
	return k.p() + ":" + TagInventoryShard(i) + ":alias:" + alias
}

// Serial is a serial's reservation, expiring with it (serials), in shard 0 (ShardSerial).
func (k Keys) Serial(serial uint64) string { return k.ShardSerial(0, serial) }

// ShardSerial is Serial in inventory shard i: the shard is the serial's own (serial mod the
// configured shards), not its certificate's, so that two replicas with the same shard count
// reserve a serial in one key whoever the certificate is for.
func (k Keys) ShardSerial(i int, serial uint64) string {
	return k.p() + ":" + TagInventoryShard(i) + ":serial:" + strconv.FormatUint(serial, 10)
}

// InventoryShards is the number of inventory shards ever recorded in, in decimal (absent:
// one), in shard 0's tag beside its identity blocks: only raised (shards.go), by the script
// that also reads the blocks to copy into the new shards, so readers walk every shard that may
// hold records even after the configured number was lowered, and a block writer that read it
// in the same step as it wrote shard 0 writes every shard in use.
func (k Keys) InventoryShards() string { return k.p() + ":" + TagInventory + ":shards" }

// ShardsAgreed is the number of inventory shards the store is laid out in, in decimal: every
// CA replica's RedisOptions.InventoryShards (inventory.shards) must be this number, since a
// serial is reserved in the shard of the serial mod that number (ShardSerial) and replicas
// with different numbers would reserve one serial in different keys. Absent until the first
// replica that issues records its own number (SET NX); changed only by `sshca store migrate
// --inventory-shards N` (Redis.SetShards). In shard 0's tag, which every admission reads
// already.
func (k Keys) ShardsAgreed() string { return k.p() + ":" + TagInventory + ":shards-agreed" }

// Token is a spent single-use token, by the hex SHA-256 of its ID, expiring with the token
// (token ledger): a string, the ID of the spend that recorded it (16 hex digits; "1" when
// written before spends were named). One key per token, so they spread over a Cluster's slots.
func (k Keys) Token(sha256Hex string) string { return k.p() + ":token:" + sha256Hex }

// TokensRefused is a rebuild's refusal of single-use tokens, a hash {since, until} of unix ms
// (RefuseTokens): the tokens spent before the store lost its state are not known, so a token
// issued before since (by its iat), or without iat expiring before until, is refused (token
// ledger).
func (k Keys) TokensRefused() string { return k.p() + ":" + TagTokens + ":refused" }

// Keyring is the keyring document: JSON with its version (keyring).
func (k Keys) Keyring() string { return k.p() + ":" + TagKeyring }

// TrustedUserCAs is the set of user CA public keys (authorized_keys form) that bastions
// trust now (CA trust registry).
func (k Keys) TrustedUserCAs() string { return k.p() + ":trusted-user-cas" }

// CAs is the set of CA public keys that have revocation scopes, followed by bastions; a key
// stays listed after it is no longer trusted (CA trust registry, feed).
func (k Keys) CAs() string { return k.p() + ":cas" }

// HostCAs is the set of host CA public keys (authorized_keys form): their scopes hold host
// revocations (GET /v1/krl/host), so they are kept out of CAs, whose scopes make the user KRL
// (CA trust registry).
func (k Keys) HostCAs() string { return k.p() + ":host-cas" }

// ScopeEntries is a CA key's revoked entries, members "<kind>:<value>" scored by expiry in
// unix ms (revocations).
func (k Keys) ScopeEntries(fp string) string { return k.scope(fp) + "entries" }

// ScopeVersion is a CA key's scope version, bumped by every change (revocations).
func (k Keys) ScopeVersion(fp string) string { return k.scope(fp) + "version" }

// ScopeStream is a CA key's change feed, trimmed to about StreamMaxLen: fields v=<version>,
// then member=expiry pairs (feed).
func (k Keys) ScopeStream(fp string) string { return k.scope(fp) + "stream" }

// ScopeCA is the CA public key of a scope, authorized_keys form, for building KRLs.
func (k Keys) ScopeCA(fp string) string { return k.scope(fp) + "ca" }

func (k Keys) scope(fp string) string { return k.p() + ":" + TagCA(fp) + ":" }

// Blocked is the sorted set of identities (canonical names and aliases) refused new
// certificates, scored by the end of the block in unix ms (revocations). It carries the
// inventory's tag: Record checks it in the script that writes the record (layout 2). Shard
// 0's, which holds every block (ShardBlocked).
func (k Keys) Blocked() string { return k.ShardBlocked(0) }

// ShardBlocked is Blocked in inventory shard i: every block is written into every shard in
// use, shard 0 first, so that Record checks it in the script of whichever shard it writes.
func (k Keys) ShardBlocked(i int) string { return k.p() + ":" + TagInventoryShard(i) + ":blocked" }

// LegacyBlocked is layout 1's set of blocked identities, same members and scores as Blocked.
// Replicas of layout 2 write and read it too while the store's layout (StoreLayout) is 1, so
// that replicas of layout 1 still running during a rolling upgrade honour their blocks; once
// migrated it is no longer read, and it expires with its last block.
func (k Keys) LegacyBlocked() string { return k.p() + ":" + TagIdentities + ":blocked" }

// StoreLayout is the oldest layout version whose replicas may still write to the store, a
// decimal string (missing: 1, a store written by layout 1). Written by the replica that
// creates the generation record of an empty store (LayoutVersion) and by Redis.Migrate. Read
// by issuance (until the store is at layout 2), by the audit Log before it stripes (Layout)
// and by every tool that reads the audit chain (ReadLayout), so that a tool older than the
// store refuses it rather than reading a part of it.
func (k Keys) StoreLayout() string { return k.p() + ":" + TagGeneration + ":layout" }

// RevokedKeys is the sorted set of every revoked public key under any CA key, scored by
// expiry in unix ms (revocations: refused at signing time whichever CA key signs).
func (k Keys) RevokedKeys() string { return k.p() + ":" + TagKeys + ":revoked" }

// AuditLog is the audit chain's stream of entries {seq, prev, mac, rec} (audit/); stripe 0's
// (AuditStripeLog).
func (k Keys) AuditLog() string { return k.AuditStripeLog(0) }

// AuditHead is "<seq> <mac>" of the audit chain's last entry (audit/); stripe 0's.
func (k Keys) AuditHead() string { return k.AuditStripeHead(0) }

// AuditBase is the audit chain's base mark: where the chain starts (audit/); stripe 0's.
func (k Keys) AuditBase() string { return k.AuditStripeBase(0) }

// AuditStripeLog is the stream of audit chain stripe i (TagAuditStripe): entries {seq, prev,
// mac, rec}.
func (k Keys) AuditStripeLog(i int) string { return k.p() + ":" + TagAuditStripe(i) + ":log" }

// AuditStripeHead is "<seq> <mac>" of the last entry of audit chain stripe i.
func (k Keys) AuditStripeHead(i int) string { return k.p() + ":" + TagAuditStripe(i) + ":head" }

// AuditStripeBase is the base mark of audit chain stripe i: where that stripe starts in Redis.
func (k Keys) AuditStripeBase(i int) string { return k.p() + ":" + TagAuditStripe(i) + ":base" }

// AuditStripes is the number of audit chain stripes ever appended to, in decimal (absent: one),
// in stripe 0's tag: only raised (by a script, before a Log first appends to a stripe beyond
// it), so readers walk every stripe that may hold records even after the configured number
// was lowered.
func (k Keys) AuditStripes() string { return k.p() + ":" + TagAudit + ":stripes" }

// AuditSealed is the seal line (audit/seal.go) that the last completed `sshca audit archive`
// run of a striped log wrote, as a string in the archive's JSON: set after the archive file
// holding that seal is synced, in the step that trims stripe 0 (alone, before any trim, when
// the run trims no stripe 0), so every record trimmed from Redis is covered by a seal Redis
// names (and a run that another run beat to the trim records none), and an archive cut back before that
// seal no longer verifies against Redis (audit.Log.VerifyAfter). MACed with the audit key;
// absent for a log archived by sshca before stop 17, or never archived while striped.
func (k Keys) AuditSealed() string { return k.p() + ":" + TagAudit + ":sealed" }

// AuditArchiveFile names the file the last completed `sshca audit archive` run wrote, as JSON
// (audit.ArchiveFile: its absolute path as given, the host, its size once synced and the
// SHA-256 of its last line), set with the trim of stripe 0 as AuditSealed is, on every log,
// striped or not. An archive run to a file that is gone or empty, or a verify given one, while
// this names it (or names a file that no longer reaches that size and line) is refused: a
// deleted or emptied archive would otherwise read as a new file. Not MACed (it names a file,
// it vouches for no record); absent before stop 18.
func (k Keys) AuditArchiveFile() string { return k.p() + ":" + TagAudit + ":archive-file" }

// AuditOnce marks the audit record appended with this key (audit.Log.AppendOnce, the key in
// lowercase hex) as kept, a string: the record's sequence number in decimal, set by the script
// that appends the record, in the same step, and expiring ca.AuditOnceWindow later (audit/).
// In stripe 0's tag: such a record is always kept in stripe 0, so every attempt checks the
// same key.
func (k Keys) AuditOnce(once uint64) string {
	return k.p() + ":" + TagAudit + ":once:" + strconv.FormatUint(once, 16)
}

// Probe is the readiness probe's key in a hash tag ("" for the untagged one), written with a
// 5 s expiry.
func (k Keys) Probe(tag string) string {
	if tag == "" {
		return k.p() + ":probe"
	}
	return k.p() + ":" + tag + ":probe"
}

// Generation is the store's generation record, a hash {id, epoch}: a random ID written once
// when an empty store is first used, and the generation number that a rebuild raises (the
// high 16 bits of every KRL version). See mark.go.
func (k Keys) Generation() string { return k.p() + ":" + TagGeneration }

// Mark is the generation mark of a hash tag, a hash {id, epoch, n}: the store's generation
// and a counter bumped by every durable write in the tag, by the same script (mark.go).
// Bastions read a scope's mark with its snapshot.
func (k Keys) Mark(tag string) string { return k.p() + ":" + tag + ":mark" }

// Request is an access request's JSON record (ca.AccessRequest), expiring at its KeepUntil
// (requests). In the inventory's first tag, where replicas before stop 17 recorded the
// certificates issued under it in the transaction that checked it; they are now in their
// identity's shard, recorded before the request's transaction (RecordUnderRequest).
func (k Keys) Request(id string) string { return k.p() + ":" + TagInventory + ":request:" + id }

// Requests is the sorted set of access request IDs, scored by their KeepUntil in unix ms
// (requests): what every write prunes up to now. A decision moves a request's score, so lists
// page RequestOrder instead.
func (k Keys) Requests() string { return k.p() + ":" + TagInventory + ":requests" }

// RequestOrder is the sorted set of access request IDs, scored by their CreatedAt in unix ms,
// which no change moves (requests): the order GET /v1/requests pages in (ca.RequestCursor).
// Added at stop 17 beside Requests, without a layout change: replicas of stop 16 write
// Requests alone, so a listing's first page adds what Requests holds and this lacks, and takes
// out what Requests no longer holds (requestsSyncScript).
func (k Keys) RequestOrder() string { return k.p() + ":" + TagInventory + ":request-order" }

// Outbox is the stream of notification events waiting to be sent (fields "event": JSON),
// trimmed to about OutboxMaxLen; one consumer group, OutboxGroup, shares it among replicas so
// that each event is handled by one (outbox). One key, untagged: every command names it alone.
func (k Keys) Outbox() string { return k.p() + ":outbox" }

// Discovery is the hash of the last discovery report of each host (field: host name, value:
// ca.DiscoveryRecord as JSON) (discovery). One key, untagged.
func (k Keys) Discovery() string { return k.p() + ":discovery" }

// DiscoveryHosts is the sorted set of the host names of Discovery, every score 0, so that they
// are listed in byte order (ZRANGEBYLEX) a page at a time (discovery). Derived from
// Discovery's fields, and rebuilt from them when it holds fewer. One key, untagged.
func (k Keys) DiscoveryHosts() string { return k.p() + ":discovery-hosts" }

// DiscoveryDisable is the set of fingerprints an admin ordered the host to disable, until a
// report of the host no longer lists them (discovery). One key, untagged.
func (k Keys) DiscoveryDisable(host string) string { return k.p() + ":discovery:disable:" + host }

// TagRecording is the hash tag of one recorded session's keys (recordings role, on the
// recordings Redis): its record and its lines, which one script appends to together.
func TagRecording(session string) string { return "{rec:" + session + "}" }

// RecordingSession is a recorded session's record, a hash {received, rec, exp}: the lines of
// the agent's file received so far, ca.SessionRecording as JSON, and with a retention when its
// keys expire (unix ms) (recordings, recordings Redis).
func (k Keys) RecordingSession(id string) string {
	return k.p() + ":rec:" + TagRecording(id) + ":session"
}

// RecordingLines is the list of a recorded session's kept lines (recordings, recordings Redis).
func (k Keys) RecordingLines(id string) string { return k.p() + ":rec:" + TagRecording(id) + ":lines" }

// RecordingIndex is the sorted set of recorded session IDs scored by their start in unix ms,
// agent clock (recordings, recordings Redis). Untagged.
func (k Keys) RecordingIndex() string { return k.p() + ":rec:sessions" }

// RecordingHostBytes is the bytes of lines kept of a host's sessions (recordings, recordings
// Redis): what the host cap is checked against. Untagged.
func (k Keys) RecordingHostBytes(host string) string { return k.p() + ":rec:host:" + host + ":bytes" }

// RecordingExpiry is the sorted set of recorded session IDs scored by when their keys expire
// (unix ms, CA clock: the last batch received plus recordings.retention), which the prune
// walks to take expired sessions out of RecordingIndex and the host totals (recordings,
// recordings Redis). Untagged.
func (k Keys) RecordingExpiry() string { return k.p() + ":rec:expiry" }

// RecordingSizes is the hash of what each recorded session added to its host's total, fields
// "b:<id>" (bytes, decimal) and "h:<id>" (host name), kept until the session is pruned, when
// the bytes are taken off RecordingHostBytes (recordings, recordings Redis). Untagged.
func (k Keys) RecordingSizes() string { return k.p() + ":rec:sizes" }

// RecordingProof is a spent recording proof, by the hex SHA-256 of its jti, expiring with the
// proof (recordings, recordings Redis). Untagged, one key per proof.
func (k Keys) RecordingProof(sha256Hex string) string { return k.p() + ":rec:proof:" + sha256Hex }

// ConsoleSession is one session of the web console (ui), named by a one-way function of the
// browser's cookie, its value sealed with a key only that cookie yields (console). One key per
// session, untagged, expiring at the session's end.
func (k Keys) ConsoleSession(name string) string { return k.p() + ":console:session:" + name }

// ConsoleLoginKey is the key (32 random bytes) replicas of stop 15 sealed the cookie of a
// sign-in in progress with, made once and never rotated (console). Read once, as the first
// current key of ConsoleLoginKeys when that is missing, and never written by this layout.
func (k Keys) ConsoleLoginKey() string { return k.p() + ":console:login-key" }

// ConsoleLoginKeys are the keys every console replica seals the cookie of a sign-in in
// progress with (console): a hash of cur (seals), prev (still opens, for one period after a
// rotation) and at (unix ms when cur became current), rotated by the first replica that finds
// cur a period old (Redis.ConsoleLoginKeys, one script). One key, untagged, never expiring: an
// unauthenticated request never writes any other console key, and this one at most once a
// period, so starting sign-ins cannot fill Redis.
func (k Keys) ConsoleLoginKeys() string { return k.p() + ":console:login-keys" }

// ConsoleLogin marks a sign-in as finished, by a one-way function of its state, until the
// sign-in's cookie expires (console): a callback replayed with the same cookie is refused.
// Written only after the callback authenticated the user. One key per sign-in, untagged.
func (k Keys) ConsoleLogin(name string) string { return k.p() + ":console:login:" + name }

// Reader says who reads a key.
type Reader int

const (
	// ReadByCA keys are read and written by the CA service only.
	ReadByCA Reader = iota
	// ReadByBastion keys are also read by bastion agents (with read-only credentials).
	ReadByBastion
)

// KeySpec describes one kind of key: an example of it, the Keys method that builds it, its
// hash tag, the role that owns it, and whether bastions read it.
type KeySpec struct {
	Example string
	Builder string // the Keys method
	Tag     string // "" when untagged
	Role    string
	Reader  Reader
}

// The placeholders of Layout's examples.
const (
	exampleFP       = "SHA256:ab+c/DEexampleFingerprint0123456789abcdefghi"
	exampleSerial   = 1
	exampleIdentity = "https://issuer|subject"
	exampleAlias    = "email:alice@example.com"
	exampleToken    = "00ff"
	exampleRequest  = "req_abcdefghijklmnop"
	exampleHost     = "web1.example.com"
	exampleSession  = "0123456789abcdef01234567"
	exampleConsole  = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
	exampleOnce     = 0x5eed0f5eed0f5eed
)

// Layout lists every kind of key sshca writes, one example each with the placeholders filled
// in: the list that deploy/redis's ACL patterns are checked against.
func (k Keys) Layout() []KeySpec {
	ca := TagCA(exampleFP)
	return []KeySpec{
		{k.Cert(exampleSerial), "Cert", TagInventory, "inventory", ReadByCA},
		{k.Identity(exampleIdentity), "Identity", TagInventory, "inventory", ReadByCA},
		{k.LiveCerts(), "LiveCerts", TagInventory, "inventory", ReadByCA},
		{k.Alias(exampleAlias), "Alias", TagInventory, "inventory", ReadByCA},
		{k.Serial(exampleSerial), "Serial", TagInventory, "serials", ReadByCA},
		{k.Token(exampleToken), "Token", "", "tokens", ReadByCA},
		{k.TokensRefused(), "TokensRefused", TagTokens, "tokens", ReadByCA},
		{k.Keyring(), "Keyring", TagKeyring, "keyring", ReadByCA},
		{k.TrustedUserCAs(), "TrustedUserCAs", "", "trust", ReadByBastion},
		{k.CAs(), "CAs", "", "trust", ReadByBastion},
		{k.HostCAs(), "HostCAs", "", "trust", ReadByCA},
		{k.ScopeEntries(exampleFP), "ScopeEntries", ca, "revocations", ReadByBastion},
		{k.ScopeVersion(exampleFP), "ScopeVersion", ca, "revocations", ReadByBastion},
		{k.ScopeCA(exampleFP), "ScopeCA", ca, "revocations", ReadByBastion},
		{k.ScopeStream(exampleFP), "ScopeStream", ca, "feed", ReadByBastion},
		{k.Blocked(), "Blocked", TagInventory, "revocations", ReadByCA},
		{k.ShardCert(1, exampleSerial), "ShardCert", TagInventoryShard(1), "inventory", ReadByCA},
		{k.ShardIdentity(1, exampleIdentity), "ShardIdentity", TagInventoryShard(1), "inventory", ReadByCA},
		{k.ShardLiveCerts(1), "ShardLiveCerts", TagInventoryShard(1), "inventory", ReadByCA},
		{k.ShardAlias(1, exampleAlias), "ShardAlias", TagInventoryShard(1), "inventory", ReadByCA},
		{k.ShardSerial(1, exampleSerial), "ShardSerial", TagInventoryShard(1), "serials", ReadByCA},
		{k.ShardBlocked(1), "ShardBlocked", TagInventoryShard(1), "revocations", ReadByCA},
		{k.InventoryShards(), "InventoryShards", TagInventory, "inventory", ReadByCA},
		{k.ShardsAgreed(), "ShardsAgreed", TagInventory, "layout", ReadByCA},
		{k.Mark(TagInventoryShard(1)), "Mark", TagInventoryShard(1), "mark", ReadByCA},
		{k.Probe(TagInventoryShard(1)), "Probe", TagInventoryShard(1), "probe", ReadByCA},
		{k.Mark(TagTokensShard(1)), "Mark", TagTokensShard(1), "mark", ReadByCA},
		{k.Probe(TagTokensShard(1)), "Probe", TagTokensShard(1), "probe", ReadByCA},
		{k.LegacyBlocked(), "LegacyBlocked", TagIdentities, "revocations", ReadByCA},
		{k.StoreLayout(), "StoreLayout", TagGeneration, "layout", ReadByCA},
		{k.RevokedKeys(), "RevokedKeys", TagKeys, "revocations", ReadByCA},
		{k.AuditLog(), "AuditLog", TagAudit, "audit", ReadByCA},
		{k.AuditHead(), "AuditHead", TagAudit, "audit", ReadByCA},
		{k.AuditBase(), "AuditBase", TagAudit, "audit", ReadByCA},
		{k.AuditStripes(), "AuditStripes", TagAudit, "audit", ReadByCA},
		{k.AuditOnce(exampleOnce), "AuditOnce", TagAudit, "audit", ReadByCA},
		{k.AuditSealed(), "AuditSealed", TagAudit, "audit", ReadByCA},
		{k.AuditArchiveFile(), "AuditArchiveFile", TagAudit, "audit", ReadByCA},
		{k.AuditStripeLog(1), "AuditStripeLog", TagAuditStripe(1), "audit", ReadByCA},
		{k.AuditStripeHead(1), "AuditStripeHead", TagAuditStripe(1), "audit", ReadByCA},
		{k.AuditStripeBase(1), "AuditStripeBase", TagAuditStripe(1), "audit", ReadByCA},
		{k.Probe(TagAuditStripe(1)), "Probe", TagAuditStripe(1), "probe", ReadByCA},
		{k.Mark(TagAuditStripe(1)), "Mark", TagAuditStripe(1), "mark", ReadByCA},
		{k.Probe(TagInventory), "Probe", TagInventory, "probe", ReadByCA},
		{k.Probe(TagAudit), "Probe", TagAudit, "probe", ReadByCA},
		{k.Probe(TagIdentities), "Probe", TagIdentities, "probe", ReadByCA},
		{k.Probe(TagKeys), "Probe", TagKeys, "probe", ReadByCA},
		{k.Probe(TagKeyring), "Probe", TagKeyring, "probe", ReadByCA},
		{k.Probe(TagTokens), "Probe", TagTokens, "probe", ReadByCA},
		{k.Probe(TagGeneration), "Probe", TagGeneration, "probe", ReadByCA},
		{k.Probe(ca), "Probe", ca, "probe", ReadByCA},
		{k.Probe(""), "Probe", "", "probe", ReadByCA},
		{k.Generation(), "Generation", TagGeneration, "mark", ReadByCA},
		{k.Mark(ca), "Mark", ca, "mark", ReadByBastion},
		{k.Mark(TagInventory), "Mark", TagInventory, "mark", ReadByCA},
		{k.Mark(TagIdentities), "Mark", TagIdentities, "mark", ReadByCA},
		{k.Mark(TagKeys), "Mark", TagKeys, "mark", ReadByCA},
		{k.Mark(TagKeyring), "Mark", TagKeyring, "mark", ReadByCA},
		{k.Request(exampleRequest), "Request", TagInventory, "requests", ReadByCA},
		{k.Requests(), "Requests", TagInventory, "requests", ReadByCA},
		{k.RequestOrder(), "RequestOrder", TagInventory, "requests", ReadByCA},
		{k.Outbox(), "Outbox", "", "outbox", ReadByCA},
		{k.Discovery(), "Discovery", "", "discovery", ReadByCA},
		{k.DiscoveryHosts(), "DiscoveryHosts", "", "discovery", ReadByCA},
		{k.Mark(TagAudit), "Mark", TagAudit, "mark", ReadByCA},
		{k.Mark(TagTokens), "Mark", TagTokens, "mark", ReadByCA},
		{k.DiscoveryDisable(exampleHost), "DiscoveryDisable", "", "discovery", ReadByCA},
		{k.RecordingSession(exampleSession), "RecordingSession", TagRecording(exampleSession), "recordings", ReadByCA},
		{k.RecordingLines(exampleSession), "RecordingLines", TagRecording(exampleSession), "recordings", ReadByCA},
		{k.RecordingIndex(), "RecordingIndex", "", "recordings", ReadByCA},
		{k.RecordingHostBytes(exampleHost), "RecordingHostBytes", "", "recordings", ReadByCA},
		{k.RecordingProof(exampleToken), "RecordingProof", "", "recordings", ReadByCA},
		{k.RecordingExpiry(), "RecordingExpiry", "", "recordings", ReadByCA},
		{k.RecordingSizes(), "RecordingSizes", "", "recordings", ReadByCA},
		{k.ConsoleSession(exampleConsole), "ConsoleSession", "", "console", ReadByCA},
		{k.ConsoleLoginKey(), "ConsoleLoginKey", "", "console", ReadByCA},
		{k.ConsoleLoginKeys(), "ConsoleLoginKeys", "", "console", ReadByCA},
		{k.ConsoleLogin(exampleConsole), "ConsoleLogin", "", "console", ReadByCA},
	}
}
