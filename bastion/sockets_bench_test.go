package bastion

import (
	"os"
	"testing"
)

// BenchmarkScanConns is one look at the established TCP connections and their sshd holders on
// this machine, as every Accepted line, close, sweep and session end makes, with the
// connections read from /proc/net/tcp{,6} (proc) or asked of the kernel through sock_diag
// (sock_diag, what the agent uses). The first grows with every socket of the host, TIME_WAIT
// included; run it beside a few thousand connections in TIME_WAIT to see the difference.
func BenchmarkScanConns(b *testing.B) {
	self, uid := os.Getpid(), os.Geteuid()
	for _, bc := range []struct {
		name  string
		table tcpTable
	}{{"proc", procTCP("/proc")}, {"sock_diag", sockDiagEstablished}} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := scanConns("/proc", bc.table, self, uid); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
