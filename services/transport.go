package services

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/go-kit/kit/transport"
	kithttp "github.com/go-kit/kit/transport/http"
	"github.com/jonboulle/clockwork"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/client"
)

// MaxBodyBytes is the largest request body accepted; larger bodies get 413.
const MaxBodyBytes = 64 << 10

// HTTPOptions configure the HTTP transport.
type HTTPOptions struct {
	Logger *slog.Logger
	// KnownHostsPattern is the host pattern of the @cert-authority lines (default "*").
	KnownHostsPattern string
	// TrustedProxies are the addresses whose X-Forwarded-For is believed. Empty: the client
	// address is always the connection's peer.
	TrustedProxies []netip.Prefix
	// Ready reports the readiness of each named dependency (nil error: ready).
	Ready func(ctx context.Context) map[string]error
	// Login is what `sshca login` needs to sign users in (GET /v1/login/config); nil: 404.
	Login *LoginConfig
	// Keys, when set, mounts the CA key administration endpoints under /v1/keys.
	Keys KeyAdmin
	// Requests, when set, mounts the access request API under /v1/requests.
	Requests AccessRequests
	// Discovery, when set, mounts the long-lived key discovery API under /v1/discovery.
	Discovery Discovery
	// Recordings, when set, mounts the session recording API under /v1/recordings.
	Recordings Recordings
	// Details are non-fatal facts /readyz shows (e.g. a refused policy reload).
	Details func() map[string]string
	// RenderKRL encodes a revocation state as an OpenSSH KRL (GET /v1/krl).
	RenderKRL func(...ca.RevocationState) ([]byte, error)
	// KRLFeed, when set, is where GET /v1/krl reads the states it publishes (instead of the
	// Service), and what its long poll (GET /v1/krl?wait=25s) waits on; see IsLongPoll.
	KRLFeed KRLFeed
	// Stop ends every long poll waiting (with 304) when closed: the server is shutting down,
	// and its graceful drain must not wait for them.
	Stop <-chan struct{}
	// Clock times the waits of GET /v1/krl's long poll and the age of the read it shares
	// (nil: the real clock; tests pass a clockwork.FakeClock).
	Clock clockwork.Clock
}

// LoginConfig is the OIDC client setting the CLI signs users in with (the body of
// GET /v1/login/config, defined in client).
type LoginConfig = client.LoginConfig

