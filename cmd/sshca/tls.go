package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/sshca/sshca/client"
)

// certReloader serves the certificate and key in two PEM files and picks up a new pair when
// either file changes, without a restart (cert-manager and Kubernetes Secret mounts replace
// them in place). It reads both files on each handshake (a few kilobytes from the page cache,
// small beside the handshake's own signature) and loads them again only when their contents
// changed. A pair that does not load (a key that
// does not match its certificate because only one of the two files has been written yet, or a
// truncated file) is logged and the pair in force stays; the next change is tried again, so the
// second half of a rotation completes it.
type certReloader struct {
	certFile, keyFile string
	log               *slog.Logger

	mu sync.Mutex
	// cert is the pair in force; seen is the files' stamp last tried, loaded or not.
	cert *tls.Certificate
	seen string
}

// newCertReloader loads the pair once; an error here stops the service from starting (there is
// no old pair to keep).
func newCertReloader(certFile, keyFile string, log *slog.Logger) (*certReloader, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile, log: log}
	stamp, err := r.stamp()
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	c, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("tls: cert_file and key_file: %w", err)
	}
	r.cert, r.seen = &c, stamp
	return r, nil
}

// stamp identifies the files' current contents: a hash of both, so a rewrite within one tick
// of the file system's clock, with the same size, is still seen (modification times are not
// fine enough for that).
func (r *certReloader) stamp() (string, error) {
	h := sha256.New()
	for _, f := range []string{r.certFile, r.keyFile} {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		h.Write(b)
		h.Write([]byte{0})
	}
	return string(h.Sum(nil)), nil
}

// GetCertificate is tls.Config.GetCertificate.
func (r *certReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	stamp, err := r.stamp()
	if err != nil || stamp == r.seen {
		if err != nil && stamp != r.seen {
			r.log.Warn("tls: cannot read the certificate files; the certificate in force stays", "err", err)
			r.seen = stamp
		}
		return r.cert, nil
	}
	r.seen = stamp
	c, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		r.log.Error("tls: the new certificate and key do not load together; the certificate in force stays until both files are replaced",
			"cert_file", r.certFile, "key_file", r.keyFile, "err", err)
		return r.cert, nil
	}
	if leaf, err := x509.ParseCertificate(c.Certificate[0]); err == nil {
		r.log.Info("tls: certificate reloaded", "subject", leaf.Subject.String(), "not_after", leaf.NotAfter.Format(time.RFC3339))
	}
	r.cert = &c
	return r.cert, nil
}

// serverTLS is the main listener's TLS configuration: TLS 1.2 or later, the reloading
// certificate, and, when clientCAFile is set, client certificates verified against it when a
// client offers one (VerifyClientCertIfGiven: Go's server cannot ask for one after the
// handshake, so adminCertRequired enforces the requirement per route). A certificate from
// another CA fails the handshake.
func serverTLS(c TLSConfig, log *slog.Logger) (*tls.Config, error) {
	if c.CertFile == "" {
		return nil, nil
	}
	r, err := newCertReloader(c.CertFile, c.KeyFile, log)
	if err != nil {
		return nil, err
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: r.GetCertificate}
	if c.ClientCAFile != "" {
		pool, err := loadCertPool(c.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("tls.client_ca_file: %w", err)
		}
		conf.ClientAuth, conf.ClientCAs = tls.VerifyClientCertIfGiven, pool
	}
	return conf, nil
}

// loadCertPool reads a PEM bundle of one or more CA certificates.
func loadCertPool(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s holds no PEM CERTIFICATE block", path)
	}
	return pool, nil
}

// isAdminRoute says whether a request reaches an administrative endpoint: revocations (list,
// revoke, lift), the CA keys, the certificate inventory (GET /v1/certs, not the issuance paths
// below it), and decisions on access requests.
func isAdminRoute(r *http.Request) bool {
	p := r.URL.Path
	switch {
	case p == "/v1/revocations" || strings.HasPrefix(p, "/v1/revocations/"):
		return true
	case p == "/v1/keys" || strings.HasPrefix(p, "/v1/keys/"):
		return true
	case p == "/v1/certs":
		return true
	case strings.HasPrefix(p, "/v1/requests/"):
		return strings.HasSuffix(p, "/approve") || strings.HasSuffix(p, "/deny")
	case strings.HasPrefix(p, "/ui/requests/"):
		// The web console's admin actions follow the API's rule (its pages only read).
		return strings.HasSuffix(p, "/approve") || strings.HasSuffix(p, "/deny") || strings.HasSuffix(p, "/revoke")
	}
	return false
}

