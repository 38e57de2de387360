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

// bundleServer serves body at every path.
func bundleServer(t *testing.T, body []byte) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(body) }))
	t.Cleanup(srv.Close)
	return srv.URL + "/b.tar.gz"
}

// shippedBundle writes the shipped policy and data into tw, each as a tar entry.
func shippedBundle(t *testing.T, tw *tar.Writer) {
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
}

// TestBundleHeaderClaimsHugeFile: a bundle of a few hundred bytes whose tar header claims a
// file of a TiB (and then ends) is refused with an error naming the file and the bound. OPA's
// tarball loader, given no bound, allocates a buffer of the claimed size before reading it:
// the Go runtime then ends the whole process (out of memory, which no recover catches), so a
// bundle server, or anyone between it and a plain-HTTP bundle URL, could stop every CA
// replica at its next poll.
func TestBundleHeaderClaimsHugeFile(t *testing.T) {
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	shippedBundle(t, tw)
	if err := tw.WriteHeader(&tar.Header{Name: "/huge/data.json", Mode: 0o644, Size: 1 << 40, Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	tw.Flush() // the header, and no content: the stream ends there
	gz.Close()
	url := bundleServer(t, buf.Bytes())
	_, err := LoadBundleURL(context.Background(), url, nil)
	if err == nil || !strings.Contains(err.Error(), url) || !strings.Contains(err.Error(), fmt.Sprint(MaxBundleUnpackedBytes)) {
		t.Fatalf("bundle claiming a file of 1 TiB: %v, want an error naming %s and the bound %d", err, url, MaxBundleUnpackedBytes)
	}
}

// TestBundleGzipBomb: the bound on a bundle (MaxBundleBytes) counts bytes as served, packed;
// gzip packs zeros about a thousand to one, so the files of a bundle together are bounded
// once unpacked too: a bundle that unpacks beyond the bound, in one file or in many files
// each below it, is refused naming the URL and the bound before OPA holds its files; the
// shipped bundle under the same bound loads.
func TestBundleGzipBomb(t *testing.T) {
	const unpacked = 1 << 20
	bomb := func(files, each int) []byte {
		var buf bytes.Buffer
		gz, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
		tw := tar.NewWriter(gz)
		shippedBundle(t, tw)
		zeros := make([]byte, each)
		for i := range files {
			if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("/pad/%d/data.json", i), Mode: 0o644, Size: int64(each), Typeflag: tar.TypeReg}); err != nil {
				t.Fatal(err)
			}
			if _, err := tw.Write(zeros); err != nil {
				t.Fatal(err)
			}
		}
		tw.Close()
		gz.Close()
		return buf.Bytes()
	}
	ctx := context.Background()
	if _, err := loadBundleURL(ctx, bundleServer(t, bomb(0, 0)), nil, MaxBundleBytes, unpacked); err != nil {
		t.Fatalf("the shipped bundle under a bound of %d unpacked: %v", unpacked, err)
	}
	for _, c := range []struct{ files, each int }{{1, 2 * unpacked}, {64, unpacked / 32}} {
		body := bomb(c.files, c.each)
		if len(body) > unpacked/8 {
			t.Fatalf("the bomb is %d bytes packed: the test does not test packing", len(body))
		}
		url := bundleServer(t, body)
		_, err := loadBundleURL(ctx, url, nil, MaxBundleBytes, unpacked)
		if err == nil || !strings.Contains(err.Error(), url) || !strings.Contains(err.Error(), fmt.Sprint(unpacked)) {
			t.Errorf("%d files of %d bytes (%d packed): %v, want an error naming %s and the bound %d", c.files, c.each, len(body), err, url, unpacked)
		}
	}
}
