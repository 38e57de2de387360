package bastion

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/sshca/sshca/internal/bodylimit"
)

// TestHTTPSourceAnswerBounded: an HTTPSource reads at most its bound of an answer (4 KiB here,
// MaxHTTPAnswerBytes in production): a KRL of exactly the bound is read whole; one byte more,
// announced or not (chunked), is an error naming the URL and the bound, not a KRL cut short.
func TestHTTPSourceAnswerBounded(t *testing.T) {
	const bound = 4096
	var size int
	var announce bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if announce {
			w.Header().Set("Content-Length", fmt.Sprint(size))
		}
		for left := size; left > 0; left -= 1000 { // several flushed writes: chunked unless announced
			_, _ = w.Write(bytes.Repeat([]byte{0x4b}, min(left, 1000)))
			w.(http.Flusher).Flush()
		}
	}))
	defer srv.Close()
	h := &HTTPSource{base: srv.URL, client: srv.Client(), maxAnswer: bound}
	for _, announce = range []bool{false, true} {
		size = bound
		b, _, _, _, err := h.get(context.Background(), "/v1/krl", "", 0)
		if err != nil || len(b) != bound {
			t.Errorf("announced %v: %d bytes at the bound: got %d, %v", announce, bound, len(b), err)
		}
		size = bound + 1
		b, _, _, _, err = h.get(context.Background(), "/v1/krl", "", 0)
		var be *bodylimit.Error
		want := fmt.Sprintf("the answer of %s/v1/krl is longer than %d bytes", srv.URL, bound)
		if !errors.As(err, &be) || !strings.Contains(err.Error(), want) || b != nil {
			t.Errorf("announced %v: one byte over the bound: %d bytes, %v; want an error containing %q", announce, len(b), err, want)
		}
	}
}
