package bastion

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// fakeProc builds a procfs tree in a temporary directory: the TCP tables of testdata/proc/net
// and, for each pid, an fd directory whose entries link to the given targets (a nil list: a
// process whose fds may not be read).
func fakeProc(t *testing.T, fds map[int][]string) string {
	t.Helper()
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "net"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, table := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(filepath.Join("testdata", "proc", "net", table))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, "net", table), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for pid, targets := range fds {
		dir := filepath.Join(root, strconv.Itoa(pid))
		if targets == nil {
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Join(dir, "fd"), 0o755); err != nil {
			t.Fatal(err)
		}
		for n, target := range targets {
			if err := os.Symlink(target, filepath.Join(dir, "fd", strconv.Itoa(n))); err != nil {
				t.Fatal(err)
			}
		}
	}
	return root
}

// loopbackConn connects to a new listener on the loopback address of network ("tcp4",
// "tcp6"), all three closed at the end of the test; ok is false when there is no such
// loopback address.
func loopbackConn(t *testing.T, network string) (client, server net.Conn, ok bool) {
	t.Helper()
	host := "127.0.0.1"
	if network == "tcp6" {
		host = "::1"
	}
	ln, err := net.Listen(network, net.JoinHostPort(host, "0"))
	if err != nil {
		t.Logf("%s: no loopback listener: %v", network, err)
		return nil, nil, false
	}
	t.Cleanup(func() { ln.Close() })
	client, err = net.Dial(network, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	return client, server, true
}

// TestSocketOwnersFakeProc: the processes holding the established connection from a client are
// found through the TCP table of its address family and the processes' fd links; a connection in
// another state, or a client with no connection, is an error.
func TestSocketOwnersFakeProc(t *testing.T) {
	const self = 42
	root := fakeProc(t, map[int][]string{
		self: {"/dev/null", "socket:[1001]"},                 // the agent itself: never signalled
		100:  {"/dev/null", "socket:[900]", "socket:[1001]"}, // sshd's privileged monitor
		101:  {"socket:[1001]", "pipe:[77]"},                 // the session's unprivileged child
		102:  {"socket:[1002]"},
		200:  {"socket:[2001]"},
		201:  {"socket:[2002]"},
		300:  nil, // fds not readable: skipped
	})
	for _, tc := range []struct {
		addr    string
		want    []int
		wantErr bool
	}{
		{addr: "192.0.2.10:50000", want: []int{100, 101}},
		{addr: "192.0.2.11:50000", want: []int{102}},
		{addr: "[2001:db8::5]:40000", want: []int{200}},
		{addr: "192.0.2.10:50001", wantErr: true}, // TIME_WAIT
		{addr: "192.0.2.10:50009", wantErr: true}, // no such connection
		{addr: "192.0.2.11:50001", wantErr: true}, // same client, other port
		// sshd logs IPv4 clients as IPv4 and its IPv6 listeners are IPv6-only, so an IPv4
		// client is looked up in /proc/net/tcp alone, never as an IPv4-mapped tcp6 entry.
		{addr: "192.0.2.12:50002", wantErr: true},
		{addr: "[::ffff:192.0.2.12]:50002", wantErr: true},
		{addr: "not-an-ip:22", wantErr: true},
		{addr: "192.0.2.10", wantErr: true},
	} {
		got, err := socketOwners(root, tc.addr, self)
		if (err != nil) != tc.wantErr {
			t.Errorf("socketOwners(%s): err = %v, want error %v", tc.addr, err, tc.wantErr)
			continue
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("socketOwners(%s) (-want +got):\n%s", tc.addr, diff)
		}
	}
}

// TestSocketOwnersLive: on this machine's /proc, the test process holds the server end of a
// loopback connection, and is left out when it is self.
func TestSocketOwnersLive(t *testing.T) {
	if _, err := os.Stat("/proc/net/tcp"); err != nil {
		t.Skipf("no Linux procfs: %v", err)
	}
	for _, network := range []string{"tcp4", "tcp6"} {
		client, _, ok := loopbackConn(t, network)
		if !ok {
			continue
		}
		addr := client.LocalAddr().String() // the remote end of the server's socket
		got, err := socketOwners("/proc", addr, -1)
		if err != nil {
			t.Fatalf("%s: socketOwners(%s): %v", network, addr, err)
		}
		if diff := cmp.Diff([]int{os.Getpid()}, got); diff != "" {
			t.Errorf("%s: socketOwners(%s) (-want +got):\n%s", network, addr, diff)
		}
		if got, err := socketOwners("/proc", addr, os.Getpid()); err != nil || len(got) != 0 {
			t.Errorf("%s: socketOwners(%s) leaving out self = %v, %v; want none", network, addr, got, err)
		}
	}
}

// TestScanConnsTrustsOnlySSHD: a connection vouches for a log line only through a holder
// named sshd (or sshd-session) running as the trusted uid; a process of another uid named
// sshd, or one of the trusted uid named otherwise, does not.
func TestScanConnsTrustsOnlySSHD(t *testing.T) {
	root := fakeProc(t, map[int][]string{
		100: {"socket:[1001]"}, // sshd, root: trusted
		101: {"socket:[1001]"}, // sshd, uid 1000 (the session's unprivileged child)
		102: {"socket:[1002]"}, // a user's own program named sshd
		200: {"socket:[2001]"}, // sshd-session, root (OpenSSH 9.8 on)
		201: {"socket:[1002]"}, // root, named otherwise
	})
	for pid, p := range map[int]struct {
		comm string
		uid  int
	}{100: {"sshd", 0}, 101: {"sshd", 1000}, 102: {"sshd", 1000}, 200: {"sshd-session", 0}, 201: {"bash", 0}} {
		dir := filepath.Join(root, strconv.Itoa(pid))
		status := fmt.Sprintf("Name:\t%s\nPid:\t%d\nUid:\t%d\t%d\t%d\t%d\nGid:\t0\t0\t0\t0\n", p.comm, pid, p.uid, p.uid, p.uid, p.uid)
		if err := os.WriteFile(filepath.Join(dir, "comm"), []byte(p.comm+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "status"), []byte(status), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	conns, err := scanConns(root, procTCP(root), -1, 0)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][2][]int{}
	for addr, c := range conns {
		got[addr] = [2][]int{c.pids, c.sshd}
	}
	want := map[string][2][]int{
		"192.0.2.10:50000":    {{100, 101}, {100}},
		"192.0.2.11:50000":    {{102, 201}, nil},
		"[2001:db8::5]:40000": {{200}, {200}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("scanConns (-want +got):\n%s", diff)
	}
}

// TestSockDiagEstablished: on this machine, sock_diag lists the server end of a live loopback
// connection (IPv4 and IPv6) with the inode /proc/net/tcp gives it, and leaves out a
// connection that was closed (its client end in TIME_WAIT) and one that only listens; the
// connection is found by scanConns as held by the test process.
func TestSockDiagEstablished(t *testing.T) {
	if _, err := os.Stat("/proc/net/tcp"); err != nil {
		t.Skipf("no Linux procfs: %v", err)
	}
	byAddr := func(table tcpTable) map[string]uint64 {
		t.Helper()
		es, err := table()
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]uint64{}
		for _, e := range es {
			m[connAddr(e.remote, e.port)] = e.inode
		}
		return m
	}
	for _, network := range []string{"tcp4", "tcp6"} {
		client, _, ok := loopbackConn(t, network)
		if !ok {
			continue
		}
		// A second connection, closed by its client first: the client end waits in TIME_WAIT
		// with the second listener as its remote end.
		gone, goneServer, _ := loopbackConn(t, network)
		_ = gone.Close()
		_, _ = goneServer.Read(make([]byte, 1)) // the client's FIN
		_ = goneServer.Close()

		addr, err := normalAddr(client.LocalAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		diag, proc := byAddr(sockDiagEstablished), byAddr(procTCP("/proc"))
		if diag[addr] == 0 || diag[addr] != proc[addr] {
			t.Errorf("%s: the server end of %s: sock_diag inode %d, /proc/net inode %d; want the same, not 0", network, addr, diag[addr], proc[addr])
		}
		closedAddr, err := normalAddr(goneServer.LocalAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		if inode, ok := diag[closedAddr]; ok {
			t.Errorf("%s: sock_diag lists a connection to %s (inode %d), closed by its client: want only established ones", network, closedAddr, inode)
		}
		conns, err := scanConns("/proc", sockDiagEstablished, -1, os.Geteuid())
		if err != nil {
			t.Fatal(err)
		}
		if c := conns[addr]; c == nil || !slices.Contains(c.pids, os.Getpid()) {
			t.Errorf("%s: scanConns through sock_diag: %s = %+v, want held by this process (%d)", network, addr, c, os.Getpid())
		}
	}
}

// TestScanConnsSharedRemoteEnd: a client's address and port can also be the remote end of
// another connection of the host (a process listening on that port of that address, here a
// local server with one client), whichever the table lists first: the connection that
// vouches for the client's Accepted line is the one sshd holds.
func TestScanConnsSharedRemoteEnd(t *testing.T) {
	root := fakeProc(t, map[int][]string{
		300: {"socket:[3001]"}, // a local server's client, connected to 127.0.0.1:40720
		301: {"socket:[3002]"}, // sshd, holding the connection from 127.0.0.1:40720
	})
	for pid, comm := range map[int]string{300: "redis-cli", 301: "sshd"} {
		dir := filepath.Join(root, strconv.Itoa(pid))
		status := fmt.Sprintf("Name:\t%s\nPid:\t%d\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n", comm, pid)
		if err := os.WriteFile(filepath.Join(dir, "comm"), []byte(comm+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "status"), []byte(status), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	client := tcpEntry{remote: net.ParseIP("127.0.0.1").To4(), port: 40720, inode: 3001}
	ssh := tcpEntry{remote: net.ParseIP("127.0.0.1").To4(), port: 40720, inode: 3002}
	for name, entries := range map[string][]tcpEntry{"sshd's first": {ssh, client}, "sshd's last": {client, ssh}} {
		conns, err := scanConns(root, func() ([]tcpEntry, error) { return entries, nil }, -1, 0)
		if err != nil {
			t.Fatal(err)
		}
		got := conns["127.0.0.1:40720"]
		if got == nil || got.inode != 3002 || !slices.Equal(got.sshd, []int{301}) {
			t.Errorf("%s: 127.0.0.1:40720 = %+v, want sshd's connection (inode 3002, sshd [301])", name, got)
		}
	}
}
