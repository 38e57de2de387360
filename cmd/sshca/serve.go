package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/keyring"
	"github.com/sshca/sshca/kms"
	"github.com/sshca/sshca/policies"
	"github.com/sshca/sshca/services"
	"github.com/sshca/sshca/store"
)

func newServeCommand() *cobra.Command {
	var configPath, checkPath string
	var offline bool
	var logOpts logOptions
	cmd := &cobra.Command{
		Use:   "serve --config FILE | --check-config FILE [--offline]",
		Short: "Run the signing service (production), or check its configuration",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if checkPath != "" {
				return runCheckConfig(cmd.Context(), cmd.OutOrStdout(), checkPath, offline)
			}
			if offline {
				return fmt.Errorf("--offline goes with --check-config FILE")
			}
			log, err := newLogger(cmd.ErrOrStderr(), logOpts)
			if err != nil {
				return err
			}
			cfg, err := LoadConfig(configPath)
			if err != nil {
				return err
			}
			return serve(cmd.Context(), cfg, log, nil)
		},
	}
	cmd.Flags().StringVar(&configPath, "config", "/etc/sshca/config.yaml", "configuration file (YAML)")
	cmd.Flags().StringVar(&checkPath, "check-config", "", "check this configuration file and report every problem, then exit (non-zero status on problems): keys, Redis (durability settings, ACL), identity providers, policy")
	cmd.Flags().BoolVar(&offline, "offline", false, "with --check-config: only what needs no network and no key material (the YAML, every value, the policy)")
	addLogFlags(cmd, &logOpts, "json")
	return cmd
}

// serve runs the production service until ctx ends. ready, when not nil, receives the bound
// address once the listener is open (tests use it).
func serve(ctx context.Context, cfg *Config, log *slog.Logger, ready chan<- string) error {
	withDefaults := cfg.withDefaults()
	cfg = &withDefaults
	userKey, err := kms.Open(ctx, kms.KeyRef{KMS: cfg.UserCA.KMS, Key: cfg.UserCA.Key})
	if err != nil {
		return fmt.Errorf("user CA key: %w", err)
	}
	defer userKey.Close()
	hostKey, err := kms.Open(ctx, kms.KeyRef{KMS: cfg.HostCA.KMS, Key: cfg.HostCA.Key})
	if err != nil {
		return fmt.Errorf("host CA key: %w", err)
	}
	defer hostKey.Close()

	ropts, err := cfg.Redis.UniversalOptions()
	if err != nil {
		return err
	}
	rc := cfg.Redis
	rdb := redis.NewUniversalClient(newRedisBounds(cfg.RequestTimeout, rc.DialTimeout, rc.ReadTimeout, rc.WriteTimeout).universal(ropts))
	defer rdb.Close()
	db := store.NewRedis(rdb, store.RedisOptions{})
	// Before anything reads the store: the witness then starts from the archive's record.
	if err := seedFromArchive(db, cfg, log); err != nil {
		return err
	}
	if err := db.RegisterCA(ctx, userKey.Signer().PublicKey()); err != nil {
		log.Warn("cannot publish the user CA to bastions yet; Redis unreachable?", "err", err)
	}
	// Its scope belongs in the host KRL, never in the user KRL bastions build.
	if err := db.RegisterHostCA(ctx, hostKey.Signer().PublicKey()); err != nil {
		log.Warn("cannot register the host CA key as such; Redis unreachable?", "err", err)
	}

	reg := newRegistry()
	pol, details, err := policyInForce(ctx, cfg.Policy, log, reg)
	if err != nil {
		return err
	}
	pol = policies.Timed(pol, reg)
	auth, err := identity.New(ctx, cfg.OIDC)
	if err != nil {
		return fmt.Errorf("oidc: %w", err)
	}
	proxies, _ := cfg.trustedProxies() // validated in LoadConfig

	p := redisParts(userKey, hostKey, rdb, db, pol, log)
	followRevocations(ctx, &p, db)
	p.auth, p.requestTimeout = auth, cfg.RequestTimeout
	p.rate = cfg.Limits.Rate.rateLimits()
	var auditKey []byte
	if cfg.Audit.KeyFile != "" {
		if auditKey, err = readAuditKey(cfg.Audit.KeyFile); err != nil {
			return fmt.Errorf("audit.key_file: %w", err)
		}
	} else {
		log.Warn("the audit log is chained with plain SHA-256: anyone who can write to Redis can rewrite it; set audit.key_file (sshca audit genkey)")
	}
	p.audit = audit.New(rdb, audit.Options{Key: auditKey, Logger: log, Marks: db})
	p.limits = ca.Limits{MaxUserTTL: cfg.Limits.MaxUserTTL, MaxHostTTL: cfg.Limits.MaxHostTTL, MaxPrincipals: cfg.Limits.MaxPrincipals,
		IdentityBlock: cfg.Limits.IdentityBlock}
	p.accessLimits = ca.AccessRequestLimits{PendingTimeout: cfg.Limits.AccessRequestTimeout, MaxWindow: cfg.Limits.MaxAccessWindow}
	p.knownHostsPattern, p.trustedProxies = cfg.KnownHostsPattern, proxies
	p.details, p.login, p.reg, p.consoleURL = details, cfg.Login, reg, cfg.Console.PublicURL
	if cfg.DiagListen != "" {
		p.diag = http.NewServeMux()
	}
	if cfg.Keyring.Enabled {
		if err := useKeyring(ctx, &p, cfg, userKey, hostKey, db); err != nil {
			return err
		}
	}
	if p.notifier, err = newDispatcher(cfg.Notifications, db, reg, log); err != nil {
		return err
	}
	h, err := apiHandler(p)
	if err != nil {
		return err
	}
	tlsConf, err := serverTLS(cfg.TLS, log)
	if err != nil {
		return err
	}
	if cfg.TLS.ClientCAFile != "" {
		h = adminCertRequired(h)
	}
	runDispatcher(ctx, p.notifier)
	l, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	log.Info("sshca serving", "addr", l.Addr().String(), "tls", cfg.TLS.CertFile != "", "admin_client_certs", cfg.TLS.ClientCAFile != "",
		"user_ca", userKey.Signer().PublicKey().Type(), "host_ca", hostKey.Signer().PublicKey().Type(), "policy", pol.Revision(), "policy_evaluator", pol.Mode())
	if err := serveDiag(ctx, cfg.DiagListen, p.diag, log); err != nil {
		l.Close()
		return err
	}
	if ready != nil {
		ready <- l.Addr().String()
	}
	srv := newHTTPServer(h, log)
	srv.TLSConfig = tlsConf
	return serveUntilDone(ctx, srv, l, "", "")
}

