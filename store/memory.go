package store

import (
	"context"
	"sort"
	"sync"
	"time"

	"github.com/sshca/sshca/ca"
)

// Memory is an in-process store covering every role that Redis covers, for tests and
// single-process use. It forgets everything on restart.
type Memory struct {
	now func() time.Time

	mu        sync.Mutex
	certs     map[uint64]ca.Certificate
	serials   map[uint64]time.Time
	nextPrune time.Time
	aliases   map[string]map[string]time.Time // alias → identity → until
	tokens    map[string]memToken
	keyring   []byte               // the keyring document, JSON as in Redis
	scopes    map[string]*memScope // by CA fingerprint; listed by CAs
	trusted   map[string]bool      // authorized_keys lines of trusted user CA keys
	hostCAs   map[string]bool      // authorized_keys lines of host CA keys: not listed by CAs
	blocked   map[string]time.Time
	requests  map[string][]byte // access requests by ID, JSON as in Redis
	outbox    memOutbox         // its own lock: TakeEvents waits without holding mu
	discovery memDiscovery      // its own lock
	console   memConsole        // its own lock
	// changed is closed and replaced whenever a scope's feed grows, waking Changes.
	changed chan struct{}
	feedMax int
}

// pruneEvery bounds the cost of pruning: a full sweep at most once per interval.
const pruneEvery = time.Second

// NewMemory returns an empty in-memory store; now is the clock used to expire entries.
func NewMemory(now func() time.Time) *Memory {
	if now == nil {
		now = time.Now
	}
	return &Memory{now: now, certs: map[uint64]ca.Certificate{}, serials: map[uint64]time.Time{},
		changed: make(chan struct{}), feedMax: StreamMaxLen}
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
