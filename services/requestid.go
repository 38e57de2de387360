package services

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net"
	"net/http"
	"net/netip"

	"github.com/sshca/sshca/ca"
)

// RequestIDHeader names the request ID on requests (from a trusted proxy) and on every answer.
const RequestIDHeader = "X-Request-ID"

// maxRequestIDLen is the longest request ID kept from a trusted proxy, in bytes.
const maxRequestIDLen = 64

// RequestID gives every request an ID and every answer its X-Request-ID header, errors
// included. The ID travels in the request's context (ca.WithRequestID), where the audit
// records kept for the request and the log lines written through LogRequestIDs find it.
//
// An incoming X-Request-ID is kept only when the connection's peer is one of trusted (the
// proxies of HTTPOptions.TrustedProxies, as for ClientIP) and it is a single value of 1 to 64
// characters of [A-Za-z0-9._-]; anything else, from anyone else, is replaced by a new random ID
// (32 hex digits), so a caller cannot forge log lines or audit records under another request's
// ID or put control characters into them. A request whose context already has an ID (an outer
// RequestID) keeps it.
func RequestID(trusted []netip.Prefix, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := ca.RequestID(r.Context())
		if id == "" {
			id = incomingRequestID(r, trusted)
			if id == "" {
				id = newRequestID()
			}
			r = r.WithContext(ca.WithRequestID(r.Context(), id))
		}
		w.Header().Set(RequestIDHeader, id)
		next.ServeHTTP(w, r)
	})
}

// incomingRequestID is the request's X-Request-ID when a trusted proxy sent it and it is
// well-formed, else "".
func incomingRequestID(r *http.Request, trusted []netip.Prefix) string {
	values := r.Header.Values(RequestIDHeader)
	if len(values) != 1 || !validRequestID(values[0]) {
		return ""
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	peer, err := netip.ParseAddr(host)
	if err != nil || !isTrusted(peer, trusted) {
		return ""
	}
	return values[0]
}

// validRequestID: 1 to 64 characters of [A-Za-z0-9._-].
func validRequestID(s string) bool {
	if len(s) == 0 || len(s) > maxRequestIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// newRequestID is 16 random bytes in hex, built on the stack: the string is its one allocation.
func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (it crashes the program instead)
	var h [32]byte
	hex.Encode(h[:], b[:])
	return string(h[:])
}

// LogRequestIDs returns a logger that adds request_id (ca.RequestID of the context) to every
// line logged with a context that carries one (log.InfoContext(ctx, ...) and the like); lines
// without a context, or with one that carries no ID, are unchanged. A logger that already does
// is returned as it is, so wrapping twice adds the attribute once; nil stays nil.
func LogRequestIDs(log *slog.Logger) *slog.Logger {
	if log == nil {
		return nil
	}
	if _, ok := log.Handler().(requestIDHandler); ok {
		return log
	}
	return slog.New(requestIDHandler{log.Handler()})
}

// requestIDHandler adds request_id from the record's context. Under WithGroup the attribute
// lands inside the group, like every other attribute added at Handle time.
type requestIDHandler struct{ slog.Handler }

func (h requestIDHandler) Handle(ctx context.Context, r slog.Record) error {
	if id := ca.RequestID(ctx); id != "" {
		r = r.Clone()
		r.AddAttrs(slog.String("request_id", id))
	}
	return h.Handler.Handle(ctx, r)
}

func (h requestIDHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return requestIDHandler{h.Handler.WithAttrs(attrs)}
}

func (h requestIDHandler) WithGroup(name string) slog.Handler {
	return requestIDHandler{h.Handler.WithGroup(name)}
}
