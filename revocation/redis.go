package revocation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/ca"
)

// RedisOptions configure a Redis store.
type RedisOptions struct {
	Prefix string           // default "sshca"
	Now    func() time.Time // default time.Now
}

// Redis keeps the inventory in Redis. Every key of the inventory carries the hash tag
// {inventory}, so the multi-key transaction of Record works on Redis Cluster.
//
// Layout: <prefix>:{inventory}:cert:<serial> is the JSON record, expiring at its ValidBefore;
// <prefix>:{inventory}:id:<identity> is a sorted set of serials scored by ValidBefore (unix
// ms). Sorted-set members never expire by themselves, so writers prune them by score; readers
// filter by score, which also keeps the store right on servers whose keys do not expire with
// real time (miniredis in `sshca dev`). An identity's set is emptied (and so deleted) by the
// pruning of its next Record; the set of an identity that never returns keeps its expired
// serials, a few bytes each.
type Redis struct {
	rdb    redis.UniversalClient
	prefix string
	now    func() time.Time
}

// NewRedis returns a store on rdb.
func NewRedis(rdb redis.UniversalClient, o RedisOptions) *Redis {
	r := &Redis{rdb: rdb, prefix: o.Prefix, now: o.Now}
	if r.prefix == "" {
		r.prefix = "sshca"
	}
	if r.now == nil {
		r.now = time.Now
	}
	return r
}

func (r *Redis) certKey(serial uint64) string {
	return r.prefix + ":{inventory}:cert:" + strconv.FormatUint(serial, 10)
}
func (r *Redis) identityKey(id string) string { return r.prefix + ":{inventory}:id:" + id }

// aliasKey is the sorted set of the canonical identities recorded under an alias, scored by
// how long each entry lasts (unix ms).
func (r *Redis) aliasKey(alias string) string { return r.prefix + ":{inventory}:alias:" + alias }
func (r *Redis) serialKey(serial uint64) string {
	return r.prefix + ":{inventory}:serial:" + strconv.FormatUint(serial, 10)
}

// Record stores c until its ValidBefore, in one transaction.
func (r *Redis) Record(ctx context.Context, c ca.Certificate) error {
	b, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("revocation: record: %w", err)
	}
	now := r.now()
	idKey := r.identityKey(c.Identity)
	_, err = r.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, r.certKey(c.Serial), b, 0)
		p.PExpireAt(ctx, r.certKey(c.Serial), c.ValidBefore)
		p.ZRemRangeByScore(ctx, idKey, "-inf", strconv.FormatInt(now.UnixMilli(), 10))
		p.ZAdd(ctx, idKey, redis.Z{Score: float64(c.ValidBefore.UnixMilli()), Member: strconv.FormatUint(c.Serial, 10)})
		until := c.ValidBefore
		if c.IndexUntil.After(until) {
			until = c.IndexUntil
		}
		for _, a := range c.Aliases {
			k := r.aliasKey(a)
			p.ZRemRangeByScore(ctx, k, "-inf", strconv.FormatInt(now.UnixMilli(), 10))
			p.ZAddGT(ctx, k, redis.Z{Score: float64(until.UnixMilli()), Member: c.Identity})
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("revocation: record serial %d: %w", c.Serial, err)
	}
	return nil
}

// Live returns the identity's certificates still valid at now, by serial.
func (r *Redis) Live(ctx context.Context, identity string, now time.Time) ([]ca.Certificate, error) {
	serials, err := r.rdb.ZRangeByScore(ctx, r.identityKey(identity), &redis.ZRangeBy{
		Min: "(" + strconv.FormatInt(now.UnixMilli(), 10), Max: "+inf"}).Result()
	if err != nil {
		return nil, fmt.Errorf("revocation: live certificates: %w", err)
	}
	if len(serials) == 0 {
		return nil, nil
	}
	keys := make([]string, len(serials))
	for i, s := range serials {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("revocation: live certificates: bad serial %q in index", s)
		}
		keys[i] = r.certKey(n)
	}
	var out []ca.Certificate
	for _, k := range keys {
		b, err := r.rdb.Get(ctx, k).Bytes()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("revocation: live certificates: %w", err)
		}
		var c ca.Certificate
		if err := json.Unmarshal(b, &c); err != nil {
			return nil, fmt.Errorf("revocation: corrupt record %s: %w", k, err)
		}
		if c.ValidBefore.After(now) {
			out = append(out, c)
		}
	}
	sortBySerial(out)
	return out, nil
}

// ResolveAlias returns the canonical names of the identities recorded under alias whose index
// entries last beyond now, sorted.
func (r *Redis) ResolveAlias(ctx context.Context, alias string, now time.Time) ([]string, error) {
	ids, err := r.rdb.ZRangeByScore(ctx, r.aliasKey(alias), &redis.ZRangeBy{
		Min: "(" + strconv.FormatInt(now.UnixMilli(), 10), Max: "+inf"}).Result()
	if err != nil {
		return nil, fmt.Errorf("revocation: resolve identity alias: %w", err)
	}
	slices.Sort(ids)
	return ids, nil
}

// Get returns the record of a serial, if it is still kept.
func (r *Redis) Get(ctx context.Context, serial uint64) (ca.Certificate, bool, error) {
	b, err := r.rdb.Get(ctx, r.certKey(serial)).Bytes()
	if errors.Is(err, redis.Nil) {
		return ca.Certificate{}, false, nil
	}
	if err != nil {
		return ca.Certificate{}, false, fmt.Errorf("revocation: get serial %d: %w", serial, err)
	}
	var c ca.Certificate
	if err := json.Unmarshal(b, &c); err != nil {
		return ca.Certificate{}, false, fmt.Errorf("revocation: corrupt record for serial %d: %w", serial, err)
	}
	return c, true, nil
}

// ReserveSerial reserves serial until until with SET NX; false when it is already reserved.
func (r *Redis) ReserveSerial(ctx context.Context, serial uint64, until time.Time) (bool, error) {
	ok, err := r.rdb.SetArgs(ctx, r.serialKey(serial), "1", redis.SetArgs{Mode: "NX", ExpireAt: until}).Result()
	if errors.Is(err, redis.Nil) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("revocation: reserve serial: %w", err)
	}
	return ok == "OK", nil
}

// Check pings Redis.
func (r *Redis) Check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := r.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("revocation: redis: %w", err)
	}
	return nil
}
