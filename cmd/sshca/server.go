package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sync/errgroup"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/keyring"
	"github.com/sshca/sshca/kms"
	"github.com/sshca/sshca/notify"
	"github.com/sshca/sshca/policies"
	"github.com/sshca/sshca/revocation"
	"github.com/sshca/sshca/services"
	"github.com/sshca/sshca/signer"
	"github.com/sshca/sshca/store"
	"github.com/sshca/sshca/ui"
)

// server is the signing service built from its configuration, not yet serving: the API's
// handler, the background loops that keep the replica current, and what it holds open.
// buildServer makes one; run serves it and shuts it down in order. `sshca serve` and
// `sshca dev` differ only in the configuration and the verifier options they pass.
type server struct {
	log *slog.Logger
	// api is every route of the v1 API, the console, /healthz and /readyz (and /metrics when
	// diag is nil), with the request ID, rate limits, deadline and HTTP metrics around it.
	api http.Handler
	// diag, when set, gets /metrics and the detailed /readyz (services.MountDiag), served on
	// diagAddr beside the API; nil (diag_listen "", and dev mode) keeps them on the API.
	diag     *http.ServeMux
	diagAddr string
	tls      *tls.Config
	// drain bounds how long shutdown waits for the requests in flight (shutdown_timeout).
	drain time.Duration
	// loops run under one errgroup for the server's lifetime (run).
	loops []loop
	// draining is closed when shutdown begins: the long polls of GET /v1/krl answer then,
	// instead of holding the drain for up to their 25 s.
	draining chan struct{}
	// retries is the authority's wait for the audit records of signed certificates still
	// retried in the background (ca.Authority.DrainRetries), waited for before Redis closes.
	retries func(context.Context) error
	// checkpoint appends the audit log's last checkpoint (audit.Log.Checkpoint), once the
	// records above are kept: nil with one audit stripe.
	checkpoint func(context.Context) error
	// rdb is closed last, once the requests and the loops that use it are done; recRDB, the
	// recordings' own Redis (recordings.redis), with it.
	rdb    redis.UniversalClient
	recRDB redis.UniversalClient
	keys   []*kms.Key
	// about are the attributes of the "sshca serving" log line.
	about []any
}

// retriesBound is the most shutdown waits for the audit records still retried in the
// background, after the drain.
const retriesBound = 5 * time.Second

// loop is a background loop of the server. run logs and retries what is transient; its error
// is one the server cannot go on without, and stops the server.
type loop struct {
	name string
	run  func(context.Context) error
}

// forever is a loop that only ends with its context (it logs and retries its own failures).
func forever(name string, run func(context.Context)) loop {
	return loop{name, func(ctx context.Context) error { run(ctx); return nil }}
}

// recordingDesk is the recording API on st, or nil (not mounted) without a store.
func recordingDesk(a *ca.Authority, st ca.RecordingStore, lim ca.RecordingLimits) services.Recordings {
	if st == nil {
		return nil
	}
	return ca.RecordingDesk{Authority: a, Store: st, Limits: lim}
}

