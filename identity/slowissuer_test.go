package identity_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/identity/devissuer"
)

// TestStalledDiscoveryKeepsDeadlines: an issuer that was down when the server started and
// now accepts its discovery request without ever answering (a slowloris, a wedged provider)
// holds no request past that request's deadline: every token of that issuer is refused 503
// within its deadline, the first one (which starts discovery) and those that arrive while
// the discovery is in flight alike, and discovery is not started once per request. Before,
// the first request waited for the HTTP client's 10 s timeout under the issuer's lock, and
// every other request of that issuer queued behind the lock as long. Real HTTP on loopback.
func TestStalledDiscoveryKeepsDeadlines(t *testing.T) {
	var stall atomic.Bool
	var discoveries atomic.Int64
	release := make(chan struct{})
	var stalled sync.WaitGroup
	mux := http.NewServeMux()
	srv := httptest.NewServer(mux)
	t.Cleanup(func() { close(release); srv.CloseClientConnections(); srv.Close(); stalled.Wait() })
	url := srv.URL + "/oidc"
	iss, err := devissuer.New(url, devissuer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	idp := http.StripPrefix("/oidc", iss.Handler())
	mux.Handle("/oidc/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/oidc/.well-known/openid-configuration" {
			idp.ServeHTTP(w, r)
			return
		}
		discoveries.Add(1)
		if !stall.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable) // down at start: a quick failure
			return
		}
		stalled.Add(1)
		defer stalled.Done()
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	v, err := identity.New(context.Background(), identity.Config{Issuers: []identity.IssuerConfig{{IssuerURL: url, Audiences: []string{"sshca"}}}},
		identity.WithClock(clock))
	if err != nil {
		t.Fatal(err)
	}
	tok := mint(t, iss, map[string]any{"sub": "u"})
	stall.Store(true)
	mu.Lock()
	now = now.Add(time.Minute) // past the wait between discovery attempts
	mu.Unlock()

	const deadline = 300 * time.Millisecond
	const callers = 8
	var wg sync.WaitGroup
	took := make([]time.Duration, callers)
	errs := make([]error, callers)
	for i := range callers {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), deadline)
			defer cancel()
			begin := time.Now()
			_, errs[i] = v.Authenticate(ctx, tok)
			took[i] = time.Since(begin)
		})
		time.Sleep(20 * time.Millisecond) // the first starts discovery; the others find it in flight
	}
	wg.Wait()
	for i := range callers {
		if ca.KindOf(errs[i]) != ca.KindUnavailable || took[i] > deadline+time.Second {
			t.Errorf("request %d: %v after %v; want unavailable within its deadline of %v", i, errs[i], took[i], deadline)
		}
	}
	if n := discoveries.Load(); n != 2 {
		t.Errorf("%d discovery requests, want 2 (the one at start, and one for the requests in flight together)", n)
	}
}
