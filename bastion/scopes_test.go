package bastion_test

import (
	"context"
	"errors"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/bastion"
	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/revocation"
	"github.com/sshca/sshca/store"
)

// countingFeed counts snapshots by scope and the scopes of every read, to tell a scope added
// in place from a reload of everything.
type countingFeed struct {
	bastion.Feed

	mu        sync.Mutex
	snapshots map[string]int
	reads     []int // number of scopes of each Follow call
}

func (c *countingFeed) Snapshot(ctx context.Context, fp string) (ca.RevocationState, string, error) {
	c.mu.Lock()
	c.snapshots[fp]++
	c.mu.Unlock()
	return c.Feed.Snapshot(ctx, fp)
}

func (c *countingFeed) Follow(ctx context.Context, after map[string]string, block time.Duration) (map[string][]revocation.Change, error) {
	c.mu.Lock()
	c.reads = append(c.reads, len(after))
	c.mu.Unlock()
	return c.Feed.Follow(ctx, after, block)
}

func (c *countingFeed) snapshotsOf(fp string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.snapshots[fp]
}

// agentConns counts the connections named name that redis-server holds (CLIENT LIST).
func agentConns(t *testing.T, admin *redis.Client, name string) int {
	t.Helper()
	n, _ := agentConnsBlocked(t, admin, name)
	return n
}

