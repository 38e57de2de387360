package ui

import (
	"context"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

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

// TestLoginKeyRotates: two console replicas on one real redis-server, sharing the test's clock
// with the store, the login key replaced every minute. A sign-in whose cookie was sealed before
// a rotation (made by the other replica) finishes after it, on the replica whose cached key is
// the one replaced; a cookie sealed two rotations ago, still within its 10 minutes, opens on
// neither replica (the sign-in page says to start again, and nothing is exchanged); Redis
// holds one key set, rotated once per period.
func TestLoginKeyRotates(t *testing.T) {
	srv := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	r := &rig{t: t, now: time.Now()}
	st := store.NewRedis(rdb, store.RedisOptions{Now: r.clock})
	const every = time.Minute
	r = newRigOn(t, r, nil, st, every)
	advance := func(d time.Duration) { r.mu.Lock(); r.now = r.now.Add(d); r.mu.Unlock() }
	on := func(i int32) { r.serving.Store(i) }
	// start opens the sign-in link in a new browser on replica i: the login cookie is sealed
	// now, and the issuer's form is returned for later.
	start := func(i int32) (*http.Client, *http.Response, string) {
		t.Helper()
		on(i)
		c := r.browser()
		resp, err := c.Get(r.srv.URL + "/ui/login?return=/ui/")
		if err != nil {
			t.Fatal(err)
		}
		return c, resp, body(t, resp)
	}
	// finish submits the issuer's form (the code is made now) and follows the callback on
	// replica i, returning where the browser landed and the page.
	finish := func(c *http.Client, resp *http.Response, page string, i int32) (string, string) {
		t.Helper()
		form := url.Values{}
		for _, m := range regexp.MustCompile(`name="([a-z_]+)" value="([^"]*)"`).FindAllStringSubmatch(page, -1) {
			form.Set(m[1], htmlUnescape(m[2]))
		}
		form.Set("sub", "bob")
		form.Set("email", "bob@example.com")
		on(i)
		resp, err := c.PostForm(resp.Request.URL.String(), form)
		if err != nil {
			t.Fatal(err)
		}
		return resp.Request.URL.Path, body(t, resp)
	}
	keyOf := func() string {
		t.Helper()
		k, err := rdb.HGet(ctx, store.Keys{}.ConsoleLoginKeys(), "cur").Result()
		if err != nil {
			t.Fatal(err)
		}
		return k
	}

	c1, resp1, page1 := start(0) // sealed under the first key, cached by replica 0
	// Two more under the first key, left waiting: one to finish on each replica.
	type signIn struct {
		c    *http.Client
		resp *http.Response
		page string
	}
	var waiting []signIn
	for range 2 {
		c, resp, page := start(0)
		waiting = append(waiting, signIn{c, resp, page})
	}
	first := keyOf()
	advance(every + time.Second)
	start(1) // replica 1 rotates
	second := keyOf()
	if second == first {
		t.Fatal("the key did not rotate a period after it was made")
	}
	if path, page := finish(c1, resp1, page1, 0); path != "/ui/" || !strings.Contains(page, "bob") {
		t.Fatalf("a cookie sealed before one rotation: landed on %s:\n%.400s", path, page)
	}
	if keyOf() != second {
		t.Fatal("replica 0, refreshing its keys within the period, rotated again")
	}
	advance(every + time.Second)
	start(0) // replica 0 rotates: the first key is two rotations old
	if k := keyOf(); k == second || k == first {
		t.Fatal("the key did not rotate a second time")
	}
	for i, w := range waiting {
		path, got := finish(w.c, w.resp, w.page, int32(i))
		if path != "/ui/callback" || !strings.Contains(got, "not one this console sealed") {
			t.Errorf("replica %d: a cookie sealed two rotations ago (%s old) landed on %s:\n%.400s", i, 2*every+2*time.Second, path, got)
		}
	}
	if n, err := rdb.Exists(ctx, store.Keys{}.ConsoleLoginKeys()).Result(); err != nil || n != 1 {
		t.Errorf("login key set: %d keys, %v", n, err)
	}
}
