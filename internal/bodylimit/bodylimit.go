// Package bodylimit bounds what sshca reads of the answers of remote HTTP servers (an identity
// provider's discovery document, key set and token answers; the CA's API answers, KRLs among
// them; a policy bundle): a remote that is hostile or broken cannot make sshca read, and hold,
// more than the bound, and an answer over it is an error naming the URL and the bound, not a
// body cut short that fails to parse for a reason nobody can see.
//
// The counting is net/http's MaxBytesReader (made for request bodies, and as fit for
// answers); this package gives its error a URL and puts it where libraries read answers that
// sshca does not read itself (go-oidc, oauth2): on the client's transport.
package bodylimit

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
)

// Issuer is the bound on an answer of an OpenID provider: its discovery document (OpenID
// Connect Discovery 1.0 section 4), its key set (jwks_uri, RFC 7517) and its token endpoint's
// answer (RFC 6749 section 5.1). Each is a few KiB at the large providers; 1 MiB is oauth2's
// own bound on a token answer.
const Issuer = 1 << 20

// Error is an answer longer than the bound its reader was given.
type Error struct {
	// URL is the request's URL without user information, query or fragment (they may carry
	// secrets).
	URL string
	// Limit is the bound, in bytes.
	Limit int64
}

func (e *Error) Error() string {
	return fmt.Sprintf("the answer of %s is longer than %d bytes, the most sshca reads from it", e.URL, e.Limit)
}

// Reader returns body bounded to limit bytes: a read beyond them fails with an *Error naming
// req's URL. Closing it closes body.
func Reader(req *http.Request, body io.ReadCloser, limit int64) io.ReadCloser {
	return &reader{body: http.MaxBytesReader(nil, body, limit), req: req, limit: limit}
}

type reader struct {
	body  io.ReadCloser
	req   *http.Request
	limit int64
}

func (r *reader) Read(p []byte) (int, error) {
	n, err := r.body.Read(p)
	var mb *http.MaxBytesError
	if errors.As(err, &mb) {
		err = tooLong(r.req, r.limit)
	}
	return n, err
}

func (r *reader) Close() error { return r.body.Close() }

// ReadAll reads resp's whole body, at most limit bytes (else an *Error naming the URL of
// resp.Request, the request that got it), and closes it. An answer that announces a longer
// Content-Length fails before anything is read.
func ReadAll(resp *http.Response, limit int64) ([]byte, error) {
	return readAll(resp.Request, resp, limit)
}

func readAll(req *http.Request, resp *http.Response, limit int64) ([]byte, error) {
	defer resp.Body.Close()
	if resp.ContentLength > limit {
		return nil, tooLong(req, limit)
	}
	return io.ReadAll(Reader(req, resp.Body, limit))
}

// Transport reads the whole body of every answer that Next (http.DefaultTransport when nil)
// gets, at most Limit bytes, before handing the answer on, for the libraries that read answers
// themselves (go-oidc, oauth2): an answer over the bound is then an *Error from RoundTrip,
// which they pass on with its type (net/http's *url.Error wraps it), rather than a read error
// that go-oidc turns into text. It suits answers that are read whole anyway (JSON documents),
// not streams.
type Transport struct {
	Next  http.RoundTripper
	Limit int64
}

func (t Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	next := t.Next
	if next == nil {
		next = http.DefaultTransport
	}
	resp, err := next.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	body, err := readAll(req, resp, t.Limit)
	if err != nil {
		return nil, err
	}
	resp.Body, resp.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
	return resp, nil
}

// CloseIdleConnections closes Next's idle connections, as http.Client.CloseIdleConnections
// would without the wrapper.
func (t Transport) CloseIdleConnections() {
	next := t.Next
	if next == nil {
		next = http.DefaultTransport
	}
	if c, ok := next.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// Client returns a copy of c (http.DefaultClient when nil) whose answers are bounded to limit
// bytes (Transport).
func Client(c *http.Client, limit int64) *http.Client {
	if c == nil {
		c = http.DefaultClient
	}
	cc := *c
	cc.Transport = Transport{Next: c.Transport, Limit: limit}
	return &cc
}

func tooLong(req *http.Request, limit int64) *Error {
	e := &Error{Limit: limit}
	if req != nil && req.URL != nil {
		u := url.URL{Scheme: req.URL.Scheme, Host: req.URL.Host, Path: req.URL.Path, RawPath: req.URL.RawPath}
		e.URL = u.String()
	}
	return e
}
