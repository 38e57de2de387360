package bastion

import (
	"os"
	"testing"
)

// BenchmarkScanConns is one look at the established TCP connections and their sshd holders on
// this machine's /proc, as every Accepted line, close, sweep and session end makes: its cost
// grows with the TCP table (TIME_WAIT entries included) and the number of processes.
func BenchmarkScanConns(b *testing.B) {
	self, uid := os.Getpid(), os.Geteuid()
	for b.Loop() {
		if _, err := scanConns("/proc", self, uid); err != nil {
			b.Fatal(err)
		}
	}
}
