package ui

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"
)

// session is one signed-in browser's state, held server-side and named by the cookie's random
// ID. It exists only once the callback authenticated the user: a sign-in in progress lives in
// the browser's login cookie (loginState), so no unauthenticated request stores anything.
type session struct {
	csrf    string
	expires time.Time

	idToken string
	user    string // shown on the pages
	sub     string
}

func (s *session) signedIn() bool { return s.idToken != "" }

// sessionRecord is a session as it is sealed into the store.
type sessionRecord struct {
	CSRF    string    `json:"csrf"`
	Expires time.Time `json:"expires"`
	IDToken string    `json:"id_token,omitempty"`
	User    string    `json:"user,omitempty"`
	Sub     string    `json:"sub,omitempty"`
}

// loginTimeout is how long a sign-in may take, from the link to the issuer's callback.
const loginTimeout = 10 * time.Minute

// SessionStore keeps the console's sessions server-side, where every replica behind a load
// balancer finds them (store.Redis; sessions started on one replica are used and ended on
// another). It sees only opaque names and sealed values: the name is derived from the cookie
// by a one-way function and the value is encrypted with a key derived from the cookie too,
// so the store holds neither a usable cookie nor an ID token. An entry is kept until expires;
// Delete of a missing name is not an error.
type SessionStore interface {
	PutConsoleSession(ctx context.Context, name string, sealed []byte, expires time.Time) error
	ConsoleSession(ctx context.Context, name string) (sealed []byte, ok bool, err error)
	DeleteConsoleSession(ctx context.Context, name string) error
	// ConsoleLoginKeys are the secrets (at least 32 bytes each) every replica seals login
	// cookies with: current seals and previous (nil before the first rotation) still opens;
	// the same for every caller, so that a sign-in started on one replica finishes on another.
	// until is when current is due for replacement (its start plus every): the first call at
	// or after it makes a new current and keeps the old as previous, once however many
	// replicas call at once. They are the only thing an unauthenticated request may cause the
	// store to write, at most once a period.
	ConsoleLoginKeys(ctx context.Context, every time.Duration) (current, previous []byte, until time.Time, err error)
	// SpendConsoleLogin marks a finished sign-in until until, after its callback
	// authenticated the user; first is false when it already was (a replayed callback).
	SpendConsoleLogin(ctx context.Context, name string, until time.Time) (first bool, err error)
}

// sessions seals sessions into a SessionStore, under the cookie's ID: the ID (32 random
// bytes) is the only secret, and HKDF-SHA256 (RFC 5869) derives from it the store name and the
// AES-256-GCM key of the value (the name is the additional data, so a value moved to another
// name does not open). A value that does not open, or whose session has ended, is no session.
type sessions struct {
	now   func() time.Time
	store SessionStore
}

func newSessions(now func() time.Time, store SessionStore) *sessions {
	if store == nil {
		store = newMemorySessions(now)
	}
	return &sessions{now: now, store: store}
}

// derive returns the store name and the sealing key of the session named id.
func derive(id string) (name string, key []byte, err error) {
	n, err := hkdf.Key(sha256.New, []byte(id), nil, "sshca console session name", 32)
	if err != nil {
		return "", nil, err
	}
	key, err = hkdf.Key(sha256.New, []byte(id), nil, "sshca console session key", 32)
	return hex.EncodeToString(n), key, err
}

