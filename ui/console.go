package ui

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/client"
	"github.com/sshca/sshca/internal/bodylimit"
)

//go:embed templates/*.html static/style.css
var files embed.FS

var pages = template.Must(template.New("").Funcs(template.FuncMap{
	"join": strings.Join,
	"when": func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format("2006-01-02 15:04:05 UTC")
	},
	"dur": func(s int64) string { return (time.Duration(s) * time.Second).String() },
}).ParseFS(files, "templates/*.html"))

// Requests is what the console calls, with the signed-in user's ID token as the token: the
// access request calls of the API, authenticated and decided by the policy in the domain.
// *ca.Authority implements it.
type Requests interface {
	GetAccessRequest(ctx context.Context, token, id string) (ca.AccessRequest, error)
	// AccessRequestsPage is a page of the requests the signed-in user may see (GET
	// /v1/requests): the console shows RequestsPageLimit a page and links the next.
	AccessRequestsPage(ctx context.Context, token string, q ca.RequestQuery) (ca.RequestPage, error)
	DecideAccessRequest(ctx context.Context, token, id string, d ca.AccessDecision) (ca.AccessRequest, error)
	// CancelAccessRequest by an administrator (policy kind "revoke") revokes the request: its
	// live certificates are revoked and their sessions ended like any revocation.
	CancelAccessRequest(ctx context.Context, token, id, reason string) (ca.AccessRequest, error)
}

var _ Requests = (*ca.Authority)(nil)

// Certificates is the certificate inventory (GET /v1/certs): the global index of live
// certificates, each flagged when revoked, for callers the policy lets read (kind "read":
// administrators and auditors). *ca.Authority implements it.
type Certificates interface {
	ListCertificates(ctx context.Context, token string, q ca.CertQuery) (ca.CertPage, error)
}

var _ Certificates = (*ca.Authority)(nil)

// Options configure a Console.
type Options struct {
	// PublicURL is the server's base URL as browsers reach it ("https://ca.example.com"); the
	// OIDC redirect URI is PublicURL + "/ui/callback" and must be registered at the issuer.
	// http:// is accepted only for a loopback host (sshca dev).
	PublicURL string
	// Issuer and ClientID name the OIDC issuer and the public client (no secret; PKCE) the
	// console signs in with, as for `sshca login`; Scopes default to openid, email, profile.
	Issuer, ClientID string
	Scopes           []string
	Requests         Requests
	// Certificates, when set, adds the whole inventory to "who holds access now" for those
	// the policy lets read it.
	Certificates Certificates
	// Recordings, when set, lists on a request's page the recorded sessions whose key ID
	// carries it, each linking to its page (output and .cast), for those the policy lets read.
	Recordings Recordings
	// Sessions keeps the sessions where every replica finds them (store.Redis); nil: this
	// replica's memory only, so that behind a load balancer a browser must keep reaching the
	// replica it signed in on.
	Sessions SessionStore
	// LoginKeyRotation is how long a key seals login cookies before the store replaces it
	// (SessionStore.ConsoleLoginKeys); the key before stays good for one more period, so a
	// sign-in (at most 10 minutes) under way at a rotation finishes. Default (0) a day.
	LoginKeyRotation time.Duration
	// Now is the clock (default time.Now); Logger gets failures (never a token).
	Now    func() time.Time
	Logger *slog.Logger
	// HTTPClient reaches the issuer (default: a client whose Timeout is 10 s, issuerTimeout;
	// one given should have a Timeout too, see issuerTimeout); what the console reads of its
	// answers is bounded (bodylimit.Issuer).
	HTTPClient *http.Client
}

// issuerTimeout bounds each exchange with the issuer (discovery, key set, token) when
// Options.HTTPClient is not given. go-oidc fetches the key set without the request's
// cancellation, and every later verification waits for that fetch: an issuer that accepts
// the request and never answers would otherwise hold every sign-in from then on.
const issuerTimeout = 10 * time.Second

// InventoryPageLimit is how many certificates of the inventory the "who holds access now" page
// reads and shows, at most.
const InventoryPageLimit = 1000

