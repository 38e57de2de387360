package policies

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
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
	return loadBundleURL(ctx, url, client, MaxBundleBytes, opts...)
}

// MaxBundleBytes bounds the bundle LoadBundleURL reads (compressed, as served): a longer one is
// an error naming the URL and the bound, and the policy in force stays. The shipped policy's
// bundle is a few KiB; 64 MiB leaves room for large data documents.
const MaxBundleBytes = 64 << 20

// loadBundleURL is LoadBundleURL reading at most max bytes of the bundle.
func loadBundleURL(ctx context.Context, url string, client *http.Client, max int64, opts ...Option) (*Engine, error) {
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
	b, err := bundle.NewReader(bodylimit.Reader(req, resp.Body, max)).Read()
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
