// Package identity verifies bearer OIDC ID tokens from one or more issuers with
// github.com/coreos/go-oidc and maps their claims to a ca.Identity: username, groups, email,
// second-factor claims, and whether the caller is a workload (a CI job) rather than a person.
// It implements ca.Authenticator.
package identity

import (
	"context"
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
	"github.com/sshca/sshca/internal/bodylimit"
)

// Config is the identity part of the service configuration.
type Config struct {
	// Issuers are the trusted OIDC issuers, people's and workloads' alike (at least one).
	Issuers []IssuerConfig `yaml:"issuers"`
	// ReservedPrincipals are never derived from claims, only granted by the policy. "root" is
	// always reserved.
	ReservedPrincipals []string `yaml:"reserved_principals"`
	// MaxTokenLifetime is the longest a token may be valid: its exp at most this long after its
	// iat (after now without iat). It also bounds how long the token ledger keeps a token's
	// record. Default 24h.
	MaxTokenLifetime time.Duration `yaml:"max_token_lifetime"`
}

// DefaultMaxTokenLifetime is MaxTokenLifetime when the configuration leaves it out.
const DefaultMaxTokenLifetime = 24 * time.Hour

// IssuerConfig is one trusted OIDC issuer.
type IssuerConfig struct {
	// IssuerURL is the issuer's URL as in its tokens' iss claim: https (http only on
	// loopback); its discovery document and keys are fetched from it.
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
	// ReplayProtection makes each token good for one certificate (default true): its jti, or
	// without one a hash of its decoded header and payload, is recorded until the token expires.
	ReplayProtection *bool `yaml:"replay_protection"`
}

