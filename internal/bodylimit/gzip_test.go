package bodylimit_test

import (
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/sshca/sshca/internal/bodylimit"
)

// TestGzipCountedUnpacked: net/http's transport asks for gzip and unpacks an answer before
// its reader sees it, so a bound counts unpacked bytes: a gzip bomb (a few KiB packed, 16 MiB
// unpacked) is an *Error, through ReadAll and through a client's Transport, however short it
// is packed and whatever Content-Length it announces (the packed one, or a lie below it).
// The same answer within the bound is read whole and unpacked.
func TestGzipCountedUnpacked(t *testing.T) {
	var packed bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&packed, gzip.BestCompression)
	_, _ = zw.Write(make([]byte, 16<<20))
	zw.Close()
	bomb := packed.Bytes()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Accept-Encoding") != "gzip" {
			t.Errorf("the transport asked for %q, not gzip: the test does not test unpacking", r.Header.Get("Accept-Encoding"))
		}
		w.Header().Set("Content-Encoding", "gzip")
		if r.URL.Path == "/lie" {
			w.Header().Set("Content-Length", "100")
			_, _ = w.Write(bomb[:100])
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(bomb)))
		_, _ = w.Write(bomb)
	}))
	t.Cleanup(srv.Close)
	if len(bomb) > 64<<10 {
		t.Fatalf("the bomb is %d bytes packed: the test does not test packing", len(bomb))
	}
	for _, limit := range []int64{64 << 10, 16 << 20} {
		resp, err := srv.Client().Get(srv.URL + "/bomb")
		if err != nil {
			t.Fatal(err)
		}
		got, err := bodylimit.ReadAll(resp, limit)
		var be *bodylimit.Error
		switch {
		case limit == 16<<20 && (err != nil || len(got) != 16<<20):
			t.Errorf("bound %d: %d bytes, %v; want all 16 MiB unpacked", limit, len(got), err)
		case limit < 16<<20 && !errors.As(err, &be):
			t.Errorf("bound %d via ReadAll: %d bytes, %v; want a *bodylimit.Error", limit, len(got), err)
		}
		if limit == 16<<20 {
			continue
		}
		resp, err = bodylimit.Client(srv.Client(), limit).Get(srv.URL + "/bomb")
		if err == nil {
			got, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		if !errors.As(err, &be) {
			t.Errorf("bound %d via Transport: %d bytes, %v; want a *bodylimit.Error", limit, len(got), err)
		}
	}
	// A Content-Length that lies about the packed body: net/http reads what it announces and
	// no more, and what that unpacks to is counted as ever.
	resp, err := srv.Client().Get(srv.URL + "/lie")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := bodylimit.ReadAll(resp, 64<<10); err == nil || len(got) > 64<<10 {
		t.Errorf("100 bytes of a bomb announced as 100: %d bytes, %v; want an error within the bound", len(got), err)
	}
}
