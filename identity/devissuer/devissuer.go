// Package devissuer is a small OpenID Connect issuer for `sshca dev` and for tests: discovery,
// a JWKS, and minting of ID tokens with whatever claims the caller asks for. It performs no
// authentication at all, so it must only ever listen on loopback.
package devissuer

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// Options tune an Issuer.
type Options struct {
	Audience  string           // default "sshca"
	Algorithm string           // "ES256" (default) or "RS256"
	TTL       time.Duration    // token lifetime, default 10m
	Now       func() time.Time // default time.Now
	// Secret, when set, is required by everything that mints a token or approves a sign-in:
	// TokenHandler and ApproveHandler want it in the SecretHeader header, the sign-in form
	// (POST /authorize) and the device verification form (POST /device) in their dev_secret
	// field, which their pages (GET /authorize, GET /device) carry. Discovery, the JWKS and the OAuth token endpoint stay open: they hand out
	// nothing that a device code or a PKCE verifier does not already protect.
	Secret string
}

// SecretHeader is the request header that carries Options.Secret.
const SecretHeader = "X-Sshca-Dev-Secret"

// secretField is the sign-in form's field that carries Options.Secret.
const secretField = "dev_secret"

// hasSecret says whether a request presents the secret (always true without one).
func (i *Issuer) hasSecret(presented string) bool {
	if i.opt.Secret == "" {
		return true
	}
	return subtle.ConstantTimeCompare([]byte(presented), []byte(i.opt.Secret)) == 1
}

// requireSecret refuses a request without the secret in SecretHeader.
func (i *Issuer) requireSecret(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !i.hasSecret(r.Header.Get(SecretHeader)) {
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "missing or wrong " + SecretHeader +
				" header: send the secret that sshca dev wrote to its state directory (its banner names the file; sshca dev token reads it)"})
			return
		}
		h.ServeHTTP(w, r)
	})
}

// Issuer mints ID tokens and publishes the key that verifies them.
type Issuer struct {
	url string
	opt Options

	mu  sync.Mutex
	key crypto.Signer
	kid string

	devices devices
}

// New returns an issuer whose identifier is url (no trailing slash).
func New(url string, o Options) (*Issuer, error) {
	if o.Audience == "" {
		o.Audience = "sshca"
	}
	if o.Algorithm == "" {
		o.Algorithm = string(jose.ES256)
	}
	if o.Algorithm != string(jose.ES256) && o.Algorithm != string(jose.RS256) {
		return nil, fmt.Errorf("devissuer: algorithm %q: use ES256 or RS256", o.Algorithm)
	}
	if o.TTL == 0 {
		o.TTL = 10 * time.Minute
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	iss := &Issuer{url: strings.TrimRight(url, "/"), opt: o}
	return iss, iss.Rotate()
}

// URL is the issuer identifier.
func (i *Issuer) URL() string { return i.url }

// Rotate replaces the signing key. The JWKS then publishes only the new key, so tokens signed
// by the old one stop verifying.
func (i *Issuer) Rotate() error {
	var key crypto.Signer
	var err error
	if i.opt.Algorithm == string(jose.RS256) {
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	} else {
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	if err != nil {
		return fmt.Errorf("devissuer: generate key: %w", err)
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	i.mu.Lock()
	i.key, i.kid = key, hex.EncodeToString(b[:])
	i.mu.Unlock()
	return nil
}

// Mint returns a signed ID token. Defaults: iss, aud, iat, nbf, exp (now + TTL) and a random
// jti; every default can be overridden by claims. "sub" is required.
func (i *Issuer) Mint(claims map[string]any) (string, error) {
	if s, _ := claims["sub"].(string); s == "" {
		return "", errors.New("devissuer: claim \"sub\" is required (a non-empty string)")
	}
	now := i.opt.Now()
	var jti [12]byte
	_, _ = rand.Read(jti[:])
	all := map[string]any{
		"iss": i.url, "aud": i.opt.Audience,
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(i.opt.TTL).Unix(),
		"jti": hex.EncodeToString(jti[:]),
	}
	for k, v := range claims {
		all[k] = v
	}
	payload, err := json.Marshal(all)
	if err != nil {
		return "", fmt.Errorf("devissuer: claims: %w", err)
	}
	i.mu.Lock()
	key, kid := i.key, i.kid
	i.mu.Unlock()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.SignatureAlgorithm(i.opt.Algorithm), Key: jose.JSONWebKey{Key: key, KeyID: kid}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return "", fmt.Errorf("devissuer: signer: %w", err)
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		return "", fmt.Errorf("devissuer: sign: %w", err)
	}
	return jws.CompactSerialize()
}

// Handler serves discovery (/.well-known/openid-configuration) and the key set (/jwks),
// relative to the issuer's path: mount it with http.StripPrefix.
func (i *Issuer) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{
			"issuer":                                i.url,
			"jwks_uri":                              i.url + "/jwks",
			"authorization_endpoint":                i.url + "/authorize",
			"token_endpoint":                        i.url + "/token",
			"device_authorization_endpoint":         i.url + "/device_authorization",
			"grant_types_supported":                 []string{"urn:ietf:params:oauth:grant-type:device_code", "authorization_code"},
			"code_challenge_methods_supported":      []string{"S256"},
			"response_types_supported":              []string{"code", "id_token"},
			"subject_types_supported":               []string{"public"},
			"id_token_signing_alg_values_supported": []string{i.opt.Algorithm},
		})
	})
	mux.HandleFunc("GET /jwks", func(w http.ResponseWriter, _ *http.Request) {
		i.mu.Lock()
		key, kid := i.key, i.kid
		i.mu.Unlock()
		writeJSON(w, http.StatusOK, jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{
			Key: key.Public(), KeyID: kid, Algorithm: i.opt.Algorithm, Use: "sig"}}})
	})
	mux.HandleFunc("POST /device_authorization", i.deviceAuthorization)
	mux.HandleFunc("POST /token", i.token)
	mux.HandleFunc("GET /device", i.devicePageHandler)
	mux.HandleFunc("POST /device", i.devicePageHandler)
	mux.HandleFunc("GET /authorize", i.authorize)
	mux.HandleFunc("POST /authorize", i.authorize)
	return mux
}

// TokenHandler answers POST requests whose body is the claims to mint with
// {"id_token": "..."}. With Options.Secret, only requests that carry it in SecretHeader.
func (i *Issuer) TokenHandler() http.Handler {
	return i.requireSecret(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 64<<10+1))
		if err != nil || len(body) > 64<<10 {
			writeJSON(w, http.StatusRequestEntityTooLarge, map[string]string{"error": "claims over 64 KiB"})
			return
		}
		var claims map[string]any
		dec := json.NewDecoder(strings.NewReader(string(body)))
		dec.UseNumber()
		if err := dec.Decode(&claims); err != nil || claims == nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "body must be a JSON object of claims, e.g. {\"sub\":\"alice\"}"})
			return
		}
		tok, err := i.Mint(claims)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": strings.TrimPrefix(err.Error(), "devissuer: ")})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"id_token": tok})
	}))
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
