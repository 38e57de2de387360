package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/jonboulle/clockwork"
	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/oauth2"

	"github.com/sshca/sshca/client"
	"github.com/sshca/sshca/internal/bodylimit"
	"github.com/sshca/sshca/krl"
)

type loginFlags struct {
	server     string
	key        string
	principals []string
	ttl        string
	reason     string
	request    string
	noAgent    bool
	print      bool
	browser    bool
	// revokedHosts is the client-side KRL of revoked hosts (RevokedHostKeys), kept fresh from
	// GET /v1/krl/host at every login.
	revokedHosts string
	// ifExpiring skips the sign-in while the certificate next to the key has more than
	// loginMinValidity left (the host KRL is refreshed all the same); ssh's Match exec line
	// runs it before every connection.
	ifExpiring bool
	// quiet prints only what needs the user (the sign-in prompt) and errors.
	quiet bool
	// clock tells whether the certificate in place is still valid and bounds the wait for the
	// browser's redirect (nil: the real clock); tests inject a fake.
	clock clockwork.Clock
}

// loginMinValidity is how long a certificate must still be valid for `login --if-expiring` to
// keep it: enough for ssh to authenticate with it after the check.
const loginMinValidity = time.Minute

// openBrowser shows a URL to the user; tests replace it with a scripted browser.
var openBrowser = func(url string) error {
	for _, cmd := range []string{"xdg-open", "open"} {
		if p, err := exec.LookPath(cmd); err == nil {
			return exec.Command(p, url).Start()
		}
	}
	return errors.New("no browser opener found")
}

func newLoginCommand() *cobra.Command {
	f := loginFlags{}
	cmd := &cobra.Command{
		Use:   "login --server URL",
		Short: "Sign in (device flow) and get a certificate, written next to the key and added to ssh-agent",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runLogin(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), f)
		},
	}
	cmd.Flags().StringVar(&f.server, "server", os.Getenv("SSHCA_SERVER"), "sshca server URL (env SSHCA_SERVER)")
	cmd.Flags().StringVar(&f.key, "key", "", "private key to certify (default ~/.ssh/sshca/id_ed25519, created if missing)")
	cmd.Flags().StringSliceVar(&f.principals, "principal", nil, "principals to ask for (default: all the policy grants)")
	cmd.Flags().StringVar(&f.ttl, "ttl", "", "certificate lifetime, e.g. 5m (default: the policy's)")
	cmd.Flags().StringVar(&f.reason, "reason", "", "why you need access (some principals need a ticket here)")
	cmd.Flags().StringVar(&f.request, "request", "", "an approved access request of yours to get the certificate under (sshca request create)")
	cmd.Flags().BoolVar(&f.noAgent, "no-agent", false, "do not add the key and certificate to ssh-agent")
	cmd.Flags().BoolVar(&f.print, "print", false, "print the certificate to stdout (for scripts)")
	cmd.Flags().BoolVar(&f.browser, "browser", false, "sign in in a browser (authorization code + PKCE, loopback redirect) instead of the device flow")
	cmd.Flags().BoolVar(&f.ifExpiring, "if-expiring", false, "sign in only when the certificate next to the key is missing, for another key, or valid for less than a minute more (what ssh's Match exec line from sshca ssh-config --write runs)")
	cmd.Flags().BoolVar(&f.quiet, "quiet", false, "print nothing but the sign-in prompt and errors")
	cmd.Flags().StringVar(&f.revokedHosts, "revoked-hosts", "", "the KRL of revoked hosts to keep fresh for ssh's RevokedHostKeys (default ~/.ssh/sshca/revoked_hosts.krl)")
	return cmd
}

