package devissuer

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"html/template"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// The authorization code flow with PKCE (RFC 7636) and a loopback redirect, for
// `sshca login --browser`. The development "sign-in page" asks for the claims to put in the ID
// token; nothing is checked. Redirects go only to loopback addresses.

type authCode struct {
	claims    map[string]any
	challenge string
	redirect  string
	clientID  string
	expires   time.Time
}

var signInPage = template.Must(template.New("signin").Parse(`<!doctype html>
<title>sshca dev sign-in</title>
<h1>sshca development sign-in</h1>
<p>Development only: you become whoever you type.</p>
<form method="post" action="authorize">
{{range $k, $v := .Params}}<input type="hidden" name="{{$k}}" value="{{$v}}">
{{end}}{{with .Secret}}<input type="hidden" name="dev_secret" value="{{.}}">
{{end}}<label>sub <input name="sub" value="alice"></label>
<label>email <input name="email" value="alice@example.com"></label>
<label>groups (comma separated) <input name="groups" value=""></label>
<label>sign-in methods, amr (comma separated) <input name="amr" value="pwd,hwk"></label>
<button>Sign in</button>
</form>`))

func loopbackRedirect(raw string) bool {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "http" {
		return false
	}
	h := u.Hostname()
	return h == "127.0.0.1" || h == "::1" || h == "localhost"
}

func (i *Issuer) authorize(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return
	}
	q := r.Form
	if q.Get("response_type") != "code" || q.Get("client_id") != i.opt.Audience || !loopbackRedirect(q.Get("redirect_uri")) ||
		q.Get("code_challenge_method") != "S256" || q.Get("code_challenge") == "" {
		http.Error(w, "need response_type=code, this client_id, a loopback redirect_uri and a PKCE S256 code_challenge", http.StatusBadRequest)
		return
	}
	if r.Method == http.MethodGet {
		params := map[string]string{}
		for _, k := range []string{"response_type", "client_id", "redirect_uri", "code_challenge", "code_challenge_method", "state", "nonce", "scope"} {
			params[k] = q.Get(k)
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		// The page carries the secret, as a form carries a CSRF token: only a reader of this
		// answer can post the form, and a page of another origin cannot read it.
		w.Header().Set("Cache-Control", "no-store")
		_ = signInPage.Execute(w, map[string]any{"Params": params, "Secret": i.opt.Secret})
		return
	}
	if !i.hasSecret(r.PostForm.Get(secretField)) {
		http.Error(w, "the sign-in form lacks the dev secret: open the sign-in page again and submit it from there", http.StatusUnauthorized)
		return
	}
	sub := strings.TrimSpace(q.Get("sub"))
	if sub == "" {
		http.Error(w, "sub is required", http.StatusBadRequest)
		return
	}
	claims := map[string]any{"sub": sub, "preferred_username": sub}
	if e := strings.TrimSpace(q.Get("email")); e != "" {
		claims["email"], claims["email_verified"] = e, true
	}
	if g := strings.TrimSpace(q.Get("groups")); g != "" {
		claims["groups"] = strings.Split(g, ",")
	}
	// auth_time is now: this form is the sign-in. amr says which factors were "used", so the
	// policy's second-factor rules (approving, privileged principals) can be met or not.
	claims["auth_time"] = i.opt.Now().Unix()
	if a := strings.TrimSpace(q.Get("amr")); a != "" {
		claims["amr"] = strings.Split(a, ",")
	}
	if n := q.Get("nonce"); n != "" {
		claims["nonce"] = n
	}
	code := randomCode(16)
	i.devices.mu.Lock()
	if i.devices.codes == nil {
		i.devices.codes = map[string]*authCode{}
	}
	i.devices.codes[code] = &authCode{claims: claims, challenge: q.Get("code_challenge"), redirect: q.Get("redirect_uri"),
		clientID: q.Get("client_id"), expires: i.opt.Now().Add(time.Minute)}
	i.devices.mu.Unlock()
	to, _ := url.Parse(q.Get("redirect_uri"))
	v := to.Query()
	v.Set("code", code)
	v.Set("state", q.Get("state"))
	to.RawQuery = v.Encode()
	http.Redirect(w, r, to.String(), http.StatusFound)
}

// exchangeCode answers the authorization_code grant: the code is good once, and only with
// the verifier whose S256 hash the authorization request carried.
func (i *Issuer) exchangeCode(w http.ResponseWriter, r *http.Request) {
	f := r.PostForm
	i.devices.mu.Lock()
	c := i.devices.codes[f.Get("code")]
	delete(i.devices.codes, f.Get("code"))
	i.devices.mu.Unlock()
	sum := sha256.Sum256([]byte(f.Get("code_verifier")))
	switch {
	case c == nil || i.opt.Now().After(c.expires):
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_grant", "error_description": "unknown or expired code"})
	case base64.RawURLEncoding.EncodeToString(sum[:]) != c.challenge:
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_grant", "error_description": "code_verifier does not match the challenge"})
	case f.Get("redirect_uri") != c.redirect || f.Get("client_id") != c.clientID:
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_grant", "error_description": "redirect_uri or client_id differs"})
	default:
		tok, err := i.Mint(c.claims)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_grant"})
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"access_token": randomCode(16), "token_type": "Bearer", "expires_in": 600, "id_token": tok})
	}
}