// NewHTTPHandler mounts the endpoints on a mux with the paths of DESIGN.md.
func NewHTTPHandler(e Endpoints, o HTTPOptions) *http.ServeMux {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.KnownHostsPattern == "" {
		o.KnownHostsPattern = "*"
	}
	opts := []kithttp.ServerOption{
		kithttp.ServerBefore(withRequestLine), // method and path for logError
		kithttp.ServerErrorEncoder(encodeError),
		kithttp.ServerErrorHandler(transport.ErrorHandlerFunc(func(ctx context.Context, err error) {
			logError(ctx, o.Logger, err)
		})),
	}
	encodeResponse := encodeResponse(o.Logger)
	mux := http.NewServeMux()
	// Issuance runs on a stack grown once up front (grownStack), not by doubling under the policy.
	mux.Handle("POST /v1/certs/user", grownStack(kithttp.NewServer(e.IssueUser, decodeCertRequest(o.TrustedProxies), encodeResponse, opts...)))
	mux.Handle("POST /v1/certs/host", grownStack(kithttp.NewServer(e.IssueHost, decodeCertRequest(o.TrustedProxies), encodeResponse, opts...)))
	mux.Handle("POST /v1/certs/host/renew", grownStack(kithttp.NewServer(e.RenewHost, decodeToken, encodeResponse, opts...)))
	mux.Handle("GET /v1/ca/user.pub", kithttp.NewServer(e.UserCAKeys, kithttp.NopRequestDecoder, encodeUserCAKeys, opts...))
	mux.Handle("GET /v1/ca/known_hosts", kithttp.NewServer(e.HostCAKeys, kithttp.NopRequestDecoder, encodeKnownHosts(o.KnownHostsPattern, o.Logger), opts...))
	mux.Handle("POST /v1/revocations", kithttp.NewServer(e.Revoke, decodeRevokeRequest, encodeResponse, opts...))
	mux.Handle("GET /v1/revocations", kithttp.NewServer(e.Revocations, decodeRevocationsRequest, encodeResponse, opts...))
	mux.Handle("POST /v1/revocations/lift", kithttp.NewServer(e.Unrevoke, decodeUnrevokeRequest, encodeResponse, opts...))
	mux.Handle("GET /v1/certs", kithttp.NewServer(e.Inventory, decodeInventoryRequest, encodeResponse, opts...))
	if o.RenderKRL != nil {
		// Revoked host certificates and keys, and compromised host CA keys, as a KRL for
		// clients' RevokedHostKeys.
		mux.Handle("GET /v1/krl/host", kithttp.NewServer(e.HostCAKeys, kithttp.NopRequestDecoder, encodeKRL(o.RenderKRL, o.Logger),
			append(opts, kithttp.ServerBefore(withIfNoneMatch))...))
		if o.KRLFeed != nil {
			mux.Handle("GET /v1/krl", newKRLHandler(o.KRLFeed, o.RenderKRL, o.Logger, o.Stop, o.Clock))
		} else {
			mux.Handle("GET /v1/krl", kithttp.NewServer(e.KRL, kithttp.NopRequestDecoder, encodeKRL(o.RenderKRL, o.Logger),
				append(opts, kithttp.ServerBefore(withIfNoneMatch))...))
		}
	}
	if o.Keys != nil {
		mountKeys(mux, o.Keys, encodeResponse, opts)
	}
	if o.Discovery != nil {
		mountDiscovery(mux, o.Discovery, o.Logger, encodeResponse, opts)
	}
	if o.Recordings != nil {
		mountRecordings(mux, o.Recordings, o.Logger, encodeResponse, opts)
	}
	if o.Requests != nil {
		mountRequests(mux, o.Requests, o.TrustedProxies, o.Stop, encodeResponse, opts)
	}
	if o.Login != nil {
		login := *o.Login
		mux.HandleFunc("GET /v1/login/config", func(w http.ResponseWriter, _ *http.Request) {
			writeJSON(w, http.StatusOK, login)
		})
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", readyHandler(o.Ready, o.Details))
	return mux
}

func decodeCertRequest(trusted []netip.Prefix) kithttp.DecodeRequestFunc {
	return func(_ context.Context, r *http.Request) (any, error) {
		var req certRequest
		err := decodeJSON(r, &req.CertRequest)
		if err != nil {
			return nil, err
		}
		if req.token, err = bearer(r); err != nil {
			return nil, err
		}
		req.sourceIP = ClientIP(r, trusted)
		return req, nil
	}
}

// ClientIP is the caller's address: the peer, or, when the peer is a trusted proxy, the
// right-most address in X-Forwarded-For that is not itself a trusted proxy.
func ClientIP(r *http.Request, trusted []netip.Prefix) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	peer, err := netip.ParseAddr(host)
	if err != nil || !isTrusted(peer, trusted) {
		return host
	}
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	for i := len(hops) - 1; i >= 0; i-- {
		a, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			break
		}
		if !isTrusted(a, trusted) {
			return a.String()
		}
	}
	return host
}

func isTrusted(a netip.Addr, trusted []netip.Prefix) bool {
	for _, p := range trusted {
		if p.Contains(a.Unmap()) {
			return true
		}
	}
	return false
}

type failer interface{ Failed() error }

// encodeResponse answers with the response as JSON, or with the business error it carries
// (go-kit's failer pattern).
func encodeResponse(log *slog.Logger) kithttp.EncodeResponseFunc {
	return func(ctx context.Context, w http.ResponseWriter, response any) error {
		if f, ok := response.(failer); ok && f.Failed() != nil {
			answerFailure(ctx, log, f.Failed(), w)
			return nil
		}
		writeJSON(w, http.StatusOK, response)
		return nil
	}
}

// answerFailure answers a business error. go-kit's error handler sees only the transport's
// own errors (decoding, encoding), so this is where a 5xx from the service is logged, at error
// level with its cause, once; a 4xx is the caller's, and the logging middleware records it.
func answerFailure(ctx context.Context, log *slog.Logger, err error, w http.ResponseWriter) {
	if err2code(err) >= 500 {
		logError(ctx, log, err)
	}
	encodeError(ctx, err, w)
}

func encodeUserCAKeys(_ context.Context, w http.ResponseWriter, response any) error {
	var b strings.Builder
	for _, k := range response.(caKeysResponse).Keys {
		fmt.Fprintf(&b, "%s %s\n", strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))), "sshca-user-ca")
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, err := io.WriteString(w, b.String())
	return err
}

// encodeKnownHosts answers GET /v1/ca/known_hosts: an @cert-authority line per published host
// CA key, then an @revoked line per public key revoked outright under the host CA keys (a
// compromised host CA key, commented sshca-host-ca-compromised; a banned key, host or other,
// commented sshca-revoked-key). Certificates revoked by serial or key ID cannot be said in
// known_hosts: they are in GET /v1/krl/host. A store that cannot answer is a 503, never a
// known_hosts without its @revoked lines.
func encodeKnownHosts(pattern string, log *slog.Logger) kithttp.EncodeResponseFunc {
	return func(ctx context.Context, w http.ResponseWriter, response any) error {
		var b strings.Builder
		resp := response.(hostKeysResponse)
		if resp.Err != nil {
			answerFailure(ctx, log, resp.Err, w)
			return nil
		}
		for _, k := range resp.Keys {
			fmt.Fprintf(&b, "@cert-authority %s %s %s\n", pattern, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))), "sshca-host-ca")
		}
		keys, compromised := revokedKeys(resp.States)
		for i, k := range keys {
			comment := "sshca-revoked-key"
			if compromised[i] {
				comment = "sshca-host-ca-compromised"
			}
			fmt.Fprintf(&b, "@revoked * %s %s\n", strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))), comment)
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, err := io.WriteString(w, b.String())
		return err
	}
}

