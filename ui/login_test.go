package ui

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
)

// noRedirect is a client on c's jar that stops at the first redirect.
func noRedirect(c *http.Client) *http.Client {
	return &http.Client{Jar: c.Jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// startSignIn runs a sign-in in browser c up to the issuer's redirect back and returns the
// callback URL the issuer sent the browser to (not yet followed), and c's login cookie.
func (r *rig) startSignIn(c *http.Client, sub string) (callback string, loginCookie *http.Cookie) {
	r.t.Helper()
	resp, err := c.Get(r.srv.URL + "/ui/login?return=/ui/")
	if err != nil {
		r.t.Fatal(err)
	}
	page := body(r.t, resp)
	form := url.Values{}
	for _, m := range regexp.MustCompile(`name="([a-z_]+)" value="([^"]*)"`).FindAllStringSubmatch(page, -1) {
		form.Set(m[1], htmlUnescape(m[2]))
	}
	form.Set("sub", sub)
	form.Set("email", sub+"@example.com")
	resp, err = noRedirect(c).PostForm(resp.Request.URL.String(), form)
	if err != nil {
		r.t.Fatal(err)
	}
	body(r.t, resp)
	callback = resp.Header.Get("Location")
	if !strings.Contains(callback, "/ui/callback?") {
		r.t.Fatalf("the issuer sent the browser to %q, want the callback", callback)
	}
	u, _ := url.Parse(r.srv.URL)
	for _, ck := range c.Jar.Cookies(u) {
		if ck.Name == r.console.cookie.Login {
			loginCookie = ck
		}
	}
	if loginCookie == nil {
		r.t.Fatal("no login cookie after /ui/login")
	}
	return callback, loginCookie
}

// callWith presents the callback URL with exactly the given cookies (none: nil).
func (r *rig) callWith(callback string, cookies ...*http.Cookie) (int, string, []*http.Cookie) {
	r.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, callback, nil)
	for _, ck := range cookies {
		req.AddCookie(&http.Cookie{Name: ck.Name, Value: ck.Value})
	}
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		r.t.Fatal(err)
	}
	return resp.StatusCode, body(r.t, resp), resp.Cookies()
}

// sessionCount is the number of sessions in the rig's in-memory store.
func (r *rig) sessionCount() int {
	m := r.console.sessions.store.(*memorySessions)
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.m)
}

// TestSignInStartsStoreNothing: 300 sign-ins started (and never finished) from fresh browsers
// leave Redis (a real redis-server) as it was after the first: the console's shared login key
// is the only key an unauthenticated request may create, once; the sign-in's state is in the
// browser. A finished sign-in then adds its session and the mark of its finished sign-in.
func TestSignInStartsStoreNothing(t *testing.T) {
	srv := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	r := newRigWith(t, nil, store.NewRedis(rdb, store.RedisOptions{}))
	keys := func() []string {
		k, err := rdb.Keys(ctx, "*").Result()
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(k)
		return k
	}
	start := func() {
		resp, err := noRedirect(r.browser()).Get(r.srv.URL + "/ui/login?return=/ui/requests/x")
		if err != nil {
			t.Fatal(err)
		}
		body(t, resp)
		if resp.StatusCode != http.StatusSeeOther || len(resp.Cookies()) != 1 || resp.Cookies()[0].Name != "sshca-dev-login" {
			t.Fatalf("/ui/login: %d, cookies %v", resp.StatusCode, resp.Cookies())
		}
	}
	if k := keys(); len(k) != 0 {
		t.Fatalf("keys before any sign-in: %v", k)
	}
	start()
	if k := keys(); !slices.Equal(k, []string{"sshca:console:login-keys"}) {
		t.Fatalf("after one sign-in started: %v, want only the console's login key", k)
	}
	for range 300 {
		start()
	}
	if k := keys(); !slices.Equal(k, []string{"sshca:console:login-keys"}) {
		t.Fatalf("after 301 sign-ins started: %d keys, want only the console's login key: %.5v", len(k), k)
	}
	// The second replica signs in too (same key), and only now are keys written.
	r.serving.Store(1)
	r.signIn(r.browser(), "bob", "/ui/")
	var sessions, finished int
	for _, k := range keys() {
		switch {
		case strings.HasPrefix(k, "sshca:console:session:"):
			sessions++
		case strings.HasPrefix(k, "sshca:console:login:"):
			finished++
		}
	}
	if sessions != 1 || finished != 1 {
		t.Fatalf("after one sign-in finished: %d sessions, %d finished sign-ins; want 1 and 1: %v", sessions, finished, keys())
	}
}