func runLogin(ctx context.Context, out, msg io.Writer, f loginFlags) error {
	if f.server == "" {
		return errors.New("--server is required (or set SSHCA_SERVER)")
	}
	if f.clock == nil {
		f.clock = clockwork.NewRealClock()
	}
	server := strings.TrimRight(f.server, "/")
	c := apiClient(ctx, server)
	lc, err := c.LoginConfig(ctx)
	if err != nil {
		return fmt.Errorf("cannot reach the sshca server at %s (%v); check --server and your network", server, err)
	}
	info := msg
	if f.quiet {
		info = io.Discard
	}
	// Revoked hosts need no sign-in: they are refreshed even when the sign-in then fails.
	keepHostKRL(ctx, msg, info, c, f.revokedHosts)
	// Everything that can fail without the user is checked before they sign in.
	keyPath, raw, err := loadOrCreateKey(f.key)
	if err != nil {
		return err
	}
	signer, err := ssh.NewSignerFromKey(raw)
	if err != nil {
		return fmt.Errorf("the key %s: %w", keyPath, err)
	}
	if f.ifExpiring {
		if left, ok := certStillValid(keyPath+"-cert.pub", signer.PublicKey(), f.clock.Now()); ok {
			fmt.Fprintf(info, "certificate %s valid for %s more; not signing in\n", keyPath+"-cert.pub", left.Round(time.Second))
			return nil
		}
	}
	if !f.noAgent {
		if err := agentReachable(); err != nil {
			return err
		}
	}
	var idToken string
	if f.browser {
		idToken, err = browserSignIn(ctx, msg, lc, f.clock)
	} else {
		idToken, err = deviceSignIn(ctx, msg, lc)
	}
	if err != nil {
		return err
	}
	reply, err := c.IssueUser(ctx, idToken, client.CertRequest{
		PublicKey:  strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey()))),
		Principals: f.principals, TTL: f.ttl, Reason: f.reason, AccessRequest: f.request,
	})
	if err != nil {
		return cliError(err)
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(reply.Certificate))
	if err != nil {
		return fmt.Errorf("the server answered with an unreadable certificate: %w", err)
	}
	cert, ok := pub.(*ssh.Certificate)
	if !ok {
		return errors.New("the server answered with a key, not a certificate")
	}
	if f.print {
		fmt.Fprintln(out, reply.Certificate)
	}
	certPath := keyPath + "-cert.pub"
	if err := os.WriteFile(certPath, []byte(reply.Certificate+"\n"), 0o644); err != nil {
		return fmt.Errorf("write certificate: %w", err)
	}
	until := time.Unix(int64(cert.ValidBefore), 0)
	fmt.Fprintf(info, "signed in: principals %s, valid until %s\n  certificate %s\n",
		strings.Join(cert.ValidPrincipals, ","), until.Local().Format("2006-01-02 15:04:05 MST"), certPath)
	if f.noAgent {
		return nil
	}
	if err := addToAgent(raw, cert, until); err != nil {
		return err
	}
	fmt.Fprintf(info, "  added to ssh-agent until it expires\n")
	return nil
}

// certStillValid says how long the certificate in path stays valid, when it certifies key and
// has more than loginMinValidity left at now.
func certStillValid(path string, key ssh.PublicKey, now time.Time) (time.Duration, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(b)
	if err != nil {
		return 0, false
	}
	cert, ok := pub.(*ssh.Certificate)
	if !ok || !bytes.Equal(cert.Key.Marshal(), key.Marshal()) {
		return 0, false
	}
	left := time.Unix(int64(cert.ValidBefore), 0).Sub(now)
	if int64(cert.ValidAfter) > now.Unix() || left <= loginMinValidity {
		return left, false
	}
	return left, true
}

// issuerContext is ctx carrying the client that go-oidc and oauth2 reach the identity
// provider with (its discovery document, key set, device and token answers): a client that
// reads at most bodylimit.Issuer bytes of each answer, as the server does (those libraries
// read answers whole; oauth2 cuts a token answer at 1 MiB and then misreads it), each
// exchange within loginIssuerTimeout.
func issuerContext(ctx context.Context) context.Context {
	return oidc.ClientContext(ctx, bodylimit.Client(&http.Client{Timeout: loginIssuerTimeout}, bodylimit.Issuer))
}

// loginIssuerTimeout bounds each exchange with the identity provider (discovery, key set,
// device authorization, each token poll): one it accepts and never answers would otherwise
// hold sshca login for ever.
const loginIssuerTimeout = 15 * time.Second

// browserSignInWait is how long browserSignIn waits for the browser's redirect.
const browserSignInWait = 5 * time.Minute