// RequestsPageLimit is how many kept access requests the pending and "who holds access now"
// pages read at once; a "next page" link (?cursor=…) reads the next as many.
const RequestsPageLimit = 1000

// requestsPage reads the page of access requests the query's cursor names (the first page
// without one), q's filters applied, and answers the link to the next page ("" on the last):
// the same path with the query as it was and the next cursor. A cursor the console did not
// give is Invalid, a 400 page.
func (c *Console) requestsPage(r *http.Request, s session, q ca.RequestQuery) ([]ca.AccessRequest, string, error) {
	after, err := ca.ParseRequestCursor(r.URL.Query().Get("cursor"))
	if err != nil {
		return nil, "", err
	}
	q.After, q.Limit = after, RequestsPageLimit
	page, err := c.o.Requests.AccessRequestsPage(r.Context(), s.idToken, q)
	if err != nil || page.Next.IsZero() {
		return page.Requests, "", err
	}
	v := r.URL.Query()
	v.Set("cursor", page.Next.String())
	return page.Requests, r.URL.Path + "?" + v.Encode(), nil
}

// Console serves the pages under /ui/.
type Console struct {
	o        Options
	public   *url.URL
	cookie   Cookie
	sessions *sessions

	mu       sync.Mutex
	provider *oidc.Provider // discovered at the first sign-in, kept once found
	loginSet *loginKeys     // the login cookie's, from the store's shared keys (loginKeys)
}

// ParsePublicURL checks a console public URL: scheme://host[:port], https, or http on a
// loopback host (sshca dev), where the session cookie cannot be Secure.
func ParsePublicURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || u.Path != "" && u.Path != "/" || u.RawQuery != "" || u.User != nil || u.Fragment != "" {
		return nil, fmt.Errorf("ui: public URL %q must be scheme://host[:port] with no path", raw)
	}
	if u.Scheme != "https" && (u.Scheme != "http" || !loopbackHost(u)) {
		return nil, fmt.Errorf("ui: public URL %q must be https (plain http only on a loopback host, for sshca dev)", raw)
	}
	return u, nil
}

// New checks the options and returns the console.
func New(o Options) (*Console, error) {
	u, err := ParsePublicURL(o.PublicURL)
	if err != nil {
		return nil, err
	}
	if o.Issuer == "" || o.ClientID == "" || o.Requests == nil {
		return nil, errors.New("ui: the issuer URL, client ID and the request service are required")
	}
	if len(o.Scopes) == 0 {
		o.Scopes = []string{oidc.ScopeOpenID, "email", "profile"}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.LoginKeyRotation <= 0 {
		o.LoginKeyRotation = DefaultLoginKeyRotation
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	// go-oidc and oauth2 read the issuer's answers (discovery, key set, token) whole, however
	// long: at most bodylimit.Issuer bytes of each, a longer one an error naming its URL.
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{Timeout: issuerTimeout}
	}
	o.HTTPClient = bodylimit.Client(o.HTTPClient, bodylimit.Issuer)
	u.Path = ""
	return &Console{o: o, public: u, cookie: CookieFor(u), sessions: newSessions(o.Now, o.Sessions)}, nil
}

// Handler serves every /ui/ path; mount it at "/ui/".
func (c *Console) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ui/style.css", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/css; charset=utf-8")
		http.ServeFileFS(w, r, files, "static/style.css")
	})
	mux.HandleFunc("GET /ui/login", c.login)
	mux.HandleFunc("GET /ui/callback", c.callback)
	mux.HandleFunc("POST /ui/logout", c.signedIn(c.logout))
	mux.HandleFunc("GET /ui/{$}", c.signedIn(c.pending))
	mux.HandleFunc("GET /ui/access", c.signedIn(c.access))
	mux.HandleFunc("GET /ui/requests/{id}", c.signedIn(c.request))
	mux.HandleFunc("POST /ui/requests/{id}/approve", c.signedIn(c.decide(true)))
	mux.HandleFunc("POST /ui/requests/{id}/deny", c.signedIn(c.decide(false)))
	mux.HandleFunc("POST /ui/requests/{id}/revoke", c.signedIn(c.revoke))
	mux.HandleFunc("GET /ui/recordings/{id}", c.signedIn(c.recording))
	mux.HandleFunc("GET /ui/recordings/{id}/cast", c.signedIn(c.cast))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		setSecurityHeaders(w.Header())
		mux.ServeHTTP(w, r)
	})
}

