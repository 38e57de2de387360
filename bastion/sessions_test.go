package bastion

import (
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jonboulle/clockwork"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/krl"
	"github.com/sshca/sshca/revocation"
)

// fakeHost is a procfs stand-in: the connections sshd holds (by client address) and the
// signals sent.
type fakeHost struct {
	mu     sync.Mutex
	conns  map[string]*tcpConn
	killed []int
}

func (h *fakeHost) scan() (map[string]*tcpConn, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string]*tcpConn, len(h.conns))
	for a, c := range h.conns {
		cc := *c
		out[a] = &cc
	}
	return out, nil
}

func (h *fakeHost) kill(pid int, _ syscall.Signal) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.killed = append(h.killed, pid)
	return nil
}

func (h *fakeHost) set(addr string, c *tcpConn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if c == nil {
		delete(h.conns, addr)
		return
	}
	h.conns[addr] = c
}

func (h *fakeHost) signalled() []int {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := slices.Clone(h.killed)
	slices.Sort(out)
	return out
}

func newFakeSessions(t *testing.T) (*Sessions, *fakeHost) {
	h := &fakeHost{conns: map[string]*tcpConn{}}
	s := newSessions(slog.New(slog.DiscardHandler), h.scan)
	s.kill = h.kill
	return s, h
}

func acceptedLine(user, addr string, port int, key ssh.PublicKey, id string, serial uint64, caKey ssh.PublicKey) string {
	return fmt.Sprintf("Accepted publickey for %s from %s port %d ssh2: ED25519-CERT %s ID %s (serial %d) CA ED25519 %s",
		user, addr, port, ssh.FingerprintSHA256(key), id, serial, ssh.FingerprintSHA256(caKey))
}

func (s *Sessions) users() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, ss := range s.live {
		for _, c := range ss.certs {
			out = append(out, c.user)
		}
	}
	slices.Sort(out)
	return out
}

