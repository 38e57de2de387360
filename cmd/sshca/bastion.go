package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sync/errgroup"

	"github.com/sshca/sshca/bastion"
	"github.com/sshca/sshca/client"
	"github.com/sshca/sshca/store"
)

func newBastionCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "bastion", Short: "Run on bastion hosts: keep sshd's KRL and trusted CA keys current"}
	cmd.AddCommand(newBastionAgentCommand(), newSSHDConfigCommand())
	return cmd
}

func newSSHDConfigCommand() *cobra.Command {
	var o bastion.SSHDConfigOptions
	cmd := &cobra.Command{
		Use:   "sshd-config",
		Short: "Print a hardened sshd_config for a bastion (check it with sshd -t -f FILE)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := bastion.SSHDConfig(o)
			if err != nil {
				return err
			}
			_, err = fmt.Fprint(cmd.OutOrStdout(), cfg)
			return err
		},
	}
	cmd.Flags().IntVar(&o.Port, "port", 22, "port")
	cmd.Flags().StringSliceVar(&o.ListenAddresses, "listen", nil, "listen addresses (default: all)")
	cmd.Flags().StringSliceVar(&o.HostKeys, "host-key", nil, "host private keys (default /etc/ssh/ssh_host_ed25519_key)")
	cmd.Flags().StringSliceVar(&o.HostCertificates, "host-cert", nil, "host certificates (default /etc/ssh/ssh_host_ed25519_key-cert.pub)")
	cmd.Flags().StringVar(&o.TrustedUserCAKeys, "user-ca", "", "TrustedUserCAKeys file (default /etc/ssh/sshca_user_ca.pub)")
	cmd.Flags().StringVar(&o.RevokedKeys, "krl", "", "RevokedKeys file (default /etc/ssh/sshca.krl)")
	cmd.Flags().StringVar(&o.AuthorizedPrincipalsFile, "principals", "", "AuthorizedPrincipalsFile (default /etc/ssh/auth_principals/%u)")
	cmd.Flags().StringSliceVar(&o.RecordGroups, "record-group", nil, "record the sessions of this Unix group with sshca-record (repeatable; default: the block is a comment)")
	cmd.Flags().StringVar(&o.RecordCommand, "record-command", "", "the installed sshca-record (default "+bastion.DefaultRecordCommand+")")
	return cmd
}

type agentFlags struct {
	redis                                              redisTarget
	server, serverCA, krlPath, userCA, health, sshdLog string
	krlLink, userCALink                                string
	// The drift check of sshd's effective configuration (on with sshdConfig).
	sshdConfig, sshdPrincipals string
	sshdNoForwarding, sshdX11  bool
	sshdCheckEvery             time.Duration
	poll, caRefresh            time.Duration
	// Session recording (on with recordSocket).
	recordSocket, recordGroup, recordings string
	recordSessionCap, recordHostCap       int64
	// Shipping recordings to the CA (on with shipRecordings, over --server).
	shipRecordings                  bool
	shipHostKey, shipHostCert, ship string
	shipEvery                       time.Duration
	// longPoll is --long-poll; longPollSet says it was given (0 given: only poll; unset: the
	// agent's default).
	longPoll    time.Duration
	longPollSet bool
	discover    agentDiscoverFlags
	startup     agentStartupFlags
}