// buildServer builds the server of cfg, in the order its parts need each other: the stores
// (Redis, the audit log), the signers (CA keys from the KMS, through the keyring when it is
// on), the policy, the identity verifier, the authority, its endpoints, and the HTTP handler.
// oidc are options of the verifier (sshca dev reaches its own issuer in process). Nothing runs
// yet except what construction itself does (policy load, OIDC discovery, publishing the CA keys
// to bastions); on error, what was opened is closed.
func buildServer(ctx context.Context, cfg *Config, log *slog.Logger, oidc ...identity.Option) (_ *server, err error) {
	withDefaults := cfg.withDefaults()
	cfg = &withDefaults
	s := &server{log: log, draining: make(chan struct{}), drain: cfg.ShutdownTimeout}
	if s.drain <= 0 {
		s.drain = DefaultShutdownTimeout
	}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	reg := newRegistry()

	// Stores: everything shared lives in Redis.
	ropts, err := cfg.Redis.UniversalOptions()
	if err != nil {
		return nil, err
	}
	rc := cfg.Redis
	s.rdb = newUniversalClient(newRedisBounds(cfg.RequestTimeout, rc.DialTimeout, rc.ReadTimeout, rc.WriteTimeout).universal(ropts))
	countRedisErrors(s.rdb, reg)
	if err := checkServeRedis(ctx, s.rdb, rc, "redis", cfg.RequestTimeout, func(err error) {
		log.Warn("sshca starts without knowing what its Redis is (a Cluster node or a Sentinel named as a single server shows as errors)", "err", err)
	}); err != nil {
		return nil, err
	}
	storeOpts := cfg.Redis.StoreOptions()
	// Issuance checks the mark of every audit stripe this replica may append to.
	storeOpts.AuditStripes = cfg.Audit.Stripes
	storeOpts.InventoryShards = cfg.Inventory.Shards
	db := store.NewRedis(s.rdb, storeOpts)
	// Before anything reads the store: the witness then starts from the archive's record.
	if err := seedFromArchive(db, cfg, log); err != nil {
		return nil, err
	}
	if err := checkShardsAtStart(ctx, db, cfg.RequestTimeout, log); err != nil {
		return nil, err
	}
	if cfg.Redis.WaitReplicas > 0 {
		s.loops = append(s.loops, forever("replicated marks", func(ctx context.Context) {
			confirmReplicated(ctx, db, time.NewTicker(time.Second), log)
		}))
	}
	var auditKey []byte
	if cfg.Audit.KeyFile != "" {
		if auditKey, err = readAuditKey(cfg.Audit.KeyFile); err != nil {
			return nil, fmt.Errorf("audit.key_file: %w", err)
		}
	} else {
		log.Warn("the audit log is chained with plain SHA-256: anyone who can write to Redis can rewrite it; set audit.key_file (sshca audit genkey)")
	}
	auditLog := audit.New(s.rdb, audit.Options{Key: auditKey, Logger: log, Marks: db, Bans: db, Stripes: cfg.Audit.Stripes})
	if cfg.Audit.Stripes > 1 {
		s.loops = append(s.loops, forever("audit checkpoints", func(ctx context.Context) { auditLog.RunCheckpoints(ctx, nil) }))
		s.checkpoint = auditLog.Checkpoint
	}
	// Session recordings: on a Redis of their own, with a client and pool of their own, so
	// that a recordings Redis that is slow or full holds up only the requests that ship or
	// read recordings. Without one, /v1/recordings is not served.
	var recordings ca.RecordingStore
	if rc := cfg.Recordings.Redis; len(rc.Addrs) > 0 {
		recOpts, err := rc.UniversalOptions()
		if err != nil {
			return nil, fmt.Errorf("recordings.redis: %w", err)
		}
		s.recRDB = newUniversalClient(newRedisBounds(cfg.RequestTimeout, rc.DialTimeout, rc.ReadTimeout, rc.WriteTimeout).universal(recOpts))
		if err := checkServeRedis(ctx, s.recRDB, rc, "recordings.redis", cfg.RequestTimeout, func(err error) {
			log.Warn("sshca starts without knowing what its recordings Redis is (a Cluster node or a Sentinel named as a single server shows as errors)", "err", err)
		}); err != nil {
			return nil, err
		}
		recordings = store.NewRecordings(s.recRDB, "", nil).WithRetention(cfg.Recordings.Retention)
	}

	// Signers: the configured CA keys, or, with the keyring on, the keyring they seed.
	userKey, err := kms.Open(ctx, kms.KeyRef{KMS: cfg.UserCA.KMS, Key: cfg.UserCA.Key})
	if err != nil {
		return nil, fmt.Errorf("user CA key: %w", err)
	}
	s.keys = append(s.keys, userKey)
	hostKey, err := kms.Open(ctx, kms.KeyRef{KMS: cfg.HostCA.KMS, Key: cfg.HostCA.Key})
	if err != nil {
		return nil, fmt.Errorf("host CA key: %w", err)
	}
	s.keys = append(s.keys, hostKey)
	// Two URIs can name one key (another path to the file, a symlink, a PKCS#11 object by id
	// and by label), which Config.validate's comparison of the URIs cannot see. One key as both
	// CAs would make every host trusting it for hosts accept user certificates as host
	// certificates and back, and RegisterHostCA below would take the user CA's scope out of
	// the user KRL: every user revocation gone from bastions' KRLs.
	if fp := ssh.FingerprintSHA256(userKey.Signer().PublicKey()); fp == ssh.FingerprintSHA256(hostKey.Signer().PublicKey()) {
		return nil, fmt.Errorf("user_ca and host_ca name the same key (%s, by %q and %q): the user and the host CA need keys of their own; create a host CA key and name it in host_ca", fp, kms.Redact(cfg.UserCA.Key), kms.Redact(cfg.HostCA.Key))
	}
	if err := db.RegisterCA(ctx, userKey.Signer().PublicKey()); err != nil {
		log.Warn("cannot publish the user CA to bastions yet; Redis unreachable?", "err", err)
	}
	// Its scope belongs in the host KRL, never in the user KRL bastions build.
	if err := db.RegisterHostCA(ctx, hostKey.Signer().PublicKey()); err != nil {
		log.Warn("cannot register the host CA key as such; Redis unreachable?", "err", err)
	}
	var userSigner, hostSigner ca.Signer = signer.New(userKey.Signer(), db, signer.Options{}), signer.New(hostKey.Signer(), db, signer.Options{})
	var keyManager *keyring.Manager
	if cfg.Keyring.Enabled {
		userCA, hostCA, err := openKeyring(ctx, cfg, userKey, hostKey, db, log)
		if err != nil {
			return nil, err
		}
		userSigner, hostSigner = userCA, hostCA
		s.loops = append(s.loops,
			forever("keyring refresh (user CA)", func(ctx context.Context) { userCA.Run(ctx, nil, cfg.Keyring.Refresh) }),
			forever("keyring refresh (host CA)", func(ctx context.Context) { hostCA.Run(ctx, nil, cfg.Keyring.Refresh) }))
		kc := cfg.Keyring
		keyManager = &keyring.Manager{Store: db, KMS: kc.KMS, KeyDir: kc.KeyDir, TrustRefresh: kc.TrustRefresh,
			MaxUserTTL: cfg.Limits.MaxUserTTL, MaxHostTTL: cfg.Limits.MaxHostTTL}
	}

	// Policy and identity.
	pol, details, policyLoops, err := policyInForce(ctx, cfg.Policy, log, reg)
	if err != nil {
		return nil, err
	}
	s.loops = append(s.loops, policyLoops...)
	timedPol := policies.Timed(pol, reg)
	auth, err := identity.New(ctx, cfg.OIDC, oidc...)
	if err != nil {
		return nil, fmt.Errorf("oidc: %w", err)
	}

	// The replica's one follower of the revocation feeds, behind GET /v1/krl and its long poll.
	follower := revocation.NewFollower(db, log)
	s.loops = append(s.loops, forever("revocation follower", follower.Run))
	notifier, err := newDispatcher(cfg.Notifications, db, reg, log)
	if err != nil {
		return nil, err
	}

	// The authority: authenticate, decide, sign, record.
	reqLog := services.LogRequestIDs(log) // every line logged under a request names its X-Request-ID
	proxies, _ := cfg.trustedProxies()    // validated in LoadConfig
	faults := services.NewPolicyFaults(reg, time.Now)
	rate := cfg.Limits.Rate.rateLimits()
	rate.TrustedProxies = proxies
	limiter := services.NewRateLimiter(rate, reg)
	metrics := services.NewMetrics(reg)
	metrics.IsKMSError = isKMSError
	authority, err := ca.New(ca.Config{
		Authenticator: auth, Policy: timedPol, UserSigner: userSigner, HostSigner: hostSigner,
		Store: db, Revocations: db, Tokens: db, Admission: db, Audit: auditLog, Faults: faults, TokenReturns: metrics, Logger: reqLog,
		Limits: ca.Limits{MaxUserTTL: cfg.Limits.MaxUserTTL, MaxHostTTL: cfg.Limits.MaxHostTTL, MaxPrincipals: cfg.Limits.MaxPrincipals,
			IdentityBlock: cfg.Limits.IdentityBlock},
		IdentityLimiter: limiter, Stages: metrics, Requests: db, Notifier: notifierOf(notifier),
		AccessRequests: ca.AccessRequestLimits{PendingTimeout: cfg.Limits.AccessRequestTimeout, MaxWindow: cfg.Limits.MaxAccessWindow},
	})
	if err != nil {
		return nil, err
	}
	s.retries = authority.DrainRetries
	if notifier != nil {
		// The dispatcher's sweep of expired access requests is the authority's: it exists only now.
		notifier.SetExpire(authority.NotifyExpired)
		s.loops = append(s.loops, loop{"notification outbox", notifier.Run})
	}

	// Endpoints, each through the same logging and instrumenting middleware.
	var svc services.Service = authority
	svc = services.InstrumentingMiddleware(metrics)(svc)
	svc = services.LoggingMiddleware(reqLog)(svc)
	var keys services.KeyAdmin
	if keyManager != nil {
		keys = services.LoggingKeyAdmin(reqLog)(services.InstrumentingKeyAdmin(metrics)(keyring.Admin{Authority: authority, Manager: keyManager}))
	}
	requests := services.LoggingAccessRequests(reqLog)(services.InstrumentingAccessRequests(metrics)(authority))

	// HTTP: the API's routes, /metrics and /readyz on the diagnostics listener when there is one.
	ready := services.Checks(readyChecks(db, s.rdb, redisProbe{auditStripes: cfg.Audit.Stripes, inventoryShards: cfg.Inventory.Shards, sentinels: sentinelSection(cfg.Redis, "redis")}, userSigner, hostSigner,
		map[string]ca.Checker{"redis": db, "policy": pol, "kms_user_ca": userKey, "kms_host_ca": hostKey}))
	detailsWithFaults := withFaults(details, faults)
	if cfg.DiagListen != "" {
		s.diag, s.diagAddr = http.NewServeMux(), cfg.DiagListen
		services.MountDiag(s.diag, ready, detailsWithFaults, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		if cfg.DiagPprof {
			mountPprof(s.diag)
			log.Warn("diag_pprof is on: the Go profiler answers under /debug/pprof/ on the diagnostics listener", "addr", cfg.DiagListen)
		}
		ready, detailsWithFaults = services.ReadyStatus(ready), nil
	}
	recDesk := recordingDesk(authority, recordings,
		ca.RecordingLimits{SessionCap: cfg.Recordings.SessionCap, HostCap: cfg.Recordings.HostCap})
	mux := services.NewHTTPHandler(services.MakeEndpoints(svc), services.HTTPOptions{
		Logger:            reqLog,
		KnownHostsPattern: cfg.KnownHostsPattern,
		TrustedProxies:    proxies,
		Ready:             ready,
		Details:           detailsWithFaults,
		Login:             cfg.Login,
		Keys:              keys,
		Requests:          requests,
		Discovery:         ca.DiscoveryDesk{Authority: authority, Store: db},
		Recordings:        recDesk,
		RenderKRL:         revocation.EncodeKRL,
		KRLFeed:           services.InstrumentKRLFeed(metrics)(follower),
		Stop:              s.draining,
	})
	if cfg.Login != nil && cfg.Console.PublicURL != "" {
		// The console calls the authority with the signed-in user's ID token, as the API does
		// with a bearer token: the same authentication, policy and audit. Its sessions are in
		// Redis, so that every replica serves every browser.
		console, err := ui.New(ui.Options{PublicURL: cfg.Console.PublicURL, Issuer: cfg.Login.Issuer, ClientID: cfg.Login.ClientID,
			Scopes: cfg.Login.Scopes, Requests: requests, Certificates: authority, Recordings: recDesk, Sessions: db, Logger: reqLog})
		if err != nil {
			return nil, fmt.Errorf("console: %w", err)
		}
		mux.Handle("/ui/", console.Handler())
	}
	if s.diag == nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	}
	s.api = metrics.InstrumentHTTP(mux, services.RequestID(proxies, limiter.Handler(services.RequestDeadline(cfg.RequestTimeout, services.IsLongPoll, mux))))
	if cfg.TLS.ClientCAFile != "" {
		s.api = adminCertRequired(s.api)
	}
	if s.tls, err = serverTLS(cfg.TLS, log); err != nil {
		return nil, err
	}
	s.about = []any{"tls", cfg.TLS.CertFile != "", "admin_client_certs", cfg.TLS.ClientCAFile != "",
		"user_ca", userKey.Signer().PublicKey().Type(), "host_ca", hostKey.Signer().PublicKey().Type(),
		"policy", pol.Revision(), "policy_evaluator", pol.Mode()}
	if recordings != nil {
		s.about = append(s.about, "recordings_retention", cfg.Recordings.Retention.String())
	}
	return s, nil
}

