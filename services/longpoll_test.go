package services_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/krl"
	"github.com/sshca/sshca/revocation"
	"github.com/sshca/sshca/services"
)

// fakeFeed is a KRLFeed whose state changes when the test says so, counting its reads.
type fakeFeed struct {
	mu      sync.Mutex
	st      ca.RevocationState
	changed chan struct{}
	reads   atomic.Int64
	notices atomic.Int64 // Changed calls: one as each request arrives
}

func (f *fakeFeed) States(context.Context) ([]ca.RevocationState, error) {
	f.reads.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	return []ca.RevocationState{f.st}, nil
}

func (f *fakeFeed) Changed() <-chan struct{} {
	f.notices.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changed
}

// revoke adds a serial and wakes the waiters, as the follower does on a change.
func (f *fakeFeed) revoke(serial string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.st.Version++
	f.st.Entries = append(f.st.Entries, ca.RevocationEntry{Kind: ca.RevokedSerial, Value: serial, Expiry: time.Now().Add(time.Hour)})
	close(f.changed)
	f.changed = make(chan struct{})
}

// longPollServer serves the API with feed behind GET /v1/krl, as serve wires it: the rate
// limiter, the request deadline with the long poll exempt, and a server write timeout.
func longPollServer(t *testing.T, feed *fakeFeed, limits services.RateLimits, writeTimeout time.Duration) (*httptest.Server, chan struct{}) {
	t.Helper()
	stop := make(chan struct{})
	svc := &fakeService{key: newKey(t)}
	mux := services.NewHTTPHandler(services.MakeEndpoints(svc), services.HTTPOptions{
		RenderKRL: revocation.EncodeKRL, KRLFeed: feed, Stop: stop,
	})
	limiter := services.NewRateLimiter(limits, nil)
	srv := httptest.NewUnstartedServer(limiter.Handler(services.RequestDeadline(100*time.Millisecond, services.IsLongPoll, mux)))
	srv.Config.WriteTimeout = writeTimeout
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, stop
}

func newFakeFeed(t *testing.T) *fakeFeed {
	return &fakeFeed{st: ca.RevocationState{CA: newKey(t).PublicKey(), Version: 1}, changed: make(chan struct{})}
}

// TestKRLLongPoll: an agent that has the current KRL waits; a change answers it at once with
// the new KRL; a wait that ends without change is a 304; an agent whose KRL differs gets the
// current one without waiting; the write timeout and the request deadline (both far shorter
// than the wait) do not cut a long poll off.
func TestKRLLongPoll(t *testing.T) {
	feed := newFakeFeed(t)
	srv, _ := longPollServer(t, feed, services.RateLimits{}, 300*time.Millisecond)

	resp, body := get(t, srv.URL+"/v1/krl?wait=25s", "")
	etag := resp.Header.Get("ETag")
	if resp.StatusCode != http.StatusOK || etag == "" || resp.Header.Get("X-KRL-Wait") != "25s" {
		t.Fatalf("first long poll without If-None-Match = %d, ETag %q, X-KRL-Wait %q; want 200 at once with both", resp.StatusCode, etag, resp.Header.Get("X-KRL-Wait"))
	}
	if _, err := krl.Parse(body); err != nil {
		t.Fatal(err)
	}

	// A change while waiting: answered with the new KRL, well past the write timeout and
	// the request deadline.
	type answer struct {
		resp *http.Response
		body []byte
		took time.Duration
	}
	done := make(chan answer, 1)
	begin := time.Now()
	go func() {
		resp, body, err := fetch(srv.URL+"/v1/krl?wait=10s", etag)
		if err != nil {
			t.Error(err)
			resp = &http.Response{Header: http.Header{}}
		}
		done <- answer{resp, body, time.Since(begin)}
	}()
	time.Sleep(700 * time.Millisecond)
	select {
	case a := <-done:
		t.Fatalf("the long poll answered %d after %s without a change", a.resp.StatusCode, a.took)
	default:
	}
	changedAt := time.Now()
	feed.revoke("42")
	a := <-done
	if a.resp.StatusCode != http.StatusOK || a.resp.Header.Get("ETag") == etag {
		t.Fatalf("long poll after a change = %d, ETag %q (had %q); want 200 with a new ETag", a.resp.StatusCode, a.resp.Header.Get("ETag"), etag)
	}
	k, err := krl.Parse(a.body)
	if err != nil || k.Version != revocation.ComposeVersion(0, 2) {
		t.Fatalf("the KRL of the long poll: version %v, err %v; want version 2", k, err)
	}
	if d := time.Since(changedAt); d > 200*time.Millisecond {
		t.Errorf("the long poll answered %s after the change", d)
	}
	etag = a.resp.Header.Get("ETag")

	// No change: 304 with the same ETag once the wait ends.
	begin = time.Now()
	resp, _ = get(t, srv.URL+"/v1/krl?wait=1s", etag)
	if took := time.Since(begin); resp.StatusCode != http.StatusNotModified || resp.Header.Get("ETag") != etag || took < time.Second {
		t.Errorf("long poll without change = %d after %s, ETag %q; want 304 after 1s with %q", resp.StatusCode, took, resp.Header.Get("ETag"), etag)
	}

	// An agent behind (another ETag) gets the current KRL without waiting.
	begin = time.Now()
	resp, _ = get(t, srv.URL+"/v1/krl?wait=10s", `"1-stale"`)
	if took := time.Since(begin); resp.StatusCode != http.StatusOK || took > time.Second {
		t.Errorf("long poll with an old ETag = %d after %s; want 200 at once", resp.StatusCode, took)
	}
	// And a plain GET is unchanged: 304 at once when the ETag matches.
	resp, _ = get(t, srv.URL+"/v1/krl", etag)
	if resp.StatusCode != http.StatusNotModified || resp.Header.Get("X-KRL-Wait") != "" {
		t.Errorf("plain GET with the current ETag = %d (X-KRL-Wait %q), want 304 without X-KRL-Wait", resp.StatusCode, resp.Header.Get("X-KRL-Wait"))
	}
}

