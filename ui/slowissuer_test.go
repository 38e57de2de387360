package ui

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/identity/devissuer"
)

// TestSignInAfterStalledKeySet: the console's first fetch of the issuer's key set stalls (the
// issuer accepts the request and never answers, as a slowloris or a wedged provider does).
// That sign-in fails at its request's deadline, as it must; but go-oidc fetches the key set in
// the background, without the request's cancellation, and every later sign-in waits for that
// same fetch: with no time bound on the console's issuer client, the console refused every
// sign-in from then on, however healthy the issuer was again. The fetch is bounded in time
// (issuerTimeout), and a sign-in after it works. Real HTTP servers on loopback, the dev issuer.
func TestSignInAfterStalledKeySet(t *testing.T) {
	r := &rig{t: t, now: time.Now()}
	mux := http.NewServeMux()
	r.srv = httptest.NewServer(mux)
	iss, err := devissuer.New(r.srv.URL+"/idp", devissuer.Options{Audience: "sshca", Secret: secret, Now: r.clock})
	if err != nil {
		t.Fatal(err)
	}
	var stall atomic.Bool
	stall.Store(true)
	release := make(chan struct{})
	var stalled sync.WaitGroup
	t.Cleanup(func() { close(release); r.srv.CloseClientConnections(); r.srv.Close(); stalled.Wait() })
	idp := http.StripPrefix("/idp", iss.Handler())
	mux.Handle("/idp/", http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/idp/jwks" && stall.Load() {
			stalled.Add(1)
			defer stalled.Done()
			select { // answers nothing until the client gives up (or the test ends)
			case <-req.Context().Done():
			case <-release:
			}
			return
		}
		idp.ServeHTTP(w, req)
	}))
	now := time.Now()
	r.reqs = &fakeRequests{req: ca.AccessRequest{ID: "req_AAAAAAAAAAAAAAAA", Requester: ca.Identity{Issuer: r.srv.URL + "/idp", Subject: "alice"},
		Principals: []string{"root"}, TTLSeconds: 1800, Reason: "OPS-1234 disk full", CreatedAt: now,
		PendingUntil: now.Add(time.Hour), ApprovalsRequired: 1, Status: ca.RequestPending}}
	r.console, err = New(Options{PublicURL: r.srv.URL, Issuer: r.srv.URL + "/idp", ClientID: "sshca", Requests: r.reqs, Now: r.clock})
	if err != nil {
		t.Fatal(err)
	}
	console := r.console.Handler()
	mux.Handle("/ui/", http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		// serve's request deadline (services.RequestDeadline)
		ctx, cancel := context.WithTimeout(req.Context(), time.Second)
		defer cancel()
		console.ServeHTTP(w, req.WithContext(ctx))
	}))
	signedIn := func(who string) bool {
		resp, page := r.signIn(r.browser(), who, "/ui/requests/"+r.reqs.req.ID)
		return resp.Request.URL.Path == "/ui/requests/"+r.reqs.req.ID && strings.Contains(page, "OPS-1234 disk full")
	}
	if signedIn("bob") {
		t.Fatal("signed in while the issuer's key set stalled: the test does not test a stalled key set")
	}
	stall.Store(false) // the issuer is healthy again; the fetch that stalled is still waiting
	deadline := time.Now().Add(issuerTimeout + 5*time.Second)
	for !signedIn("bob") {
		if time.Now().After(deadline) {
			t.Fatalf("no sign-in %v after the issuer's key set stalled once, the issuer healthy since", issuerTimeout+5*time.Second)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