// run serves h (s.api, or dev's handler around it) on l, and the diagnostics listener, with
// every background loop under one errgroup, until ctx ends (SIGTERM or SIGINT in main) or a
// loop fails. ready, when not nil, is called once every listener is open. Then it shuts down
// in order, each step once the one before has ended:
//
//  1. stop accepting: the listener closes, new connections are refused (the load balancer
//     moves them to other replicas), and the long polls of /v1/krl answer;
//  2. drain: requests in flight finish and get their answers, for at most shutdown_timeout;
//     those still running then are cut off (run's error says so), their handlers' contexts
//     cancelled, and waited for, at most handlersBound (serveDraining): the records of a
//     certificate already signed are still kept;
//  3. stop the loops (and the diagnostics listener), and wait for them, and for the audit
//     records of signed certificates still retried in the background (for at most
//     retriesBound; those not kept are logged as lost);
//  4. close Redis, which the requests and the loops used until then, and the CA keys.
//
// Its error is the failed loop's (the server stopped because of it), else the listener's, or
// the drain's when shutdown_timeout cut requests off.
func (s *server) run(ctx context.Context, l net.Listener, h http.Handler, ready func()) error {
	// The loops outlive ctx: they stop only once the requests that read what they keep
	// current (the KRL feed, the keyring, the policy) are answered.
	loopsCtx, stopLoops := context.WithCancel(context.WithoutCancel(ctx))
	defer stopLoops()
	g, gctx := errgroup.WithContext(loopsCtx)
	loops := s.loops
	if s.diag != nil {
		dl, err := net.Listen("tcp", s.diagAddr)
		if err != nil {
			l.Close()
			s.close()
			return fmt.Errorf("diag_listen: %w", err)
		}
		s.log.Info("sshca diagnostics", "addr", dl.Addr().String(), "paths", "/metrics /readyz /healthz")
		diag := newHTTPServer(s.diag, s.log)
		loops = append(loops, loop{"diagnostics listener", func(ctx context.Context) error {
			return serveUntilDone(ctx, diag, dl, "", "", s.log)
		}})
	} else {
		s.log.Warn("diag_listen is off: /metrics and the /readyz details are served on the public listener")
	}
	// The loops get loopsCtx, not gctx: when one fails, the others go on until the requests
	// in flight are drained, as on SIGTERM; gctx only says that one failed.
	goLoops(g, loopsCtx, loopsCtx, s.log, loops)

	// Serving ends when ctx ends or when a loop failed (gctx ends before loopsCtx then).
	serveCtx, stopServing := context.WithCancel(ctx)
	defer stopServing()
	context.AfterFunc(gctx, stopServing)
	srv := newHTTPServer(h, s.log)
	srv.TLSConfig = s.tls
	// Shutdown calls this once the listener is closed.
	srv.RegisterOnShutdown(func() {
		s.log.Info("shutdown: not accepting connections; draining the requests in flight")
		close(s.draining)
	})
	if ready != nil {
		ready()
	}
	serveErr := serveDraining(serveCtx, srv, l, "", "", s.drain, s.log)
	switch {
	case errors.Is(serveErr, context.DeadlineExceeded): // the drain's bound, not a listener failure
		serveErr = fmt.Errorf("shutdown_timeout: %w", serveErr)
		s.log.Error("shutdown: requests not drained; stopping the background loops", "err", serveErr)
	case serveErr != nil:
		s.log.Error("the listener failed; stopping the background loops", "err", serveErr)
	default:
		s.log.Info("shutdown: requests drained; stopping the background loops")
	}
	stopLoops()
	loopErr := g.Wait()
	if s.retries != nil {
		// The records of certificates signed but not handed out are still retried (for up to
		// ca.SignedAuditRetry); those not kept within retriesBound are logged as lost. The
		// bound keeps the whole shutdown within shutdown_timeout plus a few seconds, what an
		// orchestrator's grace period is told to allow (30 s in deploy/kubernetes for 20 s).
		rctx, cancel := context.WithTimeout(context.Background(), min(s.drain, retriesBound))
		if err := s.retries(rctx); err != nil {
			s.log.Error("shutdown: audit records still pending", "err", err)
		}
		cancel()
	}
	if s.checkpoint != nil {
		// The records since the last tick are pinned by a checkpoint too.
		cctx, cancel := context.WithTimeout(context.Background(), min(s.drain, retriesBound))
		if err := s.checkpoint(cctx); err != nil {
			s.log.Warn("shutdown: the last audit checkpoint was not written", "err", err)
		}
		cancel()
	}
	s.log.Info("shutdown: background loops ended; closing Redis")
	s.close()
	s.log.Info("shutdown: Redis closed")
	if loopErr != nil {
		return loopErr
	}
	return serveErr
}