// TestKRLLongPollOneReadPerChange: however many agents wait, a change costs one read of the
// states (shared by every waiter), not one per agent.
func TestKRLLongPollOneReadPerChange(t *testing.T) {
	feed := newFakeFeed(t)
	srv, _ := longPollServer(t, feed, services.RateLimits{}, time.Minute)
	resp, _ := get(t, srv.URL+"/v1/krl", "")
	etag := resp.Header.Get("ETag")
	const agents = 40
	var wg sync.WaitGroup
	codes := make(chan int, agents)
	before := feed.notices.Load()
	for range agents {
		wg.Go(func() {
			resp, _, err := fetch(srv.URL+"/v1/krl?wait=20s", etag)
			if err != nil {
				t.Error(err)
				codes <- 0
				return
			}
			codes <- resp.StatusCode
		})
	}
	// Each takes the change notice as it arrives (agents holding the KRL just read need no
	// read of their own).
	testEventually(t, 5*time.Second, "every agent waits", func() bool { return feed.notices.Load()-before == agents })
	arrived := feed.reads.Load()
	feed.revoke("7")
	wg.Wait()
	close(codes)
	for c := range codes {
		if c != http.StatusOK {
			t.Errorf("a waiting agent got %d after the change, want 200", c)
		}
	}
	if n := feed.reads.Load() - arrived; n != 1 {
		t.Errorf("%d reads of the states to answer %d waiting agents of one change, want 1", n, agents)
	}
}

