// Package identity verifies bearer OIDC ID tokens from one or more issuers with
// github.com/coreos/go-oidc and maps their claims to a ca.Identity: username, groups, email,
// second-factor claims, and whether the caller is a workload (a CI job) rather than a person.
// It implements ca.Authenticator.
package identity

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"

	"github.com/sshca/sshca/ca"
)

// Config is the identity part of the service configuration.
type Config struct {
	Issuers []IssuerConfig `yaml:"issuers"`
	// ReservedPrincipals are never derived from claims, only granted by the policy. "root" is
	// always reserved.
	ReservedPrincipals []string `yaml:"reserved_principals"`
}

// IssuerConfig is one trusted OIDC issuer.
type IssuerConfig struct {
	IssuerURL string `yaml:"issuer_url"`
	// Audiences: a token must name at least one of them in "aud".
	Audiences []string `yaml:"audiences"`
	// UsernameClaim gives the username (default "preferred_username").
	UsernameClaim string `yaml:"username_claim"`
	// GroupsClaim gives the groups, a list or a single string (default "groups").
	GroupsClaim string `yaml:"groups_claim"`
	// AllowedEmailDomains: without a username claim, the local part of a verified email in one
	// of these domains is the username. Empty: no email fallback.
	AllowedEmailDomains []string `yaml:"allowed_email_domains"`
	// Workload marks tokens of this issuer as CI workload identities.
	Workload bool `yaml:"workload"`
	// ReplayProtection makes each token good for one certificate (default true): its jti,
	// or a hash of the token without one, is recorded until the token expires.
	ReplayProtection *bool `yaml:"replay_protection"`
}

// Validate returns every problem of the configuration.
func (c Config) Validate() []error {
	var errs []error
	if len(c.Issuers) == 0 {
		errs = append(errs, errors.New("issuers: at least one issuer is required"))
	}
	seen := map[string]bool{}
	for i, is := range c.Issuers {
		u, err := url.Parse(is.IssuerURL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			errs = append(errs, fmt.Errorf("issuers[%d].issuer_url: %q is not an http(s) URL", i, is.IssuerURL))
		} else if u.Scheme == "http" && !isLoopbackHost(u.Hostname()) {
			errs = append(errs, fmt.Errorf("issuers[%d].issuer_url: %q must use https", i, is.IssuerURL))
		}
		if seen[is.IssuerURL] {
			errs = append(errs, fmt.Errorf("issuers[%d].issuer_url: %q appears twice", i, is.IssuerURL))
		}
		seen[is.IssuerURL] = true
		if len(is.Audiences) == 0 {
			errs = append(errs, fmt.Errorf("issuers[%d].audiences: at least one audience is required", i))
		}
	}
	return errs
}

// Option tunes a Verifier.
type Option func(*Verifier)

// WithClock sets the clock used for expiry and not-before checks.
func WithClock(now func() time.Time) Option { return func(v *Verifier) { v.now = now } }

// WithHTTPClient sets the client used for discovery and key sets.
func WithHTTPClient(c *http.Client) Option { return func(v *Verifier) { v.client = c } }

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(v *Verifier) { v.log = l } }

// Verifier authenticates bearer ID tokens.
type Verifier struct {
	issuers  map[string]*issuer
	reserved map[string]bool
	now      func() time.Time
	client   *http.Client
	log      *slog.Logger
}

type issuer struct {
	cfg     IssuerConfig
	domains map[string]bool

	mu       sync.Mutex
	verifier *oidc.IDTokenVerifier
	lastTry  time.Time
	lastErr  error
}

// Leeway is the clock skew tolerated on nbf.
const Leeway = 30 * time.Second

// rediscoverAfter limits discovery retries of an issuer that was unreachable.
const rediscoverAfter = 5 * time.Second

