package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/ca"
)

// The token ledger: single-use tokens spent (ca.TokenLedger), one key per token
// (Keys.Token), so they spread over a Redis Cluster's slots.

var (
	_ ca.TokenLedger = (*Redis)(nil)
	_ ca.TokenLedger = (*Memory)(nil)
)

// tokenScript checks and bumps the token ledger's mark and reads the rebuild's refusal: KEYS
// the mark, the refusal (Keys.TokensRefused); ARGV the mark's id, epoch, seen. Answers the
// mark's {status, id, epoch, n}, then the refusal's since and until ("" when none).
var tokenScript = redis.NewScript(markLua + `
local r = bump(KEYS[1], mark(KEYS[1], ARGV[1], ARGV[2], ARGV[3]))
local f = redis.call('HMGET', KEYS[2], 'since', 'until')
table.insert(r, f[1] or '')
table.insert(r, f[2] or '')
return r
`)

// tokenShardScript is tokenScript for a token ledger shard beyond the first (TagTokensShard):
// KEYS its mark; ARGV the mark's id, epoch, seen. Answers the mark's {status, id, epoch, n}; the
// rebuild's refusal, in shard 0's tag, is read beside it (queueToken).
var tokenShardScript = redis.NewScript(markLua + `
return bump(KEYS[1], mark(KEYS[1], ARGV[1], ARGV[2], ARGV[3]))
`)

// tokenShardOf is the token ledger shard of a token by the SHA-256 of its ID (the hash its key
// is named by, Keys.Token): its first four bytes mod the configured shards.
func (r *Redis) tokenShardOf(sum [sha256.Size]byte) int {
	if r.invShards <= 1 {
		return 0
	}
	return int(binary.BigEndian.Uint32(sum[:4]) % uint32(r.invShards))
}

// UseToken records a single-use token until it expires (SET NX): false when it was used
// before, or when a rebuild's refusal (RefuseTokens) covers it: a token issued (its iat)
// before the rebuild, or, when issued is zero (a token without iat), one that expires before
// the refusal ends. It is one round trip: the script on the token ledger's tag checks and
// bumps its generation mark (Keys.Mark(TagTokens)) and reads the refusal, and the SET NX goes
// beside it in the same pipeline (the tokens themselves are spread over a Cluster's slots).
// A ledger found to have lost its state answers ErrStateLost: the tokens spent before the
// loss are not known, so no token is taken until a rebuild refuses them.
func (r *Redis) UseToken(ctx context.Context, id string, issued, until time.Time) (bool, error) {
	if !until.After(r.now()) {
		return false, nil // expired tokens never get this far; refuse rather than store forever
	}
	sum := sha256.Sum256([]byte(id))
	shard := r.tokenShardOf(sum)
	mw, err := r.BeginMarked(ctx, r.tokenTags[shard])
	if err != nil {
		return false, fmt.Errorf("store: token ledger: %w", err)
	}
	var tc *tokenCmds
	_, err = r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		tc = r.queueToken(ctx, p, mw, shard, sum, issued, until)
		return nil
	})
	// Each command's own error is read by tokenResult (a NOSCRIPT is retried there).
	if err != nil && !errors.Is(err, redis.Nil) && !isNoScript(err) {
		return false, fmt.Errorf("store: token ledger: %w", err)
	}
	return r.tokenResult(ctx, tc)
}

// tokenCmds are the commands of UseToken, queued on a pipeline (queueToken) and answered by
// tokenResult once it ran: UseToken sends them alone, Admit beside the refusal check's reads.
type tokenCmds struct {
	mw            *MarkedWrite
	marked        *redis.Cmd
	set           *redis.StatusCmd
	spend         string // the value this spend records (spendID)
	issued, until time.Time
	keys          []string      // the script's, for its retry by body (tokenResult)
	script        *redis.Script // tokenScript, or tokenShardScript beyond shard 0
	// refused reads the rebuild's refusal beside a spend beyond shard 0 (nil in shard 0, whose
	// script reads it).
	refused *redis.SliceCmd
}

