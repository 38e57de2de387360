package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
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

// UseToken records a single-use token until it expires (SET NX): false when it was used
// before.
func (r *Redis) UseToken(ctx context.Context, id string, until time.Time) (bool, error) {
	if !until.After(r.now()) {
		return false, nil // expired tokens never get this far; refuse rather than store forever
	}
	sum := sha256.Sum256([]byte(id))
	// One round trip: the rebuild's refusal (RefuseTokensUntil) and the spend. A token the
	// refusal covers is spent too, which changes nothing: it expires before the refusal ends.
	var refused *redis.StringCmd
	var set *redis.StatusCmd
	_, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		refused = p.Get(ctx, r.keys.TokensRefused())
		set = p.SetArgs(ctx, r.keys.Token(hex.EncodeToString(sum[:])), "1", redis.SetArgs{Mode: "NX", ExpireAt: until})
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return false, fmt.Errorf("store: token ledger: %w", err)
	}
	if ms, err := refused.Int64(); err == nil && until.UnixMilli() < ms {
		return false, nil
	} else if err != nil && !errors.Is(err, redis.Nil) {
		return false, fmt.Errorf("store: token ledger: %w", err)
	}
	ok, err := set.Result()
	if errors.Is(err, redis.Nil) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("store: token ledger: %w", err)
	}
	return ok == "OK", nil
}

// UseToken records a single-use token until it expires: false when it was used before.
func (m *Memory) UseToken(_ context.Context, id string, until time.Time) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	if m.tokens == nil {
		m.tokens = map[string]time.Time{}
	}
	if exp, ok := m.tokens[id]; ok && exp.After(now) {
		return false, nil
	}
	if !until.After(now) {
		return false, nil
	}
	m.tokens[id] = until
	return true, nil
}
