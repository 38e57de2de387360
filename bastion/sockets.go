package bastion

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"

	"github.com/prometheus/procfs"
)

// tcpEstablished is TCP_ESTABLISHED, the st column of /proc/net/tcp{,6}.
const tcpEstablished = 1

// tcpConn is an established TCP connection as procfs shows it: its socket's inode, the
// processes (other than the agent) that hold the socket, and which of them are sshd.
type tcpConn struct {
	inode uint64
	pids  []int // every holder, ascending
	sshd  []int // the holders that are sshd processes of the trusted uid, ascending
}

// sshdProcess reports whether p is an sshd process running as uid: its command name is sshd
// (OpenSSH up to 9.7, which names every process of a connection sshd) or sshd-session (9.8 on)
// and its real user ID is uid. A local user can write any line to a syslog file but cannot
// make a process of another uid, so only a connection held by such a process vouches for a
// log line.
func sshdProcess(p procfs.Proc, uid int) bool {
	comm, err := p.Comm()
	if err != nil || (comm != "sshd" && comm != "sshd-session") {
		return false
	}
	st, err := p.NewStatus()
	return err == nil && st.UIDs[0] == uint64(uid)
}

// connAddr is the key of a connection by its client end, as sshd logs it: "ip:port" for an
// IPv4 client, "[ip]:port" for an IPv6 one.
func connAddr(ip net.IP, port uint64) string {
	return net.JoinHostPort(ip.String(), strconv.FormatUint(port, 10))
}

// normalAddr parses a client address as sshd logs it ("ip:port", "[ip]:port") into connAddr's
// form. An IPv4-mapped IPv6 address is refused: sshd logs IPv4 clients as IPv4 and listens
// on IPv6 with IPV6_V6ONLY, so no connection of its can have one.
func normalAddr(addr string) (string, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return "", fmt.Errorf("bastion: client address %q is not an IP address", addr)
	}
	if ip.To4() != nil && strings.Contains(host, ":") {
		return "", fmt.Errorf("bastion: client address %q is IPv4-mapped IPv6: sshd logs IPv4 clients as IPv4", addr)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return "", fmt.Errorf("bastion: client port in %q: %w", addr, err)
	}
	return connAddr(ip, port), nil
}

// tcpEntry is an established TCP connection: its remote end and its socket's inode.
type tcpEntry struct {
	remote net.IP
	port   uint64
	inode  uint64
}

// tcpTable lists the established TCP connections, IPv4 and IPv6.
type tcpTable func() ([]tcpEntry, error)

// hostTCP lists the established TCP connections of the agent's network namespace: through
// sock_diag (sockDiagEstablished), and from the procfs at root when the kernel refuses it (a
// kernel without inet_diag, a seccomp profile that forbids NETLINK_SOCK_DIAG).
func hostTCP(root string) tcpTable {
	return func() ([]tcpEntry, error) {
		if es, err := sockDiagEstablished(); err == nil {
			return es, nil
		}
		return procTCP(root)()
	}
}

// procTCP reads the TCP tables of the procfs mounted at root. It formats and parses every
// socket of the host in every state, TIME_WAIT included; the tables of a busy host hold tens
// of thousands (BenchmarkScanConns).
func procTCP(root string) tcpTable {
	return func() ([]tcpEntry, error) {
		fs, err := procfs.NewFS(root)
		if err != nil {
			return nil, err
		}
		var out []tcpEntry
		for _, table := range []func() (procfs.NetTCP, error){fs.NetTCP, fs.NetTCP6} {
			// A table that cannot be read (no IPv6) holds nothing we can find.
			lines, _ := table()
			for _, l := range lines {
				if l.St == tcpEstablished {
					out = append(out, tcpEntry{remote: l.RemAddr, port: l.RemPort, inode: l.Inode})
				}
			}
		}
		return out, nil
	}
}

// scanConns lists the established TCP connections that table gives by their client end
// (connAddr), with the processes other than self that hold them according to the procfs
// mounted at root (none when no other process we may inspect does); uid is the one an sshd
// process must run as to count (sshdProcess). IPv4-mapped entries of the IPv6 table are left
// out (see normalAddr).
func scanConns(root string, table tcpTable, self, uid int) (map[string]*tcpConn, error) {
	fs, err := procfs.NewFS(root)
	if err != nil {
		return nil, err
	}
	entries, err := table()
	if err != nil {
		return nil, err
	}
	byInode := map[string]*tcpConn{}
	// Every socket by its remote end. Several can share one: a client's address and port are
	// also a listener's when a process of the host listens on that port of that address (on
	// loopback, or behind a local proxy, any port a client's connection leaves from), and
	// every connection to that listener has it as its remote end. Which of them is sshd's
	// is known only once their holders are.
	byAddr := map[string][]*tcpConn{}
	for _, e := range entries {
		if e.inode == 0 {
			continue
		}
		ip := e.remote
		if len(ip) == net.IPv6len && ip.To4() != nil {
			continue // IPv4-mapped: never sshd's (see normalAddr)
		}
		c := &tcpConn{inode: e.inode}
		byInode["socket:["+strconv.FormatUint(e.inode, 10)+"]"] = c
		addr := connAddr(ip, e.port)
		byAddr[addr] = append(byAddr[addr], c)
	}
	conns := make(map[string]*tcpConn, len(byAddr))
	if len(byAddr) == 0 {
		return conns, nil
	}
	procs, err := fs.AllProcs()
	if err != nil {
		return nil, err
	}
	for _, p := range procs {
		if p.PID == self {
			continue
		}
		// A process that exits while we look, or that we may not inspect, holds nothing of ours.
		targets, err := p.FileDescriptorTargets()
		if err != nil {
			continue
		}
		isSSHD := -1 // not yet known: looked up only for holders
		for _, t := range targets {
			c := byInode[t]
			if c == nil || slices.Contains(c.pids, p.PID) {
				continue
			}
			c.pids = append(c.pids, p.PID)
			if isSSHD < 0 {
				isSSHD = 0
				if sshdProcess(p, uid) {
					isSSHD = 1
				}
			}
			if isSSHD == 1 {
				c.sshd = append(c.sshd, p.PID)
			}
		}
	}
	for addr, cs := range byAddr {
		// sshd's socket if one is (a client of a local listener is never sshd's), else one
		// that some process holds, else the first.
		best := cs[0]
		for _, c := range cs[1:] {
			if len(c.sshd) > 0 && len(best.sshd) == 0 || len(c.pids) > 0 && len(best.pids) == 0 {
				best = c
			}
		}
		slices.Sort(best.pids)
		slices.Sort(best.sshd)
		conns[addr] = best
	}
	return conns, nil
}

// socketOwners finds the processes, other than self, holding an established TCP connection whose
// remote end is addr, from the procfs mounted at root (Linux). An IPv4 address is looked up in
// /proc/net/tcp only and any other in /proc/net/tcp6 only: sshd listens on IPv6 with
// IPV6_V6ONLY and logs IPv4 clients as IPv4. The pids come in ascending order.
func socketOwners(root, addr string, self int) ([]int, error) {
	key, err := normalAddr(addr)
	if err != nil {
		return nil, err
	}
	conns, err := scanConns(root, procTCP(root), self, -1)
	if err != nil {
		return nil, err
	}
	c := conns[key]
	if c == nil {
		return nil, fmt.Errorf("no established connection from %s", addr)
	}
	return c.pids, nil
}
