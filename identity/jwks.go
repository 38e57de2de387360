package identity

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// go-oidc's key set fetches jwks_uri again whenever no key it holds verifies a token (OIDC
// Core section 10.1.1: a kid it does not know may be a key the issuer just rotated in), and
// Authenticate tries once more after that. Without a bound, every forged token naming a
// trusted issuer (any kid, any signature: no secret needed) would cost that issuer two
// fetches, so a flood of them would hammer the identity provider until it throttled sshca.
// At most keyFetchBurst fetches then one every keyFetchEvery: a key rotated in during a flood
// verifies within keyFetchEvery.
const (
	keyFetchBurst = 10
	keyFetchEvery = 6 * time.Second
)

// keyFetchLimit is the transport of an issuer's key set client: it passes fetches of its
// jwks_uri on while the limit allows, and keeps the body of the last successful one (status
// 200). A fetch beyond the limit gets that body again, so the key set keeps the keys it has
// and the token that asked is judged against them (401 when none verifies it), without a
// request to the identity provider; before any fetch succeeded it fails (the key set is
// unreachable: 503).
type keyFetchLimit struct {
	next  http.RoundTripper
	limit *rate.Limiter
	now   func() time.Time

	mu     sync.Mutex
	body   []byte // the last 200 answer's body; nil before one
	header http.Header
}

func newKeyFetchLimit(next http.RoundTripper, now func() time.Time) *keyFetchLimit {
	if next == nil {
		next = http.DefaultTransport
	}
	return &keyFetchLimit{next: next, limit: rate.NewLimiter(rate.Every(keyFetchEvery), keyFetchBurst), now: now}
}

// errKeyFetchLimited is a refused fetch before any fetch succeeded.
var errKeyFetchLimited = errors.New("identity: jwks_uri fetches are rate limited and none has succeeded yet")

func (l *keyFetchLimit) RoundTrip(req *http.Request) (*http.Response, error) {
	if !l.limit.AllowN(l.now(), 1) {
		l.mu.Lock()
		body, header := l.body, l.header
		l.mu.Unlock()
		if body == nil {
			if req.Body != nil {
				req.Body.Close()
			}
			return nil, errKeyFetchLimited
		}
		return &http.Response{Status: "200 OK", StatusCode: http.StatusOK, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header: header.Clone(), Body: io.NopCloser(bytes.NewReader(body)), ContentLength: int64(len(body)), Request: req}, nil
	}
	resp, err := l.next.RoundTrip(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		return resp, err
	}
	// next bounds the body (bodylimit.Transport, under the Verifier's client): what is kept
	// is at most bodylimit.Issuer bytes, and a longer answer is its error, not a key set.
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.body, l.header = body, resp.Header.Clone()
	l.mu.Unlock()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	return resp, nil
}
