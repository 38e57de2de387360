package store

// Discovery reports (issue 18 §2): the last report of long-lived keys of each host, kept in
// one hash (Keys.Discovery) whose field is the host name and whose value is the
// ca.DiscoveryRecord as JSON. A host's new report replaces its old one; nothing expires
// (a host that stops reporting keeps its last inventory, with its Received time).

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"sync"

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
	if err := r.rdb.HSet(ctx, r.keys.Discovery(), rec.Host, b).Err(); err != nil {
		return fmt.Errorf("store: discovery put: %w", err)
	}
	return nil
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
