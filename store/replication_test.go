package store_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/revocation"
	"github.com/sshca/sshca/store"
)

// TestWaitedWritesOnSentinel runs the writes that must not be lost against a real Sentinel
// deployment (one master, one replica, three sentinels) with WaitReplicas 1. With the replica
// in sync each is acknowledged, and the replica holds it the moment it is. With the replica
// paused (SIGSTOP: connected, answering nothing) each is refused within the wait timeout as a
// 503 that says it is in force on the master but not confirmed, and it is in force on the
// master; the WAIT therefore ran on the connection that carried the write (on any other
// pooled connection it answers at once, with the replica counted). With two replicas required
// of one, nothing is ever acknowledged. A master that forgot its scripts (SCRIPT FLUSH, as a
// promoted replica may) still takes the write.
func TestWaitedWritesOnSentinel(t *testing.T) {
	s := testenv.StartRedisSentinel(t)
	// PoolFIFO hands out the idle connection used longest ago, so that a WAIT sent on its own
	// would go to another connection than its write: the bug this test must catch.
	rdb := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: testenv.SentinelMaster, SentinelAddrs: s.Sentinels, PoolFIFO: true})
	defer rdb.Close()
	ctx := context.Background()
	var warm sync.WaitGroup
	for range 4 { // four connections that never wrote: a WAIT on one of them answers at once
		warm.Go(func() { rdb.Do(ctx, "BLPOP", "sshca:test:nothing", "0.1") })
	}
	warm.Wait()
	replica := redis.NewClient(&redis.Options{Addr: s.Nodes[1].Addr})
	defer replica.Close()
	master := redis.NewClient(&redis.Options{Addr: s.Nodes[0].Addr})
	defer master.Close()
	const timeout = 300 * time.Millisecond
	st := store.NewRedis(rdb, store.RedisOptions{WaitReplicas: 1, WaitTimeout: timeout})
	keys := store.Keys{Prefix: store.DefaultPrefix}
	userCA, banned := testenv.PublicKey(t), testenv.PublicKey(t)
	exp := time.Now().Add(time.Hour)
	fp := ssh.FingerprintSHA256(userCA)

	writes := []struct {
		name string
		do   func(n int) error
		// on reads, from a node, whether write n is there.
		on func(c *redis.Client, n int) bool
	}{
		{"revocation", func(n int) error { _, err := st.Revoke(ctx, userCA, serialEntry(n, exp)); return err },
			func(c *redis.Client, n int) bool {
				return c.ZScore(ctx, keys.ScopeEntries(fp), "serial:"+itoa(n)).Err() == nil
			}},
		{"identity block", func(n int) error { return st.BlockIdentity(ctx, "https://idp|u"+itoa(n), exp) },
			func(c *redis.Client, n int) bool {
				return c.ZScore(ctx, keys.Blocked(), "https://idp|u"+itoa(n)).Err() == nil
			}},
		{"keyring change", func(n int) error {
			_, err := st.UpdateKeyring(ctx, func(k *ca.Keyring) error { return nil })
			return err
		}, func(c *redis.Client, n int) bool {
			k, err := c.Get(ctx, keys.Keyring()).Result()
			return err == nil && strings.Contains(k, `"version":`+itoa(n))
		}},
		{"revocation of a public key", func(n int) error {
			_, err := st.Revoke(ctx, userCA, []ca.RevocationEntry{{Kind: ca.RevokedKey, Value: revocation.KeyEntry(testenv.PublicKey(t)), Expiry: exp}})
			return err
		}, nil},
		{"lift of a revoked key", func(n int) error {
			if _, err := st.Revoke(ctx, userCA, []ca.RevocationEntry{{Kind: ca.RevokedKey, Value: revocation.KeyEntry(banned)}}); err != nil && n == 1 {
				return err
			}
			_, err := st.LiftKey(ctx, banned)
			return err
		}, nil},
	}
	for _, w := range writes {
		if err := w.do(1); err != nil {
			t.Fatalf("%s with the replica in sync: %v", w.name, err)
		}
		if w.on != nil && !w.on(replica, 1) {
			t.Errorf("%s acknowledged, but the replica does not hold it", w.name)
		}
	}

	s.Nodes[1].Pause()
	for _, w := range writes {
		start := time.Now()
		err := w.do(2)
		took := time.Since(start)
		if !errors.Is(err, store.ErrNotReplicated) || ca.KindOf(err) != ca.KindUnavailable {
			t.Errorf("%s with the replica paused: %v (kind %v), want a 503 that it is not replicated", w.name, err, ca.KindOf(err))
			continue
		}
		var e *ca.Error
		errors.As(err, &e)
		if !strings.Contains(e.Msg, "the "+w.name+" is written on the Redis master and in force there, but only 0 of the 1 replicas") {
			t.Errorf("%s: the 503 does not say what is known: %q", w.name, e.Msg)
		}
		// A write made of two waited writes (a lift) waits twice, at most.
		if took < timeout || took > 2*timeout+time.Second {
			t.Errorf("%s: refused after %s, want about the wait timeout %s", w.name, took, timeout)
		}
		if w.on != nil && !w.on(master, 2) {
			t.Errorf("%s refused as not replicated, but it is not in force on the master either", w.name)
		}
	}
	s.Nodes[1].Resume()
	for deadline := time.Now().Add(5 * time.Second); ; {
		err := writes[0].do(3)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the replica is back, but a revocation is still not acknowledged: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !writes[0].on(replica, 2) || !writes[0].on(replica, 3) {
		t.Error("the replica back in sync lacks the revocation refused while it was paused, or the one acknowledged since")
	}

	if err := master.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if err := writes[0].do(4); err != nil {
		t.Errorf("a revocation on a master without the script loaded: %v", err)
	}

	two := store.NewRedis(rdb, store.RedisOptions{WaitReplicas: 2, WaitTimeout: timeout})
	_, err := two.Revoke(ctx, userCA, serialEntry(5, exp))
	var e *ca.Error
	if !errors.As(err, &e) || !errors.Is(err, store.ErrNotReplicated) || !strings.Contains(e.Msg, "only 1 of the 2 replicas") {
		t.Errorf("two replicas required, one present: %v", err)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// TestReplicatedWitnessTakesLagNotLoss: on a replicated store, issuance's writes are not
// waited for, so a failover may take back the last of them; the witness holds a mark only
// once the replicas confirmed it. A mark taken back to a value seen but not yet confirmed is
// replication lag, and issuance goes on; once ConfirmReplicated ran, the same step back is
// lost state (ErrStateLost), as it always is on a store that waits for no replica.
func TestReplicatedWitnessTakesLagNotLoss(t *testing.T) {
	s := testenv.StartRedisSentinel(t)
	rdb := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: testenv.SentinelMaster, SentinelAddrs: s.Sentinels})
	defer rdb.Close()
	ctx := context.Background()
	st := store.NewRedis(rdb, store.RedisOptions{WaitReplicas: 1, WaitTimeout: time.Second})
	mark := store.Keys{Prefix: store.DefaultPrefix}.Mark(store.TagTokens)
	n := 0
	spend := func() error {
		n++
		_, err := st.UseToken(ctx, "https://idp|jti-"+itoa(n), time.Now(), time.Now().Add(time.Hour))
		return err
	}
	for range 3 {
		if err := spend(); err != nil {
			t.Fatal(err)
		}
	}
	// As a failover to a replica one write behind: the mark goes back by one.
	if err := rdb.HIncrBy(ctx, mark, "n", -1).Err(); err != nil {
		t.Fatal(err)
	}
	if err := spend(); err != nil {
		t.Fatalf("a mark back by one unconfirmed write is taken for lost state: %v", err)
	}
	if err := st.ConfirmReplicated(ctx); err != nil {
		t.Fatalf("confirm: %v", err)
	}
	if err := rdb.HIncrBy(ctx, mark, "n", -1).Err(); err != nil {
		t.Fatal(err)
	}
	if err := spend(); !errors.Is(err, store.ErrStateLost) {
		t.Fatalf("a mark back below what the replicas confirmed: %v, want ErrStateLost", err)
	}
}
