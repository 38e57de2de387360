package store

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"
)

// The CA trust registry: the user CA keys bastions write to sshd's TrustedUserCAKeys
// (Keys.TrustedUserCAs), and the CA keys whose revocation scopes they follow (Keys.CAs). A key
// leaves the first when it is retired or compromised, never the second: its scope stays
// followed, so nothing it revoked comes back and the KRL version never goes down.

// RegisterCA makes a user CA key trusted by bastions, and its revocation scope followed,
// before anything is revoked in it. The three keys sit in three hash slots (CAs and
// TrustedUserCAs are untagged, the scope's CA line is in the scope's tag), so no transaction
// can hold them on a Cluster: the scope is made followed first and the key trusted last, so
// that a failure in between leaves a followed scope of a key not yet trusted, never a trusted
// key whose revocations bastions do not follow. Every write is idempotent: the next call
// (every start, every keyring publication) finishes it.
func (r *Redis) RegisterCA(ctx context.Context, caKey ssh.PublicKey) error {
	// An empty store gets its generation record, and with it its layout, before its CA sets:
	// a store whose CA sets are older than its record is taken for one of layout 1
	// (Redis.generation), and `sshca serve` registers its CA keys first thing, so every store
	// it created stayed at layout 1 (legacy blocks read on every certificate, inventory shards
	// refused until `sshca store migrate`). A lost store is registered in all the same.
	if _, err := r.generation(ctx); err != nil && !errors.Is(err, ErrStateLost) {
		return fmt.Errorf("store: register CA: %w", err)
	}
	line := authorizedLine(caKey)
	fp := ssh.FingerprintSHA256(caKey)
	_, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, r.keys.ScopeCA(fp), line, 0)
		p.SAdd(ctx, r.keys.CAs(), line)
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: register CA: %w", err)
	}
	if err := r.rdb.SAdd(ctx, r.keys.TrustedUserCAs(), line).Err(); err != nil {
		return fmt.Errorf("store: register CA: %w", err)
	}
	return nil
}

// RegisterHostCA records a host CA key as such, and takes it out of CAs: its scope (host
// certificates and keys revoked) belongs in the host KRL, never in the user KRL that bastions
// build from CAs. Revoke lists a scope in CAs only when its key is not a registered host CA
// key, so a host CA key registered before it revokes anything never gets there. Not atomic
// with Revoke (the two sets are untagged, in different Cluster slots): a host CA key revoked
// in while it is being registered may stay listed until the next RegisterHostCA (at every
// start), which only puts host entries in the user KRL, where no user certificate matches
// them.
func (r *Redis) RegisterHostCA(ctx context.Context, caKey ssh.PublicKey) error {
	line := authorizedLine(caKey)
	if err := r.rdb.SAdd(ctx, r.keys.HostCAs(), line).Err(); err != nil {
		return fmt.Errorf("store: register host CA: %w", err)
	}
	if err := r.rdb.SRem(ctx, r.keys.CAs(), line).Err(); err != nil {
		return fmt.Errorf("store: register host CA: %w", err)
	}
	return nil
}

// UnregisterCA withdraws a CA key (its authorized_keys line) from what bastions trust; its
// revocation scope stays followed.
func (r *Redis) UnregisterCA(ctx context.Context, caLine string) error {
	if err := r.rdb.SRem(ctx, r.keys.TrustedUserCAs(), caLine).Err(); err != nil {
		return fmt.Errorf("store: unregister CA: %w", err)
	}
	return nil
}

// TrustedCAs lists the user CA keys sshd should trust now (TrustedUserCAKeys).
func (r *Redis) TrustedCAs(ctx context.Context) ([]ssh.PublicKey, error) {
	return r.keySet(ctx, r.keys.TrustedUserCAs())
}

func (r *Redis) keySet(ctx context.Context, key string) ([]ssh.PublicKey, error) {
	lines, err := r.rdb.SMembers(ctx, key).Result()
	if err != nil {
		return nil, fmt.Errorf("store: CA list: %w", err)
	}
	return parseKeyLines(lines)
}

func parseKeyLines(lines []string) ([]ssh.PublicKey, error) {
	sort.Strings(lines)
	var out []ssh.PublicKey
	for _, l := range lines {
		k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(l))
		if err != nil {
			return nil, fmt.Errorf("store: CA list: %w", err)
		}
		out = append(out, k)
	}
	return out, nil
}

// RegisterCA makes a user CA key trusted by bastions, and its revocation scope followed.
func (m *Memory) RegisterCA(_ context.Context, caKey ssh.PublicKey) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.scopeLocked(caKey)
	if m.trusted == nil {
		m.trusted = map[string]bool{}
	}
	m.trusted[authorizedLine(caKey)] = true
	return nil
}

// RegisterHostCA records a host CA key as such, and takes it out of CAs, as Redis.RegisterHostCA.
func (m *Memory) RegisterHostCA(_ context.Context, caKey ssh.PublicKey) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.hostCAs == nil {
		m.hostCAs = map[string]bool{}
	}
	m.hostCAs[authorizedLine(caKey)] = true
	return nil
}

// UnregisterCA withdraws a CA key from what bastions trust; its scope stays followed.
func (m *Memory) UnregisterCA(_ context.Context, caLine string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.trusted, caLine)
	return nil
}

// TrustedCAs lists the user CA keys sshd should trust now.
func (m *Memory) TrustedCAs(context.Context) ([]ssh.PublicKey, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	lines := make([]string, 0, len(m.trusted))
	for l := range m.trusted {
		lines = append(lines, l)
	}
	return parseKeyLines(lines)
}