// TestKRLLongPollShutdown: closing Stop answers every waiting long poll at once (304), so a
// graceful drain does not wait for the waits.
func TestKRLLongPollShutdown(t *testing.T) {
	feed := newFakeFeed(t)
	srv, stop := longPollServer(t, feed, services.RateLimits{}, time.Minute)
	resp, _ := get(t, srv.URL+"/v1/krl", "")
	etag := resp.Header.Get("ETag")
	done := make(chan int, 1)
	go func() {
		resp, _, err := fetch(srv.URL+"/v1/krl?wait=25s", etag)
		if err != nil {
			t.Error(err)
			done <- 0
			return
		}
		done <- resp.StatusCode
	}()
	testEventually(t, 5*time.Second, "the agent waits", func() bool { return feed.notices.Load() == 2 })
	begin := time.Now()
	close(stop)
	select {
	case code := <-done:
		if code != http.StatusNotModified {
			t.Errorf("long poll at shutdown = %d, want 304", code)
		}
		if d := time.Since(begin); d > time.Second {
			t.Errorf("long poll ended %s after shutdown began", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the long poll still waits 5s after shutdown began")
	}
}

// TestKRLLongPollCap: one address holds at most LongPollsPerAddress long polls; the next gets
// 429 with Retry-After, and plain KRL pulls of the address still go through.
func TestKRLLongPollCap(t *testing.T) {
	feed := newFakeFeed(t)
	srv, stop := longPollServer(t, feed, services.RateLimits{LongPollsPerAddress: 2, KRLInFlight: 1}, time.Minute)
	defer close(stop)
	resp, _ := get(t, srv.URL+"/v1/krl", "")
	etag := resp.Header.Get("ETag")
	for range 2 {
		go fetch(srv.URL+"/v1/krl?wait=20s", etag)
	}
	testEventually(t, 5*time.Second, "two agents wait", func() bool { return feed.notices.Load() == 3 })
	resp, body := get(t, srv.URL+"/v1/krl?wait=20s", etag)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(body), "long polls") {
		t.Errorf("third long poll from one address = %d (Retry-After %q) %s; want 429 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	// The waiting polls hold no in-flight slot (KRLInFlight is 1).
	if resp, _ := get(t, srv.URL+"/v1/krl", etag); resp.StatusCode != http.StatusNotModified {
		t.Errorf("plain GET /v1/krl while two long polls wait = %d, want 304", resp.StatusCode)
	}
}

// TestKRLLongPollBadWait: a wait that is not a duration is a 400 naming wait.
func TestKRLLongPollBadWait(t *testing.T) {
	srv, _ := longPollServer(t, newFakeFeed(t), services.RateLimits{}, time.Minute)
	for _, w := range []string{"soon", "-5s"} {
		resp, body := get(t, srv.URL+"/v1/krl?wait="+w, `"x"`)
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "wait") {
			t.Errorf("wait=%s = %d %s, want 400 naming wait", w, resp.StatusCode, body)
		}
	}
	// Whole seconds, and a wait beyond the cap is shortened (not refused).
	for _, w := range []string{"1", "10m"} {
		resp, _ := get(t, srv.URL+"/v1/krl?wait="+w, "")
		if resp.StatusCode != http.StatusOK {
			t.Errorf("wait=%s = %d, want 200", w, resp.StatusCode)
		}
		if w == "10m" && resp.Header.Get("X-KRL-Wait") != services.MaxLongPollWait.String() {
			t.Errorf("wait=10m granted %q, want %s", resp.Header.Get("X-KRL-Wait"), services.MaxLongPollWait)
		}
	}
}

func testEventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// fetch is get for other goroutines than the test's: it returns its error.
func fetch(url, ifNoneMatch string) (*http.Response, []byte, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return nil, nil, err
	}
	if ifNoneMatch != "" {
		req.Header.Set("If-None-Match", ifNoneMatch)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, b, err
}

// TestIsLongPoll: the long polls, exempt from the request deadline and the in-flight bounds,
// are GET /v1/krl and GET /v1/requests/{id} with a wait, and nothing else: not a change of a
// request, not the list, not a path below an ID.
func TestIsLongPoll(t *testing.T) {
	for _, tt := range []struct {
		method, target string
		want           bool
	}{
		{"GET", "/v1/krl?wait=25s", true},
		{"GET", "/v1/requests/req_aaaaaaaaaaaaaaaa?wait=25s&seen=pending/0", true},
		{"GET", "/v1/krl", false},
		{"GET", "/v1/requests/req_aaaaaaaaaaaaaaaa", false},
		{"GET", "/v1/requests?wait=25s", false},
		{"GET", "/v1/requests/?wait=25s", false},
		{"GET", "/v1/requests/req_aaaaaaaaaaaaaaaa/approve?wait=25s", false},
		{"POST", "/v1/requests/req_aaaaaaaaaaaaaaaa?wait=25s", false},
		{"GET", "/v1/certs?wait=25s", false},
		// A wait of zero answers at once, and a wait that does not parse is a 400 at once:
		// neither is a long poll, so neither takes a long poll's slot nor escapes the
		// in-flight bounds and the deadline of the requests that answer at once.
		{"GET", "/v1/krl?wait=0", false},
		{"GET", "/v1/krl?wait=0s", false},
		{"GET", "/v1/krl?wait=", false},
		{"GET", "/v1/krl?wait=-5s", false},
		{"GET", "/v1/krl?wait=soon", false},
		{"GET", "/v1/requests/req_aaaaaaaaaaaaaaaa?wait=0", false},
		{"GET", "/v1/krl?wait=1", true},
		{"GET", "/v1/krl?wait=1ms", true},
	} {
		r := httptest.NewRequest(tt.method, tt.target, nil)
		if got := services.IsLongPoll(r); got != tt.want {
			t.Errorf("IsLongPoll(%s %s) = %v, want %v", tt.method, tt.target, got, tt.want)
		}
	}
}