// TestCallbackRefusesLoginCookies: the callback refuses, with a 400 page that says why and
// clears the login cookie, and stores no session: no login cookie; another browser's (the
// issuer's answer to one browser presented with another's cookie); an altered one; one
// whose ten minutes have passed; one sealed by another deployment. The same callback with its
// own browser's cookie then signs in, so each refusal is the cookie's doing.
func TestCallbackRefusesLoginCookies(t *testing.T) {
	r := newRig(t, nil)
	a, b := r.browser(), r.browser()
	cbA, ckA := r.startSignIn(a, "alice")
	_, ckB := r.startSignIn(b, "bob")

	tampered := *ckA
	raw, _ := base64.RawURLEncoding.DecodeString(ckA.Value)
	raw[len(raw)/2] ^= 1
	tampered.Value = base64.RawURLEncoding.EncodeToString(raw)

	other := newRig(t, nil) // another deployment: its own login key
	_, ckOther := other.startSignIn(other.browser(), "alice")

	for _, tc := range []struct {
		name    string
		cookies []*http.Cookie
		want    string
	}{
		{"no cookie", nil, "login cookie is missing"},
		{"another browser's", []*http.Cookie{ckB}, "sign-in (state)"},
		{"tampered", []*http.Cookie{&tampered}, "not one this console sealed"},
		{"another deployment's", []*http.Cookie{ckOther}, "not one this console sealed"},
		{"not base64", []*http.Cookie{{Name: ckA.Name, Value: "%%%"}}, "not one this console sealed"},
	} {
		code, page, set := r.callWith(cbA, tc.cookies...)
		if code != http.StatusBadRequest || !strings.Contains(page, tc.want) || !strings.Contains(page, "start again") {
			t.Errorf("%s: %d, want 400 saying %q:\n%s", tc.name, code, tc.want, page)
		}
		if len(set) != 1 || set[0].Name != ckA.Name || set[0].MaxAge >= 0 {
			t.Errorf("%s: the refusal does not clear the login cookie: %v", tc.name, set)
		}
	}
	if n := r.sessionCount(); n != 0 {
		t.Fatalf("%d sessions after refused callbacks", n)
	}

	// Expired: the same browser's own cookie, eleven minutes later.
	c := r.browser()
	cbC, ckC := r.startSignIn(c, "carol")
	r.mu.Lock()
	r.now = r.now.Add(loginTimeout + time.Second)
	r.mu.Unlock()
	if code, page, _ := r.callWith(cbC, ckC); code != http.StatusBadRequest || !strings.Contains(page, "longer than 10 minutes") {
		t.Errorf("expired: %d\n%s", code, page)
	}
	r.mu.Lock()
	r.now = r.now.Add(-loginTimeout - time.Second)
	r.mu.Unlock()

	code, page, set := r.callWith(cbA, ckA)
	if code != http.StatusSeeOther || r.sessionCount() != 1 {
		t.Fatalf("the callback with its own browser's cookie: %d, %d sessions\n%s", code, r.sessionCount(), page)
	}
	names := map[string]int{}
	for _, ck := range set {
		names[ck.Name] = ck.MaxAge
	}
	if names["sshca-dev"] <= 0 || names["sshca-dev-login"] >= 0 {
		t.Fatalf("after sign-in the browser should get a session cookie and lose the login cookie: %v", set)
	}
}

