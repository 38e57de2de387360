package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/ca"
)

// The keyring document: every CA key and its state, in one key (Keys.Keyring) as JSON with
// its version; writers update it optimistically (WATCH, then MULTI/EXEC), so concurrent
// replicas never lose a change (keyring.Document).

// Keyring reads the keyring (empty when there is none yet).
func (r *Redis) Keyring(ctx context.Context) (ca.Keyring, error) {
	b, err := r.rdb.Get(ctx, r.keys.Keyring()).Bytes()
	if errors.Is(err, redis.Nil) {
		return ca.Keyring{}, nil
	}
	if err != nil {
		return ca.Keyring{}, fmt.Errorf("store: keyring: %w", err)
	}
	return decodeKeyring(b)
}

func decodeKeyring(b []byte) (ca.Keyring, error) {
	var k ca.Keyring
	if len(b) == 0 {
		return k, nil
	}
	if err := json.Unmarshal(b, &k); err != nil {
		return ca.Keyring{}, fmt.Errorf("store: keyring is corrupt: %w", err)
	}
	return k, nil
}

// UpdateKeyring applies fn and stores the result with the version bumped, atomically, and
// bumps the keyring's generation mark in the same MULTI/EXEC (the mark is WATCHed with the
// document). A mark found lost is left as found and the change written anyway: a key marked
// compromised must not wait for a rebuild.
func (r *Redis) UpdateKeyring(ctx context.Context, fn func(*ca.Keyring) error) (ca.Keyring, error) {
	var out ca.Keyring
	markKey := r.keys.Mark(TagKeyring)
	for range 10 {
		g, err := r.generation(ctx)
		if err != nil && !errors.Is(err, ErrStateLost) {
			return ca.Keyring{}, fmt.Errorf("store: keyring update: %w", err)
		}
		exp := r.witness.expect(TagKeyring)
		if err != nil {
			g = exp.gen
		}
		var found Mark
		var present, create, bump bool
		err = r.rdb.Watch(ctx, func(tx *redis.Tx) error {
			vals, err := tx.HMGet(ctx, markKey, "id", "epoch", "n").Result()
			if err != nil {
				return err
			}
			if found, present, err = parseMark(vals); err != nil {
				return err
			}
			create = !present && !exp.seen
			bump = present && found.Generation == g && (!exp.seen || found.N >= exp.n)
			k, err := r.Keyring(ctx)
			if err != nil {
				return err
			}
			if err := fn(&k); err != nil {
				return err
			}
			k.Version++
			b, err := json.Marshal(k)
			if err != nil {
				return err
			}
			_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
				p.Set(ctx, r.keys.Keyring(), b, 0)
				switch {
				case create:
					p.HSet(ctx, markKey, "id", g.ID, "epoch", g.Epoch, "n", 1)
				case bump:
					p.HIncrBy(ctx, markKey, "n", 1)
				}
				return nil
			})
			out = k
			if err != nil {
				return err
			}
			// On the connection that carried the EXEC (WAIT waits for this connection's
			// writes): a promoted replica must not bring back a key that was retired or
			// marked compromised.
			if wait, timeout := r.waitArgs(ctx); wait != nil {
				return r.checkWait("keyring change", tx.Do(ctx, wait...), timeout)
			}
			return nil
		}, r.keys.Keyring(), markKey)
		if errors.Is(err, redis.TxFailedErr) {
			continue // another replica changed it: apply fn to the new state
		}
		if err != nil {
			var e *ca.Error
			if errors.As(err, &e) {
				return ca.Keyring{}, err
			}
			return ca.Keyring{}, fmt.Errorf("store: keyring update: %w", err)
		}
		switch {
		case create:
			r.witness.observe(TagKeyring, exp, Mark{Generation: g, N: 1}, true)
		case bump:
			found.N++
			r.witness.observe(TagKeyring, exp, found, true)
		case present && found.Epoch > g.Epoch:
			r.witness.observe(TagKeyring, exp, found, true) // a rebuild: adopt its generation
		default:
			r.witness.lose(TagKeyring, fmt.Sprintf("a write found the mark %s/%d/%d (present %t), expected %s/%d and at least %d",
				found.ID, found.Epoch, found.N, present, g.ID, g.Epoch, exp.seenArg()))
		}
		return out, nil
	}
	return ca.Keyring{}, errors.New("store: keyring update: too much contention")
}

// Keyring reads the keyring (empty when there is none yet).
func (m *Memory) Keyring(context.Context) (ca.Keyring, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return decodeKeyring(m.keyring)
}

// UpdateKeyring applies fn to a copy of the keyring and keeps the result with the version
// bumped; an error from fn changes nothing. fn runs under the store's lock: it must not call
// the store.
func (m *Memory) UpdateKeyring(_ context.Context, fn func(*ca.Keyring) error) (ca.Keyring, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k, err := decodeKeyring(m.keyring)
	if err != nil {
		return ca.Keyring{}, err
	}
	if err := fn(&k); err != nil {
		var e *ca.Error
		if errors.As(err, &e) {
			return ca.Keyring{}, err
		}
		return ca.Keyring{}, fmt.Errorf("store: keyring update: %w", err)
	}
	k.Version++
	b, err := json.Marshal(k)
	if err != nil {
		return ca.Keyring{}, fmt.Errorf("store: keyring update: %w", err)
	}
	m.keyring = b
	return k, nil
}