func gcm(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// get returns the live session named id; an error only when the store fails.
func (t *sessions) get(ctx context.Context, id string) (session, bool, error) {
	if id == "" {
		return session{}, false, nil
	}
	name, key, err := derive(id)
	if err != nil {
		return session{}, false, err
	}
	sealed, ok, err := t.store.ConsoleSession(ctx, name)
	if err != nil || !ok {
		return session{}, false, err
	}
	aead, err := gcm(key)
	if err != nil {
		return session{}, false, err
	}
	if len(sealed) < aead.NonceSize() {
		return session{}, false, nil
	}
	plain, err := aead.Open(nil, sealed[:aead.NonceSize()], sealed[aead.NonceSize():], []byte(name))
	if err != nil {
		return session{}, false, nil // not sealed under this ID: no session
	}
	var rec sessionRecord
	if json.Unmarshal(plain, &rec) != nil {
		return session{}, false, nil
	}
	if !t.now().Before(rec.Expires) {
		_ = t.store.DeleteConsoleSession(ctx, name)
		return session{}, false, nil
	}
	return session{csrf: rec.CSRF, expires: rec.Expires, idToken: rec.IDToken, user: rec.User, sub: rec.Sub}, true, nil
}

// put stores s under a fresh ID and returns it; the caller's old ID, if any, is dropped first
// (rotation: an ID planted before sign-in never names a signed-in session).
func (t *sessions) put(ctx context.Context, old string, s session) (string, error) {
	if old != "" {
		if err := t.end(ctx, old); err != nil {
			return "", err
		}
	}
	id := randomToken()
	name, key, err := derive(id)
	if err != nil {
		return "", err
	}
	plain, err := json.Marshal(sessionRecord{CSRF: s.csrf, Expires: s.expires, IDToken: s.idToken, User: s.user, Sub: s.sub})
	if err != nil {
		return "", err
	}
	aead, err := gcm(key)
	if err != nil {
		return "", err
	}
	nonce := make([]byte, aead.NonceSize())
	_, _ = rand.Read(nonce) // crypto/rand.Read does not fail (Go 1.24+)
	if err := t.store.PutConsoleSession(ctx, name, aead.Seal(nonce, nonce, plain, []byte(name)), s.expires); err != nil {
		return "", err
	}
	return id, nil
}

// end drops a session (sign-out, failed callback), on every replica.
func (t *sessions) end(ctx context.Context, id string) error {
	name, _, err := derive(id)
	if err != nil {
		return err
	}
	return t.store.DeleteConsoleSession(ctx, name)
}

// errTooManySessions: the in-memory table is full (of signed-in sessions, which end with
// their ID tokens).
var errTooManySessions = errors.New("ui: too many console sessions on this replica")

// maxMemorySessions caps the in-memory table (one replica without a shared store): only
// signed-in users add to it.
const maxMemorySessions = 10000

// memorySessions is the SessionStore of a console given none: one replica's own table (tests;
// a single replica).
type memorySessions struct {
	now   func() time.Time
	mu    sync.Mutex
	m     map[string]memorySession
	spent map[string]time.Time
	// login is the current login key, since loginAt; loginPrev the one before.
	login, loginPrev []byte
	loginAt          time.Time
}

type memorySession struct {
	sealed  []byte
	expires time.Time
}

func newMemorySessions(now func() time.Time) *memorySessions {
	return &memorySessions{now: now, m: map[string]memorySession{}, spent: map[string]time.Time{}}
}

// ConsoleLoginKeys rotates as store.Redis does (a new key a period after the current one began;
// the previous one dropped after two).
func (m *memorySessions) ConsoleLoginKeys(_ context.Context, every time.Duration) ([]byte, []byte, time.Time, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	if age := now.Sub(m.loginAt); m.login == nil || age >= every {
		m.loginPrev = m.login
		if age >= 2*every {
			m.loginPrev = nil
		}
		m.login, m.loginAt = []byte(rand.Text()+rand.Text()), now
	}
	return m.login, m.loginPrev, m.loginAt.Add(every), nil
}

func (m *memorySessions) SpendConsoleLogin(_ context.Context, name string, until time.Time) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	for k, end := range m.spent {
		if !now.Before(end) {
			delete(m.spent, k)
		}
	}
	if _, ok := m.spent[name]; ok || !until.After(now) {
		return false, nil
	}
	m.spent[name] = until
	return true, nil
}

func (m *memorySessions) PutConsoleSession(_ context.Context, name string, sealed []byte, expires time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.m) >= maxMemorySessions {
		now := m.now()
		for k, v := range m.m {
			if !now.Before(v.expires) {
				delete(m.m, k)
			}
		}
		if len(m.m) >= maxMemorySessions {
			return fmt.Errorf("%w (at most %d)", errTooManySessions, maxMemorySessions)
		}
	}
	m.m[name] = memorySession{sealed: sealed, expires: expires}
	return nil
}

func (m *memorySessions) ConsoleSession(_ context.Context, name string) ([]byte, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.m[name]
	if ok && !m.now().Before(s.expires) {
		delete(m.m, name)
		return nil, false, nil
	}
	return s.sealed, ok, nil
}

func (m *memorySessions) DeleteConsoleSession(_ context.Context, name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.m, name)
	return nil
}
