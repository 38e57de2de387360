package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/identity/devissuer"
	"github.com/sshca/sshca/kms"
	"github.com/sshca/sshca/revocation"
	"github.com/sshca/sshca/services"
)

// devAudience is the audience of the development issuer's tokens.
const devAudience = "sshca"

type devOptions struct {
	listen string
	state  string
	out    io.Writer
	log    *slog.Logger
	// ready, when not nil, receives the base URL once the service answers.
	ready chan<- string
}

func newDevCommand() *cobra.Command {
	o := devOptions{}
	cmd := &cobra.Command{
		Use:   "dev [--listen 127.0.0.1:8080] [--state DIR]",
		Short: "Run the service with embedded defaults: softkms keys, in-process Redis, a development OIDC issuer",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.out = cmd.OutOrStdout()
			o.log = slog.New(slog.NewTextHandler(os.Stderr, nil))
			return runDev(cmd.Context(), o)
		},
	}
	cmd.Flags().StringVar(&o.listen, "listen", "127.0.0.1:8080", "loopback address to listen on")
	cmd.Flags().StringVar(&o.state, "state", defaultStateDir(), "directory for the CA keys (kept across restarts)")
	cmd.AddCommand(newDevTokenCommand())
	return cmd
}

func defaultStateDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "sshca-dev")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "state", "sshca-dev")
	}
	return ".sshca-dev"
}

