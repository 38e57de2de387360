package revocation

import (
	"context"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
)

type memScope struct {
	ca      ssh.PublicKey
	version uint64
	entries map[string]ca.RevocationEntry // by member
}

// Revoke adds entries to the scope of caKey; see Redis.Revoke.
func (m *Memory) Revoke(_ context.Context, caKey ssh.PublicKey, entries []ca.RevocationEntry) (uint64, error) {
	for _, e := range entries {
		if err := validEntry(e); err != nil {
			return 0, err
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.scopeLocked(caKey)
	now := m.now()
	for k, e := range s.entries {
		if !e.Expiry.After(now) {
			delete(s.entries, k)
		}
	}
	changed := false
	for _, e := range entries {
		e.Expiry = e.Expiry.UTC().Truncate(time.Millisecond)
		if cur, ok := s.entries[member(e)]; !ok || cur.Expiry.Before(e.Expiry) {
			s.entries[member(e)] = e
			changed = true
		}
	}
	if changed {
		s.version++
	}
	return s.version, nil
}

func (m *Memory) scopeLocked(caKey ssh.PublicKey) *memScope {
	if m.scopes == nil {
		m.scopes = map[string]*memScope{}
	}
	fp := ssh.FingerprintSHA256(caKey)
	s := m.scopes[fp]
	if s == nil {
		s = &memScope{ca: caKey, entries: map[string]ca.RevocationEntry{}}
		m.scopes[fp] = s
	}
	return s
}

// State returns the scope's unexpired entries at its current version.
func (m *Memory) State(_ context.Context, caKey ssh.PublicKey) (ca.RevocationState, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.scopes[ssh.FingerprintSHA256(caKey)]
	if s == nil {
		return ca.RevocationState{}, nil
	}
	st := ca.RevocationState{CA: s.ca, Version: s.version}
	now := m.now()
	for _, e := range s.entries {
		if e.Expiry.After(now) {
			st.Entries = append(st.Entries, e)
		}
	}
	sortEntries(st.Entries)
	return st, nil
}

// BlockIdentity refuses new certificates to identity until until.
func (m *Memory) BlockIdentity(_ context.Context, identity string, until time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.blocked == nil {
		m.blocked = map[string]time.Time{}
	}
	if until.After(m.blocked[identity]) {
		m.blocked[identity] = until
	}
	return nil
}

// Refused reports why a request must be refused at signing time.
func (m *Memory) Refused(_ context.Context, _ ssh.PublicKey, identities []string, key ssh.PublicKey) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var keyExp, idExp float64
	var keyFound, idFound bool
	// Under any CA key's scope: a rotation must not let a revoked key back in.
	mk := member(ca.RevocationEntry{Kind: ca.RevokedKey, Value: KeyEntry(key)})
	for _, s := range m.scopes {
		if e, ok := s.entries[mk]; ok && float64(e.Expiry.UnixMilli()) > keyExp {
			keyExp, keyFound = float64(e.Expiry.UnixMilli()), true
		}
	}
	identity := ""
	now := float64(m.now().UnixMilli())
	for _, name := range identities {
		if t, ok := m.blocked[name]; ok && float64(t.UnixMilli()) > now {
			idExp, idFound, identity = float64(t.UnixMilli()), true, name
			break
		}
	}
	return refusal(m.now(), keyExp, keyFound, idExp, idFound, identity), nil
}
