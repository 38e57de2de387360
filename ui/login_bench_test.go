package ui

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/identity/devissuer"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
)

// BenchmarkLoginStart: GET /ui/login (a sign-in started, not finished) against a console whose
// sessions are on a real redis-server, in process. Before stop 15 each start stored a login
// session there (one SET); now it seals a cookie and stores nothing.
func BenchmarkLoginStart(b *testing.B) {
	srv := testenv.StartRedis(b)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	b.Cleanup(func() { rdb.Close() })
	mux := http.NewServeMux()
	srvIdP := httptest.NewServer(mux)
	b.Cleanup(srvIdP.Close)
	iss, err := devissuer.New(srvIdP.URL+"/idp", devissuer.Options{Audience: "sshca", Secret: secret})
	if err != nil {
		b.Fatal(err)
	}
	mux.Handle("/idp/", http.StripPrefix("/idp", iss.Handler()))
	c, err := New(Options{PublicURL: srvIdP.URL, Issuer: srvIdP.URL + "/idp", ClientID: "sshca", Requests: &fakeRequests{},
		Sessions: store.NewRedis(rdb, store.RedisOptions{})})
	if err != nil {
		b.Fatal(err)
	}
	h := c.Handler()
	req := httptest.NewRequest(http.MethodGet, "/ui/login?return=/ui/requests/req_AAAAAAAAAAAAAAAA", nil)
	h.ServeHTTP(httptest.NewRecorder(), req) // discovery and the login key, once
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusSeeOther {
			b.Fatal(w.Code)
		}
	}
	b.StopTimer()
	n, _ := rdb.DBSize(b.Context()).Result()
	b.ReportMetric(float64(n), "redis-keys")
}