// browserSignIn runs the authorization code flow with PKCE and a loopback redirect, waiting
// browserSignInWait of clk for the redirect.
func browserSignIn(ctx context.Context, msg io.Writer, lc client.LoginConfig, clk clockwork.Clock) (string, error) {
	ctx = issuerContext(ctx)
	provider, err := oidc.NewProvider(ctx, lc.Issuer)
	if err != nil {
		return "", fmt.Errorf("cannot reach the identity provider %s (%v)", lc.Issuer, err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("cannot listen on loopback for the sign-in redirect: %w", err)
	}
	defer l.Close()
	ep := provider.Endpoint()
	ep.AuthStyle = oauth2.AuthStyleInParams
	conf := &oauth2.Config{ClientID: lc.ClientID, Endpoint: ep, Scopes: lc.Scopes,
		RedirectURL: "http://" + l.Addr().String() + "/callback"}
	verifier, state, nonce := oauth2.GenerateVerifier(), oauth2.GenerateVerifier(), oauth2.GenerateVerifier()
	authURL := conf.AuthCodeURL(state, oauth2.S256ChallengeOption(verifier), oidc.Nonce(nonce))
	type result struct {
		code string
		err  error
	}
	got := make(chan result, 1)
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/callback" {
			http.NotFound(w, r)
			return
		}
		q := r.URL.Query()
		res := result{code: q.Get("code")}
		switch {
		case q.Get("error") != "":
			res.err = fmt.Errorf("sign-in was refused: %s", q.Get("error"))
		case q.Get("state") != state:
			res.err = errors.New("sign-in answer does not match this request (state); run sshca login again")
		}
		fmt.Fprintln(w, "sshca: signed in; you may close this window.")
		select {
		case got <- res:
		default:
		}
	})}
	go srv.Serve(l)
	defer srv.Close()
	defer l.Close() // srv.Close closes l only once Serve has begun to track it
	fmt.Fprintf(msg, "To sign in, open %s\n", authURL)
	if err := openBrowser(authURL); err != nil {
		fmt.Fprintf(msg, "(could not open a browser: %v; open the address yourself)\n", err)
	}
	var res result
	select {
	case res = <-got:
	case <-ctx.Done():
		return "", ctx.Err()
	case <-clk.After(browserSignInWait):
		return "", fmt.Errorf("no sign-in within %s; run sshca login again", browserSignInWait)
	}
	if res.err != nil {
		return "", res.err
	}
	tok, err := conf.Exchange(ctx, res.code, oauth2.VerifierOption(verifier))
	if err != nil {
		return "", fmt.Errorf("sign-in failed at the token exchange: %w", err)
	}
	idToken, _ := tok.Extra("id_token").(string)
	if idToken == "" {
		return "", errors.New("the identity provider returned no ID token")
	}
	// The server verifies the token; the nonce binds it to this sign-in.
	idt, err := provider.Verifier(&oidc.Config{ClientID: lc.ClientID, SupportedSigningAlgs: []string{oidc.RS256, oidc.ES256, oidc.ES384, oidc.PS256, oidc.EdDSA}}).Verify(ctx, idToken)
	if err != nil || idt.Nonce != nonce {
		return "", errors.New("the ID token does not belong to this sign-in (nonce); run sshca login again")
	}
	return idToken, nil
}

