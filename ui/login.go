package ui

import (
	"context"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"time"
)

// loginState is a sign-in in progress (authorization code flow with PKCE, RFC 7636; OpenID
// Connect Core §3.1.2.1 state and nonce). It lives in the browser's login cookie, sealed, not
// in the store: an unauthenticated request stores nothing server-side (issue 17's leftover;
// the OAuth 2.0 Security BCP, RFC 9700 §4.7, binds state to the user agent, which a cookie
// set by the same response does). Sealing (AES-256-GCM under a key every replica shares,
// SessionStore.ConsoleLoginKey) keeps the PKCE verifier and the nonce unreadable to whoever
// holds the cookie and makes any altered field fail to open; the callback then requires the
// state in the URL to be the cookie's, so a callback meant for another browser (whose cookie
// this one does not have) is refused, and SpendConsoleLogin refuses the same cookie twice.
type loginState struct {
	State    string    `json:"s"`
	Verifier string    `json:"v"`
	Nonce    string    `json:"n"`
	ReturnTo string    `json:"r"`
	Expires  time.Time `json:"e"`
}

// errLoginCookie: the login cookie does not open under the key (altered, made by another
// deployment, or sealed under a key the store no longer has).
var errLoginCookie = errors.New("ui: login cookie does not open")

// loginAEAD derives the cookie's AES-256-GCM key from the shared secret (HKDF-SHA256, RFC
// 5869, with its own label: the secret seals nothing else).
func loginAEAD(secret []byte) (cipher.AEAD, error) {
	key, err := hkdf.Key(sha256.New, secret, nil, "sshca console login cookie v1", 32)
	if err != nil {
		return nil, err
	}
	return gcm(key)
}

// sealLogin is the login cookie's value: base64url(nonce ‖ AES-GCM(JSON)), the cookie's name as
// additional data (a sealed value moved into another cookie does not open). Under 3,100
// characters with the longest return path LocalPath keeps (2,048), within browsers' 4 KiB.
func sealLogin(aead cipher.AEAD, cookieName string, l loginState) (string, error) {
	plain, err := json.Marshal(l)
	if err != nil {
		return "", err
	}
	nonce := make([]byte, aead.NonceSize())
	_, _ = rand.Read(nonce) // crypto/rand.Read does not fail (Go 1.24+)
	return base64.RawURLEncoding.EncodeToString(aead.Seal(nonce, nonce, plain, []byte(cookieName))), nil
}

// openLogin reverses sealLogin; errLoginCookie when the value is not one it sealed.
func openLogin(aead cipher.AEAD, cookieName, value string) (loginState, error) {
	b, err := base64.RawURLEncoding.DecodeString(value)
	if err != nil || len(b) < aead.NonceSize() {
		return loginState{}, errLoginCookie
	}
	plain, err := aead.Open(nil, b[:aead.NonceSize()], b[aead.NonceSize():], []byte(cookieName))
	if err != nil {
		return loginState{}, errLoginCookie
	}
	var l loginState
	if json.Unmarshal(plain, &l) != nil || l.State == "" || l.Verifier == "" || l.Nonce == "" {
		return loginState{}, errLoginCookie
	}
	return l, nil
}

// spentName names a finished sign-in in the store: a one-way function of its state, so the
// store learns nothing that would match a cookie or a URL.
func spentName(state string) string {
	h := sha256.Sum256([]byte("sshca console finished sign-in\x00" + state))
	return hex.EncodeToString(h[:])
}

// loginKey returns the shared sealing key's AEAD, cached; refresh asks the store again (a
// cookie that does not open may have been sealed by a replica that found the store's key
// replaced, e.g. after the store was rebuilt).
func (c *Console) loginKey(ctx context.Context, refresh bool) (cipher.AEAD, error) {
	c.mu.Lock()
	a := c.loginSeal
	c.mu.Unlock()
	if a != nil && !refresh {
		return a, nil
	}
	secret, err := c.sessions.store.ConsoleLoginKey(ctx)
	if err != nil {
		return nil, err
	}
	if len(secret) < 32 {
		return nil, errors.New("ui: the store's console login key is shorter than 32 bytes")
	}
	if a, err = loginAEAD(secret); err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.loginSeal = a
	c.mu.Unlock()
	return a, nil
}
