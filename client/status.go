package client

import (
	"net/http"

	"github.com/sshca/sshca/ca"
)

// StatusOf is the HTTP status the v1 API (and the web console) answers for a domain error
// kind: 400 invalid, 401 unauthenticated, 403 denied, 404 not found, 409 conflict, 429 rate
// limited, 503 unavailable, and 500 for anything else. It is part of the API contract, so it
// is defined here, once, beside the API types.
func StatusOf(k ca.ErrorKind) int {
	switch k {
	case ca.KindInvalid:
		return http.StatusBadRequest
	case ca.KindUnauthenticated:
		return http.StatusUnauthorized
	case ca.KindDenied:
		return http.StatusForbidden
	case ca.KindNotFound:
		return http.StatusNotFound
	case ca.KindConflict:
		return http.StatusConflict
	case ca.KindUnavailable:
		return http.StatusServiceUnavailable
	case ca.KindRateLimited:
		return http.StatusTooManyRequests
	}
	return http.StatusInternalServerError
}
