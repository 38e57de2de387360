package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/spf13/cobra"

	"github.com/sshca/sshca/client"
)

// certFlags are the flags shared by `sshca cert user` and `sshca cert host`.
type certFlags struct {
	server    string
	key       string
	tokenEnv  string
	tokenFile string
	ttl       string
	reason    string
	request   string
	names     []string
	print     bool
	renew     bool
	reloadCmd string
	// clock is the renewal loop's clock (nil: the real one); tests inject a fake.
	clock clockwork.Clock
}

func newCertCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "cert", Short: "Get a certificate for an existing public key"}
	cmd.AddCommand(certSubcommand("user", "principal", "principals to ask for (default: all the policy grants)"),
		certSubcommand("host", "hostname", "host names the certificate is for (required)"))
	return cmd
}

func certSubcommand(kind, nameFlag, nameHelp string) *cobra.Command {
	f := certFlags{}
	cmd := &cobra.Command{
		Use:   kind + " --server URL --key FILE.pub",
		Short: "Get a " + kind + " certificate; writes FILE-cert.pub next to the key",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runCert(cmd.Context(), cmd.OutOrStdout(), kind, f)
		},
	}
	home, _ := os.UserHomeDir()
	cmd.Flags().StringVar(&f.server, "server", os.Getenv("SSHCA_SERVER"), "sshca server URL (env SSHCA_SERVER)")
	cmd.Flags().StringVar(&f.key, "key", filepath.Join(home, ".ssh", "id_ed25519.pub"), "public key to certify")
	cmd.Flags().StringVar(&f.tokenEnv, "token-env", "SSHCA_TOKEN", "environment variable holding the bearer token")
	cmd.Flags().StringVar(&f.tokenFile, "token-file", "", "file holding the bearer token (instead of --token-env)")
	cmd.Flags().StringVar(&f.ttl, "ttl", "", "certificate lifetime, e.g. 5m (default: the policy's)")
	cmd.Flags().StringSliceVar(&f.names, nameFlag, nil, nameHelp)
	cmd.Flags().BoolVar(&f.print, "print", false, "print the certificate to stdout instead of writing it")
	if kind == "user" {
		cmd.Flags().StringVar(&f.reason, "reason", "", "why you need access (recorded; some principals require a ticket)")
		cmd.Flags().StringVar(&f.request, "request", "", "an approved access request of yours to get the certificate under (sshca request create)")
	} else {
		cmd.Flags().BoolVar(&f.renew, "renew", false, "stay running and renew at 2/3 of the lifetime (proof of possession: no new token needed)")
		cmd.Flags().StringVar(&f.reloadCmd, "reload-cmd", "", "command run after each renewal, e.g. \"systemctl reload ssh\"")
	}
	return cmd
}

func runCert(ctx context.Context, out io.Writer, kind string, f certFlags) error {
	if f.server == "" {
		return errors.New("--server is required (or set SSHCA_SERVER)")
	}
	token, err := readToken(f.tokenEnv, f.tokenFile)
	if err != nil {
		return err
	}
	privPath := strings.TrimSuffix(f.key, ".pub")
	if kind == "host" && privPath != f.key {
		if _, err := os.Stat(privPath); errors.Is(err, os.ErrNotExist) {
			if err := createKey(privPath); err != nil {
				return fmt.Errorf("create host key: %w", err)
			}
			fmt.Fprintf(out, "created host key %s (0600)\n", privPath)
		}
	}
	pub, err := os.ReadFile(f.key)
	if errors.Is(err, os.ErrNotExist) && kind == "user" {
		// The default --key is a file many users do not have; say how to get one.
		return fmt.Errorf("read public key: %w: give --key FILE.pub, or create one with ssh-keygen -t ed25519 -f %s (or let sshca login create ~/.ssh/sshca/id_ed25519)", err, privPath)
	}
	if err != nil {
		return fmt.Errorf("read public key: %w", err)
	}
	req := client.CertRequest{PublicKey: strings.TrimSpace(string(pub)), TTL: f.ttl, Reason: f.reason, AccessRequest: f.request}
	issue := apiClient(ctx, f.server).IssueUser
	if kind == "user" {
		req.Principals = f.names
	} else {
		req.Hostnames = f.names
		issue = apiClient(ctx, f.server).IssueHost
	}
	reply, err := issue(ctx, token, req)
	if err != nil {
		return cliError(err)
	}
	if f.print {
		_, err := fmt.Fprintln(out, reply.Certificate)
		return err
	}
	certPath := strings.TrimSuffix(f.key, ".pub") + "-cert.pub"
	if err := os.WriteFile(certPath, []byte(reply.Certificate+"\n"), 0o644); err != nil {
		return fmt.Errorf("write certificate: %w", err)
	}
	until := reply.ValidBefore
	if t, err := time.Parse(time.RFC3339, reply.ValidBefore); err == nil {
		until = t.Local().Format("2006-01-02 15:04:05 MST")
	}
	fmt.Fprintf(out, "wrote %s\n  principals %s\n  valid until %s\n  serial %s, key id %s\n",
		certPath, strings.Join(reply.Principals, ","), until, reply.Serial, reply.KeyID)
	if kind != "host" {
		return nil
	}
	fmt.Fprintf(out, "sshd_config:\n  HostCertificate %s\n", certPath)
	if !f.renew {
		return nil
	}
	return renewLoop(ctx, out, strings.TrimRight(f.server, "/"), privPath, certPath, f.reloadCmd, f.clock)
}

