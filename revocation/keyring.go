package revocation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/ca"
)

// The keyring lives in one Redis key, <prefix>:{keyring}, as JSON with its version; writers
// update it optimistically (WATCH, then MULTI/EXEC), so concurrent replicas never lose a change.

func (r *Redis) keyringKey() string { return r.prefix + ":{keyring}" }

// Keyring reads the keyring (empty when there is none yet).
func (r *Redis) Keyring(ctx context.Context) (ca.Keyring, error) {
	b, err := r.rdb.Get(ctx, r.keyringKey()).Bytes()
	if errors.Is(err, redis.Nil) {
		return ca.Keyring{}, nil
	}
	if err != nil {
		return ca.Keyring{}, fmt.Errorf("revocation: keyring: %w", err)
	}
	var k ca.Keyring
	if err := json.Unmarshal(b, &k); err != nil {
		return ca.Keyring{}, fmt.Errorf("revocation: keyring is corrupt: %w", err)
	}
	return k, nil
}

// UpdateKeyring applies fn and stores the result with the version bumped, atomically.
func (r *Redis) UpdateKeyring(ctx context.Context, fn func(*ca.Keyring) error) (ca.Keyring, error) {
	var out ca.Keyring
	for range 10 {
		err := r.rdb.Watch(ctx, func(tx *redis.Tx) error {
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
				p.Set(ctx, r.keyringKey(), b, 0)
				return nil
			})
			out = k
			return err
		}, r.keyringKey())
		if errors.Is(err, redis.TxFailedErr) {
			continue // another replica changed it: apply fn to the new state
		}
		if err != nil {
			var e *ca.Error
			if errors.As(err, &e) {
				return ca.Keyring{}, err
			}
			return ca.Keyring{}, fmt.Errorf("revocation: keyring update: %w", err)
		}
		return out, nil
	}
	return ca.Keyring{}, errors.New("revocation: keyring update: too much contention")
}

// UnregisterCA withdraws a CA key from what bastions trust; its revocation scope stays
// followed, so nothing it revoked comes back and the KRL version never goes down.
func (r *Redis) UnregisterCA(ctx context.Context, caLine string) error {
	if err := r.rdb.SRem(ctx, r.prefix+":trusted-user-cas", caLine).Err(); err != nil {
		return fmt.Errorf("revocation: unregister CA: %w", err)
	}
	return nil
}
