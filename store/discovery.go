package store

// Discovery reports (issue 18 §2): the last report of long-lived keys of each host, kept in
// one hash (Keys.Discovery) whose field is the host name and whose value is the
// ca.DiscoveryRecord as JSON. A host's new report replaces its old one; nothing expires
// (a host that stops reporting keeps its last inventory, with its Received time). The host
// names are also kept in a sorted set of one score (Keys.DiscoveryHosts), so that a page of
// hosts after a name is one ZRANGEBYLEX; it can always be rebuilt from the hash's fields, and
// is (DiscoveryPage) when it holds fewer than the hash: hosts reported by replicas that did not
// write it.

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"sync"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/ca"
)

var (
	_ ca.DiscoveryStore = (*Redis)(nil)
	_ ca.DiscoveryStore = (*Memory)(nil)
)

// PutDiscovery replaces the host's record.
func (r *Redis) PutDiscovery(ctx context.Context, rec ca.DiscoveryRecord) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("store: discovery: %w", err)
	}
	// Two keys without a common tag: not one transaction on Redis Cluster. The name first, so
	// that a record is never missing from the index (a name without its record is skipped).
	if _, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.ZAdd(ctx, r.keys.DiscoveryHosts(), redis.Z{Member: rec.Host})
		p.HSet(ctx, r.keys.Discovery(), rec.Host, b)
		return nil
	}); err != nil {
		return fmt.Errorf("store: discovery put: %w", err)
	}
	return nil
}

// DiscoveryPage lists at most limit records (0: all) of the hosts named after after, by host
// name (byte order, the index's lexicographic order), and the page's last host when hosts are
// left after it. One pipeline counts the hash and the index and reads the page's names
// (ZRANGEBYLEX); when the index holds fewer names than the hash, the hash's names are added to
// it and the page read again. One HMGET reads the records.
func (r *Redis) DiscoveryPage(ctx context.Context, after string, limit int) ([]ca.DiscoveryRecord, string, error) {
	from := "-"
	if after != "" {
		from = "(" + after
	}
	by := &redis.ZRangeBy{Min: from, Max: "+"}
	if limit > 0 {
		by.Count = int64(limit) + 1 // one more says whether hosts are left
	}
	var hlen, zcard *redis.IntCmd
	var names *redis.StringSliceCmd
	read := func() error {
		_, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			hlen = p.HLen(ctx, r.keys.Discovery())
			zcard = p.ZCard(ctx, r.keys.DiscoveryHosts())
			names = p.ZRangeByLex(ctx, r.keys.DiscoveryHosts(), by)
			return nil
		})
		return err
	}
	if err := read(); err != nil {
		return nil, "", fmt.Errorf("store: discovery list: %w", err)
	}
	if zcard.Val() < hlen.Val() {
		hosts, err := r.rdb.HKeys(ctx, r.keys.Discovery()).Result()
		if err != nil {
			return nil, "", fmt.Errorf("store: discovery index: %w", err)
		}
		zs := make([]redis.Z, len(hosts))
		for i, h := range hosts {
			zs[i] = redis.Z{Member: h}
		}
		if err := r.rdb.ZAdd(ctx, r.keys.DiscoveryHosts(), zs...).Err(); err != nil {
			return nil, "", fmt.Errorf("store: discovery index: %w", err)
		}
		if err := read(); err != nil {
			return nil, "", fmt.Errorf("store: discovery list: %w", err)
		}
	}
	hosts := names.Val()
	next := ""
	if limit > 0 && len(hosts) > limit {
		hosts = hosts[:limit]
		next = hosts[limit-1]
	}
	if len(hosts) == 0 {
		return nil, "", nil
	}
	vals, err := r.rdb.HMGet(ctx, r.keys.Discovery(), hosts...).Result()
	if err != nil {
		return nil, "", fmt.Errorf("store: discovery list: %w", err)
	}
	out := make([]ca.DiscoveryRecord, 0, len(vals))
	for i, v := range vals {
		s, ok := v.(string)
		if !ok {
			continue // a name whose record's write failed
		}
		var rec ca.DiscoveryRecord
		if err := json.Unmarshal([]byte(s), &rec); err != nil {
			return nil, "", fmt.Errorf("store: discovery record of %s: %w", hosts[i], err)
		}
		out = append(out, rec)
	}
	return out, next, nil
}

