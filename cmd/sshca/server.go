package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/kms"
	"github.com/sshca/sshca/notify"
	"github.com/sshca/sshca/policies"
	"github.com/sshca/sshca/revocation"
	"github.com/sshca/sshca/services"
	"github.com/sshca/sshca/signer"
	"github.com/sshca/sshca/store"
	"github.com/sshca/sshca/ui"
)

// parts are the concrete pieces an HTTP API is built from, in serve and in dev mode alike.
type parts struct {
	auth       ca.Authenticator
	policy     ca.Policy
	userSigner ca.Signer
	hostSigner ca.Signer
	store      ca.CertStore
	revoked    ca.RevocationStore
	tokens     ca.TokenLedger
	// requests keeps access requests (nil: /v1/requests answers 503).
	requests ca.AccessRequestStore
	// discovery keeps hosts' reports of long-lived keys (nil: /v1/discovery is not mounted).
	discovery ca.DiscoveryStore
	audit     ca.AuditLog
	limits    ca.Limits
	// accessLimits are the caps on access requests (zero: ca's defaults).
	accessLimits ca.AccessRequestLimits
	// notifier, when set, queues access request events for the webhooks; apiHandler gives it
	// the authority's sweep of expired requests.
	notifier *notify.Dispatcher
	// checks are the dependencies /readyz reports on, by name.
	checks            map[string]ca.Checker
	knownHostsPattern string
	details           func() map[string]string
	login             *services.LoginConfig
	// consoleURL, when set with login, mounts the approvers' console under /ui/ (package ui)
	// with this public URL.
	consoleURL     string
	keys           func(*ca.Authority) services.KeyAdmin
	reg            *prometheus.Registry
	trustedProxies []netip.Prefix
	log            *slog.Logger
	// diag, when set, gets /metrics and the detailed /readyz (services.MountDiag; serve mounts
	// it on diag_listen), and the public /readyz says only ready or not. Nil: both stay on the
	// API's own mux (dev mode, on loopback).
	diag *http.ServeMux
	// rdb, when set, is probed with writes for readiness.
	rdb redis.UniversalClient
	// state, when set, is the store whose generation marks /readyz compares with this
	// process's witness (store.Redis.CheckState): a store that came back without its state
	// makes the replica not ready.
	state *store.Redis
	// requestTimeout is every request's deadline (0: services.DefaultRequestTimeout).
	requestTimeout time.Duration
	// rate are the rate limits and in-flight bounds (zero fields: services.DefaultRateLimits).
	rate services.RateLimits
	// krlFeed, when set, serves GET /v1/krl and its long poll (followRevocations); stop ends
	// the long polls waiting when the server shuts down.
	krlFeed services.KRLFeed
	stop    <-chan struct{}
}

// followRevocations starts the replica's one follower of the revocation feeds (until ctx
// ends), behind GET /v1/krl and its long poll, and ends the long polls when ctx ends (shutdown).
func followRevocations(ctx context.Context, p *parts, db *store.Redis) {
	f := revocation.NewFollower(db, p.log)
	go f.Run(ctx)
	p.krlFeed, p.stop = f, ctx.Done()
}

// redisParts are the parts every mode shares: the CA keys signing through the signer, with
// the Redis store as inventory, serial reservation, revocations and token ledger.
func redisParts(userKey, hostKey *kms.Key, rdb redis.UniversalClient, db *store.Redis, pol policies.Loaded, log *slog.Logger) parts {
	return parts{
		rdb:        rdb,
		state:      db,
		policy:     pol,
		userSigner: signer.New(userKey.Signer(), db, signer.Options{}),
		hostSigner: signer.New(hostKey.Signer(), db, signer.Options{}),
		store:      db,
		revoked:    db,
		tokens:     db,
		requests:   db,
		discovery:  db,
		checks:     map[string]ca.Checker{"redis": db, "policy": pol, "kms_user_ca": userKey, "kms_host_ca": hostKey},
		log:        log,
	}
}

// discoveryDesk is the discovery API on store, or nil (not mounted) without one.
func discoveryDesk(a *ca.Authority, st ca.DiscoveryStore) services.Discovery {
	if st == nil {
		return nil
	}
	return ca.DiscoveryDesk{Authority: a, Store: st}
}

