package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/services"
	"github.com/sshca/sshca/store"
)

// Every Redis client sshca builds goes through redisBounds, so that each one honours the
// deadline of the request it serves. Without ContextTimeoutEnabled go-redis ignores context
// deadlines and waits for its own read timeout (3 s by default) up to 3 retries: a stalled
// Redis then held an issue request for the whole stall. With it, a command ends at the
// context's deadline; the timeouts below bound the calls that have none (background loops,
// the CLI) to about one request deadline each.
//
// go-redis retries nothing (MaxRetries -1; on a Cluster also newUniversalClient's hook, since
// the Cluster client's own loop ignores MaxRetries). Its retry sends a command or pipeline again after a
// read timeout, when Redis may have run the first one and only its answer is late: the token
// ledger's SET NX then found the request's own token spent and answered "token already used"
// for a token used once (a 1.1 s stall gave that 401; TestFaultsStalledRedis), and the audit
// append, the inventory record and a serial reservation ran twice. A command whose answer did
// not come is an unknown outcome, answered 503; the callers that may repeat a command decide
// for themselves (background loops back off and read again; the authority retries the audit
// record of a certificate it signed). A connection Redis closed while idle is not a retry's
// business either: the pool checks a connection before handing it out.
type redisBounds struct {
	dial, read, write, pool time.Duration
}

// newRedisBounds derives the bounds from the request deadline d; a configured dial, read or
// write timeout is kept when it is shorter than d, capped at d otherwise. With no retry to
// leave room for, a command may use the whole deadline: a Redis that answers after 1.5 s of a
// 2 s deadline gives a certificate, not a 503 at half the deadline (the request's own
// deadline still ends it first).
func newRedisBounds(d, dial, read, write time.Duration) redisBounds {
	if d <= 0 {
		d = services.DefaultRequestTimeout
	}
	capped := func(v time.Duration) time.Duration {
		if v <= 0 || v > d {
			return d
		}
		return v
	}
	return redisBounds{dial: capped(dial), read: capped(read), write: capped(write), pool: d}
}

const (
	// redisMaxRetries turns go-redis's own retries off (see redisBounds).
	redisMaxRetries = -1
	redisMinBackoff = 8 * time.Millisecond
	redisMaxBackoff = 64 * time.Millisecond
)

// universal applies the bounds to options for redis.NewUniversalClient (serve).
func (b redisBounds) universal(o *redis.UniversalOptions) *redis.UniversalOptions {
	o.ContextTimeoutEnabled = true
	o.DialTimeout, o.ReadTimeout, o.WriteTimeout, o.PoolTimeout = b.dial, b.read, b.write, b.pool
	o.MaxRetries, o.MinRetryBackoff, o.MaxRetryBackoff = redisMaxRetries, redisMinBackoff, redisMaxBackoff
	return o
}

// newUniversalClient is redis.NewUniversalClient(o) (o made by redisBounds.universal) that
// sends no command or pipeline twice. MaxRetries -1 is not enough on a Redis Cluster: the
// Cluster client's own loop (ClusterOptions.MaxRedirects, 3 by default) sends a command or
// pipeline again after a lost answer (a closed connection, a read timeout), as it follows
// MOVED and ASK, so an INCR whose answer was dropped ran twice and answered success
// (TestClusterSendsNothingTwice). Each node client of a Cluster client gets noResend; MOVED,
// ASK and every other answer of Redis's are still followed, and a connection that was never
// made (a dial error) is still tried again.
func newUniversalClient(o *redis.UniversalOptions) redis.UniversalClient {
	c := redis.NewUniversalClient(o)
	guardResends(c)
	return c
}

// guardResends installs noResend on every node client of c when c is a Cluster client (a
// single server's or Sentinel's client retries nothing with MaxRetries -1).
func guardResends(c redis.UniversalClient) {
	if cc, ok := c.(*redis.ClusterClient); ok {
		cc.OnNewNode(func(n *redis.Client) { n.AddHook(noResend{}) })
	}
}

// noResend refuses to send a command (or a pipeline holding one) that a Cluster client's
// earlier attempt sent and whose answer was lost: Redis may have run it.
type noResend struct{}

func (noResend) DialHook(next redis.DialHook) redis.DialHook { return next }

func (noResend) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if err := answerLost(cmd); err != nil {
			cmd.SetErr(err)
			return err
		}
		return next(ctx, cmd)
	}
}

func (noResend) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		var lost error
		for _, c := range cmds {
			if err := answerLost(c); err != nil {
				c.SetErr(err)
				lost = err
			}
		}
		if lost != nil {
			return lost
		}
		return next(ctx, cmds)
	}
}