// New returns a Verifier and runs discovery for every issuer. An issuer that cannot be reached
// now is not fatal: discovery is retried on its next token, and its tokens get 503 meanwhile.
func New(ctx context.Context, cfg Config, opts ...Option) (*Verifier, error) {
	if errs := cfg.Validate(); len(errs) > 0 {
		return nil, fmt.Errorf("identity: %w", errors.Join(errs...))
	}
	v := &Verifier{issuers: map[string]*issuer{}, reserved: map[string]bool{"root": true}, now: time.Now,
		client: &http.Client{Timeout: 10 * time.Second}, log: slog.New(slog.DiscardHandler)}
	for _, o := range opts {
		o(v)
	}
	for _, r := range cfg.ReservedPrincipals {
		v.reserved[r] = true
	}
	for _, ic := range cfg.Issuers {
		is := &issuer{cfg: ic, domains: map[string]bool{}}
		if is.cfg.UsernameClaim == "" {
			is.cfg.UsernameClaim = "preferred_username"
		}
		if is.cfg.GroupsClaim == "" {
			is.cfg.GroupsClaim = "groups"
		}
		for _, d := range ic.AllowedEmailDomains {
			is.domains[strings.ToLower(d)] = true
		}
		v.issuers[strings.TrimRight(ic.IssuerURL, "/")] = is
		if _, err := v.discover(ctx, is); err != nil {
			v.log.Warn("oidc discovery failed; retrying on first use", "issuer", ic.IssuerURL, "err", err)
		}
	}
	return v, nil
}

func (v *Verifier) discover(ctx context.Context, is *issuer) (*oidc.IDTokenVerifier, error) {
	is.mu.Lock()
	defer is.mu.Unlock()
	if is.verifier != nil {
		return is.verifier, nil
	}
	if is.lastErr != nil && v.now().Sub(is.lastTry) < rediscoverAfter {
		return nil, is.lastErr
	}
	is.lastTry = v.now()
	// The provider's key set outlives this request: give it a context that is not cancelled
	// with the request, carrying our HTTP client.
	pctx := oidc.ClientContext(context.WithoutCancel(ctx), v.client)
	p, err := oidc.NewProvider(pctx, is.cfg.IssuerURL)
	if err != nil {
		is.lastErr = err
		return nil, err
	}
	is.verifier = p.Verifier(&oidc.Config{
		SkipClientIDCheck: true, // audiences are a list: checked in Authenticate
		Now:               v.now,
		SupportedSigningAlgs: []string{oidc.RS256, oidc.RS384, oidc.RS512, oidc.ES256, oidc.ES384, oidc.ES512,
			oidc.PS256, oidc.PS384, oidc.PS512, oidc.EdDSA},
	})
	is.lastErr = nil
	return is.verifier, nil
}