// deviceSignIn runs the OAuth 2.0 device authorization flow (RFC 8628) against the issuer
// and returns the ID token.
func deviceSignIn(ctx context.Context, msg io.Writer, lc client.LoginConfig) (string, error) {
	ctx = issuerContext(ctx)
	provider, err := oidc.NewProvider(ctx, lc.Issuer)
	if err != nil {
		return "", fmt.Errorf("cannot reach the identity provider %s (%v)", lc.Issuer, err)
	}
	var meta struct {
		DeviceAuth string `json:"device_authorization_endpoint"`
	}
	if err := provider.Claims(&meta); err != nil || meta.DeviceAuth == "" {
		return "", fmt.Errorf("the identity provider %s does not offer the device flow", lc.Issuer)
	}
	ep := provider.Endpoint()
	ep.DeviceAuthURL = meta.DeviceAuth
	ep.AuthStyle = oauth2.AuthStyleInParams // a public client: no secret, no retry in another style
	conf := &oauth2.Config{ClientID: lc.ClientID, Endpoint: ep, Scopes: lc.Scopes}
	da, err := conf.DeviceAuth(ctx)
	if err != nil {
		return "", fmt.Errorf("the identity provider refused to start a sign-in: %w", err)
	}
	where := da.VerificationURI
	if da.VerificationURIComplete != "" {
		where = da.VerificationURIComplete
	}
	fmt.Fprintf(msg, "To sign in, open %s and enter the code %s\n", where, da.UserCode)
	tok, err := conf.DeviceAccessToken(ctx, da)
	if err != nil {
		var re *oauth2.RetrieveError
		switch {
		case errors.As(err, &re) && re.ErrorCode == "access_denied":
			return "", errors.New("sign-in was denied; run sshca login again if that was a mistake")
		case errors.As(err, &re) && re.ErrorCode == "expired_token", errors.Is(err, context.DeadlineExceeded):
			return "", errors.New("the sign-in code expired before it was approved; run sshca login again")
		}
		return "", fmt.Errorf("sign-in failed: %w", err)
	}
	idToken, _ := tok.Extra("id_token").(string)
	if idToken == "" {
		return "", errors.New("the identity provider returned no ID token; is the openid scope allowed for this client?")
	}
	return idToken, nil
}

// loadOrCreateKey reads the private key at path, or creates an Ed25519 key at
// ~/.ssh/sshca/id_ed25519 (0600, directory 0700) when no path is given and none exists.
func loadOrCreateKey(path string) (string, any, error) {
	if path == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", nil, fmt.Errorf("no home directory for the default key; pass --key: %w", err)
		}
		path = filepath.Join(home, ".ssh", "sshca", "id_ed25519")
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			if err := createKey(path); err != nil {
				return "", nil, err
			}
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", nil, fmt.Errorf("cannot read the key %s: %w", path, err)
	}
	raw, err := ssh.ParseRawPrivateKey(b)
	if err != nil {
		var missing *ssh.PassphraseMissingError
		if errors.As(err, &missing) {
			return "", nil, fmt.Errorf("the key %s has a passphrase; use a key without one for sshca (its certificate lives minutes), or pass another --key", path)
		}
		if _, _, _, _, perr := ssh.ParseAuthorizedKey(b); perr == nil {
			// sshca cert user takes the public key; login needs the private one, to put it
			// in the agent beside its certificate.
			return "", nil, fmt.Errorf("the key %s is a public key: sshca login wants the private key (--key %s)", path, strings.TrimSuffix(path, ".pub"))
		}
		return "", nil, fmt.Errorf("the key %s is not an OpenSSH private key: %w", path, err)
	}
	return path, raw, nil
}

func createKey(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	block, err := ssh.MarshalPrivateKey(priv, "sshca")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return fmt.Errorf("write key: %w", err)
	}
	sshPub, _ := ssh.NewPublicKey(pub)
	return os.WriteFile(path+".pub", ssh.MarshalAuthorizedKey(sshPub), 0o644)
}

// addToAgent adds the key with its certificate to the running ssh-agent, for exactly as long
// as the certificate is valid.
func addToAgent(priv any, cert *ssh.Certificate, until time.Time) error {
	conn, err := dialAgent()
	if err != nil {
		return err
	}
	defer conn.Close()
	life := time.Until(until) // the real clock: ssh-agent counts the lifetime on it
	if life <= 0 {
		return errors.New("the certificate has already expired")
	}
	if err := agent.NewClient(conn).Add(agent.AddedKey{
		PrivateKey: priv, Certificate: cert, LifetimeSecs: uint32(life / time.Second),
		Comment: cert.KeyId,
	}); err != nil {
		return fmt.Errorf("ssh-agent refused the key: %w", err)
	}
	return nil
}

func dialAgent() (net.Conn, error) {
	sock := os.Getenv("SSH_AUTH_SOCK")
	if sock == "" {
		return nil, errors.New("ssh-agent is not running (SSH_AUTH_SOCK is not set): start one with eval $(ssh-agent), or use --no-agent")
	}
	conn, err := net.Dial("unix", sock)
	if err != nil {
		return nil, fmt.Errorf("cannot reach ssh-agent at %s (%v): start one with eval $(ssh-agent), or use --no-agent", sock, err)
	}
	return conn, nil
}

