package store

import (
	"context"
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
	mu sync.Mutex
	m  map[string][]byte // name → consoleValue
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
