package main

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/internal/testenv"
)

// TestClusterSendsNothingTwice: serve's Redis Cluster client (newUniversalClient, as
// buildServer and the commands build it) sends no command or pipeline again after its answer
// was lost, although go-redis's Cluster loop (MaxRedirects) does so whatever MaxRetries says:
// against a real Cluster of 3 masters, each node reached through a proxy that drops one
// answer (testenv.DropReply) and closes the connection, an INCR and a pipelined INCR whose
// answers are lost run once and answer an error (before: twice, and success: a token return
// whose first run gave the token back answered "counts as spent", an audit append or a
// revocation ran twice). A MOVED answer is still followed (a client whose slot map sends
// every key to the first master).
func TestClusterSendsNothingTwice(t *testing.T) {
	ctx := context.Background()
	c := testenv.StartRedisCluster(t, 3)
	proxies := map[string]*testenv.ReplyDropper{}
	for _, a := range c.Addrs {
		proxies[a] = testenv.DropReply(t, a)
	}
	opts, err := RedisConfig{Addrs: c.Addrs, ClusterMode: true}.UniversalOptions()
	if err != nil {
		t.Fatal(err)
	}
	newRedisBounds(2*time.Second, 0, 0, 0).universal(opts)
	opts.Dialer = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if p := proxies[addr]; p != nil {
			addr = p.Addr
		}
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	rdb := newUniversalClient(opts)
	t.Cleanup(func() { rdb.Close() })
	cc := rdb.(*redis.ClusterClient)
	direct := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs})
	t.Cleanup(func() { direct.Close() })
	if err := cc.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	// dropNext makes the proxy of key's node lose the next answer to a request naming key.
	dropNext := func(t *testing.T, key string) *testenv.ReplyDropper {
		t.Helper()
		n, err := cc.MasterForKey(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		p := proxies[n.Options().Addr]
		if p == nil {
			t.Fatalf("no proxy in front of %s", n.Options().Addr)
		}
		p.Arm(key)
		return p
	}
	ranOnce := func(t *testing.T, key string, p *testenv.ReplyDropper, err error) {
		t.Helper()
		if p.Armed() {
			t.Fatal("no answer was dropped: the test shows nothing")
		}
		n, gerr := direct.Get(ctx, key).Int()
		if gerr != nil {
			t.Fatal(gerr)
		}
		if n != 1 || err == nil {
			t.Fatalf("INCR whose answer was lost ran %d times and answered %v; want once, and an error", n, err)
		}
		if !strings.Contains(err.Error(), "not sent again") {
			t.Errorf("the error does not say the command was not sent again: %v", err)
		}
	}

	t.Run("command", func(t *testing.T) {
		p := dropNext(t, "probe:cmd")
		ranOnce(t, "probe:cmd", p, cc.Incr(ctx, "probe:cmd").Err())
	})
	t.Run("pipeline", func(t *testing.T) {
		p := dropNext(t, "probe:pipe")
		_, err := cc.Pipelined(ctx, func(pl redis.Pipeliner) error {
			pl.Incr(ctx, "probe:pipe")
			return nil
		})
		ranOnce(t, "probe:pipe", p, err)
	})
	t.Run("MOVED still followed", func(t *testing.T) {
		first := c.Masters[0]
		stale := redis.NewClusterClient(&redis.ClusterOptions{MaxRetries: -1, ClusterSlots: func(context.Context) ([]redis.ClusterSlot, error) {
			return []redis.ClusterSlot{{Start: 0, End: 16383, Nodes: []redis.ClusterNode{{Addr: first}}}}, nil
		}})
		t.Cleanup(func() { stale.Close() })
		guardResends(stale)
		moved := 0
		for i := range 20 {
			key := "moved:" + string(rune('a'+i))
			n, err := direct.MasterForKey(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			if n.Options().Addr == first {
				continue
			}
			moved++
			if err := stale.Set(ctx, key, "v", 0).Err(); err != nil {
				t.Fatalf("SET of a key of another master through a stale slot map: %v (MOVED not followed)", err)
			}
			if _, err := stale.Pipelined(ctx, func(pl redis.Pipeliner) error { pl.Get(ctx, key); return nil }); err != nil {
				t.Fatalf("pipelined GET of a key of another master through a stale slot map: %v", err)
			}
		}
		if moved == 0 {
			t.Fatal("every key was the first master's: the test shows nothing")
		}
	})
}