// Authenticate verifies the token and returns the identity it establishes.
func (v *Verifier) Authenticate(ctx context.Context, token string) (ca.Identity, error) {
	if token == "" {
		return ca.Identity{}, ca.Unauthenticated("missing bearer token: send \"Authorization: Bearer <ID token>\"", nil)
	}
	issURL, err := unverifiedIssuer(token)
	if err != nil {
		return ca.Identity{}, ca.Unauthenticated("malformed token: "+err.Error(), nil)
	}
	is := v.issuers[strings.TrimRight(issURL, "/")]
	if is == nil {
		return ca.Identity{}, ca.Unauthenticated(fmt.Sprintf("token issuer %q is not trusted", truncate(issURL, 100)), nil)
	}
	verifier, err := v.discover(ctx, is)
	if err != nil {
		return ca.Identity{}, ca.Unavailable(fmt.Sprintf("identity provider %s is unreachable", is.cfg.IssuerURL), err)
	}
	idt, err := verifier.Verify(oidc.ClientContext(ctx, v.client), token)
	if err != nil {
		var expired *oidc.TokenExpiredError
		if errors.As(err, &expired) {
			return ca.Identity{}, ca.Unauthenticated("token expired at "+expired.Expiry.UTC().Format(time.RFC3339)+"; sign in again", nil)
		}
		return ca.Identity{}, ca.Unauthenticated("token rejected: "+strings.TrimPrefix(err.Error(), "oidc: "), nil)
	}
	if !slices.ContainsFunc(idt.Audience, func(a string) bool { return slices.Contains(is.cfg.Audiences, a) }) {
		return ca.Identity{}, ca.Unauthenticated(fmt.Sprintf("token audience %q is not accepted by this service", truncate(strings.Join(idt.Audience, ","), 100)), nil)
	}
	var claims map[string]any
	if err := idt.Claims(&claims); err != nil {
		return ca.Identity{}, ca.Unauthenticated("token claims are not a JSON object", nil)
	}
	if nbf, ok := claims["nbf"].(float64); ok && time.Unix(int64(nbf), 0).After(v.now().Add(Leeway)) {
		return ca.Identity{}, ca.Unauthenticated("token is not valid yet (nbf in the future)", nil)
	}
	id := v.identity(is, idt.Issuer, idt.Subject, claims)
	id.Token = ca.TokenUse{SingleUse: is.cfg.ReplayProtection == nil || *is.cfg.ReplayProtection,
		ID: idt.Issuer + "|" + tokenID(claims, token), Expiry: idt.Expiry}
	return id, nil
}

// tokenID is the token's jti, or a hash of the whole token when it has none.
func tokenID(claims map[string]any, token string) string {
	if jti, _ := claims["jti"].(string); jti != "" {
		return "jti:" + jti
	}
	sum := sha256.Sum256([]byte(token))
	return "sha256:" + hex.EncodeToString(sum[:])
}

func (v *Verifier) identity(is *issuer, iss, sub string, claims map[string]any) ca.Identity {
	id := ca.Identity{
		Issuer:   iss,
		Subject:  sub,
		Groups:   stringList(claims[is.cfg.GroupsClaim]),
		AMR:      stringList(claims["amr"]),
		Workload: is.cfg.Workload,
		Claims:   claims,
	}
	id.ACR, _ = claims["acr"].(string)
	if at, ok := claims["auth_time"].(float64); ok {
		id.AuthTime = int64(at)
	}
	email, _ := claims["email"].(string)
	verified, _ := claims["email_verified"].(bool)
	if verified && email != "" {
		id.Email = email
	}
	if u, _ := claims[is.cfg.UsernameClaim].(string); v.usable(u) {
		id.Username = u
	} else if local, domain, ok := strings.Cut(strings.ToLower(id.Email), "@"); ok && is.domains[domain] && v.usable(local) {
		id.Username = local
	}
	return id
}

// usable: a principal may be derived from a claim only when it is a well-formed user name and
// not reserved (root and the configured names come from the policy alone).
func (v *Verifier) usable(name string) bool {
	return ca.ValidUserPrincipal(name) && !v.reserved[name]
}

func unverifiedIssuer(token string) (string, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return "", errors.New("not a JWT (header.payload.signature)")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return "", errors.New("payload is not base64url")
	}
	var c struct {
		Iss string `json:"iss"`
	}
	if err := json.Unmarshal(payload, &c); err != nil {
		return "", errors.New("payload is not a JSON object")
	}
	if c.Iss == "" {
		return "", errors.New("no iss claim")
	}
	return c.Iss, nil
}

func stringList(v any) []string {
	switch t := v.(type) {
	case string:
		if t == "" {
			return []string{}
		}
		return []string{t}
	case []any:
		out := make([]string, 0, len(t))
		for _, e := range t {
			if s, ok := e.(string); ok {
				out = append(out, s)
			}
		}
		return out
	}
	return []string{}
}

func isLoopbackHost(h string) bool {
	return h == "localhost" || h == "127.0.0.1" || h == "::1" || strings.HasPrefix(h, "127.")
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