// err2code is the one place where a domain error becomes an HTTP status (client.StatusOf,
// shared with the web console).
func err2code(err error) int {
	if errors.Is(err, errTooLarge) || errors.Is(err, errBatchTooLarge) {
		return http.StatusRequestEntityTooLarge
	}
	return client.StatusOf(ca.KindOf(err))
}

func encodeError(_ context.Context, err error, w http.ResponseWriter) {
	code := err2code(err)
	body := client.ErrorBody{Error: err.Error()}
	var e *ca.Error
	switch {
	case errors.As(err, &e) && e.Kind != ca.KindInternal:
		// The message is for the caller; the cause (Err) may hold details that are not.
		body = client.ErrorBody{Error: e.Msg, Reasons: e.Reasons}
	case code == http.StatusInternalServerError:
		body = client.ErrorBody{Error: "internal error"}
	}
	if code == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="sshca"`)
	}
	if e != nil && e.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.FormatInt(retryAfterSeconds(e.RetryAfter), 10))
	}
	writeJSON(w, code, body)
}

// logError logs an error answer with the request's method and path and the error's cause
// (which the answer never shows): a 5xx at error level, anything else at info.
func logError(ctx context.Context, log *slog.Logger, err error) {
	code := err2code(err)
	level := slog.LevelInfo
	if code >= 500 {
		level = slog.LevelError
	}
	var method, path string
	if r, ok := ctx.Value(requestLineKey{}).(*http.Request); ok {
		method, path = r.Method, r.URL.Path
	}
	log.Log(ctx, level, "request failed", "method", method, "path", path, "status", code, "err", err)
}

type requestLineKey struct{}

// withRequestLine keeps the request in its context for logError, which reads its method and
// path only when an answer fails. go-kit's PopulateRequestContext would copy fifteen header
// and URL values into as many contexts on every request (about 23 allocations), the bearer
// token among them, for the two that logError reads.
func withRequestLine(ctx context.Context, r *http.Request) context.Context {
	return context.WithValue(ctx, requestLineKey{}, r)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// ReadyTimeout is the one deadline all of /readyz's checks share: a load balancer's probe
// gets its answer within it, whatever hangs.
const ReadyTimeout = time.Second

// readyHandler answers /readyz: 200 when every check is ready, else 503 naming what failed.
// The checks run under one ReadyTimeout deadline; ready is expected to run them in parallel
// (Checks does), and a ready that does not return in time is itself reported as not ready.
func readyHandler(ready func(context.Context) map[string]error, details func() map[string]string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		checks := map[string]string{}
		code := http.StatusOK
		if ready != nil {
			ctx, cancel := context.WithTimeout(r.Context(), ReadyTimeout)
			defer cancel()
			results := make(chan map[string]error, 1)
			go func() { results <- ready(ctx) }()
			var res map[string]error
			select {
			case res = <-results:
			case <-time.After(ReadyTimeout + ReadyTimeout/10):
				res = map[string]error{"readiness": fmt.Errorf("checks did not answer within %s", ReadyTimeout)}
			}
			for name, err := range res {
				checks[name] = "ok"
				if err != nil {
					checks[name] = "unavailable: " + err.Error()
					code = http.StatusServiceUnavailable
				}
			}
		}
		status := "ready"
		if code != http.StatusOK {
			status = "not ready"
		}
		body := map[string]any{"status": status, "checks": checks}
		if details != nil {
			body["details"] = details()
		}
		writeJSON(w, code, body)
	}
}

// Checks runs the named checks in parallel under ctx and returns when all have answered or
// ctx is done; a check that has not answered by then is reported as such, so one dependency
// that hangs neither delays the answer nor hides the others.
func Checks(checks map[string]ca.Checker) func(context.Context) map[string]error {
	return func(ctx context.Context) map[string]error {
		type result struct {
			name string
			err  error
		}
		results := make(chan result, len(checks))
		for name, c := range checks {
			go func() { results <- result{name, c.Check(ctx)} }()
		}
		out := make(map[string]error, len(checks))
		for range checks {
			select {
			case r := <-results:
				out[r.name] = r.err
			case <-ctx.Done():
				for name := range checks {
					if _, ok := out[name]; !ok {
						out[name] = fmt.Errorf("no answer in time: %w", ctx.Err())
					}
				}
				return out
			}
		}
		return out
	}
}
