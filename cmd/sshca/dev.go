package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/spf13/cobra"

	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/identity/devissuer"
	"github.com/sshca/sshca/internal/bodylimit"
	"github.com/sshca/sshca/kms"
	"github.com/sshca/sshca/services"
)

// devAudience is the audience of the development issuer's tokens.
const devAudience = "sshca"

type devOptions struct {
	listen string
	state  string
	// tokenAlg is the development issuer's signing algorithm: ES256 or RS256 (what most
	// identity providers use; docs/performance.md measures both).
	tokenAlg string
	out      io.Writer
	log      *slog.Logger
	// ready, when not nil, receives the base URL once the service answers.
	ready chan<- string
}

func newDevCommand() *cobra.Command {
	o := devOptions{}
	var logOpts logOptions
	cmd := &cobra.Command{
		Use:   "dev [--listen 127.0.0.1:8080] [--state DIR]",
		Short: "Run the service with embedded defaults: softkms keys, in-process Redis, a development OIDC issuer",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.out = cmd.OutOrStdout()
			var err error
			if o.log, err = newLogger(cmd.ErrOrStderr(), logOpts); err != nil {
				return err
			}
			return runDev(cmd.Context(), o)
		},
	}
	cmd.Flags().StringVar(&o.listen, "listen", "127.0.0.1:8080", "loopback address to listen on")
	cmd.Flags().StringVar(&o.state, "state", defaultStateDir(), "directory for the CA keys (kept across restarts)")
	cmd.Flags().StringVar(&o.tokenAlg, "token-algorithm", "ES256", "signing algorithm of the development issuer's tokens: ES256 or RS256 (as most identity providers)")
	addLogFlags(cmd, &logOpts, "text")
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

// runDev runs the development service until ctx ends. Nothing outside the process is needed:
// it brings the CA keys (softkms files in the state directory), an in-process Redis-protocol
// server, and a development OIDC issuer, and otherwise builds and runs the very server
// `sshca serve` does (buildServer, run).
func runDev(ctx context.Context, o devOptions) error {
	if o.tokenAlg == "" {
		o.tokenAlg = "ES256"
	}
	if o.tokenAlg != "ES256" && o.tokenAlg != "RS256" {
		return fmt.Errorf("dev: --token-algorithm %q: use ES256 or RS256", o.tokenAlg)
	}
	host, _, err := net.SplitHostPort(o.listen)
	if err != nil || !isLoopback(host) {
		return fmt.Errorf("dev: --listen %q must be a loopback address such as 127.0.0.1:8080: the development issuer mints tokens for anyone who asks", o.listen)
	}
	if err := os.MkdirAll(o.state, 0o700); err != nil {
		return fmt.Errorf("dev: state dir: %w", err)
	}
	userCA := KeyConfig{KMS: "softkms:", Key: "softkms:path=" + filepath.Join(o.state, "user_ca.pem")}
	hostCA := KeyConfig{KMS: "softkms:", Key: "softkms:path=" + filepath.Join(o.state, "host_ca.pem")}
	for _, k := range []struct {
		name string
		ref  KeyConfig
	}{{"user", userCA}, {"host", hostCA}} {
		key, err := kms.OpenOrCreate(ctx, kms.KeyRef{KMS: k.ref.KMS, Key: k.ref.Key}, kms.Ed25519)
		if err != nil {
			return fmt.Errorf("dev: %s CA key: %w", k.name, err)
		}
		key.Close() // buildServer opens it as serve opens a configured key
	}
	auditKeyFile := filepath.Join(o.state, "audit.key")
	if _, err := auditKeyOrCreate(auditKeyFile); err != nil {
		return fmt.Errorf("dev: audit key: %w", err)
	}
	keyDir := filepath.Join(o.state, "keys")
	if err := os.MkdirAll(keyDir, 0o700); err != nil {
		return fmt.Errorf("dev: keyring: %w", err)
	}

	mr := miniredis.NewMiniRedis()
	if err := mr.StartAddr("127.0.0.1:0"); err != nil {
		return fmt.Errorf("dev: embedded redis: %w", err)
	}
	defer mr.Close() // after run closed its client
	// Session recordings that agents ship go to a second in-process Redis, as production keeps
	// them on a Redis of their own (recordings.redis).
	recMR := miniredis.NewMiniRedis()
	if err := recMR.StartAddr("127.0.0.1:0"); err != nil {
		return fmt.Errorf("dev: embedded redis for recordings: %w", err)
	}
	defer recMR.Close()

	// Listen first: the issuer's URL names the port.
	l, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("dev: listen: %w", err)
	}
	base := "http://" + l.Addr().String()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	secret, secretPath, err := writeDevSecret(o.state)
	if err != nil {
		l.Close()
		return fmt.Errorf("dev: secret: %w", err)
	}
	defer os.Remove(secretPath)
	issuerURL := base + "/dev/oidc"
	iss, err := devissuer.New(issuerURL, devissuer.Options{Audience: devAudience, Secret: secret, Algorithm: o.tokenAlg})
	if err != nil {
		l.Close()
		return fmt.Errorf("dev: issuer: %w", err)
	}
	issuer := http.StripPrefix("/dev/oidc", iss.Handler())

	cfg := &Config{
		UserCA: userCA, HostCA: hostCA,
		Redis:      RedisConfig{Addrs: []string{mr.Addr()}},
		Recordings: RecordingsConfig{Redis: RedisConfig{Addrs: []string{recMR.Addr()}}},
		OIDC: identity.Config{Issuers: []identity.IssuerConfig{{
			IssuerURL: issuerURL, Audiences: []string{devAudience}, AllowedEmailDomains: []string{"example.com"},
		}}},
		Audit: AuditConfig{KeyFile: auditKeyFile},
		Login: &services.LoginConfig{Issuer: issuerURL, ClientID: devAudience, Scopes: []string{"openid", "email", "profile"}},
		// Plain HTTP on loopback: the console's cookie is sshca-dev, not Secure (ui.CookieFor).
		Console: ConsoleConfig{PublicURL: base},
		// The keyring is on, as with keyring.enabled in production, so that the rotation
		// commands (sshca keys ..., README "CA key rotation") work here: generated keys are
		// files in the state directory; the keyring itself lives in the in-process Redis and
		// starts again from user_ca.pem and host_ca.pem at each start. A key must be published
		// for a minute (not 15) before it may be promoted.
		Keyring: KeyringConfig{Enabled: true, KMS: "softkms:", KeyDir: keyDir, TrustRefresh: devTrustRefresh},
		// No diag_listen: /metrics and the /readyz details stay on the loopback API.
	}
	// The verifier reaches the issuer in process: the listener does not serve before the
	// server is built, and discovery at build time must find it.
	s, err := buildServer(ctx, cfg, o.log, identity.WithHTTPClient(&http.Client{Transport: inProcess{issuer}, Timeout: 10 * time.Second}))
	if err != nil {
		l.Close()
		return fmt.Errorf("dev: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/dev/oidc/", issuer)
	mux.Handle("POST /dev/token", iss.TokenHandler())
	mux.Handle("POST /dev/device/approve", iss.ApproveHandler())
	mux.Handle("/", s.api)
	printDevBanner(o.out, base, issuerURL, o.state, mr.Addr(), secretPath)
	// The issuer's answers carry X-Request-ID too.
	return s.run(ctx, l, services.RequestID(nil, loopbackHostOnly(mux, port)), func() {
		if o.ready != nil {
			o.ready <- base
		}
	})
}

