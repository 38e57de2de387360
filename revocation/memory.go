// Package revocation holds what sshca must remember about certificates it issued: the
// inventory of live certificates (who holds access now) and the reservation of serials, in
// Redis for production and in memory for tests. Both implementations pass one contract test.
package revocation

import (
	"context"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/sshca/sshca/ca"
)

// Memory is an in-process store. It forgets everything on restart.
type Memory struct {
	now func() time.Time

	mu        sync.Mutex
	certs     map[uint64]ca.Certificate
	serials   map[uint64]time.Time
	nextPrune time.Time
	scopes    map[string]*memScope
	blocked   map[string]time.Time
	tokens    map[string]time.Time
	aliases   map[string]map[string]time.Time // alias → identity → until
}

// pruneEvery bounds the cost of pruning: a full sweep at most once per interval.
const pruneEvery = time.Second

// NewMemory returns an empty in-memory store; now is the clock used to expire entries.
func NewMemory(now func() time.Time) *Memory {
	if now == nil {
		now = time.Now
	}
	return &Memory{now: now, certs: map[uint64]ca.Certificate{}, serials: map[uint64]time.Time{}}
}

// Record stores c until its ValidBefore.
func (m *Memory) Record(_ context.Context, c ca.Certificate) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.pruneLocked(m.now())
	until := c.ValidBefore
	if c.IndexUntil.After(until) {
		until = c.IndexUntil
	}
	c.IndexUntil = time.Time{} // not part of the record, as in Redis
	m.certs[c.Serial] = c
	for _, a := range c.Aliases {
		if m.aliases == nil {
			m.aliases = map[string]map[string]time.Time{}
		}
		if m.aliases[a] == nil {
			m.aliases[a] = map[string]time.Time{}
		}
		if until.After(m.aliases[a][c.Identity]) {
			m.aliases[a][c.Identity] = until
		}
	}
	return nil
}

// ResolveAlias returns the identities recorded under alias whose entries last beyond now.
func (m *Memory) ResolveAlias(_ context.Context, alias string, now time.Time) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for id, until := range m.aliases[alias] {
		if until.After(now) {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out, nil
}

// Live returns the identity's certificates still valid at now, by serial.
func (m *Memory) Live(_ context.Context, identity string, now time.Time) ([]ca.Certificate, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []ca.Certificate
	for _, c := range m.certs {
		if c.Identity == identity && c.ValidBefore.After(now) {
			out = append(out, c)
		}
	}
	sortBySerial(out)
	return out, nil
}

// Get returns the record of a serial, if it is still kept.
func (m *Memory) Get(_ context.Context, serial uint64) (ca.Certificate, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c, ok := m.certs[serial]
	return c, ok, nil
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

// Check always succeeds: memory is always there.
func (m *Memory) Check(context.Context) error { return nil }

func (m *Memory) pruneLocked(now time.Time) {
	if now.Before(m.nextPrune) {
		return
	}
	m.nextPrune = now.Add(pruneEvery)
	for s, c := range m.certs {
		if !c.ValidBefore.After(now) {
			delete(m.certs, s)
		}
	}
	for s, exp := range m.serials {
		if !exp.After(now) {
			delete(m.serials, s)
		}
	}
}

func sortBySerial(cs []ca.Certificate) {
	sort.Slice(cs, func(i, j int) bool { return cs[i].Serial < cs[j].Serial })
}