func newBastionAgentCommand() *cobra.Command {
	f := agentFlags{}
	var logOpts logOptions
	cmd := &cobra.Command{
		Use:   "agent --redis URL [--cluster | --sentinel-master NAME] | --server URL --server-ca FILE --krl FILE --user-ca FILE",
		Short: "Follow revocations (Redis stream, else an HTTPS long poll) and rewrite the KRL atomically",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(cmd.ErrOrStderr(), logOpts)
			if err != nil {
				return err
			}
			f.longPollSet = cmd.Flags().Changed("long-poll")
			f.redis.urlSet = cmd.Flags().Changed("redis")
			return runAgent(cmd.Context(), f, log, nil)
		},
	}
	addRedisTargetFlags(cmd.Flags(), &f.redis, "", "with read-only credentials")
	cmd.Flags().StringVar(&f.server, "server", "", "https URL of the CA service: the fallback (or only) source")
	cmd.Flags().StringVar(&f.serverCA, "server-ca", "", "PEM CA certificate pinned for --server")
	cmd.Flags().StringVar(&f.krlPath, "krl", "/etc/ssh/sshca.krl", "sshd RevokedKeys file")
	cmd.Flags().StringVar(&f.userCA, "user-ca", "/etc/ssh/sshca_user_ca.pub", "sshd TrustedUserCAKeys file")
	cmd.Flags().StringVar(&f.krlLink, "krl-link", "", "the RevokedKeys path sshd reads, a symbolic link to --krl; the agent exits when it is removed or re-pointed")
	cmd.Flags().StringVar(&f.userCALink, "user-ca-link", "", "the TrustedUserCAKeys path sshd reads, a symbolic link to --user-ca; the agent exits when it is removed or re-pointed")
	cmd.Flags().StringVar(&f.health, "health", "127.0.0.1:9851", "address of /healthz and /metrics")
	cmd.Flags().StringVar(&f.sshdLog, "sshd-log", "", "sshd log file (LogLevel VERBOSE) to end live sessions of revoked certificates")
	cmd.Flags().StringVar(&f.sshdConfig, "sshd-config", "", "check sshd's effective configuration (sshd -T -C) of this file against the hardened baseline, report drift on /healthz")
	cmd.Flags().StringVar(&f.sshdPrincipals, "sshd-principals", bastion.DefaultAuthorizedPrincipalsFile, "baseline: the AuthorizedPrincipalsFile given to sshd-config")
	cmd.Flags().BoolVar(&f.sshdNoForwarding, "sshd-disable-forwarding", false, "baseline: sshd-config was rendered with forwarding off")
	cmd.Flags().BoolVar(&f.sshdX11, "sshd-x11-forwarding", false, "baseline: sshd-config was rendered with X11 forwarding")
	cmd.Flags().DurationVar(&f.sshdCheckEvery, "sshd-check-every", time.Minute, "how often sshd's effective configuration is checked")
	cmd.Flags().DurationVar(&f.poll, "poll", time.Second, "HTTPS polling interval against a server without the long poll, and the pause after a failure")
	cmd.Flags().DurationVar(&f.longPoll, "long-poll", 25*time.Second, "longest wait of one long poll of GET /v1/krl (the server caps it at 25s; 0: only poll)")
	cmd.Flags().DurationVar(&f.caRefresh, "ca-refresh", 15*time.Second, "how often the trusted CA keys are re-read (rotation)")
	cmd.Flags().StringVar(&f.recordSocket, "record-socket", "", "listen for sshca-record on this Unix socket (e.g. "+bastion.DefaultRecordSocket+"); empty: no recording")
	cmd.Flags().StringVar(&f.recordGroup, "record-group", "", "group of --record-socket (mode 0660): the group sshca-record is installed setgid to")
	cmd.Flags().StringVar(&f.recordings, "recordings", "/var/lib/sshca/recordings", "directory the agent keeps session recordings in")
	cmd.Flags().Int64Var(&f.recordSessionCap, "record-session-cap", 64<<20, "bytes of output recorded per session; beyond, output is dropped and the drop marked")
	cmd.Flags().Int64Var(&f.recordHostCap, "record-host-cap", 4<<30, "bytes of recordings kept in --recordings; beyond, output is dropped and the drop marked")
	addAgentDiscoverFlags(cmd, &f.discover)
	addAgentStartupFlags(cmd, &f.startup)
	cmd.Flags().BoolVar(&f.shipRecordings, "ship-recordings", false, "ship the recordings of --recordings to the CA at --server (POST /v1/recordings), signed by the host key")
	cmd.Flags().StringVar(&f.shipHostKey, "ship-host-key", "/etc/ssh/ssh_host_ed25519_key", "the host key that signs shipped recordings")
	cmd.Flags().StringVar(&f.shipHostCert, "ship-host-cert", "", "its host certificate (default: --ship-host-key + -cert.pub), re-read for each batch")
	cmd.Flags().StringVar(&f.ship, "ship-host", "", "the host name to ship recordings under, one of the certificate's (default: its first)")
	cmd.Flags().DurationVar(&f.shipEvery, "ship-every", 2*time.Second, "how often new recording lines are shipped")
	addLogFlags(cmd, &logOpts, "text")
	return cmd
}

