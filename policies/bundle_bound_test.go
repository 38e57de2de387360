package policies

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
)

// TestBundleBounded: a bundle is read up to its bound (MaxBundleBytes in production): the
// shipped policy's bundle with a bound of exactly its size loads; with a bound of half its
// size it is an error naming the URL and the bound, not a bundle cut short. (One byte short
// may still load: OPA's reader stops at the tar's end marker, before gzip's trailer.)
func TestBundleBounded(t *testing.T) {
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, name := range []string{"sshca.rego", "data.json"} {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := tw.WriteHeader(&tar.Header{Name: "/" + name, Mode: 0o644, Size: int64(len(b)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	tw.Close()
	gz.Close()
	tarball := buf.Bytes()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(tarball) }))
	defer srv.Close()
	ctx := context.Background()
	size := int64(len(tarball))
	if _, err := loadBundleURL(ctx, srv.URL+"/b.tar.gz", nil, size, MaxBundleUnpackedBytes); err != nil {
		t.Fatalf("bundle of %d bytes with a bound of %d: %v", size, size, err)
	}
	_, err := loadBundleURL(ctx, srv.URL+"/b.tar.gz", nil, size/2, MaxBundleUnpackedBytes)
	want := fmt.Sprintf("the answer of %s/b.tar.gz is longer than %d bytes", srv.URL, size/2)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("bound of half the bundle: %v, want an error containing %q", err, want)
	}
}
