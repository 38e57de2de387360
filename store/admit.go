package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
)

// Admission: the signing-time refusal check and the spending of a single-use token in one
// round trip (ca.Admission).

var (
	_ ca.Admission = (*Redis)(nil)
	_ ca.Admission = (*Memory)(nil)
)

// Admit is Refused and, for a single-use token, UseToken, in one pipeline: the reads of the
// refusal check (and the marks of every tag issuance touches) and the token ledger's script
// and SET NX travel together. The token is spent even when the answer is a refusal (see
// ca.Admission); an expired single-use token is not fresh and is not written.
func (r *Redis) Admit(ctx context.Context, caKey ssh.PublicKey, identities []string, key ssh.PublicKey, t ca.TokenUse) (string, bool, error) {
	if _, err := r.generation(ctx); err != nil {
		return "", false, fmt.Errorf("store: check: %w", err)
	}
	spend := t.SingleUse && t.Expiry.After(r.now())
	var mw *MarkedWrite
	if spend {
		var err error
		if mw, err = r.BeginMarked(ctx, TagTokens); err != nil {
			return "", false, fmt.Errorf("store: token ledger: %w", err)
		}
	}
	var rc *refusedCmds
	var tc *tokenCmds
	_, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		rc = r.queueRefused(ctx, p, caKey, identities, key)
		if spend {
			tc = r.queueToken(ctx, p, mw, t.ID, t.IssuedAt, t.Expiry)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return "", false, fmt.Errorf("store: check: %w", err)
	}
	why, err := r.refusedResult(rc)
	if err != nil {
		return "", false, err
	}
	fresh := !t.SingleUse
	if spend {
		if fresh, err = r.tokenResult(tc); err != nil {
			return "", false, err
		}
	}
	return why, fresh, nil
}

// Admit is Refused, then, unless it refuses, UseToken for a single-use token.
func (m *Memory) Admit(ctx context.Context, caKey ssh.PublicKey, identities []string, key ssh.PublicKey, t ca.TokenUse) (string, bool, error) {
	why, err := m.Refused(ctx, caKey, identities, key)
	if err != nil || why != "" {
		return why, false, err
	}
	if !t.SingleUse {
		return "", true, nil
	}
	fresh, err := m.UseToken(ctx, t.ID, t.IssuedAt, t.Expiry)
	return "", fresh, err
}
