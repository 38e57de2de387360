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
// The store's number of inventory shards is read in the same round trip: a replica configured
// with another (whose reservation went to a key the others do not look in) gets a
// ShardCountError instead of true.
func (r *Redis) ReserveSerial(ctx context.Context, serial uint64, until time.Time) (bool, error) {
	var agreed *redis.StringCmd
	var set *redis.StatusCmd
	_, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		agreed = r.readAgreed(ctx, p)
		set = p.SetArgs(ctx, r.serialKey(serial), "1", redis.SetArgs{Mode: "NX", ExpireAt: until})
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return false, fmt.Errorf("store: reserve serial: %w", err)
	}
	n, err := parseAgreed(agreed.Result())
	if err != nil {
		return false, fmt.Errorf("store: reserve serial: inventory shards: %w", err)
	}
	if err := r.agreeShards(ctx, n); err != nil {
		return false, err
	}
	ok, err := set.Result()
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