// TestEndRevokedBy: each installed KRL is checked against the live sessions; those it revokes
// (serial or key ID under their CA or any CA, their key, its SHA-256, or the key of the CA that
// signed them) are ended, by signalling the sshd processes holding their connection, and the
// others live on.
func TestEndRevokedBy(t *testing.T) {
	ca1, ca2, stolen := testenv.PublicKey(t), testenv.PublicKey(t), testenv.PublicKey(t)
	keys := map[string]ssh.PublicKey{}
	s, h := newFakeSessions(t)
	pid := 1000
	accept := func(name string, port int, serial uint64, id string, caKey ssh.PublicKey) {
		keys[name] = testenv.PublicKey(t)
		pid += 2
		h.set(fmt.Sprintf("192.0.2.1:%d", port), &tcpConn{inode: uint64(port), pids: []int{pid, pid + 1}, sshd: []int{pid, pid + 1}})
		s.Observe("sshd[1]: " + acceptedLine(name, "192.0.2.1", port, keys[name], id, serial, caKey))
	}
	accept("serial", 1001, 500, "a#500", ca1)    // in a revoked range of ca1: pids 1002, 1003
	accept("otherca", 1002, 500, "b#500", ca2)   // same serial, other CA: lives
	accept("keyid", 1003, 7, "mallory#7", ca2)   // key ID revoked for any CA: 1006, 1007
	accept("key", 1004, 8, "c#8", ca1)           // its key is revoked: 1008, 1009
	accept("keyhash", 1005, 9, "d#9", ca1)       // its key's SHA-256 is revoked: 1010, 1011
	accept("clean", 1006, 10, "e#10", ca1)       // nothing revokes it
	accept("edge", 1007, 600, "f#600", ca1)      // just past the range
	accept("castolen", 1008, 11, "g#11", stolen) // signed by a compromised CA key: 1016, 1017
	if s.Live() != 0 {
		t.Fatalf("%d sessions from lines naming pid 1, which holds none of the connections; want 0", s.Live())
	}
	// The same lines as sshd -e writes them (no pid) count.
	accept2 := func(name string, port int, serial uint64, id string, caKey ssh.PublicKey) {
		s.Observe(acceptedLine(name, "192.0.2.1", port, keys[name], id, serial, caKey))
	}
	accept2("serial", 1001, 500, "a#500", ca1)
	accept2("otherca", 1002, 500, "b#500", ca2)
	accept2("keyid", 1003, 7, "mallory#7", ca2)
	accept2("key", 1004, 8, "c#8", ca1)
	accept2("keyhash", 1005, 9, "d#9", ca1)
	accept2("clean", 1006, 10, "e#10", ca1)
	accept2("edge", 1007, 600, "f#600", ca1)
	accept2("castolen", 1008, 11, "g#11", stolen)
	if s.Live() != 8 {
		t.Fatalf("%d sessions tracked from the log, want 8", s.Live())
	}
	k := &krl.KRL{Version: 2}
	k.RevokeSerialRange(ca1, 400, 599)
	k.RevokeSerials(ca1, 3)
	k.RevokeKeyIDs(nil, "mallory#7")
	k.RevokeKey(keys["key"])
	k.RevokeKey(stolen)
	b, err := k.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := krl.Parse(b) // as the agent has it: decoded from the wire
	if err != nil {
		t.Fatal(err)
	}
	parsed.RevokedSHA256 = append(parsed.RevokedSHA256, sha256.Sum256(keys["keyhash"].Marshal()))
	s.EndRevokedBy(parsed)
	if diff := cmp.Diff([]string{"clean", "edge", "otherca"}, s.users()); diff != "" {
		t.Errorf("sessions left (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]int{1002, 1003, 1006, 1007, 1008, 1009, 1010, 1011, 1016, 1017}, h.signalled()); diff != "" {
		t.Errorf("signalled (-want +got):\n%s", diff)
	}

	// A session learned after the KRL that revokes it (its line read late) ends at once.
	late := testenv.PublicKey(t)
	h.set("192.0.2.1:1009", &tcpConn{inode: 1009, pids: []int{2000}, sshd: []int{2000}})
	s.Observe(acceptedLine("late", "192.0.2.1", 1009, late, "h#450", 450, ca1))
	if slices.Contains(s.users(), "late") || !slices.Contains(h.signalled(), 2000) {
		t.Errorf("a session whose certificate the newest KRL revokes was kept: %v, signalled %v", s.users(), h.signalled())
	}
}

// TestEndRevoked: in Redis mode each change's entries end the sessions they cover, a
// compromised CA key (a key entry naming it) included.
func TestEndRevoked(t *testing.T) {
	caKey, other, userKey := testenv.PublicKey(t), testenv.PublicKey(t), testenv.PublicKey(t)
	s, h := newFakeSessions(t)
	for i, name := range []string{"bykey", "byca", "byserial", "byid", "clean"} {
		port := 2000 + i
		h.set(fmt.Sprintf("192.0.2.2:%d", port), &tcpConn{inode: uint64(port), pids: []int{port}, sshd: []int{port}})
		k, c := testenv.PublicKey(t), other
		switch name {
		case "bykey":
			k = userKey
		case "byca":
			c = caKey
		}
		s.Observe(acceptedLine(name, "192.0.2.2", port, k, name+"#1", uint64(100+i), c))
	}
	s.EndRevoked(context.Background(), []ca.RevocationEntry{
		{Kind: ca.RevokedKey, Value: revocation.KeyEntry(userKey)},
		{Kind: ca.RevokedKey, Value: revocation.KeyEntry(caKey)},
		{Kind: ca.RevokedSerial, Value: "102"},
		{Kind: ca.RevokedKeyID, Value: "byid#1"},
	})
	if diff := cmp.Diff([]string{"clean"}, s.users()); diff != "" {
		t.Errorf("sessions left (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]int{2000, 2001, 2002, 2003}, h.signalled()); diff != "" {
		t.Errorf("signalled (-want +got):\n%s", diff)
	}
}

// TestForgedLines: a log line counts only when procfs confirms it. Forged Accepted lines (for a
// connection nobody holds, one held by a process that is not sshd, one naming a pid that does
// not hold it) add nothing; a forged close for a live session drops nothing; a forged Accepted
// line for a live session cannot hide it from a revocation of its real certificate. A real
// close (the connection released) drops the session.
func TestForgedLines(t *testing.T) {
	caKey, key := testenv.PublicKey(t), testenv.PublicKey(t)
	s, h := newFakeSessions(t)
	clk := clockwork.NewFakeClockAt(time.Unix(1_800_000_000, 0))
	s.clock = clk

	s.Observe(acceptedLine("ghost", "127.0.0.1", 4000, key, "ghost#1", 1, caKey)) // no connection
	h.set("127.0.0.1:4001", &tcpConn{inode: 41, pids: []int{77}})                 // held, not by sshd
	s.Observe(acceptedLine("notsshd", "127.0.0.1", 4001, key, "x#2", 2, caKey))
	h.set("127.0.0.1:4002", &tcpConn{inode: 42, pids: []int{88}, sshd: []int{88}})
	s.Observe("Nov 29 22:00:00 bastion sshd[99]: " + acceptedLine("wrongpid", "127.0.0.1", 4002, key, "x#3", 3, caKey))
	if s.Live() != 0 {
		t.Fatalf("forged Accepted lines added sessions: %v", s.users())
	}

	// The real session, then lines forged about it.
	s.Observe("Nov 29 22:00:01 bastion sshd[88]: " + acceptedLine("alice", "127.0.0.1", 4002, key, "alice#10", 10, caKey))
	s.Observe(acceptedLine("decoy", "127.0.0.1", 4002, testenv.PublicKey(t), "decoy#11", 11, caKey))
	for _, forged := range []string{
		"Connection closed by 127.0.0.1 port 4002 [preauth]",
		"Received disconnect from 127.0.0.1 port 4002:11: disconnected by user",
		"Disconnected from user alice 127.0.0.1 port 4002",
	} {
		s.Observe(forged)
	}
	clk.Advance(closeGrace + time.Second)
	s.confirmClosed()
	if diff := cmp.Diff([]string{"alice", "decoy"}, s.users()); diff != "" {
		t.Fatalf("after forged lines (-want +got):\n%s", diff)
	}
	s.Observe("Connection closed by 127.0.0.1 port 4002") // forged again, after the grace
	s.EndRevoked(context.Background(), []ca.RevocationEntry{{Kind: ca.RevokedSerial, Value: "10"}})
	if s.Live() != 0 || !slices.Equal(h.signalled(), []int{88}) {
		t.Errorf("the revoked session (with a forged decoy line) was not ended: live %v, signalled %v", s.users(), h.signalled())
	}

	// A real close: sshd releases the connection a little after it logs it.
	h.set("127.0.0.1:4003", &tcpConn{inode: 43, pids: []int{90}, sshd: []int{90}})
	s.Observe(acceptedLine("bob", "127.0.0.1", 4003, key, "bob#12", 12, caKey))
	s.Observe("Received disconnect from 127.0.0.1 port 4003:11: disconnected by user")
	if s.Live() != 1 {
		t.Fatal("a close sshd has not acted on yet dropped the session")
	}
	h.set("127.0.0.1:4003", nil)
	s.confirmClosed()
	if s.Live() != 0 {
		t.Errorf("a real close left the session: %v", s.users())
	}

	// A reused client port is another connection: the old session's revocation spares it.
	h.set("127.0.0.1:4004", &tcpConn{inode: 44, pids: []int{91}, sshd: []int{91}})
	s.Observe(acceptedLine("carol", "127.0.0.1", 4004, key, "carol#13", 13, caKey))
	h.set("127.0.0.1:4004", &tcpConn{inode: 45, pids: []int{92}, sshd: []int{92}})
	s.EndRevoked(context.Background(), []ca.RevocationEntry{{Kind: ca.RevokedSerial, Value: "13"}})
	if slices.Contains(h.signalled(), 92) {
		t.Error("a later connection from the same client port was signalled")
	}
}

// TestForgedAcceptedLive: on this machine's /proc, a connection held by a process that is not
// sshd (this test) does not vouch for an Accepted line.
func TestForgedAcceptedLive(t *testing.T) {
	if _, err := os.Stat("/proc/net/tcp"); err != nil {
		t.Skipf("no Linux procfs: %v", err)
	}
	client, _, ok := loopbackConn(t, "tcp4")
	if !ok {
		t.Fatal("no IPv4 loopback")
	}
	self, uid := -1, os.Geteuid() // the test process is a candidate holder, of the trusted uid
	s := newSessions(slog.New(slog.DiscardHandler), func() (map[string]*tcpConn, error) { return scanConns("/proc", hostTCP("/proc"), self, uid) })
	s.kill = func(int, syscall.Signal) error { t.Error("signalled a process"); return nil }
	port := client.LocalAddr().(*net.TCPAddr).Port
	s.Observe(acceptedLine("mallory", "127.0.0.1", port, testenv.PublicKey(t), "m#1", 1, testenv.PublicKey(t)))
	if s.Live() != 0 {
		t.Errorf("a connection held by %s (not sshd) vouched for an Accepted line", os.Args[0])
	}
}

// TestSessionsSurviveAMissedProcRead: a read of a busy /proc/net/tcp can miss an entry. A
// session whose connection one sweep does not see stays (dropped only at the second); an
// Accepted line read while /proc missed its connection is added at the next sweep that sees
// it, and ended there when the newest KRL revokes it; one that no sweep confirms is forgotten.
func TestSessionsSurviveAMissedProcRead(t *testing.T) {
	caKey, key := testenv.PublicKey(t), testenv.PublicKey(t)
	s, h := newFakeSessions(t)
	clk := clockwork.NewFakeClockAt(time.Unix(1_800_000_000, 0))
	s.clock = clk
	nolog := filepath.Join(t.TempDir(), "sshd.log")

	h.set("127.0.0.1:5001", &tcpConn{inode: 51, pids: []int{51}, sshd: []int{51}})
	s.Observe(acceptedLine("alice", "127.0.0.1", 5001, key, "alice#1", 1, caKey))
	h.set("127.0.0.1:5001", nil) // missed by one read
	s.sync(nolog, false)
	if !s.tracks("alice#1") {
		t.Fatal("one sweep that missed the connection dropped the session")
	}
	h.set("127.0.0.1:5001", &tcpConn{inode: 51, pids: []int{51}, sshd: []int{51}})
	s.sync(nolog, false)
	h.set("127.0.0.1:5001", nil)
	s.sync(nolog, false)
	if !s.tracks("alice#1") {
		t.Fatal("misses in two sweeps that were not in a row dropped the session")
	}
	s.sync(nolog, false)
	if s.tracks("alice#1") {
		t.Error("a session whose connection two sweeps in a row did not find was kept")
	}

	k := &krl.KRL{Version: 5}
	k.RevokeSerials(caKey, 2)
	s.EndRevokedBy(k)
	s.Observe(acceptedLine("bob", "127.0.0.1", 5002, key, "bob#2", 2, caKey)) // /proc misses it
	s.Observe(acceptedLine("carol", "127.0.0.1", 5003, key, "carol#3", 3, caKey))
	if s.Live() != 0 {
		t.Fatal("an unconfirmed line added a session")
	}
	h.set("127.0.0.1:5002", &tcpConn{inode: 52, pids: []int{52}, sshd: []int{52}})
	clk.Advance(sweepEvery)
	s.sync(nolog, false)
	if s.tracks("bob#2") || !slices.Contains(h.signalled(), 52) {
		t.Errorf("the revoked session confirmed at the sweep was not ended: live %v, signalled %v", s.users(), h.signalled())
	}
	clk.Advance(unconfirmedFor)
	h.set("127.0.0.1:5003", &tcpConn{inode: 53, pids: []int{53}, sshd: []int{53}})
	s.sync(nolog, false)
	if s.tracks("carol#3") {
		t.Error("an Accepted line older than unconfirmedFor was taken for a later connection")
	}
}

// TestFollowSweepsOnItsClock: Follow reconciles the table with /proc every sweepEvery of the
// tracker's clock and at no other time (a clockwork.FakeClock here, which nothing but the test
// moves): a session whose connection is gone is dropped at the second sweep that misses it,
// 2×sweepEvery after the connection went, whatever real time passes.
func TestFollowSweepsOnItsClock(t *testing.T) {
	caKey, key := testenv.PublicKey(t), testenv.PublicKey(t)
	s, h := newFakeSessions(t)
	start := time.Unix(1_800_000_000, 0)
	clk := clockwork.NewFakeClockAt(start)
	s.clock = clk
	// Each read of /proc says when it ran and waits for the test: while it waits, the sweep
	// before it is over and its own has not begun.
	scanned, proceed := make(chan time.Time), make(chan struct{})
	s.scan = func() (map[string]*tcpConn, error) {
		scanned <- clk.Now()
		<-proceed
		return h.scan()
	}
	sweep := func(what string) time.Time {
		t.Helper()
		select {
		case at := <-scanned:
			return at
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no read of /proc", what)
			return time.Time{}
		}
	}
	noSweep := func(what string) {
		t.Helper()
		select {
		case at := <-scanned:
			t.Fatalf("%s: /proc read at %v, before sweepEvery had passed on the clock", what, at.Sub(start))
		case <-time.After(200 * time.Millisecond):
		}
	}
	log := filepath.Join(t.TempDir(), "sshd.log")
	h.set("127.0.0.1:6001", &tcpConn{inode: 61, pids: []int{61}, sshd: []int{61}})
	if err := os.WriteFile(log, []byte("Nov 30 00:00:00 bastion sshd[61]: "+acceptedLine("alice", "127.0.0.1", 6001, key, "alice#1", 1, caKey)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Follow(ctx, log) }()
	defer func() {
		cancel()
		for {
			select {
			case <-scanned: // a sweep under way when ctx ended
				proceed <- struct{}{}
			case <-done:
				return
			}
		}
	}()
	if at := sweep("the rebuild at start"); !at.Equal(start) {
		t.Fatalf("rebuild at %v", at)
	}
	proceed <- struct{}{}
	ctxWait, cancelWait := context.WithTimeout(ctx, 10*time.Second)
	defer cancelWait()
	if err := clk.BlockUntilContext(ctxWait, 2); err != nil { // the sweep's and the close check's tickers
		t.Fatalf("Follow does not wait on its clock: %v", err)
	}
	h.set("127.0.0.1:6001", nil) // the connection ends without a logged close
	clk.Advance(sweepEvery - time.Millisecond)
	noSweep("just before the first sweep")
	clk.Advance(time.Millisecond)
	if at := sweep("the first sweep"); !at.Equal(start.Add(sweepEvery)) {
		t.Errorf("first sweep at %v, want %v", at.Sub(start), sweepEvery)
	}
	if !s.tracks("alice#1") {
		t.Fatal("the rebuild did not find the session in the log")
	}
	proceed <- struct{}{}
	clk.Advance(sweepEvery - time.Millisecond)
	noSweep("just before the second sweep")
	clk.Advance(time.Millisecond)
	if at := sweep("the second sweep"); !at.Equal(start.Add(2 * sweepEvery)) {
		t.Errorf("second sweep at %v, want %v", at.Sub(start), 2*sweepEvery)
	}
	if !s.tracks("alice#1") {
		t.Fatal("one sweep that missed the connection dropped the session")
	}
	proceed <- struct{}{}
	testenv.Eventually(t, 10*time.Second, "the session is dropped at the second sweep", func() bool { return !s.tracks("alice#1") })
}

// TestEndRetriesAMissedConnection: a session found revoked whose connection the read of /proc
// does not show at that moment (a busy TCP table, a failed read) is not forgotten: the next
// sweep that sees its connection ends it, and two sweeps in a row that do not see it drop it.
func TestEndRetriesAMissedConnection(t *testing.T) {
	caKey, key := testenv.PublicKey(t), testenv.PublicKey(t)
	nolog := filepath.Join(t.TempDir(), "sshd.log")
	revoke := func(s *Sessions, serial uint64, version uint64) {
		k := &krl.KRL{Version: version}
		k.RevokeSerials(caKey, serial)
		s.EndRevokedBy(k)
	}

	t.Run("missed by the read", func(t *testing.T) {
		s, h := newFakeSessions(t)
		conn := &tcpConn{inode: 61, pids: []int{61}, sshd: []int{61}}
		h.set("127.0.0.1:6001", conn)
		s.Observe(acceptedLine("alice", "127.0.0.1", 6001, key, "alice#1", 1, caKey))
		h.set("127.0.0.1:6001", nil) // this read misses it
		revoke(s, 1, 1)
		if got := h.signalled(); len(got) != 0 {
			t.Fatalf("signalled %v for a connection the read did not show", got)
		}
		h.set("127.0.0.1:6001", conn) // the next read shows it
		s.sync(nolog, false)
		if got := h.signalled(); !slices.Equal(got, []int{61}) || s.tracks("alice#1") {
			t.Errorf("after the sweep that sees the connection: signalled %v, tracked %v; want [61], false", got, s.tracks("alice#1"))
		}
	})
	t.Run("read failed", func(t *testing.T) {
		s, h := newFakeSessions(t)
		h.set("127.0.0.1:6002", &tcpConn{inode: 62, pids: []int{62}, sshd: []int{62}})
		s.Observe(acceptedLine("bob", "127.0.0.1", 6002, key, "bob#2", 2, caKey))
		scan := s.scan
		s.scan = func() (map[string]*tcpConn, error) { return nil, os.ErrPermission }
		revoke(s, 2, 1)
		s.scan = scan
		s.sync(nolog, false)
		if got := h.signalled(); !slices.Equal(got, []int{62}) {
			t.Errorf("after a failed read and a sweep: signalled %v, want [62]", got)
		}
	})
	t.Run("gone", func(t *testing.T) {
		s, h := newFakeSessions(t)
		h.set("127.0.0.1:6003", &tcpConn{inode: 63, pids: []int{63}, sshd: []int{63}})
		s.Observe(acceptedLine("carol", "127.0.0.1", 6003, key, "carol#3", 3, caKey))
		h.set("127.0.0.1:6003", nil) // closed before the revocation
		revoke(s, 3, 1)
		s.sync(nolog, false)
		s.sync(nolog, false)
		if s.tracks("carol#3") || len(h.signalled()) != 0 {
			t.Errorf("a revoked session whose connection two sweeps did not see: tracked %v, signalled %v; want dropped, none", s.tracks("carol#3"), h.signalled())
		}
		// A later connection from the same client port is another session: not signalled.
		h.set("127.0.0.1:6003", &tcpConn{inode: 64, pids: []int{64}, sshd: []int{64}})
		s.sync(nolog, false)
		if got := h.signalled(); len(got) != 0 {
			t.Errorf("signalled %v: a later connection from the same port", got)
		}
	})
}
