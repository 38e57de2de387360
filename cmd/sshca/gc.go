package main

import (
	"math"
	"runtime/debug"
	"strconv"
)

// defaultGCPercent is the garbage collector's target (GOGC) that `sshca serve` runs with when
// the environment sets none. Serve keeps a small live heap (about 13 MB under load: policy,
// key sets, limiter entries, connections) and allocates about 20 KB per certificate, so at
// Go's default of 100 it collected 5 times a second at about 900 certificates a second, and at
// 400 once a second, for a resident size of 110 MB instead of 70 MB (go tool task bench-soak;
// docs/performance.md, "Stop 13 changes"). The price is a heap that may grow to 1 + GOGC/100
// times the live one; GOMEMLIMIT, when set (the Kubernetes manifests set it to the container's
// memory limit), makes the collector work harder near that limit whatever GOGC says, so the
// higher target cannot by itself run a replica out of memory.
const defaultGCPercent = 400

// applyGCDefault sets GOGC to defaultGCPercent unless getenv("GOGC") is set (an operator's
// value, "off" included, always wins; the runtime has applied it already). It returns the
// settings in force, for serve's start-up log line: gogc as GOGC would spell it and the soft
// memory limit in bytes ("none" without one).
func applyGCDefault(getenv func(string) string) (gogc, memLimit string) {
	gogc = getenv("GOGC")
	if gogc == "" {
		debug.SetGCPercent(defaultGCPercent)
		gogc = strconv.Itoa(defaultGCPercent) + " (sshca's default; set GOGC to change it)"
	}
	memLimit = "none"
	if l := debug.SetMemoryLimit(-1); l != math.MaxInt64 { // a negative value only reads it
		memLimit = strconv.FormatInt(l, 10)
	}
	return gogc, memLimit
}
