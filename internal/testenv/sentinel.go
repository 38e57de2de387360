package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// SentinelMaster is the name the sentinels of StartRedisSentinel monitor their master under.
const SentinelMaster = "sshca"

// SentinelDownAfter is how long the sentinels of StartRedisSentinel wait for a silent master
// before they call it down (down-after-milliseconds); a failover follows in about a second.
const SentinelDownAfter = time.Second

// RedisSentinel is a Sentinel deployment on loopback started for a test: one master, one
// replica and three sentinels with a quorum of two, none of them persistent. Node 0 starts
// as the master; after a failover the replica is.
type RedisSentinel struct {
	// Sentinels are the sentinels' host:port addresses (go-redis's FailoverOptions.SentinelAddrs).
	Sentinels []string
	// Password is the sentinels' own password (requirepass of each sentinel, and the
	// sentinel-pass they give each other), "" when they have none (StartRedisSentinelAuth).
	Password string
	// Nodes are the two redis-servers, the first started as the master.
	Nodes []*RedisNode
}

// RedisNode is one redis-server of a test deployment that a test may kill (SIGKILL, as a
// crash) and start again on the same port.
type RedisNode struct {
	Addr string
	t    testing.TB
	bin  string
	args []string

	mu  sync.Mutex
	cmd *exec.Cmd
}

// StartRedisSentinel starts the master, its replica and three sentinels, waits until the
// replica is in sync and every sentinel knows the replica and the two other sentinels, and
// stops them all when the test ends.
func StartRedisSentinel(t testing.TB) *RedisSentinel {
	t.Helper()
	return StartRedisSentinelAuth(t, "")
}