// goLoops runs every loop in g with ctx. A loop that returns an error while
// lifetime (what the loops live for) has not ended cannot go on: that is logged as the reason
// the process stops, and its error ends the group. Errors on the way out after lifetime ended
// are not failures. Each loop's end is logged at debug level, so the order of shutdown can be
// read from the log.
func goLoops(g *errgroup.Group, ctx, lifetime context.Context, log *slog.Logger, loops []loop) {
	for _, lp := range loops {
		g.Go(func() error {
			err := lp.run(ctx)
			if err != nil && lifetime.Err() == nil {
				log.Error("a background loop failed; stopping", "loop", lp.name, "err", err)
				return fmt.Errorf("%s: %w", lp.name, err)
			}
			log.Debug("background loop ended", "loop", lp.name)
			return nil
		})
	}
}

// close closes Redis and the CA keys, what buildServer opened.
func (s *server) close() {
	if s.rdb != nil {
		s.rdb.Close()
	}
	if s.recRDB != nil {
		s.recRDB.Close()
	}
	for _, k := range s.keys {
		k.Close()
	}
}

// openKeyring serves the CA keys from the shared keyring (seeded with the configured keys on
// first start) and publishes its keys to bastions and to the host KRL's registry.
func openKeyring(ctx context.Context, cfg *Config, userKey, hostKey *kms.Key, db *store.Redis, log *slog.Logger) (userCA, hostCA *keyring.CA, err error) {
	for _, seed := range []struct {
		kind ca.CertKind
		ref  KeyConfig
		key  *kms.Key
	}{{ca.UserCert, cfg.UserCA, userKey}, {ca.HostCert, cfg.HostCA, hostKey}} {
		if err := keyring.Bootstrap(ctx, db, seed.kind, kms.KeyRef{KMS: seed.ref.KMS, Key: seed.ref.Key}, seed.key); err != nil {
			return nil, nil, fmt.Errorf("keyring: %w", err)
		}
	}
	if userCA, err = keyring.New(ctx, ca.UserCert, db, db, log); err != nil {
		return nil, nil, err
	}
	if hostCA, err = keyring.New(ctx, ca.HostCert, db, db, log); err != nil {
		return nil, nil, err
	}
	for _, k := range userCA.Published() {
		if err := db.RegisterCA(ctx, k); err != nil {
			return nil, nil, fmt.Errorf("keyring: publish to bastions: %w", err)
		}
	}
	for _, k := range hostCA.Scopes() {
		if err := db.RegisterHostCA(ctx, k); err != nil {
			return nil, nil, fmt.Errorf("keyring: register host CA keys: %w", err)
		}
	}
	return userCA, hostCA, nil
}

