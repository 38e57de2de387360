package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/ca"
)

// Acknowledged writes on a replicated Redis (Sentinel, or a Cluster with replicas).
//
// Redis replicates asynchronously: a master that answered a write and then died may take the
// write with it, and the replica Sentinel promotes never had it. For the writes that must not
// be lost (revocations, identity blocks, revoked keys, lifts, the keyring document) the store
// sends `WAIT numreplicas timeout` right behind the write, in one non-transactional pipeline
// on the connection that carried the write: WAIT waits for the replication offset of the
// calling connection's last write, so a WAIT on another pooled connection would wait for
// nothing and answer at once. Because a master's replication stream is one ordered stream,
// a replica that acknowledged the write also has every write the master applied before it
// (on a single master or Sentinel: the audit record that authorized a revocation, appended
// before it, is covered by the revocation's WAIT).
//
// A replica acknowledges what it has applied in memory, not what it has written to disk:
// Redis 7.0 has no WAITAOF, so a replica that crashes with the master loses it too. WAIT
// protects against losing one node, not all of them at once.
//
// Not waited for: the token ledger, serial reservations, the inventory and the audit chain
// written by issuance. Issuance keeps running on a master that has lost its replicas, and a
// failover may lose the last of those writes (the replication lag at the crash, on a healthy
// loopback link well under a millisecond): a single-use token spent in that window is not
// spent on the promoted master and can be presented once more until it expires (docs/scaling.md).

// DefaultWaitTimeout bounds a WAIT when RedisOptions.WaitTimeout is not set.
const DefaultWaitTimeout = time.Second

// ErrNotReplicated is the cause of a waited write that the master applied but that fewer
// replicas than RedisOptions.WaitReplicas confirmed within the timeout: errors.Is(err,
// ErrNotReplicated). The error itself is a ca.Error of KindUnavailable (a 503) whose message
// says what is known: the change is in force on the master, and a failover before the
// replicas catch up would lose it; sending it again is safe (every waited write is
// idempotent).
var ErrNotReplicated = errors.New("store: not confirmed by the replicas")

func notReplicated(op string, confirmed, required int, timeout time.Duration) error {
	return &ca.Error{Kind: ca.KindUnavailable, Err: ErrNotReplicated, Msg: fmt.Sprintf(
		"the %s is written on the Redis master and in force there, but only %d of the %d replicas that may be promoted confirmed it within %s; a failover now would lose it, so it is not acknowledged: send it again (it is idempotent) once Redis replication is healthy",
		op, confirmed, required, timeout)}
}

// waitArgs is the WAIT command for this store, nil when it waits for no replica. The timeout
// is WaitTimeout, cut to half of what ctx leaves, so that the answer comes back within the
// request's deadline.
func (r *Redis) waitArgs(ctx context.Context) (args []any, timeout time.Duration) {
	if r.waitReplicas <= 0 {
		return nil, 0
	}
	timeout = r.waitTimeout
	if d, ok := ctx.Deadline(); ok {
		if left := time.Until(d) / 2; left < timeout {
			timeout = left
		}
	}
	// WAIT 0 ms would block forever.
	ms := max(timeout.Milliseconds(), 1)
	return []any{"WAIT", r.waitReplicas, ms}, time.Duration(ms) * time.Millisecond
}

// checkWait turns WAIT's answer into nil, or the refusal of op (ErrNotReplicated).
func (r *Redis) checkWait(op string, cmd *redis.Cmd, timeout time.Duration) error {
	n, err := cmd.Int()
	if err != nil {
		return fmt.Errorf("store: %s: wait for replicas: %w", op, err)
	}
	if n < r.waitReplicas {
		return notReplicated(op, n, r.waitReplicas, timeout)
	}
	return nil
}

// masterFor is the client whose pipeline reaches the master that holds key on one connection:
// the store's own client on a single server or Sentinel, the node's on a Cluster (a Cluster
// client would send a keyless WAIT to any node).
func (r *Redis) masterFor(ctx context.Context, key string) (redis.Cmdable, error) {
	if cc, ok := r.rdb.(*redis.ClusterClient); ok {
		return cc.MasterForKey(ctx, key)
	}
	return r.rdb, nil
}

// runWaited runs s on keys (in tag), then WAIT, in one pipeline on the connection of the
// master that holds keys, and answers the script's reply. The script goes by its SHA first and
// by its body when the server does not have it yet (NOSCRIPT: a master just promoted, or
// restarted). Once the replicas have it, so have they every write in tag that the witness saw
// before: those marks are confirmed.
func (r *Redis) runWaited(ctx context.Context, op, tag string, s *redis.Script, keys []string, args []any) ([]any, error) {
	c, err := r.masterFor(ctx, keys[0])
	if err != nil {
		return nil, err
	}
	g, seen, pending := r.witness.pendingMark(tag)
	wait, timeout := r.waitArgs(ctx)
	var res *redis.Cmd
	var w *redis.Cmd
	send := func(body bool) error {
		_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
			if body {
				res = s.Eval(ctx, p, keys, args...)
			} else {
				res = s.EvalSha(ctx, p, keys, args...)
			}
			w = p.Do(ctx, wait...)
			return nil
		})
		return err
	}
	if err := send(false); err != nil && res.Err() != nil && strings.HasPrefix(res.Err().Error(), "NOSCRIPT") {
		_ = send(true) // its error is the commands'
	}
	out, err := res.Slice()
	if err != nil {
		return nil, err
	}
	if err := r.checkWait(op, w, timeout); err != nil {
		return nil, err
	}
	if pending {
		r.witness.confirmReplicated(tag, g, seen)
	}
	return out, nil
}

// ConfirmReplicated makes the replicas confirm what the witness has seen of every tag's mark
// and not yet had confirmed: per tag, a write in the tag (its probe key, expiring in 5 s) and
// WAIT, in one pipeline on the connection of the tag's master. Until a mark is confirmed, a
// failover to a replica without it is taken as replication lag; once it is, as lost state.
// sshca serve runs it every second, so that a failover losing more than about that much of
// issuance's writes fails closed (docs/scaling.md). Without WaitReplicas it does nothing.
func (r *Redis) ConfirmReplicated(ctx context.Context) error {
	if r.waitReplicas <= 0 {
		return nil
	}
	r.witness.mu.Lock()
	tags := make([]string, 0, len(r.witness.pending))
	for tag, n := range r.witness.pending {
		if cur, ok := r.witness.marks[tag]; !ok || n > cur {
			tags = append(tags, tag)
		}
	}
	r.witness.mu.Unlock()
	var errs []error
	for _, tag := range tags {
		g, seen, _ := r.witness.pendingMark(tag)
		probe := r.keys.Probe(tag)
		c, err := r.masterFor(ctx, probe)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		wait, timeout := r.waitArgs(ctx)
		var w *redis.Cmd
		if _, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
			p.Set(ctx, probe, "1", 5*time.Second)
			w = p.Do(ctx, wait...)
			return nil
		}); err != nil {
			errs = append(errs, fmt.Errorf("store: confirm %s: %w", tag, err))
			continue
		}
		if err := r.checkWait("confirmation of "+tag, w, timeout); err != nil {
			errs = append(errs, err)
			continue
		}
		r.witness.confirmReplicated(tag, g, seen)
	}
	return errors.Join(errs...)
}