type page struct {
	Title string
	User  string
	CSRF  string
	Error string
	Data  any
}

func (c *Console) render(w http.ResponseWriter, code int, name string, p page) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	if err := pages.ExecuteTemplate(w, name, p); err != nil {
		c.o.Logger.Error("ui: render", "page", name, "err", err)
	}
}

// fail renders the domain error's caller-safe message with the status the API would give.
func (c *Console) fail(w http.ResponseWriter, s session, err error) {
	code, msg := http.StatusInternalServerError, "internal error; the server log has the details"
	var de *ca.Error
	if errors.As(err, &de) {
		code = client.StatusOf(de.Kind)
		if de.Kind != ca.KindInternal {
			msg = de.Msg
			if len(de.Reasons) > 0 {
				msg += ": " + strings.Join(de.Reasons, "; ")
			}
		}
	}
	if code >= 500 {
		c.o.Logger.Error("ui: request failed", "err", err)
	}
	c.render(w, code, "error.html", page{Title: "Error", User: s.user, CSRF: s.csrf, Error: msg})
}

// current is the browser's session: its ID (the cookie's value), the session and whether it
// is live; an error when the session store failed (logged here: the caller answers 503).
func (c *Console) current(r *http.Request) (string, session, bool, error) {
	ck, err := r.Cookie(c.cookie.Name)
	if err != nil {
		return "", session{}, false, nil
	}
	s, ok, err := c.sessions.get(r.Context(), ck.Value)
	if err != nil {
		c.o.Logger.Error("ui: session store", "err", err)
	}
	return ck.Value, s, ok, err
}

// unavailable answers when the session store fails.
func (c *Console) unavailable(w http.ResponseWriter) {
	c.render(w, http.StatusServiceUnavailable, "error.html", page{Title: "Error",
		Error: "the console's session store is unavailable; try again in a moment"})
}

// crossSite says why a POST came from another site, or "" when nothing says so: the browser's
// Sec-Fetch-Site when it sends one, else its Origin. With Referrer-Policy no-referrer Chromium
// sends "Origin: null" for the console's own forms, so null proves nothing either way; the
// CSRF token is the check that always applies.
func (c *Console) crossSite(r *http.Request) string {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" {
		return "this form was posted from another site (Sec-Fetch-Site " + site + "); use the console's own pages"
	}
	if o := r.Header.Get("Origin"); o != "" && o != "null" && o != c.public.Scheme+"://"+c.public.Host {
		return "this form was posted from another site (Origin " + o + "); use the console's own pages"
	}
	return ""
}

// signedIn runs h for a signed-in session and sends anyone else to sign in, back to this page
// afterwards. A POST must carry the session's CSRF token and come from no other site
// (crossSite).
func (c *Console) signedIn(h func(http.ResponseWriter, *http.Request, string, session)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, s, ok, err := c.current(r)
		if err != nil {
			c.unavailable(w)
			return
		}
		if !ok || !s.signedIn() {
			if r.Method != http.MethodGet {
				c.render(w, http.StatusUnauthorized, "error.html", page{Title: "Signed out",
					Error: "your session has ended; sign in again and repeat the action"})
				return
			}
			c.render(w, http.StatusOK, "signin.html", page{Title: "Sign in", Data: "/ui/login?" + url.Values{"return": {r.URL.RequestURI()}}.Encode()})
			return
		}
		if r.Method == http.MethodPost {
			if msg := c.crossSite(r); msg != "" {
				c.render(w, http.StatusForbidden, "error.html", page{Title: "Refused", User: s.user, CSRF: s.csrf, Error: msg})
				return
			}
			r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
			if err := r.ParseForm(); err != nil || !sameToken(r.PostForm.Get("csrf"), s.csrf) {
				c.render(w, http.StatusForbidden, "error.html", page{Title: "Refused", User: s.user, CSRF: s.csrf,
					Error: "the form's csrf token is missing or not this session's: reload the page and submit it again"})
				return
			}
		}
		h(w, r, id, s)
	}
}