// inProcess is an http.RoundTripper that answers every request with its handler, in this
// process: sshca dev's verifier fetches its issuer's discovery document and keys through it.
type inProcess struct{ h http.Handler }

func (t inProcess) RoundTrip(r *http.Request) (*http.Response, error) {
	rec := httptest.NewRecorder()
	t.h.ServeHTTP(rec, r)
	resp := rec.Result()
	resp.Request = r
	return resp, nil
}

// devTrustRefresh is how long sshca dev publishes a new CA key before it may be promoted.
const devTrustRefresh = time.Minute

// devSecretFile is the name, in the state directory, of the file holding the secret that
// /dev/token and /dev/device/approve require.
const devSecretFile = "dev.secret"

// writeDevSecret makes this run's secret and writes it, mode 0600, into the state directory,
// where `sshca dev token` on this machine reads it. A new file replaces any earlier one, so
// a secret of an earlier run stops working and the mode is never inherited.
func writeDevSecret(state string) (secret, path string, err error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", "", err
	}
	secret, path = hex.EncodeToString(b), filepath.Join(state, devSecretFile)
	tmp := path + ".tmp"
	_ = os.Remove(tmp)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", "", err
	}
	_, err = f.WriteString(secret + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return "", "", err
	}
	return secret, path, nil
}

// loopbackHostOnly answers only requests addressed to this listener by a loopback name:
// Host 127.0.0.1:port, [::1]:port or localhost:port. Listening on loopback is not enough: a
// web page the developer visits can resolve its own name to 127.0.0.1 (DNS rebinding) and
// then read the answers, which its browser sends with the page's own Host.
func loopbackHostOnly(h http.Handler, port string) http.Handler {
	allowed := map[string]bool{"127.0.0.1:" + port: true, "[::1]:" + port: true, "localhost:" + port: true}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !allowed[strings.ToLower(r.Host)] {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.Header().Set("X-Content-Type-Options", "nosniff")
			w.WriteHeader(http.StatusMisdirectedRequest)
			fmt.Fprintf(w, "sshca dev answers only requests addressed to 127.0.0.1:%s, [::1]:%s or localhost:%s; "+
				"this one names another host in its Host header (refused against DNS rebinding)\n", port, port, port)
			return
		}
		h.ServeHTTP(w, r)
	})
}

