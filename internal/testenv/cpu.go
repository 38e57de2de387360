package testenv

import (
	"syscall"
	"testing"
	"time"
)

// processCPU is this process's CPU time so far, user plus system (getrusage).
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// CPUPerOp starts measuring the process's CPU time; the function it returns, called after
// the benchmark's loop with the number of operations the loop ran, reports it per operation
// as the metric "cpu-ns/op". On a machine whose cores others share, ns/op is wall time and
// grows with their load; cpu-ns/op is what the operation itself costs (the garbage collector's
// background work included), the figure docs/performance.md compares with a server's CPU per
// certificate.
func CPUPerOp(b *testing.B) func(ops int) {
	start := processCPU()
	return func(ops int) {
		if ops > 0 {
			b.ReportMetric(float64(processCPU()-start)/float64(ops), "cpu-ns/op")
		}
	}
}