func (c *Console) oauth(ctx context.Context) (*oauth2.Config, *oidc.Provider, error) {
	c.mu.Lock()
	p := c.provider
	c.mu.Unlock()
	if p == nil {
		var err error
		if p, err = oidc.NewProvider(oidc.ClientContext(ctx, c.o.HTTPClient), c.o.Issuer); err != nil {
			return nil, nil, err
		}
		c.mu.Lock()
		c.provider = p
		c.mu.Unlock()
	}
	ep := p.Endpoint()
	ep.AuthStyle = oauth2.AuthStyleInParams // a public client: no secret
	return &oauth2.Config{ClientID: c.o.ClientID, Endpoint: ep, Scopes: c.o.Scopes,
		RedirectURL: c.public.String() + "/ui/callback"}, p, nil
}

// login starts the authorization code flow with PKCE (RFC 7636): the verifier, state, nonce
// and the local return path are sealed into the login cookie (loginState), nothing is stored
// server-side, and the browser goes to the issuer. It is a GET reached by a link, not a form:
// Chromium applies form-action to the redirects that follow a form post, and the issuer is
// another origin.
func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	conf, _, err := c.oauth(r.Context())
	if err != nil {
		c.o.Logger.Error("ui: OIDC discovery", "issuer", c.o.Issuer, "err", err)
		c.render(w, http.StatusServiceUnavailable, "error.html", page{Title: "Error", Error: "cannot reach the identity provider " + c.o.Issuer + "; try again later"})
		return
	}
	keys, err := c.loginKeys(r.Context(), false)
	if err != nil {
		c.o.Logger.Error("ui: session store", "err", err)
		c.unavailable(w)
		return
	}
	l := loginState{State: randomToken(), Verifier: oauth2.GenerateVerifier(), Nonce: randomToken(),
		ReturnTo: LocalPath(r.URL.Query().Get("return")), Expires: c.o.Now().Add(loginTimeout)}
	value, err := sealLogin(keys.seal, c.cookie.Login, l)
	if err != nil {
		c.o.Logger.Error("ui: login cookie", "err", err)
		c.unavailable(w)
		return
	}
	c.cookie.setLogin(w, value, int(loginTimeout/time.Second))
	http.Redirect(w, r, conf.AuthCodeURL(l.State, oauth2.S256ChallengeOption(l.Verifier), oidc.Nonce(l.Nonce)), http.StatusSeeOther)
}

