package ui

import (
	"context"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/identity/devissuer"
)

// fakeRequests stands in for the authority: it reads the token's subject (verified by the
// console before, so only parsed here) and refuses self-approval as the domain does.
type fakeRequests struct {
	mu  sync.Mutex
	req ca.AccessRequest
	// second, when set, is a second page: the first page's Next is its position.
	second  *ca.AccessRequest
	queries []ca.RequestQuery
	tokens  []string
	decided []ca.AccessDecision
	cancels int
}

func subjectOf(tok string) string {
	var c struct {
		Sub string `json:"sub"`
	}
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return ""
	}
	b, err := base64URL(parts[1])
	if err != nil {
		return ""
	}
	_ = jsonUnmarshal(b, &c)
	return c.Sub
}

func (f *fakeRequests) GetAccessRequest(_ context.Context, token, id string) (ca.AccessRequest, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tokens = append(f.tokens, token)
	if id != f.req.ID {
		return ca.AccessRequest{}, &ca.Error{Kind: ca.KindNotFound, Msg: "no access request " + id + " that you may see"}
	}
	return f.req, nil
}

func (f *fakeRequests) AccessRequestsPage(_ context.Context, token string, q ca.RequestQuery) (ca.RequestPage, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tokens, f.queries = append(f.tokens, token), append(f.queries, q)
	switch {
	case f.second == nil:
		return ca.RequestPage{Requests: []ca.AccessRequest{f.req}}, nil
	case q.After.IsZero():
		return ca.RequestPage{Requests: []ca.AccessRequest{f.req}, Next: ca.RequestCursorOf(*f.second)}, nil
	case q.After == ca.RequestCursorOf(*f.second):
		return ca.RequestPage{Requests: []ca.AccessRequest{*f.second}}, nil
	}
	return ca.RequestPage{}, nil
}

func (f *fakeRequests) DecideAccessRequest(_ context.Context, token, id string, d ca.AccessDecision) (ca.AccessRequest, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tokens = append(f.tokens, token)
	if subjectOf(token) == f.req.Requester.Subject {
		return ca.AccessRequest{}, ca.Denied("you may not approve your own request")
	}
	if d.ContentHash != f.req.ContentHash() {
		return ca.AccessRequest{}, &ca.Error{Kind: ca.KindConflict, Msg: "the request's content differs from what you saw"}
	}
	f.decided = append(f.decided, d)
	f.req.Approvals = append(f.req.Approvals, ca.Approval{Approver: ca.Identity{Subject: subjectOf(token)}, ContentHash: d.ContentHash, Reason: d.Reason})
	f.req.Status, f.req.DecidedAt, f.req.NotAfter = ca.RequestApproved, time.Now(), time.Now().Add(30*time.Minute)
	return f.req, nil
}

// CancelAccessRequest lets only carol (the administrator of these tests) revoke another's request.
func (f *fakeRequests) CancelAccessRequest(_ context.Context, token, id, reason string) (ca.AccessRequest, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tokens = append(f.tokens, token)
	if subjectOf(token) != "carol" {
		return ca.AccessRequest{}, ca.Denied("revoking another's access request is not allowed", "needs group sshca-admins")
	}
	f.req.Status, f.req.DecisionReason = ca.RequestRevoked, reason
	f.cancels++
	return f.req, nil
}

type rig struct {
	t       *testing.T
	srv     *httptest.Server
	console *Console
	reqs    *fakeRequests
	mu      sync.Mutex
	now     time.Time
	// locations are every redirect target the browser was sent to.
	locations []string
	// replicas serve /ui/ when the rig has a shared session store; serving picks one.
	replicas []http.Handler
	serving  atomic.Int32
	// idp serves /idp/ (the dev issuer); a test may wrap it before its first request.
	idp http.Handler
}

func (r *rig) clock() time.Time { r.mu.Lock(); defer r.mu.Unlock(); return r.now }

const secret = "dev-secret-for-tests"

// newRig serves the dev issuer under /idp and the console under /ui/ on one loopback server.
func newRig(t *testing.T, public func(srvURL string) string) *rig {
	t.Helper()
	return newRigWith(t, public, nil)
}

