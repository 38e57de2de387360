package ui

import (
	"context"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
)

// TestSessionsSharedByReplicas: two console replicas on one real redis-server, behind a load
// balancer that sends each request where the test says. A sign-in started on replica 0
// finishes on replica 1 (the login cookie opens on both), the signed-in session made there acts
// on replica 0 (an approval with its CSRF token), and a sign-out on replica 1 ends it on
// replica 0 too. Redis holds neither the cookie nor the ID token, in no key name or value.
func TestSessionsSharedByReplicas(t *testing.T) {
	srv := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	r := newRigWith(t, nil, store.NewRedis(rdb, store.RedisOptions{}))
	c := r.browser()
	on := func(i int32) { r.serving.Store(i) }

	// Sign-in: the link on replica 0, the issuer's form, the callback on replica 1.
	on(0)
	resp, err := c.Get(r.srv.URL + "/ui/login?return=" + url.QueryEscape("/ui/requests/"+r.reqs.req.ID))
	if err != nil {
		t.Fatal(err)
	}
	page := body(t, resp)
	form := url.Values{}
	for _, m := range regexp.MustCompile(`name="([a-z_]+)" value="([^"]*)"`).FindAllStringSubmatch(page, -1) {
		form.Set(m[1], htmlUnescape(m[2]))
	}
	form.Set("sub", "bob")
	form.Set("email", "bob@example.com")
	form.Set("groups", "sre-leads")
	on(1)
	resp, err = c.PostForm(resp.Request.URL.String(), form)
	if err != nil {
		t.Fatal(err)
	}
	page = body(t, resp)
	if resp.Request.URL.Path != "/ui/requests/"+r.reqs.req.ID || !strings.Contains(page, "OPS-1234 disk full") {
		t.Fatalf("sign-in finished on replica 1 landed on %s:\n%s", resp.Request.URL, page)
	}
	cookie := ""
	for _, ck := range c.Jar.Cookies(resp.Request.URL) {
		if ck.Name == r.console.cookie.Name {
			cookie = ck.Value
		}
	}
	if cookie == "" {
		t.Fatal("no session cookie after sign-in")
	}

	// Act on replica 0 with the session replica 1 made.
	on(0)
	resp, _ = c.Get(r.srv.URL + "/ui/requests/" + r.reqs.req.ID)
	page = body(t, resp)
	if !strings.Contains(page, `<span class="who">bob</span>`) || strings.Contains(page, `id="signin"`) {
		t.Fatalf("replica 0 does not know the session replica 1 made:\n%s", page)
	}
	csrf := csrfOf(t, page)
	resp, err = c.PostForm(r.srv.URL+"/ui/requests/"+r.reqs.req.ID+"/approve", url.Values{"csrf": {csrf}, "content_hash": {r.reqs.req.ContentHash()}, "reason": {"looked"}})
	if err != nil {
		t.Fatal(err)
	}
	if p := body(t, resp); resp.StatusCode != http.StatusOK || len(r.reqs.decided) != 1 {
		t.Fatalf("approve on replica 0: %d, decisions %d\n%s", resp.StatusCode, len(r.reqs.decided), p)
	}

	// What Redis holds: sealed values under derived names.
	keys, err := rdb.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	idToken := r.reqs.tokens[len(r.reqs.tokens)-1]
	sessionsFound := 0
	for _, k := range keys {
		if strings.Contains(k, cookie) {
			t.Errorf("a Redis key names the cookie: %s", k)
		}
		if strings.HasPrefix(k, "sshca:console:session:") {
			sessionsFound++
		}
		v, _ := rdb.Get(ctx, k).Result()
		for _, secret := range []string{idToken, cookie, csrf, "bob@example.com"} {
			if strings.Contains(v, secret) {
				t.Errorf("Redis key %s holds %.12q… in the clear", k, secret)
			}
		}
	}
	if sessionsFound != 1 {
		t.Errorf("%d console sessions in Redis, want 1 (a sign-in in progress stores none): %v", sessionsFound, keys)
	}

	// Sign-out on replica 1 ends the session on replica 0.
	on(1)
	resp, err = c.PostForm(r.srv.URL+"/ui/logout", url.Values{"csrf": {csrf}})
	if err != nil {
		t.Fatal(err)
	}
	body(t, resp)
	on(0)
	resp, _ = c.Get(r.srv.URL + "/ui/")
	if p := body(t, resp); !strings.Contains(p, `id="signin"`) {
		t.Fatalf("after sign-out on replica 1, replica 0 still shows:\n%s", p)
	}
	req, _ := http.NewRequest(http.MethodPost, r.srv.URL+"/ui/requests/"+r.reqs.req.ID+"/approve", strings.NewReader(url.Values{"csrf": {csrf}, "content_hash": {r.reqs.req.ContentHash()}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.AddCookie(&http.Cookie{Name: r.console.cookie.Name, Value: cookie}) // the old cookie, replayed
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if body(t, resp); resp.StatusCode != http.StatusUnauthorized || len(r.reqs.decided) != 1 {
		t.Errorf("the signed-out cookie replayed on replica 0: %d, decisions %d; want 401 and no decision", resp.StatusCode, len(r.reqs.decided))
	}
	if n, _ := rdb.Keys(ctx, "sshca:console:session:*").Result(); len(n) != 0 {
		t.Errorf("sessions left in Redis after sign-out: %v", n)
	}
}