// recordShipper is the shipper of the agent's recordings to --server, signed by the host key.
func recordShipper(f agentFlags, log *slog.Logger) (*bastion.RecordShipper, error) {
	if f.server == "" {
		return nil, fmt.Errorf("--ship-recordings: give --server (and --server-ca), the CA to ship to")
	}
	conf, err := clientTLS(f.serverCA, "", "")
	if err != nil {
		return nil, fmt.Errorf("--server-ca: %w", err)
	}
	b, err := os.ReadFile(f.shipHostKey)
	if err != nil {
		return nil, fmt.Errorf("--ship-host-key: %w", err)
	}
	key, err := ssh.ParsePrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("--ship-host-key %s: %w", f.shipHostKey, err)
	}
	certPath := f.shipHostCert
	if certPath == "" {
		certPath = f.shipHostKey + "-cert.pub"
	}
	if _, err := readCert(certPath); err != nil {
		return nil, fmt.Errorf("--ship-host-cert: %w", err)
	}
	c := client.New(f.server)
	c.HTTP = &http.Client{Transport: &http.Transport{TLSClientConfig: conf}}
	return &bastion.RecordShipper{Dir: f.recordings, Client: c, Key: key, Cert: func() (*ssh.Certificate, error) { return readCert(certPath) },
		Host: f.ship, Every: f.shipEvery, Log: log}, nil
}

