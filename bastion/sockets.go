package bastion

import (
	"fmt"
	"net"
	"slices"
	"strconv"

	"github.com/prometheus/procfs"
)

// tcpEstablished is TCP_ESTABLISHED, the st column of /proc/net/tcp{,6}.
const tcpEstablished = 1

// socketOwners finds the processes, other than self, holding an established TCP connection whose
// remote end is addr, from the procfs mounted at root (Linux). An IPv4 address (IPv4-mapped
// included) is looked up in /proc/net/tcp only and any other in /proc/net/tcp6 only: sshd
// listens on IPv6 with IPV6_V6ONLY and logs IPv4 clients as IPv4. The pids come in ascending
// order.
func socketOwners(root, addr string, self int) ([]int, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return nil, fmt.Errorf("bastion: client address %q is not an IP address", addr)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("bastion: client port in %q: %w", addr, err)
	}
	fs, err := procfs.NewFS(root)
	if err != nil {
		return nil, err
	}
	table := fs.NetTCP6
	if v4 := ip.To4(); v4 != nil {
		ip, table = v4, fs.NetTCP
	}
	// A table that cannot be read holds nothing we can find: the error below says so.
	conns, _ := table()
	inodes := map[string]bool{}
	for _, c := range conns {
		if c.St == tcpEstablished && c.RemPort == port && c.RemAddr.Equal(ip) {
			inodes["socket:["+strconv.FormatUint(c.Inode, 10)+"]"] = true
		}
	}
	if len(inodes) == 0 {
		return nil, fmt.Errorf("no established connection from %s", addr)
	}
	procs, err := fs.AllProcs()
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, p := range procs {
		if p.PID == self {
			continue
		}
		// A process that exits while we look, or that we may not inspect, holds nothing of ours.
		targets, err := p.FileDescriptorTargets()
		if err != nil {
			continue
		}
		if slices.ContainsFunc(targets, func(t string) bool { return inodes[t] }) {
			pids = append(pids, p.PID)
		}
	}
	slices.Sort(pids)
	return pids, nil
}
