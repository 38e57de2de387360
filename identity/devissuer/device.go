package devissuer

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"strings"
	"sync"
	"time"
)

// The device authorization flow (RFC 8628), for `sshca login` against `sshca dev`. Nobody
// signs in: a pending request is approved (with the claims to put in the ID token) or denied
// through Approve/Deny, which the verification page (GET /device, the URL `sshca login`
// prints) offers a developer in a browser, and `sshca dev` exposes at POST
// /dev/device/approve for tests and for a developer at a terminal.

type deviceAuth struct {
	userCode string
	expires  time.Time
	state    string // pending, approved, denied
	claims   map[string]any
}

type devices struct {
	mu     sync.Mutex
	byCode map[string]*deviceAuth // by device code
	codes  map[string]*authCode   // authorization codes
}

// DeviceCodeTTL is how long a device code waits for approval.
var DeviceCodeTTL = 5 * time.Minute

// MaxPendingDevices bounds the device authorizations waiting at once (RFC 8628 §3.1). The
// endpoint wants only the public client ID, so anyone who reaches it can start one: without a
// bound, and with expired ones dropped only when polled, a loop of requests grew the issuer's
// memory without end. Beyond it the endpoint answers 503 until some expire (DeviceCodeTTL).
const MaxPendingDevices = 1000

// pruneLocked drops the device authorizations and authorization codes that have expired.
func (d *devices) pruneLocked(now time.Time) {
	for c, a := range d.byCode {
		if now.After(a.expires) {
			delete(d.byCode, c)
		}
	}
	for c, a := range d.codes {
		if now.After(a.expires) {
			delete(d.codes, c)
		}
	}
}

func randomCode(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func userCode() string {
	const alphabet = "BCDFGHJKLMNPQRSTVWXZ" // no vowels: no words
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b[:4]) + "-" + string(b[4:])
}

func (i *Issuer) deviceAuthorization(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil || r.PostForm.Get("client_id") == "" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_request", "error_description": "client_id is required"})
		return
	}
	if r.PostForm.Get("client_id") != i.opt.Audience {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "invalid_client"})
		return
	}
	d := &deviceAuth{userCode: userCode(), expires: i.opt.Now().Add(DeviceCodeTTL), state: "pending"}
	code := randomCode(16)
	i.devices.mu.Lock()
	if i.devices.byCode == nil {
		i.devices.byCode = map[string]*deviceAuth{}
	}
	i.devices.pruneLocked(i.opt.Now())
	if len(i.devices.byCode) >= MaxPendingDevices {
		i.devices.mu.Unlock()
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "temporarily_unavailable",
			"error_description": fmt.Sprintf("%d device authorizations are pending (the most this issuer keeps, each for %s); try again later", MaxPendingDevices, DeviceCodeTTL)})
		return
	}
	i.devices.byCode[code] = d
	i.devices.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{
		"device_code":               code,
		"user_code":                 d.userCode,
		"verification_uri":          i.url + "/device",
		"verification_uri_complete": i.url + "/device?user_code=" + d.userCode,
		"expires_in":                int(DeviceCodeTTL / time.Second),
		"interval":                  1,
	})
}

func (i *Issuer) token(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_request"})
		return
	}
	if r.PostForm.Get("grant_type") == "authorization_code" {
		i.exchangeCode(w, r)
		return
	}
	if r.PostForm.Get("grant_type") != "urn:ietf:params:oauth:grant-type:device_code" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "unsupported_grant_type"})
		return
	}
	i.devices.mu.Lock()
	d := i.devices.byCode[r.PostForm.Get("device_code")]
	var state string
	var claims map[string]any
	if d != nil {
		state, claims = d.state, d.claims
		if i.opt.Now().After(d.expires) {
			state = "expired"
		}
		if state == "approved" || state == "expired" {
			delete(i.devices.byCode, r.PostForm.Get("device_code")) // a device code is good once
		}
	}
	i.devices.mu.Unlock()
	switch {
	case d == nil:
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_grant"})
	case state == "expired":
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "expired_token"})
	case state == "denied":
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "access_denied"})
	case state == "pending":
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "authorization_pending"})
	default:
		tok, err := i.Mint(claims)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_grant", "error_description": err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"access_token": randomCode(16), "token_type": "Bearer", "expires_in": 600, "id_token": tok})
	}
}

// Approve approves the pending request with the user code; the ID token will carry claims.
func (i *Issuer) Approve(userCode string, claims map[string]any) bool {
	return i.decide(userCode, "approved", claims)
}

// Deny denies the pending request with the user code.
func (i *Issuer) Deny(userCode string) bool { return i.decide(userCode, "denied", nil) }