// runDev runs the development service until ctx ends. Nothing outside the process is needed.
func runDev(ctx context.Context, o devOptions) error {
	host, _, err := net.SplitHostPort(o.listen)
	if err != nil || !isLoopback(host) {
		return fmt.Errorf("dev: --listen %q must be a loopback address such as 127.0.0.1:8080: the development issuer mints tokens for anyone who asks", o.listen)
	}
	if err := os.MkdirAll(o.state, 0o700); err != nil {
		return fmt.Errorf("dev: state dir: %w", err)
	}
	userKey, err := kms.OpenOrCreate(ctx, kms.KeyRef{KMS: "softkms:", Key: "softkms:path=" + filepath.Join(o.state, "user_ca.pem")}, kms.Ed25519)
	if err != nil {
		return fmt.Errorf("dev: user CA key: %w", err)
	}
	defer userKey.Close()
	hostKey, err := kms.OpenOrCreate(ctx, kms.KeyRef{KMS: "softkms:", Key: "softkms:path=" + filepath.Join(o.state, "host_ca.pem")}, kms.Ed25519)
	if err != nil {
		return fmt.Errorf("dev: host CA key: %w", err)
	}
	defer hostKey.Close()

	mr := miniredis.NewMiniRedis()
	if err := mr.StartAddr("127.0.0.1:0"); err != nil {
		return fmt.Errorf("dev: embedded redis: %w", err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	store := revocation.NewRedis(rdb, revocation.RedisOptions{})
	if err := store.RegisterCA(ctx, userKey.Signer().PublicKey()); err != nil {
		return fmt.Errorf("dev: embedded redis: %w", err)
	}

	// Listen first: the verifier's discovery below fetches from this very listener.
	l, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("dev: listen: %w", err)
	}
	base := "http://" + l.Addr().String()
	issuerURL := base + "/dev/oidc"
	iss, err := devissuer.New(issuerURL, devissuer.Options{Audience: devAudience})
	if err != nil {
		return fmt.Errorf("dev: issuer: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/dev/oidc/", http.StripPrefix("/dev/oidc", iss.Handler()))
	mux.Handle("POST /dev/token", iss.TokenHandler())
	mux.Handle("POST /dev/device/approve", iss.ApproveHandler())
	srv := newHTTPServer(mux, o.log)
	errc := make(chan error, 1)
	go func() { errc <- serveUntilDone(ctx, srv, l, "", "") }()

	auth, err := identity.New(ctx, identity.Config{Issuers: []identity.IssuerConfig{{
		IssuerURL: issuerURL, Audiences: []string{devAudience}, AllowedEmailDomains: []string{"example.com"},
	}}})
	if err != nil {
		return fmt.Errorf("dev: oidc: %w", err)
	}
	pol, err := loadPolicy(ctx, PolicyConfig{})
	if err != nil {
		return err
	}
	p := redisParts(userKey, hostKey, store, pol, o.log)
	p.auth = auth
	p.details = func() map[string]string {
		return map[string]string{"policy_revision": pol.Revision(), "policy_evaluator": pol.Mode()}
	}
	auditKey, err := auditKeyOrCreate(filepath.Join(o.state, "audit.key"))
	if err != nil {
		return fmt.Errorf("dev: audit key: %w", err)
	}
	p.audit = audit.New(rdb, audit.Options{Key: auditKey, Logger: o.log})
	p.login = &services.LoginConfig{Issuer: issuerURL, ClientID: devAudience, Scopes: []string{"openid", "email", "profile"}}
	api, err := apiHandler(p)
	if err != nil {
		return err
	}
	mux.Handle("/", api)
	printDevBanner(o.out, base, issuerURL, o.state, mr.Addr())
	if o.ready != nil {
		o.ready <- base
	}
	return <-errc
}

func printDevBanner(w io.Writer, base, issuer, state, redisAddr string) {
	r := strings.NewReplacer("$BASE", base, "$ISSUER", issuer, "$STATE", state, "$AUD", devAudience, "$REDIS", redisAddr)
	fmt.Fprint(w, r.Replace(`sshca dev is serving on $BASE
  OIDC issuer  $ISSUER   (audience "$AUD", ES256; discovery at $ISSUER/.well-known/openid-configuration)
  CA keys      $STATE/user_ca.pem, $STATE/host_ca.pem (kept across restarts)
  Redis        in-process at $REDIS; nothing is persisted
  Audit log    every decision, chained: sshca audit verify --redis redis://$REDIS --key-file $STATE/audit.key --print

Trust the CA (hosts: sshd_config "TrustedUserCAKeys /etc/ssh/sshca_user_ca.pub"; clients: known_hosts):
  curl -s $BASE/v1/ca/user.pub > /etc/ssh/sshca_user_ca.pub
  curl -s $BASE/v1/ca/known_hosts >> ~/.ssh/known_hosts

Get a development token and a 10-minute certificate for ~/.ssh/id_ed25519.pub, then use it:
  export SSHCA_TOKEN=$(sshca dev token --server $BASE --sub alice --email alice@example.com)
  sshca cert user --server $BASE --key ~/.ssh/id_ed25519.pub
  ssh-keygen -L -f ~/.ssh/id_ed25519-cert.pub
  ssh -i ~/.ssh/id_ed25519 alice@your-host

Press Ctrl-C to stop.
`))
}

func newDevTokenCommand() *cobra.Command {
	var server string
	claims := map[string]*string{}
	var groups []string
	var mfa bool
	cmd := &cobra.Command{
		Use:   "token --server URL --sub NAME [--email E] [--groups G,...]",
		Short: "Mint a token from a running `sshca dev` issuer (prints it)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			body := map[string]any{}
			for k, v := range claims {
				if *v != "" {
					body[k] = *v
				}
			}
			if body["email"] != nil {
				body["email_verified"] = true
			}
			if body["preferred_username"] == nil && body["sub"] != nil {
				body["preferred_username"] = body["sub"]
			}
			if len(groups) > 0 {
				body["groups"] = groups
			}
			if mfa {
				body["amr"] = []string{"pwd", "mfa"}
				body["auth_time"] = time.Now().Unix()
			}
			var reply struct {
				IDToken string `json:"id_token"`
			}
			if err := postJSON(cmd.Context(), strings.TrimRight(server, "/")+"/dev/token", "", body, &reply); err != nil {
				return err
			}
			_, err := fmt.Fprintln(cmd.OutOrStdout(), reply.IDToken)
			return err
		},
	}
	cmd.Flags().StringVar(&server, "server", "http://127.0.0.1:8080", "URL of `sshca dev`")
	for _, c := range []string{"sub", "email", "preferred_username"} {
		claims[c] = new(string)
		cmd.Flags().StringVar(claims[c], strings.ReplaceAll(c, "_", "-"), "", "the "+c+" claim")
	}
	cmd.Flags().StringSliceVar(&groups, "groups", nil, "the groups claim")
	cmd.Flags().BoolVar(&mfa, "mfa", false, "claim a second factor (amr mfa) and a sign-in now (auth_time)")
	return cmd
}
