package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/sshca/sshca/client"
	"github.com/sshca/sshca/internal/bodylimit"
)

// TestAnswerBounded: the client reads at most MaxAnswerBytes of an answer (a KRL's bound is
// MaxKRLBytes: TestKRLOverOneMiB). A known_hosts text and a JSON answer (padded with
// whitespace) of exactly that many bytes are read whole; one byte more is an error naming the
// URL and the bound, not an answer cut short.
func TestAnswerBounded(t *testing.T) {
	size := client.MaxAnswerBytes
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body []byte
		switch r.URL.Path {
		case "/v1/ca/known_hosts":
			body = bytes.Repeat([]byte{'#'}, size)
		case "/v1/login/config":
			body = []byte(`{"issuer":"https://idp.example.com","client_id":"sshca"}`)
			body = append(body, bytes.Repeat([]byte(" "), size-len(body))...)
		}
		_, _ = w.Write(body)
	}))
	defer srv.Close()
	ctx := context.Background()
	c := client.New(srv.URL)
	kh, err := c.KnownHosts(ctx)
	if err != nil || len(kh) != size {
		t.Errorf("known_hosts of exactly %d bytes: %d bytes, %v", size, len(kh), err)
	}
	lc, err := c.LoginConfig(ctx)
	if err != nil || lc.Issuer != "https://idp.example.com" {
		t.Errorf("login config of exactly %d bytes: %+v, %v", size, lc, err)
	}

	size++
	for path, call := range map[string]func() error{
		"/v1/ca/known_hosts": func() error { _, err := c.KnownHosts(ctx); return err },
		"/v1/login/config":   func() error { _, err := c.LoginConfig(ctx); return err },
	} {
		err := call()
		var be *bodylimit.Error
		want := fmt.Sprintf("the answer of %s%s is longer than %d bytes", srv.URL, path, client.MaxAnswerBytes)
		if !errors.As(err, &be) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s one byte over the bound: %v, want an error containing %q", path, err, want)
		}
	}
}