// callback ends the flow: the login cookie must open and be unexpired, the state in the URL
// must be the cookie's, the code is exchanged with its verifier, the ID token verified
// (issuer, audience, expiry, nonce), and the sign-in marked finished (a replay is refused).
// Only then is a session stored: a signed-in one under a new ID that lasts as long as the ID
// token, replacing any session the browser had.
func (c *Console) callback(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	refuse := func(msg string) {
		c.cookie.clearLogin(w)
		c.render(w, http.StatusBadRequest, "error.html", page{Title: "Sign-in failed", Error: msg, Data: "/ui/login"})
	}
	ck, err := r.Cookie(c.cookie.Login)
	if err != nil || ck.Value == "" {
		refuse("no sign-in is in progress in this browser (its login cookie is missing: the sign-in was started in another browser, or took longer than 10 minutes); start again")
		return
	}
	keys, err := c.loginKeys(r.Context(), false)
	if err != nil {
		c.o.Logger.Error("ui: session store", "err", err)
		c.unavailable(w)
		return
	}
	l, err := keys.open(c.cookie.Login, ck.Value)
	if errors.Is(err, errLoginCookie) {
		// Perhaps sealed under a key another replica made since this one read the store.
		if keys, err = c.loginKeys(r.Context(), true); err != nil {
			c.o.Logger.Error("ui: session store", "err", err)
			c.unavailable(w)
			return
		}
		l, err = keys.open(c.cookie.Login, ck.Value)
	}
	switch {
	case err != nil:
		refuse("this browser's login cookie is not one this console sealed (altered, or from another server); start again")
		return
	case !c.o.Now().Before(l.Expires):
		refuse("this sign-in took longer than 10 minutes and has expired; start again")
		return
	case !sameToken(q.Get("state"), l.State):
		// Before the error: an answer of another sign-in, a link from any site, is not the
		// identity provider's word on this one (RFC 6749 §4.1.2.1 sends state with errors).
		refuse("the identity provider's answer does not belong to this browser's sign-in (state); start again")
		return
	case q.Get("error") != "":
		refuse("the identity provider refused the sign-in: " + oauthErrorCode(q.Get("error")))
		return
	}
	conf, provider, err := c.oauth(r.Context())
	if err != nil {
		refuse("cannot reach the identity provider; try again later")
		return
	}
	tok, err := conf.Exchange(oidc.ClientContext(r.Context(), c.o.HTTPClient), q.Get("code"), oauth2.VerifierOption(l.Verifier))
	if err != nil {
		c.o.Logger.Warn("ui: code exchange failed", exchangeFailure(err)...)
		refuse("the identity provider did not accept the sign-in code (codes are good for one use); start again")
		return
	}
	raw, _ := tok.Extra("id_token").(string)
	idt, err := provider.Verifier(&oidc.Config{ClientID: c.o.ClientID, Now: c.o.Now,
		SupportedSigningAlgs: []string{oidc.RS256, oidc.ES256, oidc.ES384, oidc.PS256, oidc.EdDSA}}).Verify(r.Context(), raw)
	if err != nil || !sameToken(idt.Nonce, l.Nonce) {
		refuse("the identity provider's ID token does not verify or does not belong to this sign-in (nonce); start again")
		return
	}
	// Authenticated: from here on the store may be written. The sign-in is spent first, so
	// that the same cookie and callback URL presented again never make a second session.
	first, err := c.sessions.store.SpendConsoleLogin(r.Context(), spentName(l.State), l.Expires)
	if err != nil {
		c.o.Logger.Error("ui: session store", "err", err)
		c.unavailable(w)
		return
	}
	if !first {
		refuse("this sign-in was already used (a replayed callback); start again")
		return
	}
	var claims struct {
		Username string `json:"preferred_username"`
		Email    string `json:"email"`
	}
	_ = idt.Claims(&claims)
	user := cmpOr(claims.Username, claims.Email, idt.Subject)
	var old string
	if sc, err := r.Cookie(c.cookie.Name); err == nil {
		old = sc.Value
	}
	id, err := c.sessions.put(r.Context(), old, session{csrf: randomToken(), expires: idt.Expiry, idToken: raw, user: user, sub: idt.Subject})
	if errors.Is(err, errTooManySessions) {
		refuse("too many people are signed in to this console replica; try again later")
		return
	}
	if err != nil {
		c.o.Logger.Error("ui: session store", "err", err)
		refuse("the console could not keep your session; try again in a moment")
		return
	}
	c.cookie.clearLogin(w)
	c.cookie.set(w, id, max(1, int(idt.Expiry.Sub(c.o.Now())/time.Second)))
	http.Redirect(w, r, LocalPath(l.ReturnTo), http.StatusSeeOther)
}

// oauthErrorCode is an error answer's code as the page shows it: the registered codes (RFC
// 6749 §4.1.2.1, OpenID Connect Core §3.1.2.6) are lower-case words joined by "_"; any other
// text is not shown, so that the console's page never says what a URL made up says.
func oauthErrorCode(code string) string {
	if len(code) > 64 || strings.TrimLeft(code, "abcdefghijklmnopqrstuvwxyz_") != "" {
		return "an error code this console does not show; the identity provider's log has it"
	}
	return code
}

// exchangeFailure is what the log may keep of a failed code exchange (RFC 6749 §5.2): the
// token endpoint's status and OAuth error code when it answered, else the error (a transport's,
// which names the endpoint's URL). Not the answer's body nor its error_description, which
// oauth2.RetrieveError's text holds: an endpoint (or a proxy before it) may echo the request
// there, the authorization code and the PKCE verifier with it.
func exchangeFailure(err error) []any {
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) {
		return []any{"err", err}
	}
	attrs := []any{"error_code", oauthErrorCode(re.ErrorCode)}
	if re.ErrorCode == "" {
		attrs = []any{"error_code", "none"}
	}
	if re.Response != nil {
		attrs = append(attrs, "status", re.Response.StatusCode)
	}
	return attrs
}