// policyInForce loads the configured policy. A policy directory is watched and hot-reloaded
// (tested before it replaces the old one); the embedded default is fixed.
func policyInForce(ctx context.Context, pc PolicyConfig, log *slog.Logger, reg prometheus.Registerer) (policies.Loaded, func() map[string]string, error) {
	evaluator, err := policies.ParseEvaluator(pc.Evaluator)
	if err != nil {
		return nil, nil, fmt.Errorf("policy: %w", err)
	}
	engineOpts := []policies.Option{policies.WithEvaluator(evaluator), policies.WithFallbackCounter(policies.NewFallbackCounter(reg))}
	if pc.BundleURL != "" {
		r, err := policies.NewBundleReloader(ctx, pc.BundleURL, nil, policies.WithLogger(log), policies.WithMetrics(reg), policies.WithLoadOptions(engineOpts...))
		if err != nil {
			return nil, nil, fmt.Errorf("policy: %w", err)
		}
		go r.Poll(ctx, pc.BundlePoll)
		return r, reloaderDetails(r), nil
	}
	if pc.Dir == "" {
		e, err := loadPolicy(ctx, pc, engineOpts...)
		if err != nil {
			return nil, nil, err
		}
		return e, func() map[string]string {
			return map[string]string{"policy_revision": e.Revision(), "policy_evaluator": e.Mode()}
		}, nil
	}
	opts := engineOpts
	if pc.DataFile != "" {
		opts = append(opts, policies.WithDataFile(pc.DataFile))
	}
	r, err := policies.NewReloader(ctx, pc.Dir, opts, policies.WithLogger(log), policies.WithMetrics(reg))
	if err != nil {
		return nil, nil, fmt.Errorf("policy: %w", err)
	}
	go func() {
		if err := r.Watch(ctx); err != nil {
			log.Error("policy directory is not watched; restart to load changes", "err", err)
		}
	}()
	return r, reloaderDetails(r), nil
}