func printDevBanner(w io.Writer, base, issuer, state, redisAddr, secretPath string) {
	r := strings.NewReplacer("$BASE", base, "$ISSUER", issuer, "$STATE", state, "$AUD", devAudience, "$REDIS", redisAddr,
		"$SECRET", secretPath, "$HEADER", devissuer.SecretHeader)
	fmt.Fprint(w, r.Replace(`sshca dev is serving on $BASE
  OIDC issuer  $ISSUER   (audience "$AUD", ES256; discovery at $ISSUER/.well-known/openid-configuration)
  Dev secret   $SECRET (mode 0600, new each run): /dev/token and /dev/device/approve want it
               in a $HEADER header; sshca dev token reads it from there
  CA keys      $STATE/user_ca.pem, $STATE/host_ca.pem (kept across restarts); keyring on:
               sshca keys list|generate|promote|retire with a token of group sshca-admins
               (new keys go to $STATE/keys; promote after a minute)
  Redis        in-process at $REDIS; nothing is persisted
  Audit log    every decision, chained: sshca audit verify --redis redis://$REDIS --key-file $STATE/audit.key --print

Trust the CA (hosts: sshd_config "TrustedUserCAKeys /etc/ssh/sshca_user_ca.pub"; clients: known_hosts):
  curl -s $BASE/v1/ca/user.pub > /etc/ssh/sshca_user_ca.pub
  curl -s $BASE/v1/ca/known_hosts >> ~/.ssh/known_hosts

Get a development token and a 10-minute certificate for ~/.ssh/id_ed25519.pub, then use it:
  export SSHCA_TOKEN=$(sshca dev token --server $BASE --state $STATE --sub alice --email alice@example.com)
  sshca cert user --server $BASE --key ~/.ssh/id_ed25519.pub
  ssh-keygen -L -f ~/.ssh/id_ed25519-cert.pub
  ssh -i ~/.ssh/id_ed25519 alice@your-host

Press Ctrl-C to stop.
`))
}

func newDevTokenCommand() *cobra.Command {
	var server, state string
	claims := map[string]*string{}
	var groups []string
	var mfa bool
	cmd := &cobra.Command{
		Use:   "token --server URL --sub NAME [--email E] [--groups G,...] [--state DIR]",
		Short: "Mint a token from a running `sshca dev` issuer (prints it); reads the dev secret from its state directory",
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
			secret, err := readDevSecret(state)
			if err != nil {
				return err
			}
			tok, err := mintDevToken(cmd.Context(), strings.TrimRight(server, "/")+"/dev/token", secret, body)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), tok)
			return err
		},
	}
	cmd.Flags().StringVar(&server, "server", "http://127.0.0.1:8080", "URL of sshca dev")
	cmd.Flags().StringVar(&state, "state", defaultStateDir(), "state directory of sshca dev (holds "+devSecretFile+")")
	for _, c := range []string{"sub", "email", "preferred_username"} {
		claims[c] = new(string)
		cmd.Flags().StringVar(claims[c], strings.ReplaceAll(c, "_", "-"), "", "the "+c+" claim")
	}
	cmd.Flags().StringSliceVar(&groups, "groups", nil, "the groups claim")
	cmd.Flags().BoolVar(&mfa, "mfa", false, "claim a second factor (amr mfa) and a sign-in now (auth_time)")
	return cmd
}

// readDevSecret reads the secret a running `sshca dev` wrote into its state directory.
func readDevSecret(state string) (string, error) {
	b, err := os.ReadFile(filepath.Join(state, devSecretFile))
	if err != nil {
		return "", fmt.Errorf("dev secret: %w (is sshca dev running with --state %s?)", err, state)
	}
	return strings.TrimSpace(string(b)), nil
}

// mintDevToken posts the claims to /dev/token with the dev secret and returns the ID token.
func mintDevToken(ctx context.Context, url, secret string, claims map[string]any) (string, error) {
	b, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(b))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(devissuer.SecretHeader, secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("server unreachable: %w", err)
	}
	defer resp.Body.Close()
	data, err := bodylimit.ReadAll(resp, 1<<20)
	if err != nil {
		return "", fmt.Errorf("read answer: %w", err)
	}
	var reply struct {
		IDToken string `json:"id_token"`
		Error   string `json:"error"`
	}
	_ = json.Unmarshal(data, &reply)
	switch {
	case resp.StatusCode != http.StatusOK && reply.Error != "":
		return "", fmt.Errorf("%s (HTTP %d)", reply.Error, resp.StatusCode)
	case resp.StatusCode != http.StatusOK:
		return "", fmt.Errorf("HTTP %d from %s: %s", resp.StatusCode, url, strings.TrimSpace(string(data)))
	case reply.IDToken == "":
		return "", fmt.Errorf("no id_token in the answer from %s", url)
	}
	return reply.IDToken, nil
}