// adminCertRequired refuses administrative requests that did not come with a client
// certificate verified against tls.client_ca_file (403), and passes every other request
// through: issuance, KRLs and CA keys need no client certificate. The bearer token and the
// policy still decide what an admin may do; the certificate is a second factor bound to the
// connection.
func adminCertRequired(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if isAdminRoute(r) && (r.TLS == nil || len(r.TLS.VerifiedChains) == 0) {
			msg := "a client certificate is required for " + r.URL.Path + ": this server asks admin requests for a TLS client certificate issued by its tls.client_ca_file; present one with sshca --tls-cert FILE --tls-key FILE"
			if strings.HasPrefix(r.URL.Path, "/ui/") {
				msg = "a client certificate is required for " + r.URL.Path + ": this server asks the console's admin actions for a TLS client certificate issued by its tls.client_ca_file; install one in your browser and reload"
				http.Error(w, msg, http.StatusForbidden)
				return
			}
			w.Header().Set("Content-Type", "application/json; charset=utf-8")
			w.WriteHeader(http.StatusForbidden)
			_ = json.NewEncoder(w).Encode(map[string]any{"error": msg})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// clientTLS is the CLI's TLS configuration: the CA to trust for the server's certificate (empty:
// the system roots) and a client certificate to present (both files or neither).
func clientTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	conf := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pool, err := loadCertPool(caFile)
		if err != nil {
			return nil, fmt.Errorf("--tls-ca: %w", err)
		}
		conf.RootCAs = pool
	}
	if (certFile == "") != (keyFile == "") {
		return nil, fmt.Errorf("--tls-cert and --tls-key go together (the client certificate and its private key, PEM)")
	}
	if certFile != "" {
		c, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("--tls-cert/--tls-key: %w", err)
		}
		conf.Certificates = []tls.Certificate{c}
	}
	return conf, nil
}

// cliTLSFlags are the root command's TLS options for every client command.
type cliTLSFlags struct{ ca, cert, key string }

func (f *cliTLSFlags) register(root *cobra.Command) {
	root.PersistentFlags().StringVar(&f.ca, "tls-ca", os.Getenv("SSHCA_TLS_CA"), "client commands: PEM file of the CA that issued the server's TLS certificate (default: the system's roots; env SSHCA_TLS_CA)")
	root.PersistentFlags().StringVar(&f.cert, "tls-cert", os.Getenv("SSHCA_TLS_CERT"), "client commands: PEM client certificate to present, which admin endpoints require when the server sets tls.client_ca_file (env SSHCA_TLS_CERT)")
	root.PersistentFlags().StringVar(&f.key, "tls-key", os.Getenv("SSHCA_TLS_KEY"), "client commands: PEM private key of --tls-cert (env SSHCA_TLS_KEY)")
}

// httpClientKey carries the CLI's *http.Client in a command's context.
type httpClientKey struct{}

// withHTTPClient puts an HTTP client built from the flags into the command's context, so every
// client command talks to the server with them; without TLS flags it leaves the context alone
// (http.DefaultClient).
func (f *cliTLSFlags) withHTTPClient(cmd *cobra.Command) error {
	if f.ca == "" && f.cert == "" && f.key == "" {
		return nil
	}
	conf, err := clientTLS(f.ca, f.cert, f.key)
	if err != nil {
		return err
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = conf
	cmd.SetContext(context.WithValue(cmd.Context(), httpClientKey{}, &http.Client{Transport: t}))
	return nil
}

// apiClient is client.New with the HTTP client of the command's TLS flags, if any.
func apiClient(ctx context.Context, server string) *client.Client {
	c := client.New(server)
	if hc, ok := ctx.Value(httpClientKey{}).(*http.Client); ok {
		c.HTTP = hc
	}
	return c
}

// httpClientFrom is the HTTP client of the command's TLS flags, else http.DefaultClient.
func httpClientFrom(ctx context.Context) *http.Client {
	if hc, ok := ctx.Value(httpClientKey{}).(*http.Client); ok {
		return hc
	}
	return http.DefaultClient
}