func readToken(env, file string) (string, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("read token: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	if t := strings.TrimSpace(os.Getenv(env)); t != "" {
		return t, nil
	}
	return "", fmt.Errorf("no token: set %s or pass --token-file", env)
}

// postJSON posts body to rawURL (the server's URL and an endpoint's path) and decodes a 200
// answer into reply, for an endpoint the typed client does not name; errors as cliError.
func postJSON(ctx context.Context, rawURL, token string, body, reply any) error {
	return callURL(ctx, http.MethodPost, rawURL, token, body, reply)
}

func callURL(ctx context.Context, method, rawURL, token string, body, reply any) error {
	u, err := url.Parse(rawURL)
	if err != nil {
		return err
	}
	path := u.EscapedPath()
	if u.RawQuery != "" {
		path += "?" + u.RawQuery
	}
	u.Path, u.RawPath, u.RawQuery = "", "", ""
	return cliError(apiClient(ctx, u.String()).Do(ctx, method, path, token, body, reply))
}

// cliError is the error the CLI prints for err: a *client.Error reads "POST /v1/certs/user:
// <message>: <reasons> (HTTP 403)" (callers match on its status, e.g. revoke on 409) and says on
// the next line what to do about it; other errors are left as they are.
func cliError(err error) error {
	var e *client.Error
	if !errors.As(err, &e) {
		return err
	}
	if h := statusHint(e); h != "" {
		return fmt.Errorf("%w\n%s", err, h)
	}
	return err
}

// statusHint says what to do about an HTTP status, "" when the message says it all.
func statusHint(e *client.Error) string {
	later := "retry later"
	if e.RetryAfter != "" {
		later = "retry in " + e.RetryAfter + "s"
	}
	switch c := e.Status; {
	case c == http.StatusBadRequest:
		return "the service refused the request as sent: check the flags' values"
	case c == http.StatusUnauthorized:
		return "sign in again (sshca login) or get a new token: tokens expire and each is good for one certificate"
	case c == http.StatusForbidden && strings.HasPrefix(e.Endpoint, "POST /v1/certs/"):
		return "the policy refused for the reasons above: ask for less (principals, --ttl), or ask its owners for access"
	case c == http.StatusForbidden:
		return "the policy refused for the reasons above: ask its owners for access"
	case c == http.StatusNotFound && e.Message == "":
		// Only an answer without sshca's error body is a wrong URL or an older server: sshca's
		// own 404s (no such serial, request or session) say what was not found.
		return "check --server (is it an sshca service, with no extra path?) and that the server's version has this endpoint"
	case c == http.StatusRequestEntityTooLarge:
		return "the request is over the service's 64 KiB limit"
	case c == http.StatusTooManyRequests:
		return "rate limited: " + later
	case c == http.StatusServiceUnavailable:
		return "the service or one of its dependencies is unavailable: " + later
	case c >= 500:
		return "the service failed: " + later + ", and tell its operators if it persists"
	}
	return ""
}
