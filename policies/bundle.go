package policies

import (
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
	"github.com/open-policy-agent/opa/v1/rego"
)

// LoadBundleURL fetches an OPA bundle (the .tar.gz format OPA bundle servers serve) and loads
// its policy and data. Rego test files in the bundle are not evaluated for decisions.
func LoadBundleURL(ctx context.Context, url string, client *http.Client) (*Engine, error) {
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
	b, err := bundle.NewReader(io.LimitReader(resp.Body, 64<<20)).Read()
	if err != nil {
		return nil, fmt.Errorf("policies: bundle %s: %w", url, err)
	}
	h := sha256.New()
	var args []func(*rego.Rego)
	mods := b.Modules
	sort.Slice(mods, func(i, j int) bool { return mods[i].Path < mods[j].Path })
	n := 0
	for _, m := range mods {
		if strings.HasSuffix(m.Path, "_test.rego") {
			continue
		}
		fmt.Fprintf(h, "%s\x00%d\x00", m.Path, len(m.Raw))
		h.Write(m.Raw)
		args = append(args, rego.Module(m.Path, string(m.Raw)))
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
	e, err := newEngine(ctx, args, b.Data, rev, loadOptions{})
	if err != nil {
		return nil, fmt.Errorf("policies: bundle %s: %w", url, err)
	}
	return e, nil
}
