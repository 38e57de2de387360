package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Serial reservations: a serial is reserved (Keys.Serial, SET NX) before a certificate is
// signed with it, so serials are unique across replicas (signer.SerialReserver). With
// inventory shards, in the shard of the serial (shards.go).

// ReserveSerial reserves serial until until with SET NX; false when it is already reserved.
func (r *Redis) ReserveSerial(ctx context.Context, serial uint64, until time.Time) (bool, error) {
	ok, err := r.rdb.SetArgs(ctx, r.serialKey(serial), "1", redis.SetArgs{Mode: "NX", ExpireAt: until}).Result()
	if errors.Is(err, redis.Nil) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("store: reserve serial: %w", err)
	}
	return ok == "OK", nil
}

// ReserveSerial reserves serial until until; false when it is already reserved.
func (m *Memory) ReserveSerial(_ context.Context, serial uint64, until time.Time) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	if exp, ok := m.serials[serial]; ok && exp.After(now) {
		return false, nil
	}
	m.serials[serial] = until
	return true, nil
}
