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

// memDiscovery is Memory's discovery role, under its own lock.
type memDiscovery struct {
	mu   sync.Mutex
	recs map[string][]byte // JSON, as in Redis
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