// StartRedisSentinelAuth is StartRedisSentinel with sentinels that require password (the
// default user's requirepass; they authenticate to each other with sentinel-pass) while the
// master and replica require none: a client must give the sentinels' own password, distinct
// from the data nodes' credentials. An empty password is StartRedisSentinel.
func StartRedisSentinelAuth(t testing.TB, password string) *RedisSentinel {
	t.Helper()
	bin, cli := Need(t, "redis-server"), Need(t, "redis-cli")
	s := &RedisSentinel{Password: password}
	var masterPort int
	for i := range 2 {
		port := FreePort(t)
		args := []string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--protected-mode", "yes",
			"--save", "", "--appendonly", "no", "--dir", t.TempDir()}
		if i == 0 {
			masterPort = port
		} else {
			args = append(args, "--replicaof", "127.0.0.1", strconv.Itoa(masterPort))
		}
		n := &RedisNode{Addr: "127.0.0.1:" + strconv.Itoa(port), t: t, bin: bin, args: args}
		n.Start()
		t.Cleanup(n.Kill)
		s.Nodes = append(s.Nodes, n)
	}
	for range 3 {
		port := FreePort(t)
		dir := t.TempDir()
		// A sentinel rewrites its configuration file (the known replicas and sentinels, the
		// current epoch), so each gets its own, writable.
		conf := filepath.Join(dir, "sentinel.conf")
		body := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\n"+
			"sentinel monitor %s 127.0.0.1 %d 2\n"+
			"sentinel down-after-milliseconds %s %d\n"+
			"sentinel failover-timeout %s 10000\n"+
			"sentinel parallel-syncs %s 1\n",
			port, dir, SentinelMaster, masterPort, SentinelMaster, SentinelDownAfter.Milliseconds(), SentinelMaster, SentinelMaster)
		if password != "" {
			body += fmt.Sprintf("requirepass %q\nsentinel sentinel-pass %q\n", password, password)
		}
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			t.Fatalf("testenv: sentinel config: %v", err)
		}
		n := &RedisNode{Addr: "127.0.0.1:" + strconv.Itoa(port), t: t, bin: bin, args: []string{conf, "--sentinel"}}
		n.Start()
		t.Cleanup(n.Kill)
		s.Sentinels = append(s.Sentinels, n.Addr)
	}
	deadline := time.Now().Add(30 * time.Second)
	waitFor := func(addr, what string, args []string, ok func(string) bool) {
		for {
			out, _ := exec.Command(cli, append(s.cliArgs(addr), args...)...).CombinedOutput()
			if ok(string(out)) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("testenv: %s at %s within 30s:\n%s", what, addr, out)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitFor(s.Nodes[0].Addr, "the replica is not in sync", []string{"info", "replication"}, func(out string) bool {
		return strings.Contains(out, "connected_slaves:1") && strings.Contains(out, "state=online")
	})
	for _, addr := range s.Sentinels {
		waitFor(addr, "the sentinel does not know the replica and the two other sentinels",
			[]string{"sentinel", "master", SentinelMaster}, func(out string) bool {
				f := strings.Fields(out)
				return field(f, "num-slaves") == "1" && field(f, "num-other-sentinels") == "2" && field(f, "flags") == "master"
			})
	}
	return s
}

// field is the value after name in redis-cli's one-per-line answer to SENTINEL MASTER.
func field(f []string, name string) string {
	for i := 0; i+1 < len(f); i++ {
		if f[i] == name {
			return f[i+1]
		}
	}
	return ""
}

// cliArgs are redis-cli's arguments to reach addr: with the sentinels' password when addr is
// a sentinel's.
func (s *RedisSentinel) cliArgs(addr string) []string {
	host, port, _ := strings.Cut(addr, ":")
	args := []string{"-h", host, "-p", port}
	if s.Password != "" && slices.Contains(s.Sentinels, addr) {
		args = append(args, "--no-auth-warning", "-a", s.Password)
	}
	return args
}

// MasterAddr asks the sentinels which node is the master now (SENTINEL
// GET-MASTER-ADDR-BY-NAME), "" when none answers.
func (s *RedisSentinel) MasterAddr(t testing.TB) string {
	t.Helper()
	cli := Need(t, "redis-cli")
	for _, addr := range s.Sentinels {
		out, err := exec.Command(cli, append(s.cliArgs(addr), "sentinel", "get-master-addr-by-name", SentinelMaster)...).Output()
		if f := strings.Fields(string(out)); err == nil && len(f) == 2 {
			return f[0] + ":" + f[1]
		}
	}
	return ""
}

// Node returns the node at addr, nil when it is none of the deployment's.
func (s *RedisSentinel) Node(addr string) *RedisNode {
	for _, n := range s.Nodes {
		if n.Addr == addr {
			return n
		}
	}
	return nil
}

// Start starts the node (again, on the same port, with the arguments it was first started
// with: a node that was the master comes back as a master, and the sentinels turn it into a
// replica of the new one) and waits until it accepts connections.
func (n *RedisNode) Start() {
	n.t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil {
		return
	}
	cmd := exec.Command(n.bin, n.args...)
	if err := cmd.Start(); err != nil {
		n.t.Fatalf("testenv: start redis-server: %v", err)
	}
	n.cmd = cmd
	WaitDial(n.t, n.Addr, 10*time.Second)
}

// StartReplicaOf starts the node again as a replica of master (host:port), as an operator
// brings back a crashed master that kept no data: started as a master it would come back
// empty, and if the sentinels took it back as the master before they turned it into a
// replica, its replicas would copy its emptiness. It comes back with replica-priority 0, so
// the sentinels never promote it: a replica whose first full sync has not ended reports its
// link down since -1 s, which Sentinel's choice does not exclude, and a second failover on a
// loaded machine (down-after 1 s) once promoted it empty, and the master it replaced then
// copied its emptiness (acknowledged revocations lost; sshca refused issuance on the missing
// marks). docs/scaling.md tells operators the same.
func (n *RedisNode) StartReplicaOf(master string) {
	n.t.Helper()
	host, port, _ := strings.Cut(master, ":")
	n.mu.Lock()
	args := slices.Clone(n.args)
	if i := slices.Index(args, "--replicaof"); i >= 0 {
		args = slices.Delete(args, i, i+3)
	}
	if i := slices.Index(args, "--replica-priority"); i >= 0 {
		args = slices.Delete(args, i, i+2)
	}
	n.args = append(args, "--replicaof", host, port, "--replica-priority", "0")
	n.mu.Unlock()
	n.Start()
}

// Kill kills the node with SIGKILL, as a crash: nothing is flushed, no client is told.
func (n *RedisNode) Kill() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return
	}
	_ = n.cmd.Process.Kill()
	_ = n.cmd.Wait()
	n.cmd = nil
}

// Pause stops the node with SIGSTOP: it keeps its connections but answers nothing, as a
// replica that fell behind; Resume (SIGCONT) lets it go on.
func (n *RedisNode) Pause() { n.signal(syscall.SIGSTOP) }

// Resume continues a paused node.
func (n *RedisNode) Resume() { n.signal(syscall.SIGCONT) }

func (n *RedisNode) signal(sig syscall.Signal) {
	n.t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		n.t.Fatalf("testenv: %s is not running", n.Addr)
	}
	if err := n.cmd.Process.Signal(sig); err != nil {
		n.t.Fatalf("testenv: signal %s: %v", n.Addr, err)
	}
}