// apiHandler builds the authority and its HTTP API, with /metrics and /readyz details on
// p.diag when set, else on the API itself.
func apiHandler(p parts) (http.Handler, error) {
	reg := p.reg
	if reg == nil {
		reg = newRegistry()
	}
	p.log = services.LogRequestIDs(p.log) // every line logged under a request names its X-Request-ID
	faults := services.NewPolicyFaults(reg, time.Now)
	p.rate.TrustedProxies = p.trustedProxies
	limiter := services.NewRateLimiter(p.rate, reg)
	metrics := services.NewMetrics(reg)
	metrics.IsKMSError = isKMSError
	if p.rdb != nil {
		countRedisErrors(p.rdb, reg)
	}
	authority, err := ca.New(ca.Config{
		Authenticator: p.auth, Policy: p.policy, UserSigner: p.userSigner, HostSigner: p.hostSigner,
		Store: p.store, Revocations: p.revoked, Tokens: p.tokens, Audit: p.audit, Faults: faults, Limits: p.limits, Logger: p.log,
		IdentityLimiter: limiter, Stages: metrics, Requests: p.requests, AccessRequests: p.accessLimits, Notifier: notifierOf(p),
	})
	if err != nil {
		return nil, err
	}
	if p.notifier != nil {
		p.notifier.SetExpire(authority.NotifyExpired)
	}
	var svc services.Service = authority
	svc = services.InstrumentingMiddleware(metrics)(svc)
	svc = services.LoggingMiddleware(p.log)(svc)
	keys := services.LoggingKeyAdmin(p.log)(services.InstrumentingKeyAdmin(metrics)(keyAdmin(p, authority)))
	if p.krlFeed != nil {
		p.krlFeed = services.InstrumentKRLFeed(metrics)(p.krlFeed)
	}

	ready, details := services.Checks(p.readyChecks()), withFaults(p.details, faults)
	if p.diag != nil {
		services.MountDiag(p.diag, ready, details, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		ready, details = services.ReadyStatus(ready), nil
	}
	mux := services.NewHTTPHandler(services.MakeEndpoints(svc), services.HTTPOptions{
		Logger:            p.log,
		KnownHostsPattern: p.knownHostsPattern,
		TrustedProxies:    p.trustedProxies,
		Ready:             ready,
		Details:           details,
		Login:             p.login,
		Keys:              keys,
		Requests:          authority,
		Discovery:         discoveryDesk(authority, p.discovery),
		RenderKRL:         revocation.EncodeKRL,
		KRLFeed:           p.krlFeed,
		Stop:              p.stop,
	})
	if p.login != nil && p.consoleURL != "" {
		// The console calls the authority with the signed-in user's ID token, as the API does
		// with a bearer token: the same authentication, policy and audit.
		console, err := ui.New(ui.Options{PublicURL: p.consoleURL, Issuer: p.login.Issuer, ClientID: p.login.ClientID,
			Scopes: p.login.Scopes, Requests: authority, Certificates: authority, Logger: p.log})
		if err != nil {
			return nil, fmt.Errorf("console: %w", err)
		}
		mux.Handle("/ui/", console.Handler())
	}
	if p.diag == nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	}
	return metrics.InstrumentHTTP(mux, services.RequestID(p.trustedProxies, limiter.Handler(services.RequestDeadline(p.requestTimeout, services.IsLongPoll, mux)))), nil
}

// readyChecks are the checks /readyz runs: the configured ones, with Redis probed by a write
// in every hash tag of durable state (the CA keys' scopes as the signers publish them now),
// and the store's generation marks compared with what this replica has seen (store_state).
func (p parts) readyChecks() map[string]ca.Checker {
	checks := maps.Clone(p.checks)
	user, host := p.userSigner, p.hostSigner
	caKeys := func() []ssh.PublicKey { return append(publishedKeys(user), publishedKeys(host)...) }
	if p.rdb != nil {
		checks["redis"] = redisProbe{rdb: p.rdb, prefix: "sshca", caKeys: caKeys}
	}
	if p.state != nil {
		checks["store_state"] = checkFunc(func(ctx context.Context) error {
			return p.state.CheckState(ctx, caKeys()...)
		})
	}
	return checks
}

func publishedKeys(s ca.Signer) []ssh.PublicKey {
	if p, ok := s.(ca.Publisher); ok {
		return p.Published()
	}
	return []ssh.PublicKey{s.PublicKey()}
}

// withFaults adds the last policy fault (when and in which field) to the /readyz details.
func withFaults(details func() map[string]string, faults *services.PolicyFaults) func() map[string]string {
	return func() map[string]string {
		d := faults.Details()
		if details != nil {
			for k, v := range details() {
				d[k] = v
			}
		}
		return d
	}
}

func keyAdmin(p parts, a *ca.Authority) services.KeyAdmin {
	if p.keys == nil {
		return nil
	}
	return p.keys(a)
}

// httpWriteTimeout is the HTTP server's write timeout; request_timeout is validated below it.
const httpWriteTimeout = 30 * time.Second

// newHTTPServer is an http.Server with every timeout set, so a slow client cannot hold a
// connection open.
func newHTTPServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      httpWriteTimeout,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    32 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// serveUntilDone serves on l until ctx ends (SIGTERM or SIGINT in main), then shuts down
// gracefully: the listener closes at once, so new connections are refused (the load balancer
// moves them to other replicas), idle keep-alive connections close, and requests in flight
// finish and get their answers. The drain lasts at most the server's write timeout, past which
// no answer could be written anyway; connections still busy then are closed and the error says
// so. Orchestrators should allow a little more than that before killing the process.
// It serves TLS when certFile is set or srv.TLSConfig is (serve's reloading certificate).
func serveUntilDone(ctx context.Context, srv *http.Server, l net.Listener, certFile, keyFile string) error {
	errc := make(chan error, 1)
	go func() {
		if certFile != "" || srv.TLSConfig != nil {
			errc <- srv.ServeTLS(l, certFile, keyFile)
			return
		}
		errc <- srv.Serve(l)
	}()
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	drain := srv.WriteTimeout
	if drain <= 0 {
		drain = 10 * time.Second
	}
	shutdown, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil && !errors.Is(err, http.ErrServerClosed) {
		srv.Close()
		return fmt.Errorf("shutdown: requests still in flight after %s were cut off: %w", drain, err)
	}
	return nil
}

type checkFunc func(context.Context) error

func (f checkFunc) Check(ctx context.Context) error { return f(ctx) }

func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// notifierOf is p's notifier as a ca.Notifier: nil when there is none (not a nil pointer in an
// interface).
func notifierOf(p parts) ca.Notifier {
	if p.notifier == nil {
		return nil
	}
	return p.notifier
}