// agentConnsBlocked counts the connections named name that redis-server holds, and of them
// those blocked in a command (flags=b: an XREAD BLOCK under way).
func agentConnsBlocked(t *testing.T, admin *redis.Client, name string) (n, blocked int) {
	t.Helper()
	list, err := admin.ClientList(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(list, "\n") {
		f := strings.Fields(line)
		if slices.Contains(f, "name="+name) {
			n++
			if slices.ContainsFunc(f, func(s string) bool { return strings.HasPrefix(s, "flags=") && strings.Contains(s, "b") }) {
				blocked++
			}
		}
	}
	return n, blocked
}

// revokedIn reports whether the KRL at path revokes serial under caKey.
func revokedIn(t *testing.T, path string, caKey ssh.PublicKey, serial uint64) bool {
	k := installedKRL(t, path)
	return k != nil && k.IsRevoked(&ssh.Certificate{Serial: serial, SignatureKey: caKey, Key: caKey})
}

// TestAgentFollowsFortyScopesOnOneRead: with 40 CA keys (every key ever made keeps its scope),
// a revocation under the 40th reaches the KRL as fast as under the first, and the agent holds
// one or two Redis connections (one blocked in the XREAD of every scope, one for the rest),
// counted by redis-server itself, though its pool would give it 20. One blocking read per
// scope took 20 connections and left the scopes past the 20th waiting up to 4 s for one.
func TestAgentFollowsFortyScopesOnOneRead(t *testing.T) {
	r := testenv.StartRedis(t)
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	db := store.NewRedis(rdb, store.RedisOptions{})
	for range 40 {
		if err := db.RegisterCA(ctx, testenv.PublicKey(t)); err != nil {
			t.Fatal(err)
		}
	}
	cas, err := db.CAs(ctx)
	if err != nil || len(cas) != 40 {
		t.Fatalf("CAs: %d keys, %v", len(cas), err)
	}
	const name = "sshca-agent-under-test"
	// go-redis's default pool (10 per CPU, at least 20 here): only the agent limits itself.
	// Transactions (Snapshot) on the main pool, as cmd/sshca's agent has them: go-redis
	// otherwise keeps a pool of its own for pipelines.
	agentRDB := redis.NewClient(&redis.Options{Addr: r.Addr, ClientName: name, PoolSize: max(20, 10*runtime.GOMAXPROCS(0)), PipelinePoolSize: -1})
	defer agentRDB.Close()
	path := filepath.Join(t.TempDir(), "revoked.krl")
	// A short CARefresh so that the re-reads of the CA set run beside the blocked read.
	a, err := bastion.NewAgent(bastion.Options{KRLPath: path, Feed: store.NewRedis(agentRDB, store.RedisOptions{}), CARefresh: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	actx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(actx) }()
	defer func() { cancel(); <-done }()
	waitUntil(t, "the first KRL", func() bool { return a.Status().Connected })

	peak := 0
	sample := func() {
		peak = max(peak, agentConns(t, rdb, name))
	}
	exp := time.Now().Add(time.Hour)
	var took []time.Duration
	for i, k := range []ssh.PublicKey{cas[39], cas[0], cas[39], cas[20], cas[39]} {
		serial := uint64(100 + i)
		begin := time.Now()
		if _, err := db.Revoke(ctx, k, []ca.RevocationEntry{{Kind: ca.RevokedSerial, Value: strconv.FormatUint(serial, 10), Expiry: exp}}); err != nil {
			t.Fatal(err)
		}
		for !revokedIn(t, path, k, serial) {
			sample()
			if time.Since(begin) > 10*time.Second {
				t.Fatalf("serial %d under CA key %d never reached the KRL", serial, i)
			}
			time.Sleep(5 * time.Millisecond)
		}
		took = append(took, time.Since(begin))
		sample()
	}
	// Idle past one whole blocking read, with the CA set re-read every 50 ms meanwhile.
	for end := time.Now().Add(6 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		sample()
	}
	t.Logf("revocation to KRL: %v; peak agent connections %d", took, peak)
	if peak < 1 || peak > 2 {
		t.Errorf("the agent held up to %d Redis connections for 40 scopes, want 1 or 2", peak)
	}
	slices.Sort(took)
	// The usual time is well under a second; one blocked read per scope waited seconds here.
	if med := took[len(took)/2]; med > 2*time.Second {
		t.Errorf("median revocation-to-KRL time %v with 40 scopes, want under 2 s", med)
	}
}

// TestAgentAddsNewScopeInPlace: a CA key registered while the agent runs is followed from then
// on (a revocation under it reaches the KRL), without the other scopes being read again.
func TestAgentAddsNewScopeInPlace(t *testing.T) {
	r := testenv.StartRedis(t)
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	db := store.NewRedis(rdb, store.RedisOptions{})
	first := testenv.PublicKey(t)
	if err := db.RegisterCA(ctx, first); err != nil {
		t.Fatal(err)
	}
	const name = "sshca-agent-under-test"
	agentRDB := redis.NewClient(&redis.Options{Addr: r.Addr, ClientName: name, PipelinePoolSize: -1})
	defer agentRDB.Close()
	feed := &countingFeed{Feed: store.NewRedis(agentRDB, store.RedisOptions{}), snapshots: map[string]int{}}
	path := filepath.Join(t.TempDir(), "revoked.krl")
	a, err := bastion.NewAgent(bastion.Options{KRLPath: path, Feed: feed, CARefresh: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	actx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(actx) }()
	defer func() { cancel(); <-done }()
	waitUntil(t, "the first KRL", func() bool { return a.Status().Connected })

	exp := time.Now().Add(time.Hour)
	second := testenv.PublicKey(t)
	if err := db.RegisterCA(ctx, second); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the new scope snapshotted", func() bool { return feed.snapshotsOf(ssh.FingerprintSHA256(second)) == 1 })
	for i, k := range []ssh.PublicKey{second, first} {
		begin := time.Now()
		if _, err := db.Revoke(ctx, k, []ca.RevocationEntry{{Kind: ca.RevokedSerial, Value: strconv.Itoa(7 + i), Expiry: exp}}); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, "the revocation in the KRL", func() bool { return revokedIn(t, path, k, uint64(7+i)) })
		// The new key is the one a compromised key's ban goes into: its scope must not wait
		// for the read that was under way when it appeared (up to 5 s).
		if took := time.Since(begin); took > 2*time.Second {
			t.Errorf("revocation under CA key %d took %v to reach the KRL, want under 2 s", i, took)
		}
	}
	if n := feed.snapshotsOf(ssh.FingerprintSHA256(first)); n != 1 {
		t.Errorf("the first scope was snapshotted %d times: a new key reloaded everything", n)
	}
	// The read abandoned for the new set ends (within its 5 s block, at once here: the
	// revocation under the first key answers it). Its connection then goes back to go-redis's
	// pool, which keeps idle connections open (MaxIdleConns 0, ConnMaxIdleTime 30 min): the
	// agent keeps three open, with one read blocked, not two.
	waitUntil(t, "one blocked read among at most 3 agent connections", func() bool {
		n, blocked := agentConnsBlocked(t, rdb, name)
		return n >= 1 && n <= 3 && blocked <= 1
	})
	feed.mu.Lock()
	defer feed.mu.Unlock()
	if !slices.Contains(feed.reads, 2) || slices.Max(feed.reads) != 2 {
		t.Errorf("scopes per read %v: want the two scopes read together once the second is known", feed.reads)
	}
}

// crossSlotFeed answers a read of more than one scope as Redis Cluster does when their
// streams sit in different slots.
type crossSlotFeed struct {
	*store.Memory

	mu    sync.Mutex
	multi int // reads of more than one scope
}

func (c *crossSlotFeed) Follow(ctx context.Context, after map[string]string, block time.Duration) (map[string][]revocation.Change, error) {
	if len(after) > 1 {
		c.mu.Lock()
		c.multi++
		c.mu.Unlock()
		return nil, errors.New("store: follow: CROSSSLOT Keys in request don't hash to the same slot")
	}
	return c.Memory.Follow(ctx, after, block)
}

// TestAgentFollowsScopesOneAtATimeOnCrossSlot: where one read of every scope fails with
// CROSSSLOT (Redis Cluster), the agent reads them one at a time, stays connected, and
// revocations under every scope reach the KRL; it does not try the failing read again.
func TestAgentFollowsScopesOneAtATimeOnCrossSlot(t *testing.T) {
	ctx := context.Background()
	mem := store.NewMemory(time.Now)
	keys := []ssh.PublicKey{testenv.PublicKey(t), testenv.PublicKey(t), testenv.PublicKey(t)}
	for _, k := range keys {
		if err := mem.RegisterCA(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	feed := &crossSlotFeed{Memory: mem}
	path := filepath.Join(t.TempDir(), "revoked.krl")
	a, err := bastion.NewAgent(bastion.Options{KRLPath: path, Feed: feed, CARefresh: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	actx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(actx) }()
	defer func() { cancel(); <-done }()
	waitUntil(t, "the first KRL", func() bool { return a.Status().Connected })
	exp := time.Now().Add(time.Hour)
	for i, k := range keys {
		if _, err := mem.Revoke(ctx, k, []ca.RevocationEntry{{Kind: ca.RevokedSerial, Value: strconv.Itoa(1 + i), Expiry: exp}}); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, "the revocation in the KRL", func() bool { return revokedIn(t, path, k, uint64(1+i)) })
	}
	if st := a.Status(); !st.Connected || st.LastError != "" {
		t.Errorf("status after CROSSSLOT: %+v", st)
	}
	feed.mu.Lock()
	defer feed.mu.Unlock()
	if feed.multi != 1 {
		t.Errorf("%d reads of every scope at once, want 1 (then one scope at a time)", feed.multi)
	}
}