// newRigWith is newRig with the consoles' session store; with one, /ui/ is served by two
// console replicas on that store, r.replicas, the one r.serving names answering (a load
// balancer that the test steers).
func newRigWith(t *testing.T, public func(srvURL string) string, sessions SessionStore) *rig {
	t.Helper()
	return newRigOn(t, &rig{t: t, now: time.Now()}, public, sessions, 0)
}

// newRigOn is newRigWith on the rig r (its clock set, so that a store can share it) with a
// login key rotation period (0: the default).
func newRigOn(t *testing.T, r *rig, public func(srvURL string) string, sessions SessionStore, rotation time.Duration) *rig {
	t.Helper()
	mux := http.NewServeMux()
	r.srv = httptest.NewServer(mux)
	t.Cleanup(r.srv.Close)
	iss, err := devissuer.New(r.srv.URL+"/idp", devissuer.Options{Audience: "sshca", Secret: secret, Now: r.clock})
	if err != nil {
		t.Fatal(err)
	}
	r.idp = http.StripPrefix("/idp", iss.Handler())
	mux.Handle("/idp/", http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) { r.idp.ServeHTTP(w, req) }))
	now := time.Now()
	r.reqs = &fakeRequests{req: ca.AccessRequest{ID: "req_AAAAAAAAAAAAAAAA", Requester: ca.Identity{Issuer: r.srv.URL + "/idp", Subject: "alice"},
		Principals: []string{"root"}, TTLSeconds: 1800, Reason: "OPS-1234 disk full", Ticket: "OPS-1234", CreatedAt: now,
		PendingUntil: now.Add(time.Hour), ApprovalsRequired: 1, Status: ca.RequestPending}}
	pub := r.srv.URL
	if public != nil {
		pub = public(r.srv.URL)
	}
	r.console, err = New(Options{PublicURL: pub, Issuer: r.srv.URL + "/idp", ClientID: "sshca", Requests: r.reqs, Now: r.clock, Sessions: sessions, LoginKeyRotation: rotation})
	if err != nil {
		t.Fatal(err)
	}
	if sessions == nil {
		mux.Handle("/ui/", r.console.Handler())
		return r
	}
	second, err := New(Options{PublicURL: pub, Issuer: r.srv.URL + "/idp", ClientID: "sshca", Requests: r.reqs, Now: r.clock, Sessions: sessions, LoginKeyRotation: rotation})
	if err != nil {
		t.Fatal(err)
	}
	r.replicas = []http.Handler{r.console.Handler(), second.Handler()}
	mux.Handle("/ui/", http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.replicas[r.serving.Load()].ServeHTTP(w, req)
	}))
	return r
}

// browser is a client with a cookie jar that records every redirect.
func (r *rig) browser() *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, CheckRedirect: func(req *http.Request, via []*http.Request) error {
		r.mu.Lock()
		r.locations = append(r.locations, req.URL.String())
		r.mu.Unlock()
		return nil
	}}
}

func body(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// signIn follows the console's sign-in link through the dev issuer's form as sub and returns
// the page it lands on.
func (r *rig) signIn(c *http.Client, sub, returnTo string) (*http.Response, string) {
	r.t.Helper()
	resp, err := c.Get(r.srv.URL + "/ui/login?return=" + url.QueryEscape(returnTo))
	if err != nil {
		r.t.Fatal(err)
	}
	page := body(r.t, resp)
	if resp.StatusCode != 200 || !strings.Contains(page, "dev_secret") {
		r.t.Fatalf("issuer sign-in page: %d %s", resp.StatusCode, page)
	}
	form := url.Values{}
	for _, m := range regexp.MustCompile(`name="([a-z_]+)" value="([^"]*)"`).FindAllStringSubmatch(page, -1) {
		form.Set(m[1], htmlUnescape(m[2]))
	}
	form.Set("sub", sub)
	form.Set("email", sub+"@example.com")
	form.Set("groups", "sre-leads")
	resp, err = c.PostForm(resp.Request.URL.String(), form)
	if err != nil {
		r.t.Fatal(err)
	}
	return resp, body(r.t, resp)
}

func csrfOf(t *testing.T, page string) string {
	t.Helper()
	m := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no csrf field in page:\n%s", page)
	}
	return m[1]
}

