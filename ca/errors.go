package ca

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// ErrorKind classifies an error for the caller: what went wrong, not how to say it over HTTP.
type ErrorKind int

const (
	// KindInternal is a fault of ours. Transports must not show its details.
	KindInternal ErrorKind = iota
	// KindInvalid is malformed input or a value beyond the service's hard caps.
	KindInvalid
	// KindUnauthenticated is a missing, invalid, expired or replayed credential.
	KindUnauthenticated
	// KindDenied is a policy (or revocation) refusal; Reasons say why.
	KindDenied
	// KindNotFound is a lookup of something that does not exist.
	KindNotFound
	// KindConflict is a request that contradicts the current state.
	KindConflict
	// KindUnavailable is a dependency (store, KMS, policy engine) that cannot answer now.
	KindUnavailable
	// KindRateLimited is a caller that asked more often than its limit allows; RetryAfter
	// says when it may ask again.
	KindRateLimited
)

func (k ErrorKind) String() string {
	switch k {
	case KindInvalid:
		return "invalid"
	case KindUnauthenticated:
		return "unauthenticated"
	case KindDenied:
		return "denied"
	case KindNotFound:
		return "not found"
	case KindConflict:
		return "conflict"
	case KindUnavailable:
		return "unavailable"
	case KindRateLimited:
		return "rate limited"
	default:
		return "internal"
	}
}

// Error is the error type of the domain. Msg is safe to show to the caller; Err (the cause)
// may hold details that are not, and is only logged.
type Error struct {
	Kind    ErrorKind
	Msg     string
	Reasons []string
	Err     error
	// RetryAfter, when positive, is how long the caller should wait before asking again
	// (KindRateLimited).
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Msg)
	if len(e.Reasons) > 0 {
		b.WriteString(": ")
		b.WriteString(strings.Join(e.Reasons, "; "))
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Invalid reports malformed input; the message tells the caller what was wrong.
func Invalid(format string, args ...any) error {
	return &Error{Kind: KindInvalid, Msg: fmt.Sprintf(format, args...)}
}

// Unauthenticated reports a credential that does not establish an identity.
func Unauthenticated(msg string, cause error) error {
	return &Error{Kind: KindUnauthenticated, Msg: msg, Err: cause}
}

// Denied reports a refusal with reasons the caller can act on.
func Denied(msg string, reasons ...string) error {
	return &Error{Kind: KindDenied, Msg: msg, Reasons: reasons}
}

// Unavailable reports a dependency that cannot answer; the cause is logged, not shown.
func Unavailable(msg string, cause error) error {
	return &Error{Kind: KindUnavailable, Msg: msg, Err: cause}
}

// RateLimited reports a caller over its limit; it may ask again after retryAfter.
func RateLimited(msg string, retryAfter time.Duration) error {
	return &Error{Kind: KindRateLimited, Msg: msg, RetryAfter: retryAfter}
}

// KindOf returns the ErrorKind of err, KindInternal for errors that are not *Error.
func KindOf(err error) ErrorKind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return KindInternal
}