// answerLostError is the error of a command not sent again after its answer was lost. It does
// not unwrap to the transport error, which go-redis's Cluster loop would take as a reason to
// try once more.
type answerLostError struct{ cause error }

func (e *answerLostError) Error() string {
	return "redis: the answer was lost (" + e.cause.Error() + "); not sent again, since Redis may have run it"
}

// answerLost is an answerLostError when cmd holds the error of an earlier attempt that sent it
// and got no answer (end of stream, a read or write failure, a timeout), nil before its first
// attempt, after an answer of Redis's (MOVED, ASK, TRYAGAIN, any error reply) and after a
// connection that was never made.
func answerLost(cmd redis.Cmder) error {
	err := cmd.Err()
	var rerr redis.Error
	var op *net.OpError
	var ne net.Error
	switch {
	case err == nil, errors.As(err, &rerr), errors.As(err, &op) && op.Op == "dial":
		return nil
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.As(err, &op), errors.As(err, &ne) && ne.Timeout():
		return &answerLostError{cause: err}
	}
	return nil
}

// single applies the bounds to options for redis.NewClient (dev, the bastion agent, the CLI).
func (b redisBounds) single(o *redis.Options) *redis.Options {
	o.ContextTimeoutEnabled = true
	o.DialTimeout, o.ReadTimeout, o.WriteTimeout, o.PoolTimeout = b.dial, b.read, b.write, b.pool
	o.MaxRetries, o.MinRetryBackoff, o.MaxRetryBackoff = redisMaxRetries, redisMinBackoff, redisMaxBackoff
	return o
}

// redisProbe is the Redis readiness check. It writes (SET <key> 1, expiring in 5 s) one probe key in
// every hash tag that holds durable state, so that readiness is false whenever a write that
// matters would fail: Redis at maxmemory with noeviction answers PING and reads but refuses
// every write, a replica after a failover refuses writes, and on a Cluster each tag may live
// on another node. The probe keys expire by themselves and match the sshca user's ACL
// (~sshca:* +@write).
type redisProbe struct {
	rdb    redis.UniversalClient
	prefix string
	// caKeys are the CA keys whose revocation scopes ({ca:<fingerprint>}) are probed.
	caKeys func() []ssh.PublicKey
	// auditStripes is audit.stripes: the tags of stripes beyond the first ({audit:i}) are
	// probed too, each possibly on another Cluster master.
	auditStripes int
	// inventoryShards is inventory.shards: the tags of shards beyond the first
	// ({inventory:i}, and the token ledger's {tokens:i}) are probed too.
	inventoryShards int
	// sentinels is the configuration section of a Redis behind Sentinels ("redis"), "" for
	// others: a probe the Sentinels refused names the section's Sentinel credentials.
	sentinels string
}

// redisProbeTags are the hash tags of durable state (store/keys.go), besides one
// {ca:<fingerprint>} per CA key. Spent tokens and the CA sets carry no tag: the untagged probe
// key stands for them.
var redisProbeTags = store.DurableTags

func (p redisProbe) keys() []string {
	var out []string
	keys := store.Keys{Prefix: p.prefix}
	for _, tag := range redisProbeTags {
		out = append(out, keys.Probe(tag))
	}
	for i := 1; i < p.auditStripes; i++ {
		out = append(out, keys.Probe(store.TagAuditStripe(i)))
	}
	for i := 1; i < p.inventoryShards; i++ {
		out = append(out, keys.Probe(store.TagInventoryShard(i)), keys.Probe(store.TagTokensShard(i)))
	}
	seen := map[string]bool{}
	if p.caKeys != nil {
		for _, k := range p.caKeys() {
			fp := ssh.FingerprintSHA256(k)
			if !seen[fp] {
				seen[fp] = true
				out = append(out, keys.Probe(store.TagCA(fp)))
			}
		}
	}
	return append(out, keys.Probe(""))
}

// Check writes every probe key in one pipeline and names the keys whose write failed.
func (p redisProbe) Check(ctx context.Context) error {
	keys := p.keys()
	cmds, err := p.rdb.Pipelined(ctx, func(pl redis.Pipeliner) error {
		for _, k := range keys {
			pl.Set(ctx, k, "1", 5*time.Second)
		}
		return nil
	})
	if err == nil {
		return nil
	}
	if p.sentinels != "" && sentinelsRefused(err) {
		return sentinelsRefusedConfig("redis", p.sentinels, err)
	}
	var failed []string
	for i, c := range cmds {
		if c.Err() != nil {
			failed = append(failed, keys[i])
		}
	}
	if len(failed) == 0 {
		return fmt.Errorf("redis: write probe: %w", err)
	}
	return fmt.Errorf("redis: write probe %s refused: %w", strings.Join(failed, ", "), err)
}