// readyChecks are the checks /readyz runs: the given ones, with Redis probed by a write in
// every hash tag of durable state (the CA keys' scopes as the signers publish them now), and
// the store's generation marks compared with what this replica has seen (store_state).
func readyChecks(state *store.Redis, rdb redis.UniversalClient, probe redisProbe, user, host ca.Signer, given map[string]ca.Checker) map[string]ca.Checker {
	checks := maps.Clone(given)
	caKeys := func() []ssh.PublicKey { return append(publishedKeys(user), publishedKeys(host)...) }
	probe.rdb, probe.prefix, probe.caKeys = rdb, "sshca", caKeys
	checks["redis"] = probe
	checks["store_state"] = checkFunc(func(ctx context.Context) error {
		return state.CheckState(ctx, caKeys()...)
	})
	// A change of the store's number by sshca store migrate --inventory-shards while this
	// replica runs with the old one: every admission refuses it, and so does readiness, so
	// that a load balancer stops sending it requests until it restarts with the new number.
	checks["inventory_shards"] = checkFunc(state.CheckShards)
	return checks
}

// checkShardsAtStart refuses to start a replica whose inventory.shards is not the store's
// number (store.ShardCountError): it would reserve serials in keys the other replicas do not
// look in. On a store without a number it records this replica's. A Redis that cannot be
// asked now is no reason not to start (readiness and every admission ask again); log hears.
func checkShardsAtStart(ctx context.Context, db *store.Redis, d time.Duration, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	err := db.CheckShards(ctx)
	if sc := (*store.ShardCountError)(nil); errors.As(err, &sc) {
		return sc // it names inventory.shards, the store's number and the way to change it
	}
	if err != nil {
		log.Warn("sshca starts without knowing the store's number of inventory shards (every admission checks it)", "err", err)
	}
	return nil
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

// httpWriteTimeout is the HTTP server's write timeout; request_timeout is validated below it.
const httpWriteTimeout = 30 * time.Second

// newHTTPServer is an http.Server with every timeout set, so a slow client cannot hold a
// connection open, and its handler under services.Recover, so that a handler that panics is
// answered 500 (or cut off) and logged with its request ID, on every listener of the binary
// (the API and console, the diagnostics listener, the bastion agent's health listener).
func newHTTPServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           services.Recover(log, h),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      httpWriteTimeout,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    32 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// serveUntilDone is serveDraining with the drain bounded by the server's write timeout, past
// which no answer could be written anyway (the diagnostics listener, dev's, the agent's).
func serveUntilDone(ctx context.Context, srv *http.Server, l net.Listener, certFile, keyFile string, log *slog.Logger) error {
	return serveDraining(ctx, srv, l, certFile, keyFile, srv.WriteTimeout, log)
}

// handlersBound is the most serveDraining waits, once the drain's bound has cut connections
// off, for the handlers still running. Their contexts are cancelled then, so a handler that
// waits on the store, the KMS or an issuer ends at once; the work left of a certificate
// already signed (recording it, and auditing a failure to) runs under bounds of its own, at
// most twice ca.SignedCertTimeout, and is what this waits for before Redis closes.
const handlersBound = 2*ca.SignedCertTimeout + time.Second

// serveDraining serves on l until ctx ends (SIGTERM or SIGINT in main), then shuts down
// gracefully: the listener closes at once, so new connections are refused (the load balancer
// moves them to other replicas), idle keep-alive connections close, and requests in flight
// finish and get their answers. The drain lasts at most drain (0: 10 s); connections still
// busy then are closed and the error says so. http.Server.Close does not wait for the handlers
// of the connections it closes, so serveDraining then cancels their contexts and waits for
// them, at most handlersBound (logged, with how many are left if any): when it returns, no
// handler uses what the caller closes next (Redis), unless one ignored its context for longer
// than that. Orchestrators should allow a little more than drain plus handlersBound before
// killing the process. It serves TLS when certFile is set or srv.TLSConfig is (serve's
// reloading certificate). It sets srv.BaseContext and wraps srv.Handler.
func serveDraining(ctx context.Context, srv *http.Server, l net.Listener, certFile, keyFile string, drain time.Duration, log *slog.Logger) error {
	base, cutOff := context.WithCancel(context.Background())
	defer cutOff()
	srv.BaseContext = func(net.Listener) context.Context { return base }
	running := &inFlight{}
	srv.Handler = running.track(srv.Handler)
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
	if drain <= 0 {
		drain = 10 * time.Second
	}
	shutdown, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	err := srv.Shutdown(shutdown)
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		srv.Close()
		cutOff()
		err = fmt.Errorf("shutdown: requests still in flight after %s were cut off: %w", drain, err)
		if n := running.count(); n > 0 {
			log.Warn("shutdown: requests cut off; waiting for their handlers to end", "handlers", n, "bound", handlersBound)
			wctx, cancel := context.WithTimeout(context.Background(), handlersBound)
			left := running.wait(wctx)
			cancel()
			if left > 0 {
				log.Error("shutdown: handlers still running; what they use closes under them", "handlers", left, "waited", handlersBound)
				err = fmt.Errorf("%w; %d handlers still running after a further %s", err, left, handlersBound)
			} else {
				log.Info("shutdown: the handlers of the requests cut off have ended")
			}
		}
	} else {
		err = nil
	}
	// Shutdown closes only the listeners Serve has begun to track: when ctx ended before the
	// goroutine above got that far, Serve returns ErrServerClosed at once and closes l on its
	// way out. Closing l here and waiting for Serve makes "returned" mean "not accepting".
	l.Close()
	<-errc
	return err
}