// runAgent runs the bastion agent until ctx ends; ready, when not nil, receives the agent once
// its files are in place and its health endpoint listens.
func runAgent(ctx context.Context, f agentFlags, log *slog.Logger, ready chan<- *bastion.Agent) error {
	o := bastion.Options{KRLPath: f.krlPath, UserCAPath: f.userCA, KRLLink: f.krlLink, UserCALink: f.userCALink,
		PollEvery: f.poll, CARefresh: f.caRefresh, Log: log}
	switch {
	case f.longPoll == 0 && f.longPollSet:
		o.LongPollWait = -1 // only poll
	case f.longPoll > 0:
		o.LongPollWait = f.longPoll
	}
	if f.redis.given() {
		// No request deadline here: each call is bounded by its timeouts (1 s to dial, 2 s to read;
		// go-redis retries nothing, see redisBounds); the stream's blocking read has its own bound.
		// The agent follows every CA key's scope with one blocking XREAD and makes its other
		// reads (CA set, trusted keys, snapshots) one at a time beside it: two connections, a
		// third while a read left by a reconnect or a new CA set ends (within its 5 s block),
		// which go-redis then keeps open, idle, in the pool. A small pool says
		// so; a pool sized by the number of scopes would hide a regression to one read per
		// scope (whose scopes past the pool waited seconds for a connection). Transactions
		// (snapshots) stay on this pool: go-redis otherwise opens a pool of its own for them.
		// Through Sentinel (--sentinel-master) the client asks the Sentinels for the master
		// again after a failover, and the agent's next read reaches the new master.
		rdb, err := f.redis.open(ctx, nil, 4*time.Second, func(o *redis.UniversalOptions) {
			o.DialTimeout, o.ReadTimeout = min(o.DialTimeout, time.Second), min(o.ReadTimeout, 2*time.Second)
			o.PoolSize, o.PipelinePoolSize = 4, -1
		}, func(err error) {
			log.Warn("the agent starts without knowing what its Redis is; a Cluster node or a Sentinel given as a plain --redis shows as read errors", "err", err)
		})
		if err != nil {
			return err
		}
		defer rdb.Close()
		o.Feed = store.NewRedis(rdb, store.RedisOptions{})
	}
	if f.server != "" {
		h, err := bastion.NewHTTPSource(f.server, f.serverCA)
		if err != nil {
			return err
		}
		o.HTTP = h
	}
	if f.sshdConfig != "" {
		d, err := driftCheck(f)
		if err != nil {
			return err
		}
		o.Drift = d
	}
	// The agent's loops, each under the errgroup below: the one that follows the revocation
	// sources and keeps sshd's files, and those the flags turn on.
	var loops []loop
	var sessions *bastion.Sessions
	if f.sshdLog != "" {
		sessions = bastion.NewSessions(log)
		loops = append(loops, loop{"sshd log follower", func(ctx context.Context) error { return sessions.Follow(ctx, f.sshdLog) }})
		o.OnRevoked, o.OnKRL = sessions.EndRevoked, sessions.EndRevokedBy
	}
	agent, err := bastion.NewAgent(o)
	if err != nil {
		return err
	}
	loops = append(loops, loop{"revocation sources", agent.Run})
	discovery, err := agentDiscovery(f, log)
	if err != nil {
		return err
	}
	var parts []agentHealthPart
	if discovery != nil {
		loops = append(loops, loop{"discovery reports", discovery.Run})
		parts = append(parts, discoveryHealth{discovery})
	}
	if f.recordSocket != "" {
		if f.recordSessionCap <= 0 || f.recordHostCap <= 0 {
			return fmt.Errorf("--record-session-cap and --record-host-cap: give a positive number of bytes")
		}
		rl, err := bastion.ListenRecordSocket(f.recordSocket, f.recordGroup)
		if err != nil {
			return fmt.Errorf("--record-socket: %w", err)
		}
		defer rl.Close() // Serve closes it when it ends; this covers a start that fails below
		host, _ := os.Hostname()
		rs := &bastion.RecordServer{Dir: f.recordings, Host: host, SessionCap: f.recordSessionCap,
			HostCap: f.recordHostCap, RequireSSHD: true, Log: log}
		// A recorder that stopped would refuse every recorded session until a restart: it ends
		// the agent instead, which its service manager restarts (the KRL stays in place).
		loops = append(loops, loop{"session recorder", func(ctx context.Context) error { return rs.Serve(ctx, rl) }})
	}
	startup, err := agentStartupCheck(f.startup, log)
	if err != nil {
		return err
	}
	if startup != nil {
		loops = append(loops, loop{"start-up file check", startup.Run})
		parts = append(parts, startupHealth{startup})
	}
	if f.shipRecordings {
		sh, err := recordShipper(f, log)
		if err != nil {
			return err
		}
		loops = append(loops, forever("recording shipper", sh.Run))
		parts = append(parts, shipperHealth{sh})
	}
	if err := agent.Prepare(); err != nil {
		return err
	}
	l, err := net.Listen("tcp", f.health)
	if err != nil {
		return fmt.Errorf("--health: %w", err)
	}
	srv := newHTTPServer(agentHealthHandler(agent, sessions, parts...), log)
	loops = append(loops, loop{"health listener", func(ctx context.Context) error { return serveUntilDone(ctx, srv, l, "", "", log) }})
	// Every loop stops when ctx ends or one of them cannot go on; Redis (deferred above)
	// closes after the last one ended.
	g, gctx := errgroup.WithContext(ctx)
	goLoops(g, gctx, ctx, log, loops)
	if ready != nil {
		ready <- agent
	}
	err = g.Wait()
	log.Info("bastion agent stopped", "err", err)
	return err
}

