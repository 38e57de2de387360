package store_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/keyring"
	"github.com/sshca/sshca/revocation"
	"github.com/sshca/sshca/store"
)

// allRoles is what every implementation provides; each contract test narrows it to the
// interface its consumer declares.
type allRoles interface {
	ca.CertStore
	AllLive(ctx context.Context, now time.Time) ([]ca.Certificate, error)
	ca.AccessRequestStore
	ca.TokenLedger
	ca.RevocationStore
	keyring.Document
	ReserveSerial(ctx context.Context, serial uint64, until time.Time) (bool, error)
	Check(ctx context.Context) error
	RegisterCA(ctx context.Context, caKey ssh.PublicKey) error
	UnregisterCA(ctx context.Context, caLine string) error
	RegisterHostCA(ctx context.Context, caKey ssh.PublicKey) error
	TrustedCAs(ctx context.Context) ([]ssh.PublicKey, error)
	CAs(ctx context.Context) ([]ssh.PublicKey, error)
	Snapshot(ctx context.Context, fp string) (ca.RevocationState, string, error)
	Changes(ctx context.Context, fp, after string, block time.Duration) ([]revocation.Change, error)
	Follow(ctx context.Context, after map[string]string, block time.Duration) (map[string][]revocation.Change, error)
	TrimFeed(ctx context.Context, fp string, maxLen int64) error
	AppendEvent(ctx context.Context, event []byte) error
	TakeEvents(ctx context.Context, consumer string, count int64, block, claimAfter time.Duration) ([]store.OutboxEntry, error)
	AckEvent(ctx context.Context, id string) error
	ca.DiscoveryStore
	ca.Admission
	PutConsoleSession(ctx context.Context, name string, sealed []byte, expires time.Time) error
	ConsoleSession(ctx context.Context, name string) ([]byte, bool, error)
	DeleteConsoleSession(ctx context.Context, name string) error
	ConsoleLoginKeys(ctx context.Context, every time.Duration) (current, previous []byte, until time.Time, err error)
	SpendConsoleLogin(ctx context.Context, name string, until time.Time) (bool, error)
}

var (
	_ allRoles = (*store.Redis)(nil)
	_ allRoles = (*store.Memory)(nil)
	// The one follower of a CA replica reads the store through it.
	_ revocation.FollowFeed = (*store.Redis)(nil)
	_ revocation.FollowFeed = (*store.Memory)(nil)
)

// clock is a settable clock shared by a store and its test.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Set(t time.Time) { c.mu.Lock(); defer c.mu.Unlock(); c.t = t }

// newStore returns an empty store on the clock.
type newStore func(t *testing.T, c *clock) allRoles

// forEachBackend runs a contract against every implementation: memory, a real redis-server
// (one per backend run, flushed after each store), and miniredis (what `sshca dev` runs on).
func forEachBackend(t *testing.T, contract func(t *testing.T, newStore newStore)) {
	t.Run("memory", func(t *testing.T) {
		contract(t, func(t *testing.T, c *clock) allRoles { return store.NewMemory(c.Now) })
	})
	t.Run("redis-server", func(t *testing.T) {
		r := testenv.StartRedis(t)
		contract(t, func(t *testing.T, c *clock) allRoles {
			rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
			t.Cleanup(func() { rdb.FlushAll(context.Background()); rdb.Close() })
			return store.NewRedis(rdb, store.RedisOptions{Now: c.Now})
		})
	})
	t.Run("miniredis", func(t *testing.T) {
		contract(t, func(t *testing.T, c *clock) allRoles {
			mr := miniredis.RunT(t)
			rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
			t.Cleanup(func() { rdb.Close() })
			return store.NewRedis(rdb, store.RedisOptions{Now: c.Now})
		})
	})
}

// pubKey is testenv.PublicKey under the name this package's tests know it by.
func pubKey(t testing.TB) ssh.PublicKey { return testenv.PublicKey(t) }
