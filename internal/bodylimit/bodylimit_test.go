package bodylimit_test

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/sshca/sshca/internal/bodylimit"
)

// answerServer answers /N with N bytes, with a Content-Length, and /chunked/N with N bytes
// without one (chunked), so that only counting can find it too long.
func answerServer(t *testing.T) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Path
		chunked := strings.HasPrefix(p, "/chunked/")
		n, err := strconv.Atoi(strings.TrimPrefix(strings.TrimPrefix(p, "/chunked"), "/"))
		if err != nil {
			http.NotFound(w, r)
			return
		}
		body := bytes.Repeat([]byte("k"), n)
		if chunked {
			for len(body) > 0 { // several writes and flushes: no Content-Length
				k := min(len(body), 1000)
				_, _ = w.Write(body[:k])
				w.(http.Flusher).Flush()
				body = body[k:]
			}
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(n))
		_, _ = w.Write(body)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// TestBounds: an answer of exactly the bound is read whole, through ReadAll and through a
// client's Transport, announced or chunked; one byte more is an *Error naming the URL
// (without its query, which may carry a secret) and the bound, never a body cut short.
func TestBounds(t *testing.T) {
	srv := answerServer(t)
	const limit = 4096
	client := bodylimit.Client(srv.Client(), limit)
	for _, path := range []string{"/4096", "/chunked/4096", "/4097", "/chunked/4097", "/chunked/100000"} {
		over := path != "/4096" && path != "/chunked/4096"
		for _, via := range []string{"ReadAll", "Transport"} {
			var got []byte
			var err error
			if via == "ReadAll" {
				resp, gerr := srv.Client().Get(srv.URL + path + "?token=secret")
				if gerr != nil {
					t.Fatal(gerr)
				}
				got, err = bodylimit.ReadAll(resp, limit)
			} else {
				resp, gerr := client.Get(srv.URL + path + "?token=secret")
				if gerr != nil {
					err = gerr // an announced length over the bound fails the request itself
				} else {
					got, err = io.ReadAll(resp.Body)
					resp.Body.Close()
				}
			}
			if !over {
				if err != nil || len(got) != limit {
					t.Errorf("%s via %s: %d bytes, %v; want all %d", path, via, len(got), err, limit)
				}
				continue
			}
			var be *bodylimit.Error
			if !errors.As(err, &be) {
				t.Errorf("%s via %s: %d bytes, err %v; want a *bodylimit.Error", path, via, len(got), err)
				continue
			}
			if want := "the answer of " + srv.URL + path + " is longer than 4096 bytes"; !strings.Contains(err.Error(), want) {
				t.Errorf("%s via %s: %q, want it to contain %q", path, via, err, want)
			}
			if strings.Contains(be.Error(), "secret") { // net/http's *url.Error around it is its own
				t.Errorf("%s via %s: the error shows the query: %q", path, via, be)
			}
		}
	}
}
