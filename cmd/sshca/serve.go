package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/policies"
	"github.com/sshca/sshca/store"
)

func newServeCommand() *cobra.Command {
	var configPath, checkPath string
	var offline bool
	var logOpts logOptions
	cmd := &cobra.Command{
		Use:   "serve --config FILE | --check-config FILE [--offline]",
		Short: "Run the signing service (production), or check its configuration",
		// The check is a flag of serve (it reads the configuration as serve does), but users
		// reach for a command of its own.
		SuggestFor: []string{"check-config", "check", "validate"},
		Args:       cobra.NoArgs,
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
			// Here rather than in serve: tests run serve in their own process.
			gogc, memLimit := applyGCDefault(os.Getenv)
			log.Info("garbage collector", "gogc", gogc, "gomemlimit_bytes", memLimit)
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

// serve runs the production service until ctx ends (run says in which order it stops). ready,
// when not nil, receives the bound address once the listeners are open (tests use it).
func serve(ctx context.Context, cfg *Config, log *slog.Logger, ready chan<- string) error {
	s, err := buildServer(ctx, cfg, log)
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		s.close()
		return fmt.Errorf("listen: %w", err)
	}
	log.Info("sshca serving", append([]any{"addr", l.Addr().String()}, s.about...)...)
	return s.run(ctx, l, s.api, func() {
		if ready != nil {
			ready <- l.Addr().String()
		}
	})
}

// policyInForce loads the configured policy, with the loops that keep it current. A policy
// directory is watched and hot-reloaded, a bundle server polled (each version tested before it
// replaces the old one); the embedded default is fixed and has no loop.
func policyInForce(ctx context.Context, pc PolicyConfig, log *slog.Logger, reg prometheus.Registerer) (policies.Loaded, func() map[string]string, []loop, error) {
	evaluator, err := policies.ParseEvaluator(pc.Evaluator)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("policy: %w", err)
	}
	engineOpts := []policies.Option{policies.WithEvaluator(evaluator), policies.WithFallbackCounter(policies.NewFallbackCounter(reg))}
	if pc.BundleURL != "" {
		r, err := policies.NewBundleReloader(ctx, pc.BundleURL, nil, policies.WithLogger(log), policies.WithMetrics(reg), policies.WithLoadOptions(engineOpts...))
		if err != nil {
			return nil, nil, nil, fmt.Errorf("policy: %w", err)
		}
		poll := forever("policy bundle poll", func(ctx context.Context) { r.Poll(ctx, pc.BundlePoll) })
		return r, reloaderDetails(r), []loop{poll}, nil
	}
	if pc.Dir == "" {
		e, err := loadPolicy(ctx, pc, engineOpts...)
		if err != nil {
			return nil, nil, nil, err
		}
		return e, func() map[string]string {
			return map[string]string{"policy_revision": e.Revision(), "policy_evaluator": e.Mode()}
		}, nil, nil
	}
	opts := engineOpts
	if pc.DataFile != "" {
		opts = append(opts, policies.WithDataFile(pc.DataFile))
	}
	r, err := policies.NewReloader(ctx, pc.Dir, opts, policies.WithLogger(log), policies.WithMetrics(reg))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("policy: %w", err)
	}
	watch := forever("policy watch", func(ctx context.Context) { watchPolicy(ctx, r, log, nil) })
	return r, reloaderDetails(r), []loop{watch}, nil
}

// watchPolicy keeps r watching its directory until ctx ends. A watch that cannot be set up or
// breaks (the directory replaced or briefly gone during a deployment, inotify limits) is
// logged and set up again after a pause that doubles up to a minute, with a reload first, so a
// change made while nothing watched is not missed. after is the pause's timer (nil: time.After).
func watchPolicy(ctx context.Context, r *policies.Reloader, log *slog.Logger, after func(time.Duration) <-chan time.Time) {
	if after == nil {
		after = time.After
	}
	pause := time.Second
	for {
		err := r.Watch(ctx)
		if ctx.Err() != nil {
			return
		}
		log.Error("policy directory is not watched; trying again (the policy in force stays)", "err", err, "retry_in", pause)
		select {
		case <-ctx.Done():
			return
		case <-after(pause):
		}
		pause = min(2*pause, time.Minute)
		_ = r.Reload(ctx) // logs and counts a refused version itself
	}
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

// confirmReplicated has the replicas confirm the store's marks at every tick until ctx ends
// (store.Redis.ConfirmReplicated): it bounds how much of issuance's writes a failover may
// lose before sshca takes it for lost state. A failure is logged once until it recovers:
// each tick tries again.
func confirmReplicated(ctx context.Context, db *store.Redis, tick *time.Ticker, log *slog.Logger) {
	defer tick.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := db.ConfirmReplicated(cctx)
		cancel()
		switch {
		case err != nil && !failing:
			log.Warn("the Redis replicas do not confirm the store's marks; revocations are refused until they do", "err", err)
		case err == nil && failing:
			log.Info("the Redis replicas confirm the store's marks again")
		}
		failing = err != nil
	}
}