// queueToken queues the ledger's script (its mark, checked and bumped, and the rebuild's
// refusal) and the SET NX of the token on p. The script goes by its SHA (EVALSHA): its body,
// about a kilobyte, is neither sent nor hashed by Redis on every certificate; a server that
// does not have it yet answers NOSCRIPT, and tokenResult runs it again by body.
//
// Beyond shard 0 (RedisOptions.InventoryShards) the script only checks and bumps that shard's
// mark, and an HMGET of the refusal in shard 0's tag goes beside it: a refusal written once is
// read by every shard, whatever shards the rebuild knew of.
// sum is the SHA-256 of the token's ID, computed once by the caller (it also picks the shard).
func (r *Redis) queueToken(ctx context.Context, p redis.Pipeliner, mw *MarkedWrite, shard int, sum [sha256.Size]byte, issued, until time.Time) *tokenCmds {
	spend := spendID()
	if shard > 0 {
		keys := []string{r.mark(r.tokenTags[shard])}
		return &tokenCmds{
			mw: mw, script: tokenShardScript, keys: keys,
			marked:  tokenShardScript.EvalSha(ctx, p, keys, mw.Args()...),
			refused: p.HMGet(ctx, r.fixed.tokensRefused, "since", "until"),
			set:     p.SetArgs(ctx, r.keys.Token(hex.EncodeToString(sum[:])), spend, redis.SetArgs{Mode: "NX", Get: true, ExpireAt: until}),
			spend:   spend, issued: issued, until: until,
		}
	}
	keys := []string{r.mark(TagTokens), r.fixed.tokensRefused}
	return &tokenCmds{
		mw:     mw,
		script: tokenScript,
		marked: tokenScript.EvalSha(ctx, p, keys, mw.Args()...),
		// SET NX GET: the token's record holds this spend's ID, and the answer is the record
		// that was there before (nil when none was). go-redis sends a pipeline again when its
		// reply is lost or late (a read timeout, a closed connection), so the record found can
		// be this very spend's: the token is then fresh, not used (TestTokenSpendSurvivesLostReply).
		set:    p.SetArgs(ctx, r.keys.Token(hex.EncodeToString(sum[:])), spend, redis.SetArgs{Mode: "NX", Get: true, ExpireAt: until}),
		spend:  spend,
		issued: issued, until: until, keys: keys,
	}
}

// spendID names one spend of a token in its record: 16 random hex digits (crypto/rand), so
// that no other spend, of this replica or another, records the same.
func spendID() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (it crashes the program instead)
	return hex.EncodeToString(b[:])
}

// isNoScript: the server does not have the script its SHA names (a restart, a failover, SCRIPT
// FLUSH).
func isNoScript(err error) bool {
	return err != nil && redis.HasErrorPrefix(err, "NOSCRIPT")
}

// tokenResult is UseToken's answer from the commands that queueToken queued, once they ran.
// A script the server did not have (NOSCRIPT) is run again, alone, by its body: it only checks
// and bumps the ledger's mark and reads the rebuild's refusal, so running it after the token's
// SET NX answers the same; the SET NX, which spends the token, ran once.
func (r *Redis) tokenResult(ctx context.Context, tc *tokenCmds) (bool, error) {
	res, err := tc.marked.Slice()
	if isNoScript(err) {
		res, err = tc.script.Eval(ctx, r.rdb, tc.keys, tc.mw.Args()...).Slice()
	}
	if err != nil {
		return false, fmt.Errorf("store: token ledger: %w", err)
	}
	if tc.refused != nil {
		// A shard beyond the first: the refusal was read beside the script.
		v, err := tc.refused.Result()
		if err != nil {
			return false, fmt.Errorf("store: token ledger: read the rebuild's refusal: %w", err)
		}
		if len(v) != 2 {
			return false, fmt.Errorf("store: token ledger: read the rebuild's refusal: unexpected answer %v", v)
		}
		res = append(res, v[0], v[1])
	}
	if len(res) != 6 {
		return false, fmt.Errorf("store: token ledger: unexpected answer %v", res)
	}
	if err := tc.mw.Finish(res[:4]); err != nil {
		return false, fmt.Errorf("store: token ledger: %w", err)
	}
	if err := r.witness.Lost(); err != nil {
		return false, err
	}
	if refusedToken(res[4], res[5], tc.issued, tc.until) {
		return false, nil
	}
	// No record before (nil): this spend recorded the token. A record of this spend's own: a
	// pipeline sent again after its reply was lost, whose first run recorded it. Any other
	// record ("1" before records named their spend): the token was used.
	before, err := tc.set.Result()
	if errors.Is(err, redis.Nil) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("store: token ledger: %w", err)
	}
	return before == tc.spend, nil
}