// TestLoginCookieSealed: the login cookie shows none of the sign-in's secrets (PKCE verifier,
// nonce) nor its state or return path, in any encoding a reader would try.
func TestLoginCookieSealed(t *testing.T) {
	r := newRig(t, nil)
	resp, err := noRedirect(r.browser()).Get(r.srv.URL + "/ui/login?return=/ui/requests/req_SECRETPATHXYZ")
	if err != nil {
		t.Fatal(err)
	}
	body(t, resp)
	loc, _ := url.Parse(resp.Header.Get("Location"))
	state, nonce := loc.Query().Get("state"), loc.Query().Get("nonce")
	if state == "" || nonce == "" || len(resp.Cookies()) != 1 {
		t.Fatalf("authorization request %s, cookies %v", loc, resp.Cookies())
	}
	v := resp.Cookies()[0].Value
	dec, _ := base64.RawURLEncoding.DecodeString(v)
	for _, secret := range []string{state, nonce, "req_SECRETPATHXYZ"} {
		if strings.Contains(v, secret) || bytes.Contains(dec, []byte(secret)) {
			t.Errorf("the login cookie carries %q readably", secret)
		}
	}
	l, err := openLogin(r.console.loginSet.seal, r.console.cookie.Login, v)
	if err != nil || l.State != state || l.Nonce != nonce || l.ReturnTo != "/ui/requests/req_SECRETPATHXYZ" {
		t.Fatalf("the cookie does not open to this sign-in: %+v %v", l, err)
	}
	// Sealed for the login cookie's name: moved under another name it does not open.
	if _, err := openLogin(r.console.loginSet.seal, r.console.cookie.Name, v); err == nil {
		t.Fatal("the login cookie's value opens under another cookie name")
	}
}

// TestCallbackReplayRefused: a callback presented twice with the same login cookie makes one
// session. The dev issuer refuses a code's second use; the lenient issuer here answers it
// again (some do, within a short window), so the console's own mark of finished sign-ins is
// what refuses the replay.
func TestCallbackReplayRefused(t *testing.T) {
	for _, lenient := range []bool{false, true} {
		r := newRig(t, nil)
		if lenient {
			r.idp = reusableCodes(r.idp)
		}
		c := r.browser()
		cb, ck := r.startSignIn(c, "bob")
		if code, page, _ := r.callWith(cb, ck); code != http.StatusSeeOther {
			t.Fatalf("lenient=%v: first callback: %d\n%s", lenient, code, page)
		}
		want := "codes are good for one use"
		if lenient {
			want = "already used"
		}
		code, page, _ := r.callWith(cb, ck)
		if code != http.StatusBadRequest || !strings.Contains(page, want) {
			t.Errorf("lenient=%v: replayed callback: %d, want 400 saying %q\n%s", lenient, code, want, page)
		}
		if n := r.sessionCount(); n != 1 {
			t.Errorf("lenient=%v: %d sessions after a replayed callback, want 1", lenient, n)
		}
	}
}

// reusableCodes wraps an issuer so that a code exchanged once is answered again with the same
// tokens.
func reusableCodes(h http.Handler) http.Handler {
	var mu sync.Mutex
	answers := map[string][]byte{}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || !strings.HasSuffix(r.URL.Path, "/token") {
			h.ServeHTTP(w, r)
			return
		}
		b, _ := io.ReadAll(r.Body)
		f, _ := url.ParseQuery(string(b))
		code := f.Get("code")
		mu.Lock()
		prev, ok := answers[code]
		mu.Unlock()
		if ok {
			w.Header().Set("Content-Type", "application/json")
			w.Write(prev)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(b))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		if rec.Code == http.StatusOK {
			mu.Lock()
			answers[code] = rec.Body.Bytes()
			mu.Unlock()
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		w.Write(rec.Body.Bytes())
	})
}

// TestLoginKeyReplaced: the store's login key is replaced (a store that lost its state and was
// rebuilt) while replica 0 still holds the old one: a sign-in that replica 1 starts under the
// new key finishes on replica 0, which reads the key again when a cookie does not open under
// the one it holds; a cookie sealed under the old key is refused.
func TestLoginKeyReplaced(t *testing.T) {
	srv := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	r := newRigWith(t, nil, store.NewRedis(rdb, store.RedisOptions{}))
	r.serving.Store(0)
	oldCallback, oldCookie := r.startSignIn(r.browser(), "alice") // replica 0 reads the key
	if err := rdb.Del(ctx, "sshca:console:login-keys").Err(); err != nil {
		t.Fatal(err)
	}
	r.serving.Store(1) // replica 1 has not read a key yet: it makes a new one
	c := r.browser()
	callback, _ := r.startSignIn(c, "bob")
	r.serving.Store(0)
	resp, err := c.Get(callback)
	if err != nil {
		t.Fatal(err)
	}
	if p := body(t, resp); resp.Request.URL.Path != "/ui/" || !strings.Contains(p, "Sign out") {
		t.Fatalf("a sign-in under the new key, finished on the replica that held the old one: %s\n%s", resp.Request.URL, p)
	}
	if code, page, _ := r.callWith(oldCallback, oldCookie); code != http.StatusBadRequest || !strings.Contains(page, "not one this console sealed") {
		t.Fatalf("a cookie sealed under the replaced key: %d\n%s", code, page)
	}
}