// inFlight counts the handlers running, for serveDraining to wait for after
// http.Server.Close, which does not.
type inFlight struct {
	mu   sync.Mutex
	n    int
	idle chan struct{} // closed when n drops to 0 while wait waits; nil otherwise
}

func (f *inFlight) track(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.n++
		f.mu.Unlock()
		defer f.done()
		next.ServeHTTP(w, r)
	})
}

func (f *inFlight) done() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n--
	if f.n == 0 && f.idle != nil {
		close(f.idle)
		f.idle = nil
	}
}

func (f *inFlight) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
}

// wait returns 0 once no handler runs, or how many still do when ctx ends.
func (f *inFlight) wait(ctx context.Context) int {
	f.mu.Lock()
	if f.n == 0 {
		f.mu.Unlock()
		return 0
	}
	if f.idle == nil {
		f.idle = make(chan struct{})
	}
	idle := f.idle
	f.mu.Unlock()
	select {
	case <-idle:
		return 0
	case <-ctx.Done():
		return f.count()
	}
}

type checkFunc func(context.Context) error

func (f checkFunc) Check(ctx context.Context) error { return f(ctx) }

func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// notifierOf is d as a ca.Notifier: nil when there is none (not a nil pointer in an
// interface).
func notifierOf(d *notify.Dispatcher) ca.Notifier {
	if d == nil {
		return nil
	}
	return d
}