func cmpOr(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

func (c *Console) logout(w http.ResponseWriter, r *http.Request, id string, s session) {
	if err := c.sessions.end(r.Context(), id); err != nil {
		// Not signed out anywhere: say so rather than pretend.
		c.o.Logger.Error("ui: session store", "err", err)
		c.render(w, http.StatusServiceUnavailable, "error.html", page{Title: "Error", User: s.user, CSRF: s.csrf,
			Error: "the console could not end your session (its store is unavailable); try again in a moment"})
		return
	}
	c.cookie.clear(w)
	c.render(w, http.StatusOK, "signin.html", page{Title: "Signed out", Data: "/ui/login"})
}

// requestView is one request as a page shows it, with the policy's view of what it lacks.
type requestView struct {
	ca.AccessRequest
	State     string
	Counted   []ca.Approval
	Needs     int
	Own       bool
	Hash      string
	Decidable bool
	// Recordings are the sessions recorded under the request (its page only); RecordingsNote
	// says why they are not shown.
	Recordings     []recordingRow
	RecordingsNote string
	RecordingsNext string // the link to the next page of recordings, "" on the last
}

func (c *Console) view(r ca.AccessRequest, sub string) requestView {
	v := requestView{AccessRequest: r, State: string(r.StateAt(c.o.Now())), Hash: r.ContentHash()}
	for _, a := range r.Approvals {
		if a.ContentHash == v.Hash { // an approval of other content never counts (ca.checkDecision)
			v.Counted = append(v.Counted, a)
		}
	}
	v.Needs = max(0, r.ApprovalsRequired-len(v.Counted))
	v.Own = r.Requester.Subject == sub // a hint on the page; the domain refuses self-approval by canonical identity and e-mail
	v.Decidable = v.State == string(ca.RequestPending)
	return v
}

func (c *Console) pending(w http.ResponseWriter, r *http.Request, _ string, s session) {
	rs, next, err := c.requestsPage(r, s, ca.RequestQuery{Pending: true})
	if err != nil {
		c.fail(w, s, err)
		return
	}
	var vs []requestView
	for _, q := range rs {
		vs = append(vs, c.view(q, s.sub))
	}
	c.render(w, http.StatusOK, "pending.html", page{Title: "Pending requests", User: s.user, CSRF: s.csrf,
		Data: map[string]any{"Requests": vs, "Next": next}})
}

func (c *Console) request(w http.ResponseWriter, r *http.Request, _ string, s session) {
	q, err := c.o.Requests.GetAccessRequest(r.Context(), s.idToken, r.PathValue("id"))
	if err != nil {
		c.fail(w, s, err)
		return
	}
	v := c.view(q, s.sub)
	if v.Recordings, v.RecordingsNote, v.RecordingsNext, err = c.requestRecordings(r.Context(), s, q.ID, q.CreatedAt, r.URL.Query().Get("cursor")); err != nil {
		c.fail(w, s, err)
		return
	}
	c.render(w, http.StatusOK, "request.html", page{Title: "Request " + q.ID, User: s.user, CSRF: s.csrf, Data: v})
}

// decide approves or denies through the same domain call as POST /v1/requests/ID/approve,
// naming the content hash the page showed: an approval counts only for what the approver saw.
func (c *Console) decide(approve bool) func(http.ResponseWriter, *http.Request, string, session) {
	return func(w http.ResponseWriter, r *http.Request, _ string, s session) {
		id := r.PathValue("id")
		_, err := c.o.Requests.DecideAccessRequest(r.Context(), s.idToken, id, ca.AccessDecision{Approve: approve,
			ContentHash: r.PostForm.Get("content_hash"), Reason: r.PostForm.Get("reason")})
		if err != nil {
			c.fail(w, s, err)
			return
		}
		http.Redirect(w, r, "/ui/requests/"+url.PathEscape(id), http.StatusSeeOther)
	}
}

// revoke ends a request through the same domain call as POST /v1/requests/ID/cancel: for an
// administrator (policy kind "revoke") that revokes it and every certificate issued under it;
// anyone else is refused there (a requester's own cancel is `sshca request cancel`).
func (c *Console) revoke(w http.ResponseWriter, r *http.Request, _ string, s session) {
	id := r.PathValue("id")
	q, err := c.o.Requests.GetAccessRequest(r.Context(), s.idToken, id)
	if err != nil {
		c.fail(w, s, err)
		return
	}
	if q.Requester.Subject == s.sub {
		c.render(w, http.StatusForbidden, "error.html", page{Title: "Refused", User: s.user, CSRF: s.csrf,
			Error: "the console revokes others' access; end your own request with sshca request cancel " + id})
		return
	}
	if strings.TrimSpace(r.PostForm.Get("reason")) == "" {
		c.render(w, http.StatusBadRequest, "error.html", page{Title: "Refused", User: s.user, CSRF: s.csrf,
			Error: "reason is required to revoke someone else's access: say why"})
		return
	}
	if _, err := c.o.Requests.CancelAccessRequest(r.Context(), s.idToken, id, r.PostForm.Get("reason")); err != nil {
		c.fail(w, s, err)
		return
	}
	http.Redirect(w, r, "/ui/access", http.StatusSeeOther)
}

// holding is one approved request in its window and the certificates issued under it.
type holding struct {
	requestView
	Serials []string
}

// access lists who holds access now: the approved requests whose window is open and the
// certificates issued under them, filtered by identity and principal. It shows the requests
// the signed-in user may see (its own and those it may decide), as the API would.
func (c *Console) access(w http.ResponseWriter, r *http.Request, _ string, s session) {
	rs, next, err := c.requestsPage(r, s, ca.RequestQuery{})
	if err != nil {
		c.fail(w, s, err)
		return
	}
	ident, principal := strings.TrimSpace(r.URL.Query().Get("identity")), strings.TrimSpace(r.URL.Query().Get("principal"))
	var hs []holding
	for _, q := range rs {
		v := c.view(q, s.sub)
		// Approved and in its window, or revoked before its window ended (flagged): a
		// certificate lives no longer than the window it was issued in.
		live := v.State == string(ca.RequestApproved) || q.Status == ca.RequestRevoked && c.o.Now().Before(q.NotAfter)
		if !live {
			continue
		}
		if ident != "" && !strings.Contains(q.Requester.Name(), ident) && !strings.Contains(q.Requester.Email, ident) {
			continue
		}
		if principal != "" && !slices.Contains(q.Principals, principal) {
			continue
		}
		h := holding{requestView: v}
		for _, sn := range q.Serials {
			h.Serials = append(h.Serials, strconv.FormatUint(sn, 10))
		}
		hs = append(hs, h)
	}
	data := map[string]any{"Holdings": hs, "Identity": ident, "Principal": principal, "Next": next}
	if c.o.Certificates != nil {
		// The inventory for readers, its first page (a page holds what one browser can show;
		// `sshca certs list` reads every page); anyone else sees the requests above and a note.
		page, err := c.o.Certificates.ListCertificates(r.Context(), s.idToken, ca.CertQuery{Identity: ident, Principal: principal, Limit: InventoryPageLimit})
		switch {
		case err == nil:
			data["Inventory"] = page.Certificates
			if !page.Next.IsZero() {
				data["InventoryMore"] = fmt.Sprintf("The %d certificates soonest to expire are shown; narrow by identity or principal, or list them all with sshca certs list.", InventoryPageLimit)
			}
		case ca.KindOf(err) == ca.KindDenied:
			data["InventoryNote"] = "The whole certificate inventory is shown to those the policy lets read it (administrators and auditors)."
		default:
			c.fail(w, s, err)
			return
		}
	}
	c.render(w, http.StatusOK, "access.html", page{Title: "Who holds access now", User: s.user, CSRF: s.csrf, Data: data})
}
