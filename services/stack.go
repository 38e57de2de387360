package services

import "net/http"

// issuanceStack is about the goroutine stack that issuing a certificate reaches (bytes): the
// policy evaluator's recursion (policies/plan and OPA's builtins), the JSON encoder's
// reflection and the middlewares above them. BenchmarkIssueFreshGoroutine measured it: with
// less, stack growth is still seen under the policy in a profile.
const issuanceStack = 64 << 10

// growIndex is always 0; read through a variable, the compiler cannot drop growStack's frame.
var growIndex int

// growStack makes the calling goroutine's stack about issuanceStack bytes in one growth, while
// it is still shallow. HTTP/2 serves every request on a new goroutine with the smallest stack,
// which issuance then grows by doubling several times, each time copying the stack and
// adjusting every frame on it, deeper each time: 9 % of serve's CPU under load
// (docs/performance.md). One growth of a shallow stack costs a fraction of that.
//
//go:noinline
func growStack() byte {
	var frame [issuanceStack / 2]byte
	return frame[growIndex]
}

// grownStack serves h on a stack grown for issuance first (growStack).
func grownStack(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		growStack()
		h.ServeHTTP(w, r)
	})
}
