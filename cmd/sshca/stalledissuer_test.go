package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/sshca/sshca/client"
)

// TestLoginStalledIssuer: `sshca login` against an issuer that accepts the discovery request
// and never answers ends with an error naming the identity provider within
// loginIssuerTimeout, instead of waiting for ever (go-oidc and oauth2 use the context's
// client, which had no timeout).
func TestLoginStalledIssuer(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(func() { close(release); srv.CloseClientConnections(); srv.Close() })
	errc := make(chan error, 1)
	go func() {
		_, err := deviceSignIn(context.Background(), io.Discard, client.LoginConfig{Issuer: srv.URL, ClientID: "sshca"})
		errc <- err
	}()
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("signed in against an issuer that never answered")
		}
	case <-time.After(loginIssuerTimeout + 5*time.Second):
		t.Fatalf("sshca login still waiting %v after the issuer stalled", loginIssuerTimeout+5*time.Second)
	}
}