// Discoveries lists every host's record, by host name.
func (r *Redis) Discoveries(ctx context.Context) ([]ca.DiscoveryRecord, error) {
	m, err := r.rdb.HGetAll(ctx, r.keys.Discovery()).Result()
	if err != nil {
		return nil, fmt.Errorf("store: discovery list: %w", err)
	}
	out := make([]ca.DiscoveryRecord, 0, len(m))
	for host, v := range m {
		var rec ca.DiscoveryRecord
		if err := json.Unmarshal([]byte(v), &rec); err != nil {
			return nil, fmt.Errorf("store: discovery record of %s: %w", host, err)
		}
		out = append(out, rec)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Host < out[j].Host })
	return out, nil
}

// OrderDisable adds fingerprint to the host's disable orders (a set, Keys.DiscoveryDisable).
func (r *Redis) OrderDisable(ctx context.Context, host, fingerprint string) error {
	if err := r.rdb.SAdd(ctx, r.keys.DiscoveryDisable(host), fingerprint).Err(); err != nil {
		return fmt.Errorf("store: discovery order: %w", err)
	}
	return nil
}

// DisableOrders lists the host's pending disable orders, sorted.
func (r *Redis) DisableOrders(ctx context.Context, host string) ([]string, error) {
	fps, err := r.rdb.SMembers(ctx, r.keys.DiscoveryDisable(host)).Result()
	if err != nil {
		return nil, fmt.Errorf("store: discovery orders: %w", err)
	}
	sort.Strings(fps)
	return fps, nil
}

// DoneDisable drops one of the host's disable orders.
func (r *Redis) DoneDisable(ctx context.Context, host, fingerprint string) error {
	if err := r.rdb.SRem(ctx, r.keys.DiscoveryDisable(host), fingerprint).Err(); err != nil {
		return fmt.Errorf("store: discovery order done: %w", err)
	}
	return nil
}

// memDiscovery is Memory's discovery role, under its own lock.
type memDiscovery struct {
	mu     sync.Mutex
	recs   map[string][]byte          // JSON, as in Redis
	orders map[string]map[string]bool // host → fingerprints
}

// OrderDisable adds fingerprint to the host's disable orders.
func (m *Memory) OrderDisable(_ context.Context, host, fingerprint string) error {
	m.discovery.mu.Lock()
	defer m.discovery.mu.Unlock()
	if m.discovery.orders == nil {
		m.discovery.orders = map[string]map[string]bool{}
	}
	if m.discovery.orders[host] == nil {
		m.discovery.orders[host] = map[string]bool{}
	}
	m.discovery.orders[host][fingerprint] = true
	return nil
}

// DisableOrders lists the host's pending disable orders, sorted.
func (m *Memory) DisableOrders(_ context.Context, host string) ([]string, error) {
	m.discovery.mu.Lock()
	defer m.discovery.mu.Unlock()
	fps := []string{}
	for fp := range m.discovery.orders[host] {
		fps = append(fps, fp)
	}
	sort.Strings(fps)
	return fps, nil
}

// DoneDisable drops one of the host's disable orders.
func (m *Memory) DoneDisable(_ context.Context, host, fingerprint string) error {
	m.discovery.mu.Lock()
	defer m.discovery.mu.Unlock()
	delete(m.discovery.orders[host], fingerprint)
	return nil
}

// PutDiscovery replaces the host's record.
func (m *Memory) PutDiscovery(_ context.Context, rec ca.DiscoveryRecord) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("store: discovery: %w", err)
	}
	m.discovery.mu.Lock()
	defer m.discovery.mu.Unlock()
	if m.discovery.recs == nil {
		m.discovery.recs = map[string][]byte{}
	}
	m.discovery.recs[rec.Host] = b
	return nil
}

// Discoveries lists every host's record, by host name.
func (m *Memory) Discoveries(context.Context) ([]ca.DiscoveryRecord, error) {
	m.discovery.mu.Lock()
	defer m.discovery.mu.Unlock()
	out := make([]ca.DiscoveryRecord, 0, len(m.discovery.recs))
	for _, b := range m.discovery.recs {
		var rec ca.DiscoveryRecord
		if err := json.Unmarshal(b, &rec); err != nil {
			return nil, err
		}
		out = append(out, rec)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Host < out[j].Host })
	return out, nil
}

// DiscoveryPage lists a page of the records by host name (as Redis.DiscoveryPage).
func (m *Memory) DiscoveryPage(ctx context.Context, after string, limit int) ([]ca.DiscoveryRecord, string, error) {
	all, err := m.Discoveries(ctx)
	if err != nil {
		return nil, "", err
	}
	i := sort.Search(len(all), func(i int) bool { return all[i].Host > after })
	all = all[i:]
	if limit > 0 && len(all) > limit {
		return all[:limit], all[limit-1].Host, nil
	}
	return all, "", nil
}
