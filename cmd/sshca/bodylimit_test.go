package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/sshca/sshca/client"
	"github.com/sshca/sshca/internal/bodylimit"
)

// paddedIssuer serves a discovery document of exactly size bytes (a padding member makes up
// the difference), without a device authorization endpoint, and a key set of one entry.
func paddedIssuer(t *testing.T, size int) *httptest.Server {
	t.Helper()
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/jwks" {
			_, _ = io.WriteString(w, `{"keys":[{"kty":"EC"}]}`)
			return
		}
		doc := map[string]any{"issuer": srv.URL, "authorization_endpoint": srv.URL + "/authorize",
			"token_endpoint": srv.URL + "/token", "jwks_uri": srv.URL + "/jwks", "x_padding": ""}
		b, _ := json.Marshal(doc)
		doc["x_padding"] = strings.Repeat("a", size-len(b))
		b, _ = json.Marshal(doc)
		_, _ = w.Write(b)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// TestIssuerDiscoveryBounded: `sshca login` (go-oidc reads the document whole) and `sshca
// check-config` read at most bodylimit.Issuer bytes of an issuer's discovery document. At
// exactly that size both go on (login to find that this issuer offers no device flow); one
// byte more is an error naming the URL and the bound.
func TestIssuerDiscoveryBounded(t *testing.T) {
	ctx := context.Background()
	at := paddedIssuer(t, bodylimit.Issuer)
	if _, err := deviceSignIn(ctx, io.Discard, client.LoginConfig{Issuer: at.URL, ClientID: "sshca"}); err == nil || !strings.Contains(err.Error(), "does not offer the device flow") {
		t.Errorf("login, discovery of exactly %d bytes: %v, want it read (and no device flow found)", bodylimit.Issuer, err)
	}
	if err := checkIssuer(ctx, at.URL); err != nil {
		t.Errorf("check-config, discovery of exactly %d bytes: %v", bodylimit.Issuer, err)
	}
	over := paddedIssuer(t, bodylimit.Issuer+1)
	want := fmt.Sprintf("the answer of %s/.well-known/openid-configuration is longer than %d bytes", over.URL, bodylimit.Issuer)
	if _, err := deviceSignIn(ctx, io.Discard, client.LoginConfig{Issuer: over.URL, ClientID: "sshca"}); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("login, discovery one byte over: %v, want an error containing %q", err, want)
	}
	if err := checkIssuer(ctx, over.URL); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("check-config, discovery one byte over: %v, want an error containing %q", err, want)
	}
}