func reloaderDetails(r *policies.Reloader) func() map[string]string {
	return func() map[string]string {
		rev, err := r.Status()
		d := map[string]string{"policy_revision": rev, "policy_evaluator": r.Mode()}
		if err != nil {
			d["policy_reload"] = "refused, last good policy in force: " + err.Error()
		}
		return d
	}
}

func loadPolicy(ctx context.Context, pc PolicyConfig, opts ...policies.Option) (*policies.Engine, error) {
	if pc.DataFile != "" {
		opts = append(opts, policies.WithDataFile(pc.DataFile))
	}
	var (
		e   *policies.Engine
		err error
	)
	if pc.Dir == "" {
		e, err = policies.LoadFS(ctx, policies.Embedded, opts...)
	} else {
		e, err = policies.LoadDir(ctx, pc.Dir, opts...)
	}
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	return e, nil
}

// useKeyring serves the CA keys from the shared keyring (seeded with the configured keys on
// first start) and mounts the key administration endpoints.
func useKeyring(ctx context.Context, p *parts, cfg *Config, userKey, hostKey *kms.Key, db *store.Redis) error {
	withDefaults := cfg.withDefaults() // sshca dev sets only what it needs
	cfg = &withDefaults
	kc := cfg.Keyring
	for _, seed := range []struct {
		kind ca.CertKind
		ref  KeyConfig
		key  *kms.Key
	}{{ca.UserCert, cfg.UserCA, userKey}, {ca.HostCert, cfg.HostCA, hostKey}} {
		if err := keyring.Bootstrap(ctx, db, seed.kind, kms.KeyRef{KMS: seed.ref.KMS, Key: seed.ref.Key}, seed.key); err != nil {
			return fmt.Errorf("keyring: %w", err)
		}
	}
	userCA, err := keyring.New(ctx, ca.UserCert, db, db, p.log)
	if err != nil {
		return err
	}
	hostCA, err := keyring.New(ctx, ca.HostCert, db, db, p.log)
	if err != nil {
		return err
	}
	go userCA.Run(ctx, nil, kc.Refresh)
	go hostCA.Run(ctx, nil, kc.Refresh)
	for _, k := range userCA.Published() {
		if err := db.RegisterCA(ctx, k); err != nil {
			return fmt.Errorf("keyring: publish to bastions: %w", err)
		}
	}
	for _, k := range hostCA.Scopes() {
		if err := db.RegisterHostCA(ctx, k); err != nil {
			return fmt.Errorf("keyring: register host CA keys: %w", err)
		}
	}
	m := &keyring.Manager{Store: db, KMS: kc.KMS, KeyDir: kc.KeyDir, TrustRefresh: kc.TrustRefresh,
		MaxUserTTL: cfg.Limits.MaxUserTTL, MaxHostTTL: cfg.Limits.MaxHostTTL}
	p.userSigner, p.hostSigner = userCA, hostCA
	p.keys = func(a *ca.Authority) services.KeyAdmin { return keyring.Admin{Authority: a, Manager: m} }
	return nil
}

// seedFromArchive makes db's witness start from the newest audit archive's record of the store
// (audit.archive_file), a witness outside it: this replica then finds a store restored from an
// older copy even though it never saw the newer state.
func seedFromArchive(db *store.Redis, cfg *Config, log *slog.Logger) error {
	if cfg.Audit.ArchiveFile == "" {
		return nil
	}
	var key []byte
	if cfg.Audit.KeyFile != "" {
		var err error
		if key, err = readAuditKey(cfg.Audit.KeyFile); err != nil {
			return fmt.Errorf("audit.key_file: %w", err)
		}
	}
	_, w, err := archiveWitness(audit.New(nil, audit.Options{Key: key}), cfg.Audit.ArchiveFile, nil)
	if err != nil {
		return fmt.Errorf("audit.archive_file: %w", err)
	}
	if w == nil {
		log.Warn("audit.archive_file holds no record of the store (written before archives kept one): the store is not compared with it")
		return nil
	}
	if err := db.Witness().Seed(*w); err != nil {
		return fmt.Errorf("audit.archive_file: %w", err)
	}
	log.Info("the store is compared with the audit archive's record of it", "generation", w.Epoch, "marks", len(w.Marks))
	return nil
}
