package ui

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
)

// CSP is the Content-Security-Policy of every console answer (issue 17 §4): no script at all,
// the one stylesheet and images from the console's own origin, forms posted only to it, never
// framed, no <base>.
const CSP = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// setSecurityHeaders sets the headers every console answer carries. Referrer-Policy is
// no-referrer because the callback URL carries the authorization code; no-store because the
// pages show who holds root.
func setSecurityHeaders(h http.Header) {
	h.Set("Content-Security-Policy", CSP)
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Cache-Control", "no-store")
}

// randomToken is 32 random bytes, base64url without padding (43 characters): session IDs,
// CSRF tokens, OAuth state, nonce.
func randomToken() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic("ui: crypto/rand: " + err.Error()) // never fails on Linux ≥ 3.17 (getrandom)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// sameToken compares a presented token with the session's in constant time; an empty one
// never matches.
func sameToken(presented, want string) bool {
	return presented != "" && want != "" && subtle.ConstantTimeCompare([]byte(presented), []byte(want)) == 1
}

// LocalPath returns p when it is a path of the console itself ("/ui/..."), with no scheme, no
// host, no "//" or "\" (which browsers read as a host), no "#" and no control character, and
// "/ui/" otherwise: a return path after sign-in never leads off the console (an open redirect would
// carry a fresh session's user to a look-alike page).
func LocalPath(p string) string {
	const home = "/ui/"
	if p == "" || len(p) > 2048 || !strings.HasPrefix(p, home) || strings.ContainsAny(p, "\\#") || strings.Contains(p, "//") {
		return home
	}
	for _, c := range p {
		if c < 0x20 || c == 0x7f {
			return home
		}
	}
	u, err := url.Parse(p)
	if err != nil || u.Scheme != "" || u.Host != "" || u.User != nil || u.Opaque != "" || !strings.HasPrefix(u.Path, home) {
		return home
	}
	// A "/ui/../x" path would leave the console once cleaned by the mux. A fragment is refused
	// whole: http.Redirect cleans all before the first "?", so "/ui/x#/../../v1" led to /v1,
	// and the console never makes a return path with one (a request URI has none).
	for _, seg := range strings.Split(u.Path, "/") {
		if seg == ".." || seg == "." {
			return home
		}
	}
	if unescaped, err := url.PathUnescape(u.RawPath); err != nil || strings.Contains(unescaped, "..") {
		return home
	}
	return p
}

// Cookie describes the session cookie. On HTTPS it is __Host-sshca: Secure, HttpOnly,
// SameSite=Lax (the identity provider's redirect back is a top-level GET from another site
// and must carry the login state), Path=/ and no Domain, which the __Host- prefix enforces
// in the browser. On plain HTTP (only `sshca dev` on loopback) a browser drops a Secure
// cookie and refuses the __Host- prefix without it, so the cookie is sshca-dev: the same
// but not Secure; it is set only for a loopback public URL (NewConsole refuses any other
// http:// URL), so it never crosses a network.
//
// Login is the name of the cookie of a sign-in in progress (loginState), with the same
// attributes: __Host-sshca-login, or sshca-dev-login on plain HTTP. It is set by /ui/login and
// cleared by the callback.
type Cookie struct {
	Name   string
	Login  string
	Secure bool
}

// CookieFor is the session cookie for the console's public URL.
func CookieFor(public *url.URL) Cookie {
	if public.Scheme == "https" {
		return Cookie{Name: "__Host-sshca", Login: "__Host-sshca-login", Secure: true}
	}
	return Cookie{Name: "sshca-dev", Login: "sshca-dev-login", Secure: false}
}

func (c Cookie) set(w http.ResponseWriter, value string, maxAge int) {
	c.setNamed(w, c.Name, value, maxAge)
}

func (c Cookie) clear(w http.ResponseWriter) { c.setNamed(w, c.Name, "", -1) }

func (c Cookie) setLogin(w http.ResponseWriter, value string, maxAge int) {
	c.setNamed(w, c.Login, value, maxAge)
}

func (c Cookie) clearLogin(w http.ResponseWriter) { c.setNamed(w, c.Login, "", -1) }

func (c Cookie) setNamed(w http.ResponseWriter, name, value string, maxAge int) {
	http.SetCookie(w, &http.Cookie{Name: name, Value: value, Path: "/", MaxAge: maxAge,
		Secure: c.Secure, HttpOnly: true, SameSite: http.SameSiteLaxMode})
}

// loopbackHost reports whether the URL's host is a loopback name or address.
func loopbackHost(u *url.URL) bool {
	h := u.Hostname()
	if h == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(h)
	return err == nil && a.IsLoopback()
}
