package store

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Console sessions (ui.SessionStore): the web console's sessions, shared by every replica.
// Each is one key (Keys.ConsoleSession, untagged: single-key writes) holding the session's end
// (unix ms, 8 bytes big-endian) and the value the console sealed, expiring at that end. The
// console names and seals them with what only the browser's cookie yields, so this store holds
// neither a usable cookie nor an ID token. Reads check the end themselves: miniredis (sshca
// dev) does not expire keys with real time.

// PutConsoleSession stores sealed under name until expires (a time already past deletes it).
func (r *Redis) PutConsoleSession(ctx context.Context, name string, sealed []byte, expires time.Time) error {
	if !expires.After(r.now()) {
		return r.DeleteConsoleSession(ctx, name)
	}
	if err := r.rdb.SetArgs(ctx, r.keys.ConsoleSession(name), consoleValue(sealed, expires), redis.SetArgs{ExpireAt: expires}).Err(); err != nil {
		return fmt.Errorf("store: console session: %w", err)
	}
	return nil
}

// ConsoleSession returns the value stored under name, if it has not expired.
func (r *Redis) ConsoleSession(ctx context.Context, name string) ([]byte, bool, error) {
	b, err := r.rdb.Get(ctx, r.keys.ConsoleSession(name)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("store: console session: %w", err)
	}
	sealed, ok := fromConsoleValue(b, r.now())
	return sealed, ok, nil
}

// DeleteConsoleSession drops the session stored under name (sign-out), if any.
func (r *Redis) DeleteConsoleSession(ctx context.Context, name string) error {
	if err := r.rdb.Del(ctx, r.keys.ConsoleSession(name)).Err(); err != nil {
		return fmt.Errorf("store: console session: %w", err)
	}
	return nil
}

// ConsoleLoginKey returns the key every replica seals sign-ins in progress with: 32 random
// bytes, created by the first caller (SET NX) and the same for every caller after. Callers
// cache it; one that finds a cookie it cannot open asks again (a store that lost it has a new
// one).
func (r *Redis) ConsoleLoginKey(ctx context.Context) ([]byte, error) {
	k := r.keys.ConsoleLoginKey()
	if err := r.rdb.SetNX(ctx, k, rand.Text()+rand.Text(), 0).Err(); err != nil {
		return nil, fmt.Errorf("store: console login key: %w", err)
	}
	b, err := r.rdb.Get(ctx, k).Bytes()
	if err != nil {
		return nil, fmt.Errorf("store: console login key: %w", err)
	}
	return b, nil
}

// SpendConsoleLogin marks the sign-in named name as finished until until; first is false when
// it already was (a replayed callback).
func (r *Redis) SpendConsoleLogin(ctx context.Context, name string, until time.Time) (first bool, err error) {
	now := r.now()
	if !until.After(now) {
		return false, nil
	}
	k := r.keys.ConsoleLogin(name)
	// miniredis (sshca dev) keeps keys past their expiry: a marker whose end has passed is
	// overwritten rather than taken as a spend.
	if b, err := r.rdb.Get(ctx, k).Bytes(); err == nil {
		if _, live := fromConsoleValue(b, now); live {
			return false, nil
		}
		r.rdb.Del(ctx, k)
	}
	err = r.rdb.SetArgs(ctx, k, consoleValue(nil, until), redis.SetArgs{Mode: "NX", ExpireAt: until}).Err()
	if errors.Is(err, redis.Nil) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("store: console login: %w", err)
	}
	return true, nil
}

func consoleValue(sealed []byte, expires time.Time) []byte {
	return append(binary.BigEndian.AppendUint64(nil, uint64(expires.UnixMilli())), sealed...)
}

// fromConsoleValue is the sealed value of a stored one, unless it has expired at now.
func fromConsoleValue(b []byte, now time.Time) ([]byte, bool) {
	if len(b) < 8 || now.UnixMilli() >= int64(binary.BigEndian.Uint64(b[:8])) {
		return nil, false
	}
	return b[8:], true
}

// memConsole is Memory's console sessions, under their own lock.
type memConsole struct {
	mu       sync.Mutex
	m        map[string][]byte    // name → consoleValue
	loginKey []byte               // created by the first ConsoleLoginKey
	spent    map[string]time.Time // sign-in name → end of its marker
}

// ConsoleLoginKey returns this store's key for sign-ins in progress, created on first use.
func (m *Memory) ConsoleLoginKey(context.Context) ([]byte, error) {
	m.console.mu.Lock()
	defer m.console.mu.Unlock()
	if m.console.loginKey == nil {
		m.console.loginKey = []byte(rand.Text() + rand.Text())
	}
	return m.console.loginKey, nil
}

// SpendConsoleLogin marks the sign-in named name as finished until until.
func (m *Memory) SpendConsoleLogin(_ context.Context, name string, until time.Time) (bool, error) {
	m.console.mu.Lock()
	defer m.console.mu.Unlock()
	now := m.now()
	if m.console.spent == nil {
		m.console.spent = map[string]time.Time{}
	}
	for k, end := range m.console.spent {
		if !now.Before(end) {
			delete(m.console.spent, k)
		}
	}
	if _, ok := m.console.spent[name]; ok || !until.After(now) {
		return false, nil
	}
	m.console.spent[name] = until
	return true, nil
}

// PutConsoleSession stores sealed under name until expires.
func (m *Memory) PutConsoleSession(_ context.Context, name string, sealed []byte, expires time.Time) error {
	m.console.mu.Lock()
	defer m.console.mu.Unlock()
	if m.console.m == nil {
		m.console.m = map[string][]byte{}
	}
	now := m.now()
	for k, v := range m.console.m { // the table holds live sessions only
		if _, ok := fromConsoleValue(v, now); !ok {
			delete(m.console.m, k)
		}
	}
	if expires.After(now) {
		m.console.m[name] = consoleValue(sealed, expires)
	} else {
		delete(m.console.m, name)
	}
	return nil
}

// ConsoleSession returns the value stored under name, if it has not expired.
func (m *Memory) ConsoleSession(_ context.Context, name string) ([]byte, bool, error) {
	m.console.mu.Lock()
	defer m.console.mu.Unlock()
	sealed, ok := fromConsoleValue(m.console.m[name], m.now())
	return sealed, ok, nil
}

// DeleteConsoleSession drops the session stored under name, if any.
func (m *Memory) DeleteConsoleSession(_ context.Context, name string) error {
	m.console.mu.Lock()
	defer m.console.mu.Unlock()
	delete(m.console.m, name)
	return nil
}