func (i *Issuer) decide(code, state string, claims map[string]any) bool {
	i.devices.mu.Lock()
	defer i.devices.mu.Unlock()
	for _, d := range i.devices.byCode {
		if d.userCode == strings.ToUpper(strings.TrimSpace(code)) && d.state == "pending" {
			d.state, d.claims = state, claims
			return true
		}
	}
	return false
}

// ApproveHandler answers POST {"user_code": "...", "claims": {...}} (approve) or
// {"user_code": "...", "deny": true}. With Options.Secret, only requests that carry it in
// SecretHeader.
func (i *Issuer) ApproveHandler() http.Handler {
	return i.requireSecret(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			UserCode string         `json:"user_code"`
			Claims   map[string]any `json:"claims"`
			Deny     bool           `json:"deny"`
		}
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&req); err != nil || req.UserCode == "" {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": `body: {"user_code": "...", "claims": {"sub": "..."}} or {"user_code": "...", "deny": true}`})
			return
		}
		if !req.Deny {
			if s, _ := req.Claims["sub"].(string); s == "" {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": `claims.sub is required`})
				return
			}
		}
		ok := false
		if req.Deny {
			ok = i.Deny(req.UserCode)
		} else {
			ok = i.Approve(req.UserCode, req.Claims)
		}
		if !ok {
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "no pending sign-in with that user code"})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "done"})
	}))
}

var devicePage = template.Must(template.New("device").Parse(`<!doctype html>
<title>sshca dev: approve a sign-in</title>
<h1>sshca development sign-in</h1>
{{if .Done}}<p>{{.Done}}</p>
{{else}}<p>Development only: the terminal that shows this code becomes whoever you type.</p>
{{with .Problem}}<p><strong>{{.}}</strong></p>
{{end}}<form method="post" action="device">
{{with .Secret}}<input type="hidden" name="dev_secret" value="{{.}}">
{{end}}<p><label>code shown by sshca login <input name="user_code" value="{{.UserCode}}" autocomplete="off"></label></p>
<p><label>sub <input name="sub" value="alice"></label></p>
<p><label>username <input name="username" value="alice"></label></p>
<p><label>email <input name="email" value="alice@example.com"></label></p>
<p><label>groups (comma separated) <input name="groups" value=""></label></p>
<p><button name="action" value="approve">Approve</button> <button name="action" value="deny">Deny</button></p>
</form>
{{end}}`))

// devicePageHandler serves the verification URL: GET shows the form (with the user code of
// verification_uri_complete filled in), POST approves or denies the pending sign-in with the
// claims typed. As on the sign-in page, the form carries the secret, so only a reader of the
// page can post it; the page is never cached or framed.
func (i *Issuer) devicePageHandler(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Frame-Options", "DENY")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; form-action 'self'; frame-ancestors 'none'")
	page := map[string]any{"Secret": i.opt.Secret, "UserCode": r.URL.Query().Get("user_code")}
	if r.Method == http.MethodGet {
		_ = devicePage.Execute(w, page)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return
	}
	f := r.PostForm
	page["UserCode"] = f.Get("user_code")
	if !i.hasSecret(f.Get(secretField)) {
		http.Error(w, "the form lacks the dev secret: open the page sshca login printed and submit it from there", http.StatusUnauthorized)
		return
	}
	code := strings.TrimSpace(f.Get("user_code"))
	if f.Get("action") == "deny" {
		if !i.Deny(code) {
			w.WriteHeader(http.StatusNotFound)
			page["Problem"] = "No pending sign-in has the code " + code + "."
			_ = devicePage.Execute(w, page)
			return
		}
		page["Done"] = "Sign-in denied; sshca login reports it."
		_ = devicePage.Execute(w, page)
		return
	}
	sub := strings.TrimSpace(f.Get("sub"))
	if sub == "" {
		w.WriteHeader(http.StatusBadRequest)
		page["Problem"] = "sub is required."
		_ = devicePage.Execute(w, page)
		return
	}
	claims := map[string]any{"sub": sub, "preferred_username": sub}
	if u := strings.TrimSpace(f.Get("username")); u != "" {
		claims["preferred_username"] = u
	}
	if e := strings.TrimSpace(f.Get("email")); e != "" {
		claims["email"], claims["email_verified"] = e, true
	}
	if g := strings.TrimSpace(f.Get("groups")); g != "" {
		var groups []string
		for _, x := range strings.Split(g, ",") {
			if x = strings.TrimSpace(x); x != "" {
				groups = append(groups, x)
			}
		}
		claims["groups"] = groups
	}
	if !i.Approve(code, claims) {
		w.WriteHeader(http.StatusNotFound)
		page["Problem"] = "No pending sign-in has the code " + code + " (expired, already decided, or mistyped)."
		_ = devicePage.Execute(w, page)
		return
	}
	page["Done"] = "Signed in as " + sub + ": return to your terminal."
	_ = devicePage.Execute(w, page)
}
