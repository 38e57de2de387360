package main

import (
	"math"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
)

// TestApplyGCDefault: without GOGC in the environment serve's default is set; with GOGC set
// (a number, or off) it is left as the runtime applied it; the memory limit is reported as
// it stands, and never changed.
func TestApplyGCDefault(t *testing.T) {
	old := debug.SetGCPercent(100)
	oldLimit := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetGCPercent(old); debug.SetMemoryLimit(oldLimit) })
	env := func(v string) func(string) string {
		return func(k string) string {
			if k == "GOGC" {
				return v
			}
			return ""
		}
	}

	debug.SetMemoryLimit(math.MaxInt64)
	gogc, limit := applyGCDefault(env(""))
	if got := debug.SetGCPercent(100); got != defaultGCPercent || !strings.HasPrefix(gogc, strconv.Itoa(defaultGCPercent)+" ") || limit != "none" {
		t.Errorf("GOGC unset: percent %d (want %d), reported %q, limit %q", got, defaultGCPercent, gogc, limit)
	}

	for _, v := range []string{"150", "off"} {
		debug.SetMemoryLimit(200 << 20)
		gogc, limit = applyGCDefault(env(v))
		if got := debug.SetGCPercent(100); got != 100 || gogc != v || limit != strconv.Itoa(200<<20) {
			t.Errorf("GOGC=%s: percent %d (want it left at 100), reported %q, limit %q (want %d)", v, got, gogc, limit, 200<<20)
		}
		if l := debug.SetMemoryLimit(-1); l != 200<<20 {
			t.Errorf("GOGC=%s: the memory limit changed to %d", v, l)
		}
	}
}