// refusedToken: the rebuild's refusal (since, until: unix ms as strings, "" when there is
// none) covers a token issued at issued (zero: unknown) that expires at until.
func refusedToken(sinceV, untilV any, issued, exp time.Time) bool {
	if !issued.IsZero() {
		return issued.UnixMilli() < unixMS(sinceV)
	}
	return exp.UnixMilli() < unixMS(untilV)
}

// unixMS reads a script's unix ms answer, a string (or a Lua number); "" (none) and anything
// else are 0.
func unixMS(v any) int64 {
	switch v := v.(type) {
	case int64:
		return v
	case string:
		if v == "" {
			return 0 // no refusal, the usual answer: a parse would fail and allocate its error
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		return n
	}
	return 0
}

// UseToken records a single-use token until it expires: false when it was used before.
func (m *Memory) UseToken(_ context.Context, id string, _, until time.Time) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.useTokenLocked(id, until, ""), nil
}

// useTokenLocked records the token id until until as spent by spend: false when a record of
// it that has not expired is there, or when it has expired itself.
func (m *Memory) useTokenLocked(id string, until time.Time, spend string) bool {
	now := m.now()
	if m.tokens == nil {
		m.tokens = map[string]memToken{}
	}
	if t, ok := m.tokens[id]; ok && t.until.After(now) {
		return false
	}
	if !until.After(now) {
		return false
	}
	m.tokens[id] = memToken{until: until, spend: spend}
	return true
}

// memToken is Memory's record of a spent token: until when, and which spend wrote it.
type memToken struct {
	until time.Time
	spend string // spendID, "" for UseToken's
}

// returnTokenScript is ReturnToken's compare and delete: KEYS the token's record (Keys.Token);
// ARGV the spend that must still hold it. Answers 1 when it deleted the record, 0 when the
// record is another spend's or gone (expired with its token, or a store that lost its state).
var returnTokenScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)

// ReturnToken gives back the single-use token t spent by the admission whose spend was spent
// (ca.Admitted.Spent): its record is deleted only while it still holds that spend, in one
// script, so a record written by any other spend, of this replica or another, stays. true
// when this call deleted it; false (another spend's record, or none: the token expired, or
// the store lost its state and a rebuild refuses the tokens of before) and any error leave the
// token spent as far as the caller knows. The delete is not waited for by replicas
// (RedisOptions.WaitReplicas): a failover that loses it leaves the token spent, which fails
// closed. A script the server does not have is sent again by body (redis.Script.Run).
func (r *Redis) ReturnToken(ctx context.Context, t ca.TokenUse, spent string) (bool, error) {
	if !t.SingleUse || t.ID == "" || spent == "" {
		return false, nil
	}
	sum := sha256.Sum256([]byte(t.ID))
	n, err := returnTokenScript.Run(ctx, r.rdb, []string{r.keys.Token(hex.EncodeToString(sum[:]))}, spent).Int()
	if err != nil {
		return false, fmt.Errorf("store: token ledger: give the token back: %w", err)
	}
	return n == 1, nil
}

// ReturnToken gives back t when its record is still the spend named spent (see Redis.ReturnToken).
func (m *Memory) ReturnToken(_ context.Context, t ca.TokenUse, spent string) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	cur, ok := m.tokens[t.ID]
	if !t.SingleUse || spent == "" || !ok || cur.spend != spent || !cur.until.After(m.now()) {
		return false, nil
	}
	delete(m.tokens, t.ID)
	return true, nil
}