func agentReachable() error {
	conn, err := dialAgent()
	if err != nil {
		return err
	}
	return conn.Close()
}

// getJSON GETs rawURL (the server's URL and an endpoint's path) and decodes a 200 answer into
// v, for an endpoint the typed client does not name; errors as cliError.
func getJSON(ctx context.Context, rawURL string, v any) error {
	return callURL(ctx, http.MethodGet, rawURL, "", nil, v)
}

// keepHostKRL (warnings to msg, the outcome to info) keeps the client-side KRL of revoked hosts (path, default
// ~/.ssh/sshca/revoked_hosts.krl) fresh from GET /v1/krl/host and says which RevokedHostKeys
// line ssh needs. It never fails the login: a KRL that cannot be refreshed is reported and the
// installed one stays.
func keepHostKRL(ctx context.Context, msg, info io.Writer, c *client.Client, path string) {
	if path == "" {
		var err error
		if path, err = defaultRevokedHosts(); err != nil {
			fmt.Fprintf(msg, "warning: no home directory for the KRL of revoked hosts (%v); pass --revoked-hosts\n", err)
			return
		}
	}
	version, changed, err := refreshHostKRL(ctx, c, path)
	if err != nil {
		fmt.Fprintf(msg, "warning: revoked hosts not refreshed: %v\n", err)
		return
	}
	state := "unchanged"
	if changed {
		state = "updated"
	}
	fmt.Fprintf(info, "revoked hosts: %s (version %d, %s); ssh checks it with this line in ~/.ssh/config:\n  RevokedHostKeys %s\n", path, version, state, path)
}

// defaultRevokedHosts is where sshca login keeps the KRL of revoked hosts unless told
// otherwise: ~/.ssh/sshca/revoked_hosts.krl (what an ssh config's RevokedHostKeys names).
func defaultRevokedHosts() (string, error) {
	home, err := os.UserHomeDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(home, ".ssh", "sshca", "revoked_hosts.krl"), nil
}

// refreshHostKRL installs the host KRL the server publishes at path, an OpenSSH KRL file for
// RevokedHostKeys, and answers the version installed and whether it changed. A valid empty
// KRL is written first when the file is missing: OpenSSH's client refuses every connection
// while the file RevokedHostKeys names cannot be read. The server's KRL is decoded before it
// is installed (a KRL ssh cannot read would refuse every host), and never replaces a newer one
// (a higher KRL version: the server's versions only grow, so a lower one comes from a replica
// or cache that lags). Writes are atomic: a temporary file in the same directory, renamed.
func refreshHostKRL(ctx context.Context, c *client.Client, path string) (version uint64, changed bool, err error) {
	installed, err := readKRL(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		empty, err := (&krl.KRL{Comment: "sshca: no revoked hosts known yet"}).MarshalBinary()
		if err != nil {
			return 0, false, err
		}
		if err := writeFileAtomic(path, empty); err != nil {
			return 0, false, err
		}
		installed = &krl.KRL{}
	case err != nil:
		installed = nil // unreadable: any valid KRL from the server replaces it
	}
	data, err := c.HostKRL(ctx)
	if err != nil {
		return 0, false, fmt.Errorf("GET /v1/krl/host: %w", err)
	}
	fetched, err := krl.Parse(data)
	if err != nil {
		return 0, false, fmt.Errorf("the server's host KRL does not decode (%v); kept %s", err, path)
	}
	if installed != nil && installed.Version >= fetched.Version {
		if installed.Version > fetched.Version {
			return installed.Version, false, fmt.Errorf("the server's host KRL (version %d) is older than the one installed (version %d); kept %s", fetched.Version, installed.Version, path)
		}
		return installed.Version, false, nil
	}
	if err := writeFileAtomic(path, data); err != nil {
		return 0, false, err
	}
	return fetched.Version, true, nil
}

func readKRL(path string) (*krl.KRL, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return krl.Parse(b)
}

// writeFileAtomic replaces path with data (mode 0644, a KRL is public), creating its directory
// (0700) if needed: readers see the old file or the new one, never a part.
func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(f.Name()) // a no-op once renamed
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