// TestCallbackErrorNeedsState: an error answer shows the identity provider's error code only
// when its state is this browser's sign-in (RFC 6749 §4.1.2.1 sends state with errors too).
// Before, the error was shown before state was checked, so a link from any site put whatever
// text it liked on the console's own error page of a browser with a sign-in in progress.
func TestCallbackErrorNeedsState(t *testing.T) {
	r := newRig(t, nil)
	a := r.browser()
	cb, ck := r.startSignIn(a, "alice")
	u, _ := url.Parse(cb)
	state := u.Query().Get("state")
	lure := "Your account is locked. Call +1 555 0100 to unlock it"
	forged := r.srv.URL + "/ui/callback?" + url.Values{"error": {lure}, "state": {"not-this-browsers"}}.Encode()
	if code, page, _ := r.callWith(forged, ck); code != http.StatusBadRequest || strings.Contains(page, "555 0100") || !strings.Contains(page, "sign-in (state)") {
		t.Errorf("an error answer with another state: %d, want 400 about state without its text:\n%s", code, page)
	}
	forged = r.srv.URL + "/ui/callback?" + url.Values{"error": {lure}, "state": {state}}.Encode()
	if code, page, _ := r.callWith(forged, ck); code != http.StatusBadRequest || strings.Contains(page, "555 0100") || !strings.Contains(page, "refused the sign-in") {
		t.Errorf("an error that is not an OAuth error code: %d, want 400 without its text:\n%s", code, page)
	}
	denied := r.srv.URL + "/ui/callback?" + url.Values{"error": {"access_denied"}, "state": {state}}.Encode()
	if code, page, _ := r.callWith(denied, ck); code != http.StatusBadRequest || !strings.Contains(page, "refused the sign-in: access_denied") {
		t.Errorf("the provider's own error: %d, want 400 naming access_denied:\n%s", code, page)
	}
}

// TestCodeExchangeFailureLogsNoSecret: a token endpoint (or a proxy before it) that refuses the
// code exchange and echoes the request in its answer, the authorization code and the PKCE
// verifier with it, leaves neither in the console's log: the log keeps the status and the
// OAuth error code, and the browser gets the refusal page.
func TestCodeExchangeFailureLogsNoSecret(t *testing.T) {
	for _, tt := range []struct{ name, contentType, body, code string }{
		{"no error code", "text/plain", "400 Bad Request: you sent %s", "none"},
		{"with an error code", "application/json", `{"error":"invalid_grant","error_description":"code in %s was used"}`, "invalid_grant"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t, nil)
			var logs lockedLog
			r.console.o.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
			issuer := r.idp
			r.idp = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
				if req.URL.Path != "/idp/token" {
					issuer.ServeHTTP(w, req)
					return
				}
				b, _ := io.ReadAll(req.Body)
				w.Header().Set("Content-Type", tt.contentType)
				w.WriteHeader(http.StatusBadRequest)
				fmt.Fprintf(w, tt.body, strings.ReplaceAll(string(b), `"`, ""))
			})
			c := r.browser()
			callback, ck := r.startSignIn(c, "alice")
			u, _ := url.Parse(callback)
			code := u.Query().Get("code")
			l, err := openLogin(r.console.loginSet.seal, r.console.cookie.Login, ck.Value)
			if err != nil || code == "" {
				t.Fatalf("code %q, login cookie: %v", code, err)
			}
			status, page, _ := r.callWith(callback, ck)
			if status == http.StatusOK || strings.Contains(page, code) {
				t.Errorf("callback answered %d %q, want a refusal without the code", status, page)
			}
			got := logs.String()
			if !strings.Contains(got, "code exchange failed") || !strings.Contains(got, `"status":400`) || !strings.Contains(got, `"error_code":"`+tt.code+`"`) {
				t.Errorf("log %s, want the failure with status 400 and error code %s (page %d %.300s)", got, tt.code, status, page)
			}
			for what, secret := range map[string]string{"code": code, "verifier": l.Verifier} {
				if strings.Contains(got, secret) {
					t.Errorf("the log holds the %s: %s", what, got)
				}
			}
		})
	}
}

// lockedLog is a log sink for handlers on several goroutines.
type lockedLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
