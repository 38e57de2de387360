package testenv

import (
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// RedisCluster is a Redis Cluster on loopback, started for a test (redis-server
// --cluster-enabled yes, then redis-cli --cluster create) and stopped at its end.
type RedisCluster struct {
	// Addrs are every node's address (go-redis's ClusterOptions.Addrs).
	Addrs []string
	// Masters are the masters' addresses, as created (a failover may change roles).
	Masters []string
}

// StartRedisCluster starts masters redis-servers (at least 3, as redis-cli requires) in
// cluster mode without persistence, joins them into one cluster with the slots spread evenly,
// and waits until every node says the cluster is ok.
func StartRedisCluster(t testing.TB, masters int) *RedisCluster {
	t.Helper()
	return StartRedisClusterWithReplicas(t, masters, 0)
}

// StartRedisClusterWithReplicas is StartRedisCluster with replicas replicas per master: it
// also waits until every replica is attached to its master and in sync.
func StartRedisClusterWithReplicas(t testing.TB, masters, replicas int) *RedisCluster {
	t.Helper()
	bin, cli := Need(t, "redis-server"), Need(t, "redis-cli")
	c := &RedisCluster{}
	for range masters * (1 + replicas) {
		port := clusterPort(t)
		dir := t.TempDir()
		cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--protected-mode", "yes",
			"--save", "", "--appendonly", "no", "--dir", dir,
			"--cluster-enabled", "yes", "--cluster-config-file", filepath.Join(dir, "nodes.conf"), "--cluster-node-timeout", "5000")
		if err := cmd.Start(); err != nil {
			t.Fatalf("testenv: start redis-server (cluster): %v", err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		addr := "127.0.0.1:" + strconv.Itoa(port)
		WaitDial(t, addr, 10*time.Second)
		c.Addrs = append(c.Addrs, addr)
	}
	Run(t, cli, append(append([]string{"--cluster", "create"}, c.Addrs...), "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")...)
	deadline := time.Now().Add(30 * time.Second)
	for _, addr := range c.Addrs {
		host, port, _ := strings.Cut(addr, ":")
		for {
			out, _ := exec.Command(cli, "-h", host, "-p", port, "cluster", "info").CombinedOutput()
			repl, _ := exec.Command(cli, "-h", host, "-p", port, "info", "replication").CombinedOutput()
			ok := strings.Contains(string(out), "cluster_state:ok")
			if strings.Contains(string(repl), "role:slave") {
				ok = ok && strings.Contains(string(repl), "master_link_status:up")
			} else if replicas > 0 {
				ok = ok && strings.Count(string(repl), "state=online") == replicas
			}
			if ok {
				if strings.Contains(string(repl), "role:master") {
					c.Masters = append(c.Masters, addr)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("testenv: the cluster is not ok at %s within 30s:\n%s\n%s", addr, out, repl)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return c
}

// clusterPort is a free port whose cluster bus port (port + 10000) is free as well.
func clusterPort(t testing.TB) int {
	t.Helper()
	for range 100 {
		p := FreePort(t)
		if p+10000 > 65535 {
			continue
		}
		if l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+10000)); err == nil {
			l.Close()
			return p
		}
	}
	t.Fatal("testenv: no free port pair for a cluster node")
	return 0
}
