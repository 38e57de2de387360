package store

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
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

// ConsoleLoginKeys returns the keys every replica seals sign-ins in progress with (32 random
// bytes or more each): current seals, previous (nil before the first rotation, or when current
// has been in use for two periods or more) still opens what was sealed before the last
// rotation, and until is when current is due to be replaced (its start on the store's clock
// plus every), when callers that cache the keys ask again. A call at or after that replaces
// current with a new key and keeps it as previous, in one script on one key
// (Keys.ConsoleLoginKeys), so replicas that call at once agree on one new key: the first
// rotates and the others find its key already young. Before the first rotation the key of
// Keys.ConsoleLoginKey, which replicas of stop 15 made and never changed, becomes the first
// current, so that sign-ins a replica of either kind sealed open on both during an upgrade.
// every must be positive.
func (r *Redis) ConsoleLoginKeys(ctx context.Context, every time.Duration) (current, previous []byte, until time.Time, err error) {
	if every <= 0 {
		return nil, nil, time.Time{}, fmt.Errorf("store: console login keys: rotation period %s must be positive", every)
	}
	now := r.now().UnixMilli()
	res, err := loginKeysScript.Run(ctx, r.rdb, []string{r.keys.ConsoleLoginKeys()}, now, every.Milliseconds(), rand.Text()+rand.Text()).StringSlice()
	if errors.Is(err, redis.Nil) || (err == nil && len(res) == 1 && res[0] == "seed") {
		// A store without the key set: its first current is the earlier single key, when
		// there is one (two round trips, once per store).
		old, gerr := r.rdb.Get(ctx, r.keys.ConsoleLoginKey()).Result()
		if gerr != nil && !errors.Is(gerr, redis.Nil) {
			return nil, nil, time.Time{}, fmt.Errorf("store: console login keys: %w", gerr)
		}
		if old == "" {
			old = rand.Text() + rand.Text()
		}
		res, err = loginKeysScript.Run(ctx, r.rdb, []string{r.keys.ConsoleLoginKeys()}, now, every.Milliseconds(), rand.Text()+rand.Text(), old).StringSlice()
	}
	if err != nil {
		return nil, nil, time.Time{}, fmt.Errorf("store: console login keys: %w", err)
	}
	if len(res) != 3 {
		return nil, nil, time.Time{}, fmt.Errorf("store: console login keys: the script answered %d values, want 3", len(res))
	}
	at, err := strconv.ParseInt(res[2], 10, 64)
	if err != nil {
		return nil, nil, time.Time{}, fmt.Errorf("store: console login keys: start %q is not unix milliseconds", res[2])
	}
	current = []byte(res[0])
	if res[1] != "" {
		previous = []byte(res[1])
	}
	return current, previous, time.UnixMilli(at).Add(every), nil
}

// loginKeysScript reads, creates or rotates the console's login keys in one step (a hash:
// cur, prev, at in unix ms). KEYS[1] the hash; ARGV: now (unix ms), the period (ms), a fresh
// key, and the first key when the hash is missing (without it, a missing hash answers "seed":
// the caller looks for the earlier single key and calls again with it). Answers {cur, prev or
// "", at}. The previous key goes once current has been in use for two periods: what it sealed
// is older than a period.
var loginKeysScript = redis.NewScript(`
local h = redis.call('HMGET', KEYS[1], 'cur', 'prev', 'at')
local cur, prev, at = h[1], h[2] or '', tonumber(h[3] or '')
local now, every = tonumber(ARGV[1]), tonumber(ARGV[2])
if not cur or not at then
  if not ARGV[4] then return {'seed'} end
  cur, prev, at = ARGV[4], '', now
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'cur', cur, 'at', at)
elseif now - at >= every then
  if now - at >= 2 * every then prev = '' else prev = cur end
  cur, at = ARGV[3], now
  redis.call('HSET', KEYS[1], 'cur', cur, 'prev', prev, 'at', at)
end
return {cur, prev, tostring(at)}
`)

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
	mu        sync.Mutex
	m         map[string][]byte    // name → consoleValue
	loginKeys loginKeys            // created by the first ConsoleLoginKeys
	spent     map[string]time.Time // sign-in name → end of its marker
}

// ConsoleLoginKeys returns this store's keys for sign-ins in progress, rotated as Redis's.
func (m *Memory) ConsoleLoginKeys(_ context.Context, every time.Duration) (current, previous []byte, until time.Time, err error) {
	if every <= 0 {
		return nil, nil, time.Time{}, fmt.Errorf("store: console login keys: rotation period %s must be positive", every)
	}
	m.console.mu.Lock()
	defer m.console.mu.Unlock()
	cur, prev, until := m.console.loginKeys.Keys(m.now(), every)
	return cur, prev, until, nil
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

// loginKeys are the console's login keys of the in-memory store: what loginKeysScript keeps
// in Redis, rotated the same way.
type loginKeys struct {
	cur, prev []byte
	at        time.Time // when cur became current
}

// rotate creates the first key, or replaces cur when it has been current for every or more
// at now (dropping prev too after two periods), as loginKeysScript does.
func (k *loginKeys) rotate(now time.Time, every time.Duration) {
	switch age := now.Sub(k.at); {
	case k.cur == nil:
		k.cur, k.at = []byte(rand.Text()+rand.Text()), now
	case age >= every:
		k.prev = k.cur
		if age >= 2*every {
			k.prev = nil
		}
		k.cur, k.at = []byte(rand.Text()+rand.Text()), now
	}
}

// Keys returns the keys at now for a rotation every every: current, previous (or nil) and
// when current is due to be replaced.
func (k *loginKeys) Keys(now time.Time, every time.Duration) (current, previous []byte, until time.Time) {
	k.rotate(now, every)
	return k.cur, k.prev, k.at.Add(every)
}
