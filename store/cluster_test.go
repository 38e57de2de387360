package store_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/revocation"
	"github.com/sshca/sshca/store"
)

// TestGenerationSwitchOnCluster runs the marks and the generation switch on a real Redis
// Cluster of 3 masters on loopback: every durable write (two revocation scopes, an identity
// block, a ban, the keyring, the inventory, a token, an audit record) works with its mark in
// its own tag, and the tags are spread over the masters. One master losing everything (FLUSHALL
// on the master of the user CA's scope) is found by the process that wrote, although the other
// shards kept theirs. After the state is written back and SwitchGeneration moves the store
// one slot at a time, a fresh process and both processes that found the loss are ready, every
// scope's version carries the new generation and is above every version before, and writes
// to every tag go on.
func TestGenerationSwitchOnCluster(t *testing.T) {
	c := testenv.StartRedisCluster(t, 3)
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs})
	defer cc.Close()
	ctx := context.Background()
	s := store.NewRedis(cc, store.RedisOptions{})
	userCA, hostCA, banned := testenv.PublicKey(t), testenv.PublicKey(t), testenv.PublicKey(t)
	exp := time.Now().Add(time.Hour)
	n := uint64(0)
	writeAll := func(s *store.Redis) {
		t.Helper()
		n++
		if _, err := s.Revoke(ctx, userCA, serialEntry(int(n), exp)); err != nil {
			t.Fatalf("revoke (user scope): %v", err)
		}
		if _, err := s.Revoke(ctx, hostCA, serialEntry(int(1000+n), exp)); err != nil {
			t.Fatalf("revoke (host scope): %v", err)
		}
		if _, err := s.Revoke(ctx, userCA, []ca.RevocationEntry{{Kind: ca.RevokedKey, Value: revocation.KeyEntry(banned)}}); err != nil {
			t.Fatalf("ban: %v", err)
		}
		if err := s.BlockIdentity(ctx, "https://idp|bob", exp); err != nil {
			t.Fatalf("block: %v", err)
		}
		if _, err := s.UpdateKeyring(ctx, func(*ca.Keyring) error { return nil }); err != nil {
			t.Fatalf("keyring: %v", err)
		}
		if err := s.Record(ctx, ca.Certificate{Serial: 5000 + n, KeyID: "alice#1", Kind: ca.UserCert, Identity: "https://idp|alice", ValidBefore: exp}); err != nil {
			t.Fatalf("record: %v", err)
		}
		if ok, err := s.UseToken(ctx, "iss|"+string(rune('a'+n)), time.Now(), exp); err != nil || !ok {
			t.Fatalf("token: %t %v", ok, err)
		}
		if err := audit.New(cc, audit.Options{Marks: s}).Append(ctx, ca.AuditRecord{Time: time.Now(), Action: ca.ActionUser, Outcome: "issued", Serial: 5000 + n}); err != nil {
			t.Fatalf("audit: %v", err)
		}
	}
	writeAll(s)
	if err := s.CheckState(ctx, userCA, hostCA); err != nil {
		t.Fatalf("intact cluster: %v", err)
	}
	keys := store.Keys{}
	userTag := store.TagCA(ssh.FingerprintSHA256(userCA))
	shards := map[string][]string{}
	for _, tag := range append([]string{userTag, store.TagCA(ssh.FingerprintSHA256(hostCA)), store.TagGeneration}, store.MarkedTags...) {
		m, err := cc.MasterForKey(ctx, keys.Mark(tag))
		if err != nil {
			t.Fatal(err)
		}
		shards[m.Options().Addr] = append(shards[m.Options().Addr], tag)
	}
	if len(shards) < 2 {
		t.Fatalf("every tag on one master: %v", shards)
	}
	t.Logf("tags by master: %v", shards)
	var before uint64
	for _, k := range []ssh.PublicKey{userCA, hostCA} {
		st, err := s.State(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		before = max(before, st.Version)
	}
	// A second process that saw the state before the loss.
	other := store.NewRedis(cc, store.RedisOptions{})
	if err := other.CheckState(ctx, userCA, hostCA); err != nil {
		t.Fatal(err)
	}

	lost, err := cc.MasterForKey(ctx, keys.Mark(userTag))
	if err != nil {
		t.Fatal(err)
	}
	if err := lost.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	t.Logf("master %s lost %v", lost.Options().Addr, shards[lost.Options().Addr])
	for name, p := range map[string]*store.Redis{"the writer": s, "the other": other} {
		if err := p.CheckState(ctx, userCA, hostCA); !errors.Is(err, store.ErrStateLost) {
			t.Fatalf("%s after one master lost its data: %v, want ErrStateLost", name, err)
		}
	}

	// Written back, then the switch, one slot at a time.
	if _, err := s.Revoke(ctx, userCA, serialEntry(1, exp)); err != nil {
		t.Fatalf("revoke on the lost store: %v", err)
	}
	g, err := s.NextGeneration(ctx, 0)
	if err != nil || g.Epoch != 1 {
		t.Fatalf("next generation %+v, %v", g, err)
	}
	if err := s.SwitchGeneration(ctx, g, userCA, hostCA); err != nil {
		t.Fatalf("switch on a cluster: %v", err)
	}
	fresh := store.NewRedis(cc, store.RedisOptions{})
	for name, p := range map[string]*store.Redis{"the writer": s, "the other": other, "a fresh process": fresh} {
		if err := p.CheckState(ctx, userCA, hostCA); err != nil {
			t.Errorf("%s after the switch: %v", name, err)
		}
	}
	for i, k := range []ssh.PublicKey{userCA, hostCA} {
		st, err := fresh.State(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		if gen, _ := revocation.SplitVersion(st.Version); gen != 1 || st.Version <= before {
			t.Errorf("scope version %d (generation %d) after the switch, %d before", st.Version, gen, before)
		}
		if i == 0 && !slices.ContainsFunc(st.Entries, func(e ca.RevocationEntry) bool { return e.Value == "1" }) {
			t.Errorf("the written-back revocation is not in the user scope: %v", st.Entries)
		}
	}
	writeAll(other)
	writeAll(fresh)
	if err := s.CheckState(ctx, userCA, hostCA); err != nil {
		t.Errorf("after writes in the new generation: %v", err)
	}
}

// TestFirstUseRaceOnCluster: many processes (each its own witness) first use one empty store
// on a real Redis Cluster at the same moment, each spending tokens: the generation record and
// the marks live on different nodes, so one process may read the record missing and then a
// mark that another created in between. None may take that for lost state.
func TestFirstUseRaceOnCluster(t *testing.T) {
	c := testenv.StartRedisCluster(t, 3)
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs})
	defer cc.Close()
	ctx := context.Background()
	for round := range 5 {
		if err := cc.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { return m.FlushAll(ctx).Err() }); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		for p := range 16 {
			wg.Go(func() {
				s := store.NewRedis(cc, store.RedisOptions{})
				for i := range 4 {
					if _, err := s.UseToken(ctx, fmt.Sprintf("iss|%d-%d-%d", round, p, i), time.Now(), time.Now().Add(time.Hour)); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("round %d: a first use racing others on an empty store: %v", round, err)
		}
	}
}
