package services

import (
	"context"
	"net/http"
	"time"
)

// DefaultRequestTimeout is the deadline of a request when none is configured.
const DefaultRequestTimeout = 2 * time.Second

// RequestDeadline gives every request a deadline d after its arrival, carried by its context
// to everything it waits on (the Redis client honours context deadlines; see cmd/sshca), so a
// dependency that does not answer becomes a 503 within d rather than a request that hangs past
// the server's write timeout. Requests for which exempt reports true (long polls, which wait on
// purpose) keep only the server's own timeouts; exempt may be nil.
//
// The deadline is what the service promises, not a cut-off of the connection: a handler that
// has signed a certificate finishes recording it under a bound of its own (ca.SignedCertTimeout)
// and its audit record says the answer was late.
func RequestDeadline(d time.Duration, exempt func(*http.Request) bool, next http.Handler) http.Handler {
	if d <= 0 {
		d = DefaultRequestTimeout
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if exempt != nil && exempt(r) {
			next.ServeHTTP(w, r)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), d)
		defer cancel()
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}
