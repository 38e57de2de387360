package store

import (
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"reflect"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
)

// Admission: the signing-time refusal check, the spending of a single-use token and the
// reservation of the serial in one round trip (ca.Admission).

var (
	_ ca.Admission = (*Redis)(nil)
	_ ca.Admission = (*Memory)(nil)
)

// Admit is Refused, UseToken for a single-use token and ReserveSerial for a serial, in one
// pipeline: the reads of the refusal check (and the marks of every tag issuance touches), the
// token ledger's script and SET NX, and the serial's SET NX travel together. The token is spent
// and the serial reserved even when the answer is a refusal (see ca.Admission); an expired
// single-use token is not fresh and is not written. Admitted.Spent names the spend when this
// admission recorded the token, also beside an error that the store read in the same round
// trip (the CA key banned, another number of inventory shards), which is not the caller's
// fault: the caller gives the token back (ReturnToken). With q.Record, recordNewScript runs in the
// same pipeline, in the shard of the record's identity: recorded unless blocked or its serial
// is held by another record (ca.AdmissionRequest.Record); a block it finds is the refusal.
func (r *Redis) Admit(ctx context.Context, q ca.AdmissionRequest) (ca.Admitted, error) {
	g, err := r.generation(ctx)
	if err != nil {
		return ca.Admitted{}, fmt.Errorf("store: check: %w", err)
	}
	// The first use of inventory shards (once per process and generation: the count raised,
	// the blocks copied) before anything is spent or signed, so that a failure of it is a
	// refusal here, not by Record after a signature and a spent token.
	if err := r.ensureShards(ctx, g); err != nil {
		return ca.Admitted{}, fmt.Errorf("store: check: %w", err)
	}
	// The scope's fingerprint as the signing key computed it once, not once per certificate.
	caFP := q.CAFingerprint
	if caFP == "" {
		caFP = ssh.FingerprintSHA256(q.CAKey)
	}
	t := q.Token
	spend := t.SingleUse && t.Expiry.After(r.now())
	var mw *MarkedWrite
	shard := 0
	var sum [sha256.Size]byte
	if spend {
		var err error
		sum = sha256.Sum256([]byte(t.ID))
		shard = r.tokenShardOf(sum)
		if mw, err = r.BeginMarked(ctx, r.tokenTags[shard]); err != nil {
			return ca.Admitted{}, fmt.Errorf("store: token ledger: %w", err)
		}
	}
	var rec *recordCall
	if q.Record != nil {
		if rec, err = r.prepareRecord(ctx, *q.Record); err != nil {
			return ca.Admitted{}, err
		}
	}
	var rc *refusedCmds
	var tc *tokenCmds
	var serial *redis.StatusCmd
	_, err = r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		rc = r.queueRefused(ctx, p, caFP, q.CAKey, q.Identities, q.Key)
		if spend {
			tc = r.queueToken(ctx, p, mw, shard, sum, t.IssuedAt, t.Expiry)
		}
		if q.Serial != 0 {
			serial = p.SetArgs(ctx, r.serialKey(q.Serial), "1", redis.SetArgs{Mode: "NX", ExpireAt: q.SerialUntil})
		}
		if rec != nil {
			rec.queueNew(ctx, p)
		}
		return nil
	})
	// Each command's own error is read below (a NOSCRIPT of the ledger's script is retried by
	// tokenResult, the record's by newResult); the pipeline's is its first failed command's,
	// redis.Nil when a read finds nothing.
	if err != nil && !errors.Is(err, redis.Nil) && !isNoScript(err) {
		// A command that failed on the server (an error reply: a key of the wrong type, an ACL)
		// while the token's commands ran: the spend is named, so that the token is given back.
		// A connection that failed fails the token's commands too, and names none.
		var res ca.Admitted
		if spend {
			if fresh, terr := r.tokenResult(ctx, tc); terr == nil && fresh {
				res.Spent = tc.spend
			}
		}
		return res, fmt.Errorf("store: check: %w", err)
	}
	var res ca.Admitted
	refusal, refusedErr := r.refusedResult(ctx, rc)
	res.Fresh = !t.SingleUse
	if spend {
		// Read even when the check failed: a failure of the store's own (the CA key banned, a
		// shard count not the store's) names the spend beside it, so that the caller can give
		// the token back (ca.Admission.ReturnToken). An answer that cannot be read names none.
		if res.Fresh, err = r.tokenResult(ctx, tc); err != nil {
			return ca.Admitted{}, cmp.Or(refusedErr, err)
		}
		if res.Fresh {
			res.Spent = tc.spend
		}
	}
	if refusedErr != nil {
		return ca.Admitted{Spent: res.Spent}, refusedErr
	}
	res.Refusal = refusal
	if serial != nil {
		ok, err := serial.Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return ca.Admitted{Spent: res.Spent}, fmt.Errorf("store: reserve serial: %w", err)
		}
		res.SerialReserved = ok == "OK"
	}
	if rec != nil {
		var why string
		if res.Recorded, why, err = r.newResult(ctx, rec); err != nil {
			return res, err
		}
		if res.Refusal == "" {
			res.Refusal = why
		}
	}
	return res, nil
}

// Admit is UseToken for a single-use token and Refused, as Redis.Admit's one round trip: the
// token is spent by a refusal too (and named beside an error of the store's own, so that it can
// be given back); then, unless refused or the token was used, ReserveSerial for a serial and
// Record of q.Record, unless its identity is blocked or its serial is recorded with another
// record.
func (m *Memory) Admit(ctx context.Context, q ca.AdmissionRequest) (ca.Admitted, error) {
	res := ca.Admitted{Fresh: true}
	if q.Token.SingleUse {
		spend := spendID()
		m.mu.Lock()
		res.Fresh = m.useTokenLocked(q.Token.ID, q.Token.Expiry, spend)
		m.mu.Unlock()
		if res.Fresh {
			res.Spent = spend
		}
	}
	why, err := m.Refused(ctx, q.CAKey, q.Identities, q.Key)
	if err != nil {
		return ca.Admitted{Spent: res.Spent}, err
	}
	if why != "" || !res.Fresh {
		res.Refusal = why
		return res, nil
	}
	if q.Serial != 0 {
		if res.SerialReserved, err = m.ReserveSerial(ctx, q.Serial, q.SerialUntil); err != nil {
			return ca.Admitted{}, err
		}
	}
	if q.Record != nil {
		m.mu.Lock()
		defer m.mu.Unlock()
		if why := m.blockedWhyLocked(*q.Record); why != "" {
			res.Refusal = why
			return res, nil
		}
		c := *q.Record
		c.IndexUntil = time.Time{}
		if held, ok := m.certs[c.Serial]; !ok || reflect.DeepEqual(held, c) {
			m.recordLocked(*q.Record)
			res.Recorded = true
		}
	}
	return res, nil
}

// Unrecord deletes c's record when it is still c (see Redis.Unrecord).
func (m *Memory) Unrecord(_ context.Context, c ca.Certificate) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	cur, ok := m.certs[c.Serial]
	c.IndexUntil = time.Time{}
	if ok && reflect.DeepEqual(cur, c) {
		delete(m.certs, c.Serial)
	}
	return nil
}