func TestSignInApproveSignOut(t *testing.T) {
	r := newRig(t, nil)
	c := r.browser()

	resp, err := c.Get(r.srv.URL + "/ui/requests/" + r.reqs.req.ID)
	if err != nil {
		t.Fatal(err)
	}
	if p := body(t, resp); !strings.Contains(p, `href="/ui/login?return=%2Fui%2Frequests%2F`+r.reqs.req.ID+`"`) || strings.Contains(p, "OPS-1234") {
		t.Fatalf("signed-out page should offer a sign-in link back here and show nothing:\n%s", p)
	}
	if _, err := c.Get(r.srv.URL + "/ui/login?return=/ui/"); err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(r.srv.URL)
	var loginCookie string
	for _, ck := range c.Jar.Cookies(u) {
		switch ck.Name {
		case "sshca-dev-login":
			loginCookie = ck.Value
		case "sshca-dev":
			t.Fatalf("a session cookie before sign-in: %s", ck.Value)
		}
	}
	if loginCookie == "" {
		t.Fatal("no login cookie")
	}
	if n := len(r.console.sessions.store.(*memorySessions).m); n != 0 {
		t.Fatalf("%d sessions stored for a sign-in not finished", n)
	}

	resp, page := r.signIn(c, "bob", "/ui/requests/"+r.reqs.req.ID)
	if resp.Request.URL.Path != "/ui/requests/"+r.reqs.req.ID || !strings.Contains(page, "needs 1 more approval") || !strings.Contains(page, "OPS-1234 disk full") {
		t.Fatalf("after sign-in landed on %s:\n%s", resp.Request.URL, page)
	}
	// The login cookie is gone and names no session.
	for _, ck := range c.Jar.Cookies(u) {
		if ck.Name == "sshca-dev-login" {
			t.Fatalf("login cookie kept after sign-in: %s", ck.Value)
		}
	}
	if _, ok, err := r.console.sessions.get(context.Background(), loginCookie); ok || err != nil {
		t.Fatal("the login cookie names a session after sign-in")
	}
	// No token in any URL: the browser's redirects carried a code, never the ID token.
	tok := r.reqs.tokens[len(r.reqs.tokens)-1]
	for _, l := range r.locations {
		if strings.Contains(l, tok) || strings.Contains(l, "id_token") {
			t.Fatalf("a redirect carried the ID token: %s", l)
		}
	}
	if subjectOf(tok) != "bob" {
		t.Fatalf("the console called the domain with a token of %q, want bob's", subjectOf(tok))
	}

	csrf := csrfOf(t, page)
	forged := csrf[:len(csrf)-1] + map[bool]string{true: "B", false: "A"}[csrf[len(csrf)-1] == 'A']
	hash := r.reqs.req.ContentHash()
	post := func(form url.Values, hdr map[string]string) *http.Response {
		req, _ := http.NewRequest("POST", r.srv.URL+"/ui/requests/"+r.reqs.req.ID+"/approve", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	for name, tc := range map[string]struct {
		form url.Values
		hdr  map[string]string
	}{
		"forged csrf":    {url.Values{"csrf": {forged}, "content_hash": {hash}, "reason": {"ok"}}, nil},
		"no csrf":        {url.Values{"content_hash": {hash}, "reason": {"ok"}}, nil},
		"foreign origin": {url.Values{"csrf": {csrf}, "content_hash": {hash}, "reason": {"ok"}}, map[string]string{"Origin": "https://evil.example"}},
		"cross-site":     {url.Values{"csrf": {csrf}, "content_hash": {hash}, "reason": {"ok"}}, map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": "null"}},
		"same-site":      {url.Values{"csrf": {csrf}, "content_hash": {hash}, "reason": {"ok"}}, map[string]string{"Sec-Fetch-Site": "same-site"}},
	} {
		resp := post(tc.form, tc.hdr)
		if p := body(t, resp); resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s: status %d, want 403:\n%s", name, resp.StatusCode, p)
		}
	}
	if len(r.reqs.decided) != 0 {
		t.Fatalf("a refused form reached the domain: %+v", r.reqs.decided)
	}
	resp = post(url.Values{"csrf": {csrf}, "content_hash": {hash}, "reason": {"looked at OPS-1234"}}, map[string]string{"Origin": "null", "Sec-Fetch-Site": "same-origin"})
	if p := body(t, resp); resp.StatusCode != 200 || !strings.Contains(p, `id="state">approved`) || !strings.Contains(p, "looked at OPS-1234") {
		t.Fatalf("approve: %d\n%s", resp.StatusCode, p)
	}
	if got := r.reqs.decided; len(got) != 1 || !got[0].Approve || got[0].ContentHash != hash {
		t.Fatalf("decisions = %+v", got)
	}

	// GET on a state-changing path changes nothing.
	resp, _ = c.Get(r.srv.URL + "/ui/requests/" + r.reqs.req.ID + "/approve?csrf=" + csrf)
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET approve: %d, want 405", resp.StatusCode)
	}
	resp.Body.Close()

	req, _ := http.NewRequest("POST", r.srv.URL+"/ui/logout", strings.NewReader(url.Values{"csrf": {csrf}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, _ = c.Do(req)
	body(t, resp)
	resp, _ = c.Get(r.srv.URL + "/ui/")
	if p := body(t, resp); !strings.Contains(p, `id="signin"`) {
		t.Fatalf("after sign-out /ui/ still shows:\n%s", p)
	}
	if n := len(r.console.sessions.store.(*memorySessions).m); n != 0 {
		t.Fatalf("%d sessions left after sign-out", n)
	}
}

func TestSelfApprovalRefused(t *testing.T) {
	r := newRig(t, nil)
	c := r.browser()
	_, page := r.signIn(c, "alice", "/ui/requests/"+r.reqs.req.ID)
	if !strings.Contains(page, "your own request") || strings.Contains(page, `id="approve"`) {
		t.Fatalf("the requester's page offers to approve:\n%s", page)
	}
	// Posting the form anyway reaches the domain, which refuses: the console grants nothing.
	form := url.Values{"csrf": {csrfOf(t, page)}, "content_hash": {r.reqs.req.ContentHash()}, "reason": {"me"}}
	resp, _ := c.PostForm(r.srv.URL+"/ui/requests/"+r.reqs.req.ID+"/approve", form)
	if p := body(t, resp); resp.StatusCode != http.StatusForbidden || !strings.Contains(p, "own request") {
		t.Fatalf("self-approval: %d\n%s", resp.StatusCode, p)
	}
}

func TestForeignReturnPath(t *testing.T) {
	r := newRig(t, nil)
	for _, rt := range []string{"https://evil.example/ui/", "//evil.example/", "/ui/../v1/requests"} {
		resp, _ := r.signIn(r.browser(), "bob", rt)
		if resp.Request.URL.Host != strings.TrimPrefix(r.srv.URL, "http://") || resp.Request.URL.Path != "/ui/" {
			t.Errorf("return %q landed on %s", rt, resp.Request.URL)
		}
	}
}

func TestSecurityHeadersOnEveryPage(t *testing.T) {
	r := newRig(t, nil)
	withRecordings(t, r)
	c := r.browser()
	r.signIn(c, "carol", "/ui/")
	for _, p := range []string{"/ui/", "/ui/access", "/ui/requests/" + r.reqs.req.ID, "/ui/requests/req_NOPE", "/ui/style.css", "/ui/nope", "/ui/callback",
		"/ui/recordings/" + recEnded, "/ui/recordings/" + recEnded + "/cast", "/ui/recordings/" + recOther + "0"} {
		resp, err := c.Get(r.srv.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := resp.Header.Get("Content-Security-Policy"); got != "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'" {
			t.Errorf("%s: CSP %q", p, got)
		}
		if got := resp.Header.Get("Referrer-Policy"); got != "no-referrer" {
			t.Errorf("%s: Referrer-Policy %q", p, got)
		}
	}
}

func TestCallbackRefusesForeignState(t *testing.T) {
	r := newRig(t, nil)
	c := r.browser()
	// A login begun in this browser, then a callback with another state (an attacker's code).
	resp, _ := c.Get(r.srv.URL + "/ui/login?return=/ui/")
	body(t, resp)
	resp, _ = c.Get(r.srv.URL + "/ui/callback?code=x&state=attacker")
	if p := body(t, resp); resp.StatusCode != http.StatusBadRequest || !strings.Contains(p, "state") {
		t.Fatalf("foreign state: %d\n%s", resp.StatusCode, p)
	}
	// Without any login in progress.
	resp, _ = r.browser().Get(r.srv.URL + "/ui/callback?code=x&state=y")
	if body(t, resp); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("callback without login: %d", resp.StatusCode)
	}
}

func TestSessionEndsWithIDToken(t *testing.T) {
	r := newRig(t, nil)
	c := r.browser()
	r.signIn(c, "bob", "/ui/")
	resp, _ := c.Get(r.srv.URL + "/ui/")
	if p := body(t, resp); !strings.Contains(p, "Sign out") {
		t.Fatalf("not signed in:\n%s", p)
	}
	r.mu.Lock()
	r.now = r.now.Add(10*time.Minute + time.Second) // the dev issuer's tokens last 10 minutes
	r.mu.Unlock()
	resp, _ = c.Get(r.srv.URL + "/ui/")
	if p := body(t, resp); strings.Contains(p, "Sign out") || !strings.Contains(p, `id="signin"`) {
		t.Fatalf("session outlived the ID token:\n%s", p)
	}
}

func TestDevCookieOnPlainHTTP(t *testing.T) {
	r := newRig(t, nil)
	resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Get(r.srv.URL + "/ui/login")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	sc := resp.Header.Get("Set-Cookie")
	if !strings.HasPrefix(sc, "sshca-dev-login=") || !strings.Contains(sc, "HttpOnly") || !strings.Contains(sc, "SameSite=Lax") ||
		!strings.Contains(sc, "Path=/") || strings.Contains(sc, "Secure") || strings.Contains(sc, "Domain") {
		t.Fatalf("dev cookie: %s", sc)
	}
	loc := resp.Header.Get("Location")
	q, _ := url.Parse(loc)
	if q.Query().Get("code_challenge_method") != "S256" || q.Query().Get("code_challenge") == "" || q.Query().Get("redirect_uri") != r.srv.URL+"/ui/callback" {
		t.Fatalf("authorization request lacks PKCE or the callback: %s", loc)
	}
}

func TestHostCookieOnHTTPS(t *testing.T) {
	r := newRig(t, func(string) string { return "https://ca.example.com" })
	resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Get(r.srv.URL + "/ui/login")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	ck := resp.Cookies()
	if len(ck) != 1 {
		t.Fatalf("cookies: %v", ck)
	}
	if c := ck[0]; c.Name != "__Host-sshca-login" || !c.Secure || !c.HttpOnly || c.SameSite != http.SameSiteLaxMode || c.Path != "/" || c.Domain != "" {
		t.Fatalf("cookie: %s", resp.Header.Get("Set-Cookie"))
	}
	if !strings.Contains(resp.Header.Get("Location"), url.QueryEscape("https://ca.example.com/ui/callback")) {
		t.Fatalf("redirect_uri is not the public URL's: %s", resp.Header.Get("Location"))
	}
}

func TestAccessPage(t *testing.T) {
	r := newRig(t, nil)
	now := time.Now()
	r.reqs.req.Status, r.reqs.req.DecidedAt, r.reqs.req.NotAfter, r.reqs.req.Serials = ca.RequestApproved, now, now.Add(30*time.Minute), []uint64{4242}
	c := r.browser()
	r.signIn(c, "bob", "/ui/")
	get := func(q string) string {
		resp, err := c.Get(r.srv.URL + "/ui/access" + q)
		if err != nil {
			t.Fatal(err)
		}
		return body(t, resp)
	}
	if p := get(""); !strings.Contains(p, `<code class="serial">4242</code>`) || strings.Contains(p, `class="revoked"`) {
		t.Fatalf("access page:\n%s", p)
	}
	if p := get("?principal=root&identity=alice"); !strings.Contains(p, "4242") {
		t.Fatalf("filter root/alice hides the holding:\n%s", p)
	}
	for _, q := range []string{"?principal=admin", "?identity=carol"} {
		if p := get(q); strings.Contains(p, "4242") {
			t.Fatalf("filter %s shows the holding:\n%s", q, p)
		}
	}
	r.reqs.mu.Lock()
	r.reqs.req.Status = ca.RequestRevoked
	r.reqs.mu.Unlock()
	if p := get(""); !strings.Contains(p, `class="revoked"`) || !strings.Contains(p, "4242") {
		t.Fatalf("revoked holding not flagged:\n%s", p)
	}
	r.mu.Lock()
	r.now = now.Add(31 * time.Minute)
	r.mu.Unlock()
	r.signIn(c, "bob", "/ui/") // the first session ended with its token
	if p := get(""); strings.Contains(p, "4242") {
		t.Fatalf("a holding past its window is shown:\n%s", p)
	}
}

func TestRevokeFromAccessPage(t *testing.T) {
	r := newRig(t, nil)
	now := time.Now()
	r.reqs.req.Status, r.reqs.req.DecidedAt, r.reqs.req.NotAfter, r.reqs.req.Serials = ca.RequestApproved, now, now.Add(30*time.Minute), []uint64{77}
	revoke := func(who, reason string) (int, string) {
		c := r.browser()
		_, page := r.signIn(c, who, "/ui/access")
		if !strings.Contains(page, `class="revoke"`) {
			t.Fatalf("%s: no revoke button:\n%s", who, page)
		}
		resp, err := c.PostForm(r.srv.URL+"/ui/requests/"+r.reqs.req.ID+"/revoke", url.Values{"csrf": {csrfOf(t, page)}, "reason": {reason}})
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, body(t, resp)
	}
	if code, p := revoke("bob", "leaving"); code != http.StatusForbidden || !strings.Contains(p, "sshca-admins") {
		t.Fatalf("non-admin revoke: %d\n%s", code, p)
	}
	if code, p := revoke("alice", "done"); code != http.StatusForbidden || !strings.Contains(p, "sshca request cancel") {
		t.Fatalf("requester revoke: %d\n%s", code, p)
	}
	if code, _ := revoke("carol", " "); code != http.StatusBadRequest {
		t.Fatalf("revoke without a reason: %d", code)
	}
	if r.reqs.cancels != 0 {
		t.Fatalf("%d revocations before the administrator's", r.reqs.cancels)
	}
	code, p := revoke("carol", "incident INC-7")
	if code != 200 || !strings.Contains(p, `<span class="revoked">revoked</span>`) || strings.Contains(p, `class="revoke"`) {
		t.Fatalf("admin revoke: %d\n%s", code, p)
	}
}

// fakeInventory lets only carol read; it returns one live and one revoked certificate.
type fakeInventory struct {
	queries []ca.CertQuery
	next    ca.CertCursor
}

func (f *fakeInventory) ListCertificates(_ context.Context, token string, q ca.CertQuery) (ca.CertPage, error) {
	if subjectOf(token) != "carol" {
		return ca.CertPage{}, ca.Denied("bob may not read the certificate inventory")
	}
	f.queries = append(f.queries, q)
	return ca.CertPage{Certificates: []ca.ListedCertificate{
		{Certificate: ca.Certificate{Serial: 501, Identity: "idp|dave", Principals: []string{"dave"}, ValidBefore: time.Now().Add(time.Hour)}},
		{Certificate: ca.Certificate{Serial: 502, Identity: "idp|erin", Principals: []string{"root"}, AccessRequest: "req_BBBBBBBBBBBBBBBB"}, Revoked: ca.RevokedBySerial},
	}, Next: f.next}, nil
}

func TestAccessPageInventory(t *testing.T) {
	r := newRig(t, nil)
	inv := &fakeInventory{}
	r.console.o.Certificates = inv
	c := r.browser()
	_, page := r.signIn(c, "bob", "/ui/access")
	if !strings.Contains(page, "administrators and auditors") || strings.Contains(page, "501") {
		t.Fatalf("a non-reader's access page:\n%s", page)
	}
	c = r.browser()
	_, page = r.signIn(c, "carol", "/ui/access?identity=erin&principal=root")
	for _, want := range []string{`<code>501</code>`, `<code>502</code>`, `revoked (serial)`, `href="/ui/requests/req_BBBBBBBBBBBBBBBB"`} {
		if !strings.Contains(page, want) {
			t.Fatalf("reader's access page lacks %s:\n%s", want, page)
		}
	}
	if len(inv.queries) != 1 || inv.queries[0] != (ca.CertQuery{Identity: "erin", Principal: "root", Limit: InventoryPageLimit}) {
		t.Fatalf("queries = %+v", inv.queries)
	}
	if strings.Contains(page, "soonest to expire are shown") {
		t.Errorf("the one page said there were more:\n%s", page)
	}
	// More than a page: the first is shown, and the page says how to see the rest.
	inv.next = ca.CertCursor{ValidBefore: 1, Serial: 502}
	resp, err := c.Get(r.srv.URL + "/ui/access")
	if err != nil {
		t.Fatal(err)
	}
	page = body(t, resp)
	if !strings.Contains(page, "The 1000 certificates soonest to expire are shown") || !strings.Contains(page, "<code>501</code>") {
		t.Errorf("a first page of several:\n%s", page)
	}
}

// TestPendingPages: the pending page reads RequestsPageLimit requests at a time and links the
// next page with its cursor (the filters kept); following the link shows the second page's
// request and no further link; a cursor the console did not give is a 400 page naming the
// cursor, never a 500, and never reaches the domain.
func TestPendingPages(t *testing.T) {
	r := newRig(t, nil)
	second := r.reqs.req
	second.ID, second.Reason = "req_bbbbbbbbbbbbbbbb", "second page"
	r.reqs.second = &second
	c := r.browser()
	r.signIn(c, "bob", "/ui/")
	r.reqs.mu.Lock()
	r.reqs.queries = nil // the sign-in's own landing on /ui/
	r.reqs.mu.Unlock()
	get := func(path string) (int, string) {
		resp, err := c.Get(r.srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, body(t, resp)
	}
	code, p := get("/ui/")
	link := "/ui/?cursor=" + ca.RequestCursorOf(second).String()
	if code != http.StatusOK || !strings.Contains(p, r.reqs.req.ID) || strings.Contains(p, second.ID) || !strings.Contains(p, `href="`+link+`"`) {
		t.Fatalf("first page: %d\n%s", code, p)
	}
	code, p = get(link)
	if code != http.StatusOK || !strings.Contains(p, second.ID) || strings.Contains(p, `id="next"`) {
		t.Fatalf("second page: %d\n%s", code, p)
	}
	r.reqs.mu.Lock()
	qs := slices.Clone(r.reqs.queries)
	r.reqs.mu.Unlock()
	if len(qs) != 2 || qs[0] != (ca.RequestQuery{Pending: true, Limit: RequestsPageLimit}) || qs[1].After != ca.RequestCursorOf(second) || !qs[1].Pending {
		t.Errorf("queries %+v", qs)
	}
	if code, p := get("/ui/access?principal=root"); code != http.StatusOK || !strings.Contains(p, `href="/ui/access?cursor=`) || !strings.Contains(p, "principal=root") {
		t.Errorf("access page without its next link, or without its filter in it: %d\n%s", code, p)
	}
	for _, bad := range []string{"/ui/?cursor=zz", "/ui/access?cursor=" + ca.CertCursor{ValidBefore: 1, Serial: 7}.String()} {
		if code, p := get(bad); code != http.StatusBadRequest || !strings.Contains(p, "cursor") {
			t.Errorf("%s: %d\n%s", bad, code, p)
		}
	}
	r.reqs.mu.Lock()
	defer r.reqs.mu.Unlock()
	if len(r.reqs.queries) != 3 {
		t.Errorf("%d queries reached the domain, want 3 (none for a bad cursor)", len(r.reqs.queries))
	}
}
