package policies

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/open-policy-agent/opa/v1/bundle"

	"github.com/sshca/sshca/internal/bodylimit"
)

// LoadBundleURL fetches an OPA bundle (the .tar.gz format OPA bundle servers serve) and loads
// its policy and data. Rego test files in the bundle are not evaluated for decisions; their
// inputs are run by the self-check. WithDataFile does not apply to bundles.
func LoadBundleURL(ctx context.Context, url string, client *http.Client, opts ...Option) (*Engine, error) {
	return loadBundleURL(ctx, url, client, MaxBundleBytes, MaxBundleUnpackedBytes, opts...)
}

// MaxBundleBytes bounds the bundle LoadBundleURL reads (compressed, as served): a longer one is
// an error naming the URL and the bound, and the policy in force stays. The shipped policy's
// bundle is a few KiB; 64 MiB leaves room for large data documents.
const MaxBundleBytes = 64 << 20

// checkUnpacked unpacks packed (gzip) without keeping it, and fails when it is longer than
// limit bytes, or not gzip: what OPA's loader would hold is bounded before it holds any.
func checkUnpacked(packed []byte, limit int64) error {
	zr, err := gzip.NewReader(bytes.NewReader(packed))
	if err != nil {
		return fmt.Errorf("not a .tar.gz: %w", err)
	}
	n, err := io.Copy(io.Discard, io.LimitReader(zr, limit+1))
	if err != nil {
		return fmt.Errorf("not a .tar.gz: %w", err)
	}
	if n > limit {
		return fmt.Errorf("it unpacks to more than %d bytes, the most sshca unpacks of a bundle (packed, it is %d bytes): split its data, or serve less", limit, len(packed))
	}
	return nil
}

// MaxBundleUnpackedBytes bounds a bundle once unpacked: its tar stream, headers and files
// together, and so each file. MaxBundleBytes alone counts what is served, and gzip packs a run
// of zeros about a thousand to one: 64 MiB served could unpack to 64 GiB, which OPA's loader
// holds in memory file by file. 256 MiB is four times MaxBundleBytes, room for data documents
// as JSON packs them.
const MaxBundleUnpackedBytes = 256 << 20

// loadBundleURL is LoadBundleURL reading at most max bytes of the bundle, unpacking at most
// unpacked.
func loadBundleURL(ctx context.Context, url string, client *http.Client, max, unpacked int64, opts ...Option) (*Engine, error) {
	var o loadOptions
	for _, opt := range opts {
		opt(&o)
	}
	if client == nil {
		client = &http.Client{Timeout: 30 * time.Second}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("policies: bundle: %w", err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("policies: bundle: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("policies: bundle %s: HTTP %d", url, resp.StatusCode)
	}
	packed, err := io.ReadAll(bodylimit.Reader(req, resp.Body, max))
	if err != nil {
		return nil, fmt.Errorf("policies: bundle: %w", err)
	}
	if err := checkUnpacked(packed, unpacked); err != nil {
		return nil, fmt.Errorf("policies: bundle %s: %w", url, err)
	}
	// The loader's own bound too: it allocates a file's buffer at the size its tar header
	// claims, before reading a byte of it (a header of a TiB ended the process).
	b, err := bundle.NewCustomReader(bundle.NewTarballLoader(bytes.NewReader(packed)).WithSizeLimitBytes(unpacked)).
		WithSizeLimitBytes(unpacked).Read()
	if err != nil {
		return nil, fmt.Errorf("policies: bundle %s: %w", url, err)
	}
	h := sha256.New()
	var modules, tests []file
	mods := b.Modules
	sort.Slice(mods, func(i, j int) bool { return mods[i].Path < mods[j].Path })
	n := 0
	for _, m := range mods {
		if strings.HasSuffix(m.Path, "_test.rego") {
			tests = append(tests, file{m.Path, m.Raw})
			continue
		}
		fmt.Fprintf(h, "%s\x00%d\x00", m.Path, len(m.Raw))
		h.Write(m.Raw)
		modules = append(modules, file{m.Path, m.Raw})
		n++
	}
	if n == 0 {
		return nil, fmt.Errorf("policies: bundle %s holds no policy", url)
	}
	fmt.Fprintf(h, "data\x00%v", b.Data)
	rev := hex.EncodeToString(h.Sum(nil))[:12]
	if b.Manifest.Revision != "" {
		rev = b.Manifest.Revision
	}
	e, err := newEngine(ctx, modules, tests, b.Data, rev, loadOptions{evaluator: o.evaluator, fallbacks: o.fallbacks})
	if err != nil {
		return nil, fmt.Errorf("policies: bundle %s: %w", url, err)
	}
	return e, nil
}
