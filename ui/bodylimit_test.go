package ui

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/sshca/sshca/internal/bodylimit"
)

// TestSignInDiscoveryBounded: the console reads at most bodylimit.Issuer bytes of the
// issuer's discovery document (go-oidc would read it whole). A document of exactly that
// many bytes starts the sign-in (a redirect to the issuer); one byte more is the "cannot
// reach the identity provider" page (503) and a logged error naming the URL and the bound.
func TestSignInDiscoveryBounded(t *testing.T) {
	for _, size := range []int{bodylimit.Issuer, bodylimit.Issuer + 1} {
		var idp *httptest.Server
		idp = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			doc := map[string]any{"issuer": idp.URL, "authorization_endpoint": idp.URL + "/authorize",
				"token_endpoint": idp.URL + "/token", "jwks_uri": idp.URL + "/jwks", "x_padding": ""}
			b, _ := json.Marshal(doc)
			doc["x_padding"] = strings.Repeat("a", size-len(b))
			b, _ = json.Marshal(doc)
			_, _ = w.Write(b)
		}))
		var logged bytes.Buffer
		c, err := New(Options{PublicURL: "http://127.0.0.1:8443", Issuer: idp.URL, ClientID: "sshca", Requests: &fakeRequests{},
			Logger: slog.New(slog.NewTextHandler(&logged, nil))})
		if err != nil {
			t.Fatal(err)
		}
		rec := httptest.NewRecorder()
		c.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/ui/login", nil))
		idp.Close()
		if size == bodylimit.Issuer {
			if loc := rec.Header().Get("Location"); rec.Code != http.StatusSeeOther || !strings.HasPrefix(loc, idp.URL+"/authorize?") {
				t.Errorf("discovery of exactly %d bytes: %d, Location %q; want a redirect to the issuer", size, rec.Code, loc)
			}
			continue
		}
		want := fmt.Sprintf("the answer of %s/.well-known/openid-configuration is longer than %d bytes", idp.URL, bodylimit.Issuer)
		if rec.Code != http.StatusServiceUnavailable || !strings.Contains(logged.String(), want) {
			t.Errorf("discovery one byte over: %d, log %q; want 503 and a log line containing %q", rec.Code, logged.String(), want)
		}
	}
}
