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
// SessionStore.ConsoleLoginKeys, replaced daily) keeps the PKCE verifier and the nonce unreadable to whoever
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

// DefaultLoginKeyRotation is how long a login key seals before it is replaced: a day. A
// sign-in lasts at most loginTimeout, so the key before, kept one more period, opens every
// cookie sealed before a rotation that is still alive.
const DefaultLoginKeyRotation = 24 * time.Hour

// loginKeys are the store's shared login keys as AEADs: seal is the current key's, open tries
// it and then the previous key's. until is when the store is due to replace the current key:
// a replica asks again then (on its clock), and whenever a cookie opens under neither (another
// replica rotated first, or the store lost its keys).
type loginKeys struct {
	seal  cipher.AEAD
	prev  cipher.AEAD // nil before the first rotation
	until time.Time
}

// open opens a login cookie sealed under the current or the previous key.
func (k *loginKeys) open(cookieName, value string) (loginState, error) {
	l, err := openLogin(k.seal, cookieName, value)
	if errors.Is(err, errLoginCookie) && k.prev != nil {
		return openLogin(k.prev, cookieName, value)
	}
	return l, err
}

// loginKeys returns the shared login keys, cached until the store's rotation is due; refresh
// asks the store again (a cookie that opens under neither may have been sealed by a replica
// that rotated first, or found the store's keys replaced, e.g. after the store was rebuilt).
func (c *Console) loginKeys(ctx context.Context, refresh bool) (*loginKeys, error) {
	c.mu.Lock()
	k := c.loginSet
	c.mu.Unlock()
	if k != nil && !refresh && c.o.Now().Before(k.until) {
		return k, nil
	}
	cur, prev, until, err := c.sessions.store.ConsoleLoginKeys(ctx, c.o.LoginKeyRotation)
	if err != nil {
		return nil, err
	}
	if len(cur) < 32 || prev != nil && len(prev) < 32 {
		return nil, errors.New("ui: the store's console login key is shorter than 32 bytes")
	}
	k = &loginKeys{until: until}
	if k.seal, err = loginAEAD(cur); err != nil {
		return nil, err
	}
	if prev != nil {
		if k.prev, err = loginAEAD(prev); err != nil {
			return nil, err
		}
	}
	c.mu.Lock()
	c.loginSet = k
	c.mu.Unlock()
	return k, nil
}
