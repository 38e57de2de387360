package ui

import (
	"sync"
	"time"
)

// session is one browser's state, held server-side and named by the cookie's random ID. A
// login session (idToken empty) carries the authorization request's secrets until the
// callback; a signed-in one carries the ID token the console acts with.
type session struct {
	csrf    string
	expires time.Time

	// Login state, until the callback.
	state, verifier, nonce, returnTo string

	// Signed in.
	idToken string
	user    string // shown on the pages
	sub     string
}

func (s *session) signedIn() bool { return s.idToken != "" }

// maxSessions caps the table: a client that opens sign-ins without finishing them fills it
// with login sessions, which expire in loginTimeout.
const (
	maxSessions  = 10000
	loginTimeout = 10 * time.Minute
)

// sessions is the server-side session table of one replica. Sessions are not shared between
// replicas: behind a load balancer the console needs session affinity (README, approvers).
type sessions struct {
	now func() time.Time
	mu  sync.Mutex
	m   map[string]*session
}

func newSessions(now func() time.Time) *sessions {
	return &sessions{now: now, m: map[string]*session{}}
}

// get returns a copy of the live session named id, dropping it when it has ended.
func (t *sessions) get(id string) (session, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, ok := t.m[id]
	if !ok {
		return session{}, false
	}
	if !t.now().Before(s.expires) {
		delete(t.m, id)
		return session{}, false
	}
	return *s, true
}

// put stores s under a fresh ID and returns it; the caller's old ID, if any, is dropped first
// (rotation: an ID planted before sign-in never names a signed-in session).
func (t *sessions) put(old string, s session) (string, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.m, old)
	if len(t.m) >= maxSessions {
		now := t.now()
		for k, v := range t.m {
			if !now.Before(v.expires) {
				delete(t.m, k)
			}
		}
		if len(t.m) >= maxSessions {
			return "", false
		}
	}
	id := randomToken()
	t.m[id] = &s
	return id, true
}

// end drops a session (sign-out, failed callback).
func (t *sessions) end(id string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.m, id)
}