// Validate returns every problem of the configuration.
func (c Config) Validate() []error {
	var errs []error
	if len(c.Issuers) == 0 {
		errs = append(errs, errors.New("issuers: at least one issuer is required"))
	}
	if c.MaxTokenLifetime < 0 {
		errs = append(errs, fmt.Errorf("max_token_lifetime: %s is negative; give a duration such as 24h, or leave it out for the default", c.MaxTokenLifetime))
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

// WithHTTPClient sets the client used for discovery and key sets. What it reads of each answer
// is bounded (bodylimit.Issuer, 1 MiB): a longer one is an error naming its URL and the bound,
// an unreachable issuer to the token that needed it (503).
func WithHTTPClient(c *http.Client) Option { return func(v *Verifier) { v.client = c } }

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(v *Verifier) { v.log = l } }

// Verifier authenticates bearer ID tokens.
type Verifier struct {
	issuers     map[string]*issuer
	reserved    map[string]bool
	maxLifetime time.Duration
	now         func() time.Time
	client      *http.Client
	log         *slog.Logger
}

type issuer struct {
	cfg     IssuerConfig
	domains map[string]bool

	mu sync.Mutex
	// keys is the issuer's key set once discovery succeeded, nil before.
	keys    *issuerKeys
	lastTry time.Time
	lastErr error
	// inflight is closed when the discovery running now ends (nil: none runs).
	inflight chan struct{}
}

// issuerKeys is what discovery gives: the issuer's published keys (go-oidc's RemoteKeySet,
// which refetches jwks_uri when no cached key verifies a token) and its issuer URL as the
// discovery document names it, which a token's iss must equal exactly (OIDC Core section
// 3.1.3.7 step 2).
type issuerKeys struct {
	issuer string
	set    *oidc.RemoteKeySet
}

// Leeway is the clock skew tolerated on nbf, iat and auth_time (never on exp).
const Leeway = 30 * time.Second

// rediscoverAfter limits discovery retries of an issuer that was unreachable.
const rediscoverAfter = 5 * time.Second

// New returns a Verifier and runs discovery for every issuer. An issuer that cannot be reached
// now is not fatal: discovery is retried on its next token, and its tokens get 503 meanwhile.
func New(ctx context.Context, cfg Config, opts ...Option) (*Verifier, error) {
	if errs := cfg.Validate(); len(errs) > 0 {
		return nil, fmt.Errorf("identity: %w", errors.Join(errs...))
	}
	v := &Verifier{issuers: map[string]*issuer{}, reserved: map[string]bool{"root": true}, maxLifetime: cfg.MaxTokenLifetime,
		now: time.Now, client: &http.Client{Timeout: 10 * time.Second}, log: slog.New(slog.DiscardHandler)}
	if v.maxLifetime == 0 {
		v.maxLifetime = DefaultMaxTokenLifetime
	}
	for _, o := range opts {
		o(v)
	}
	if v.client == nil { // WithHTTPClient(nil): the key set's client is a copy of this one
		v.client = &http.Client{Timeout: 10 * time.Second}
	}
	// go-oidc reads the discovery document and the key set whole, however long: a hostile or
	// broken issuer could make sshca read gigabytes.
	v.client = bodylimit.Client(v.client, bodylimit.Issuer)
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

// discover returns is's key set, running discovery when there is none yet (and none ran in
// the last rediscoverAfter). Discovery runs in the background, under the HTTP client's
// timeout and not the caller's cancellation, once for all the callers that want it then;
// each caller waits for it until its own ctx ends: an issuer that accepts a request and
// answers slowly, or never, holds no request past its deadline (TestStalledDiscoveryKeepsDeadlines).
func (v *Verifier) discover(ctx context.Context, is *issuer) (*issuerKeys, error) {
	is.mu.Lock()
	if is.keys != nil {
		keys := is.keys
		is.mu.Unlock()
		return keys, nil
	}
	if is.inflight == nil {
		if is.lastErr != nil && v.now().Sub(is.lastTry) < rediscoverAfter {
			err := is.lastErr
			is.mu.Unlock()
			return nil, err
		}
		is.lastTry = v.now()
		done := make(chan struct{})
		is.inflight = done
		// The provider's key set outlives this request: its context is not cancelled with
		// the request.
		dctx := context.WithoutCancel(ctx)
		go func() {
			keys, err := v.discovery(dctx, is)
			is.mu.Lock()
			is.keys, is.lastErr, is.inflight = keys, err, nil
			is.mu.Unlock()
			close(done)
		}()
	}
	done := is.inflight
	is.mu.Unlock()
	select {
	case <-done:
	case <-ctx.Done():
		return nil, fmt.Errorf("discovery of %s did not answer before the request's deadline: %w", is.cfg.IssuerURL, context.Cause(ctx))
	}
	is.mu.Lock()
	defer is.mu.Unlock()
	if is.keys != nil {
		return is.keys, nil
	}
	return nil, is.lastErr
}

// discovery reads is's discovery document (OpenID Connect Discovery 1.0) with ctx, and makes
// its key set.
func (v *Verifier) discovery(ctx context.Context, is *issuer) (*issuerKeys, error) {
	pctx := oidc.ClientContext(ctx, v.client)
	p, err := oidc.NewProvider(pctx, is.cfg.IssuerURL)
	if err != nil {
		return nil, err
	}
	// NewProvider has checked that the document's issuer is the configured URL.
	var doc struct {
		Issuer  string `json:"issuer"`
		JWKSURL string `json:"jwks_uri"`
	}
	if err := p.Claims(&doc); err != nil {
		return nil, err
	}
	// The key set gets a client of its own whose fetches are limited (keyFetchLimit): a
	// forged token makes go-oidc fetch jwks_uri again.
	kc := *v.client
	kc.Transport = newKeyFetchLimit(kc.Transport, v.now)
	kctx := oidc.ClientContext(ctx, &kc)
	return &issuerKeys{issuer: doc.Issuer, set: oidc.NewRemoteKeySet(kctx, doc.JWKSURL)}, nil
}

// Authenticate verifies the token and returns the identity it establishes. In order: the
// token's form (parseToken: size, canonical base64url, header, claim types), the issuer (trusted,
// and exactly as its discovery document names it), the signature (with the issuer's published
// keys: go-oidc's key set, go-jose's JWS check), the dates, the audience. Every
// refusal is ca.Unauthenticated with a message that names the claim and the fix, except an
// unreachable identity provider (ca.Unavailable). The identity's Token names the token in the
// token ledger (parsedToken.replayKey) until its exp.
func (v *Verifier) Authenticate(ctx context.Context, token string) (ca.Identity, error) {
	if token == "" {
		return ca.Identity{}, ca.Unauthenticated("missing bearer token: send \"Authorization: Bearer <ID token>\"", nil)
	}
	t, err := parseToken(token)
	if err != nil {
		return ca.Identity{}, err
	}
	is := v.issuers[strings.TrimRight(t.iss, "/")]
	if is == nil {
		return ca.Identity{}, ca.Unauthenticated(fmt.Sprintf("token issuer %q is not trusted", truncate(t.iss, 100)), nil)
	}
	keys, err := v.discover(ctx, is)
	if err != nil {
		if tooLong := (*bodylimit.Error)(nil); errors.As(err, &tooLong) {
			return ca.Identity{}, ca.Unavailable(fmt.Sprintf("identity provider %s: %v", is.cfg.IssuerURL, tooLong), err)
		}
		return ca.Identity{}, ca.Unavailable(fmt.Sprintf("identity provider %s is unreachable", is.cfg.IssuerURL), err)
	}
	if t.iss != keys.issuer {
		return ca.Identity{}, ca.Unauthenticated(fmt.Sprintf("token issuer %q differs from the issuer named by the discovery document of %s", truncate(t.iss, 100), is.cfg.IssuerURL), nil)
	}
	// Only the signature is left to go-oidc (its key set) and go-jose: the claims were
	// decoded once, by parseToken, and are judged here. go-oidc's IDTokenVerifier would decode
	// the payload a second time for checks that parseClaims and this function make already.
	if _, err := keys.set.VerifySignature(ctx, token); err != nil {
		if !isBadSignature(err) && !isKeyFetch(err) {
			return ca.Identity{}, v.verifyError(ctx, is, t, err)
		}
		// go-oidc's key set answers a request that arrives just after a refetch finished, and
		// before the refetched keys replaced its cache, with the keys of that older fetch: a
		// token signed by a key the issuer just rotated in fails once. One more try, after
		// the cache has been replaced, fetches again if the key is still unknown (or the
		// fetch failed).
		select {
		case <-ctx.Done():
			return ca.Identity{}, v.verifyError(ctx, is, t, err)
		case <-time.After(20 * time.Millisecond):
		}
		if _, err := keys.set.VerifySignature(ctx, token); err != nil {
			return ca.Identity{}, v.verifyError(ctx, is, t, err)
		}
	}
	if err := t.checkTimes(v.now(), v.maxLifetime); err != nil {
		return ca.Identity{}, err
	}
	if !slices.ContainsFunc(t.aud, func(a string) bool { return slices.Contains(is.cfg.Audiences, a) }) {
		return ca.Identity{}, ca.Unauthenticated(fmt.Sprintf("token audience %q is not accepted by this service; get a token issued for this service's client ID", truncate(strings.Join(t.aud, ","), 100)), nil)
	}
	id := v.identity(ctx, is, &t.tokenClaims)
	id.Token = ca.TokenUse{SingleUse: is.cfg.ReplayProtection == nil || *is.cfg.ReplayProtection,
		ID: t.replayKey(), Expiry: t.exp.time()}
	if t.iat.set {
		id.Token.IssuedAt = t.iat.time()
	}
	return id, nil
}

// isBadSignature reports whether err, from RemoteKeySet.VerifySignature, says that no key of
// the issuer's, cached or just refetched, verifies the token (go-oidc has no error value for
// it, only this text).
func isBadSignature(err error) bool {
	return strings.HasPrefix(err.Error(), "failed to verify id token signature")
}

// isKeyFetch reports whether err, from RemoteKeySet.VerifySignature, says that the key set
// could not be fetched from the issuer's jwks_uri.
func isKeyFetch(err error) bool { return strings.HasPrefix(err.Error(), "fetching keys") }

// verifyError turns a go-oidc key set failure into a message for the caller; go-oidc's own
// text (package prefixes, decoder errors) is logged at debug level only.
func (v *Verifier) verifyError(ctx context.Context, is *issuer, t *parsedToken, err error) error {
	msg := err.Error()
	v.log.DebugContext(ctx, "token verification failed", "issuer", is.cfg.IssuerURL, "alg", t.alg, "kid", t.kidString(), "err", msg)
	tooLong := (*bodylimit.Error)(nil)
	switch {
	case errors.As(err, &tooLong):
		return ca.Unavailable(fmt.Sprintf("identity provider %s: %v", is.cfg.IssuerURL, tooLong), err)
	case isKeyFetch(err):
		return ca.Unavailable(fmt.Sprintf("identity provider %s: its key set (jwks_uri) is unreachable", is.cfg.IssuerURL), err)
	case isBadSignature(err):
		kid := ""
		if k := t.kidString(); k != "" {
			kid = fmt.Sprintf(" for kid %q", truncate(k, 64))
		}
		return ca.Unauthenticated(fmt.Sprintf("token rejected: its signature does not verify with any %s key that issuer %s publishes%s; get a new token from the identity provider",
			t.alg, is.cfg.IssuerURL, kid), nil)
	default:
		return ca.Unauthenticated("token is not a signed JWT this service can read (RFC 7515 compact serialization); get a new token from the identity provider", nil)
	}
}

// userNamePattern is the grammar of ca.ValidUserPrincipal (ca/validate.go), for messages.
const userNamePattern = `^[a-z_][a-z0-9._-]{0,31}$`

// identity maps verified claims to an identity: groups, amr, acr and auth_time as they are;
// email only when email_verified is true (the JSON boolean, or the string "true" some
// providers send); the username from the issuer's username claim, else from the local part of
// a verified email in an allowed domain, and only when it is a usable principal. A refused
// username is no error (the policy may still grant principals by group): why none was derived
// goes to the debug log.
func (v *Verifier) identity(ctx context.Context, is *issuer, c *tokenClaims) ca.Identity {
	claims := c.claims
	id := ca.Identity{
		Issuer:   c.iss,
		Subject:  c.sub,
		Groups:   stringList(claims[is.cfg.GroupsClaim]),
		AMR:      stringList(claims["amr"]),
		Workload: is.cfg.Workload,
		Claims:   claims,
	}
	id.ACR, _ = claims["acr"].(string)
	if c.authTime.set {
		id.AuthTime = int64(c.authTime.secs)
	}
	email, _ := claims["email"].(string)
	if emailVerified(claims["email_verified"]) && email != "" {
		id.Email = email
	}
	uc := is.cfg.UsernameClaim
	raw, present := claims[uc]
	u, isString := raw.(string)
	if v.usable(u) {
		id.Username = u
		return id
	}
	var why string
	switch {
	case !present:
		why = fmt.Sprintf("no claim %s", uc)
	case !isString:
		why = fmt.Sprintf("claim %s is not a string", uc)
	case v.reserved[u]:
		why = fmt.Sprintf("claim %s %q is a reserved name (granted only by the policy)", uc, truncate(u, 64))
	default:
		why = fmt.Sprintf("claim %s %q is not a usable user name (must match %s)", uc, truncate(u, 64), userNamePattern)
	}
	local, domain, ok := strings.Cut(strings.ToLower(id.Email), "@")
	switch {
	case len(is.domains) == 0:
	case id.Email == "" && email != "":
		why += fmt.Sprintf("; claim email is not verified (email_verified %s)", truncate(quoteJSON(claims["email_verified"]), 20))
	case !ok:
		why += "; no verified email claim"
	case !is.domains[domain]:
		why += fmt.Sprintf("; email domain %q is not in allowed_email_domains", truncate(domain, 64))
	case !v.usable(local):
		why += fmt.Sprintf("; email local part %q is reserved or not a usable user name (must match %s)", truncate(local, 64), userNamePattern)
	default:
		id.Username = local
		return id
	}
	v.log.DebugContext(ctx, why+"; no username principal derived", "issuer", c.iss, "subject", c.sub)
	return id
}

// emailVerified reads email_verified (OIDC Core section 5.1): the boolean, or exactly the
// string "true" or "false" that some providers send; anything else is not verified.
func emailVerified(v any) bool {
	switch t := v.(type) {
	case bool:
		return t
	case string:
		return t == "true"
	}
	return false
}

// usable: a principal may be derived from a claim only when it is a well-formed user name and
// not reserved (root and the configured names come from the policy alone).
func (v *Verifier) usable(name string) bool {
	return ca.ValidUserPrincipal(name) && !v.reserved[name]
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