// driftCheck is the check of sshd's effective configuration against the rendering of
// sshd-config with the agent's files as sshd reads them (the links when given).
func driftCheck(f agentFlags) (*bastion.DriftCheck, error) {
	o := bastion.SSHDConfigOptions{TrustedUserCAKeys: f.userCA, RevokedKeys: f.krlPath, AuthorizedPrincipalsFile: f.sshdPrincipals,
		DisableForwarding: f.sshdNoForwarding, X11Forwarding: f.sshdX11}
	if f.krlLink != "" {
		o.RevokedKeys = f.krlLink
	}
	if f.userCALink != "" {
		o.TrustedUserCAKeys = f.userCALink
	}
	base, err := bastion.Baseline(o)
	if err != nil {
		return nil, fmt.Errorf("--sshd-config baseline: %w", err)
	}
	return &bastion.DriftCheck{SSHD: bastion.SSHDEffective{Config: f.sshdConfig}, Baseline: base, Every: f.sshdCheckEvery}, nil
}

// agentHealthHandler serves the agent's /healthz and /metrics. Every metric comes from the
// agent's Status (and sessions' count, when it ends sessions; nil: none), read at scrape time.
func agentHealthHandler(a *bastion.Agent, sessions *bastion.Sessions, parts ...agentHealthPart) http.Handler {
	started := time.Now()
	status := func(f func(bastion.Status) float64) func() float64 {
		return func() float64 { return f(a.Status()) }
	}
	one := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sshca_bastion_krl_version", Help: "Version of the installed KRL."},
			status(func(st bastion.Status) float64 { return float64(st.KRLVersion) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sshca_bastion_krl_age_seconds", Help: "Seconds since the KRL file was last written (grows while nothing is revoked; see sshca_bastion_sync_age_seconds for staleness)."},
			status(func(st bastion.Status) float64 { return sinceOr(st.KRLWritten, started) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sshca_bastion_sync_age_seconds", Help: "Seconds since a source last confirmed that the installed KRL is current (since the agent started when none has yet)."},
			status(func(st bastion.Status) float64 { return sinceOr(st.LastSync, started) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sshca_bastion_source_up", Help: "1 when the revocation source answers; 0 while the agent fails static."},
			status(func(st bastion.Status) float64 { return one(st.Connected) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sshca_bastion_krl_refused", Help: "1 while the source offers an older KRL than the installed one (its revocation state was lost or rolled back) and the agent keeps the installed one."},
			status(func(st bastion.Status) float64 { return one(st.Alert != "") })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "sshca_bastion_files_restored_total", Help: "Files sshd reads (KRL, trusted CA keys) that the agent put back after they were deleted or changed behind its back."},
			status(func(st bastion.Status) float64 { return float64(st.FilesRestored) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sshca_bastion_files_alert", Help: "1 while sshd does not read what the agent writes (a link removed or re-pointed, a file that could not be put back)."},
			status(func(st bastion.Status) float64 { return one(st.FilesAlert != "") })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sshca_bastion_config_drift", Help: "sshd settings in effect that differ from the hardened configuration (0 without --sshd-config)."},
			status(func(st bastion.Status) float64 { return float64(st.ConfigDrift) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "sshca_bastion_sessions_ended_total", Help: "Live sessions of revoked certificates that the agent ended (with --sshd-log)."},
			func() float64 {
				if sessions == nil {
					return 0
				}
				return float64(sessions.Ended())
			}),
	)
	for _, p := range parts {
		reg.MustRegister(p.collectors()...)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		st := a.Status()
		problems := st.Problems()
		body := map[string]any{
			"source": st.Source, "connected": st.Connected, "krl_version": st.KRLVersion,
			"krl_age_seconds": int(time.Since(st.KRLWritten).Seconds()), "last_error": st.LastError,
			"files_restored": st.FilesRestored, "sshd_drift": st.SSHDDrift,
		}
		for _, p := range parts {
			name, detail, ps := p.health()
			body[name] = detail
			problems = append(problems, ps...)
		}
		body["problems"] = problems
		code := http.StatusOK
		if !st.Connected || len(problems) > 0 {
			code = http.StatusServiceUnavailable // fail static: the last good KRL stays in place
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(body)
	})
	return mux
}

// sinceOr is the seconds since t, or since or when t is zero (never happened).
func sinceOr(t, or time.Time) float64 {
	if t.IsZero() {
		t = or
	}
	return time.Since(t).Seconds()
}
