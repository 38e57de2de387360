package policies

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/jonboulle/clockwork"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sshca/sshca/ca"
)

// Reloader serves decisions from the policy in a directory and replaces it when the files
// change. A new version is compiled and its Rego tests (*_test.rego, with the directory's own
// data.json) are run before it replaces the old one; a version that fails either is refused,
// the last good one stays in force, and the failure is logged, reported by Status and counted
// in metrics.
type Reloader struct {
	dir    string
	opts   []Option
	loader func(context.Context) (*Engine, error)
	log    *slog.Logger

	cur atomic.Pointer[Engine]

	// clock drives Watch's debounce and Poll's interval.
	clock clockwork.Clock

	// seen is the fingerprint of the watched files as the last load of a directory read them
	// (loaded or refused): Watch compares it once its watch is set up, so that a change made
	// before then (between the first load and the watch, or while a broken watch was set up
	// again) is not missed.
	seen atomic.Value // string

	// testTimeout bounds each Rego test a load of a directory runs (DefaultTestTimeout).
	testTimeout time.Duration

	mu      sync.Mutex
	lastErr error

	reloads *prometheus.CounterVec
	failing prometheus.Gauge
}

// ReloaderOption tunes a Reloader.
type ReloaderOption func(*Reloader)

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) ReloaderOption { return func(r *Reloader) { r.log = l } }

// WithMetrics registers the reload metrics with reg.
func WithMetrics(reg prometheus.Registerer) ReloaderOption {
	return func(r *Reloader) {
		r.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sshca_policy_reloads_total",
			Help: "Policy reloads by result (loaded, refused)."}, []string{"result"})
		r.failing = prometheus.NewGauge(prometheus.GaugeOpts{Name: "sshca_policy_reload_failing",
			Help: "1 while the newest policy files were refused and the last good policy is in force."})
		for _, result := range []string{"loaded", "refused"} {
			r.reloads.WithLabelValues(result) // exported at 0, so an alert on refusals can fire at the first
		}
		reg.MustRegister(r.reloads, r.failing)
	}
}

// WithClock sets the clock that Watch's debounce and Poll's interval run on (default the real
// clock; tests advance a clockwork.FakeClock).
func WithClock(c clockwork.Clock) ReloaderOption { return func(r *Reloader) { r.clock = c } }

// WithTestTimeout bounds each Rego test that a load of the directory runs (default
// DefaultTestTimeout, wall clock): a version with a test that runs longer is refused, the test
// and the bound named.
func WithTestTimeout(d time.Duration) ReloaderOption { return func(r *Reloader) { r.testTimeout = d } }

// WithLoadOptions adds options for every load (for a bundle reloader, the only way to give
// them; WithDataFile does not apply to bundles).
func WithLoadOptions(opts ...Option) ReloaderOption {
	return func(r *Reloader) { r.opts = append(r.opts, opts...) }
}

// NewReloader loads and tests the policy in dir; it fails when that first version does.
func NewReloader(ctx context.Context, dir string, loadOpts []Option, opts ...ReloaderOption) (*Reloader, error) {
	r := &Reloader{dir: dir, opts: loadOpts, log: slog.New(slog.DiscardHandler), clock: clockwork.NewRealClock(), testTimeout: DefaultTestTimeout}
	r.loader = r.loadDir
	return r.start(ctx, opts)
}

// NewBundleReloader loads the policy from an OPA bundle server; Poll refreshes it.
func NewBundleReloader(ctx context.Context, url string, client *http.Client, opts ...ReloaderOption) (*Reloader, error) {
	r := &Reloader{dir: url, log: slog.New(slog.DiscardHandler), clock: clockwork.NewRealClock()}
	r.loader = func(ctx context.Context) (*Engine, error) { return LoadBundleURL(ctx, url, client, r.opts...) }
	return r.start(ctx, opts)
}

func (r *Reloader) start(ctx context.Context, opts []ReloaderOption) (*Reloader, error) {
	for _, o := range opts {
		o(r)
	}
	e, err := r.loader(ctx)
	if err != nil {
		return nil, err
	}
	r.cur.Store(e)
	return r, nil
}

func (r *Reloader) loadDir(ctx context.Context) (*Engine, error) {
	r.seen.Store(r.fingerprint()) // before reading: a change during the load is seen as one
	e, err := LoadDir(ctx, r.dir, r.opts...)
	if err != nil {
		return nil, err
	}
	if err := TestWithin(ctx, r.dir, r.testTimeout); err != nil && !errors.Is(err, errNoTests) {
		return nil, err
	}
	return e, nil
}

// Decide evaluates the policy in force.
func (r *Reloader) Decide(ctx context.Context, in ca.PolicyInput) (ca.Decision, error) {
	return r.cur.Load().Decide(ctx, in)
}

// Mode says how the policy in force is evaluated (Engine.Mode).
func (r *Reloader) Mode() string { return r.cur.Load().Mode() }

// Revision is the revision of the policy in force.
func (r *Reloader) Revision() string { return r.cur.Load().Revision() }

// Check succeeds: a policy is always in force once NewReloader succeeded.
func (r *Reloader) Check(context.Context) error { return nil }

// Status reports the policy in force and, when the newest files were refused, why.
func (r *Reloader) Status() (revision string, lastErr error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cur.Load().Revision(), r.lastErr
}

// Reload loads, compiles and tests the files now in the directory and puts them in force.
// On failure the policy in force stays.
func (r *Reloader) Reload(ctx context.Context) error {
	e, err := r.loader(ctx)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.lastErr = err
		r.count("refused", 1)
		r.log.Error("policy refused; the last good policy stays in force", "dir", r.dir, "in_force", r.cur.Load().Revision(), "err", err)
		return err
	}
	old := r.cur.Swap(e)
	r.lastErr = nil
	r.count("loaded", 0)
	if old.Revision() != e.Revision() {
		r.log.Info("policy reloaded", "dir", r.dir, "revision", e.Revision(), "previous", old.Revision(), "evaluator", e.Mode())
	}
	return nil
}

func (r *Reloader) count(result string, failing float64) {
	if r.reloads != nil {
		r.reloads.WithLabelValues(result).Inc()
		r.failing.Set(failing)
	}
}

// Watch reloads whenever a file in the directory (or the data file) changes, until ctx ends.
// Bursts of events (an editor's save, a checkout) are folded into one reload, 200 ms of the
// reloader's clock after the last.
func (r *Reloader) Watch(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("policies: watch: %w", err)
	}
	defer w.Close()
	if err := w.Add(r.dir); err != nil {
		return fmt.Errorf("policies: watch %s: %w", r.dir, err)
	}
	var o loadOptions
	for _, opt := range r.opts {
		opt(&o)
	}
	if o.dataFile != "" && filepath.Dir(o.dataFile) != filepath.Clean(r.dir) {
		if err := w.Add(filepath.Dir(o.dataFile)); err != nil {
			return fmt.Errorf("policies: watch %s: %w", o.dataFile, err)
		}
	}
	var debounce clockwork.Timer // armed by the last relevant event
	var fire <-chan time.Time
	defer func() {
		if debounce != nil {
			debounce.Stop()
		}
	}()
	// Changes made before the watch was set up sent no event: the files are compared with
	// those last loaded, and a difference is reloaded as an event would be.
	if seen, _ := r.seen.Load().(string); r.fingerprint() != seen {
		debounce = r.clock.NewTimer(reloadDebounce)
		fire = debounce.Chan()
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if !relevant(ev.Name, o.dataFile) {
				continue
			}
			if debounce == nil {
				debounce = r.clock.NewTimer(reloadDebounce)
			} else {
				debounce.Reset(reloadDebounce)
			}
			fire = debounce.Chan()
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			r.log.Warn("policy watch", "err", err)
		case <-fire:
			fire = nil
			_ = r.Reload(ctx)
		}
	}
}

// reloadDebounce is how long Watch waits after the last event of a burst before it reloads.
const reloadDebounce = 200 * time.Millisecond

// Poll reloads every interval of the reloader's clock until ctx ends (for bundle servers).
func (r *Reloader) Poll(ctx context.Context, every time.Duration) {
	t := r.clock.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.Chan():
			_ = r.Reload(ctx)
		}
	}
}

// fingerprint hashes the names and contents of the files a change of which Watch reloads: the
// directory's relevant files and the data file ("" when the directory cannot be read).
func (r *Reloader) fingerprint() string {
	var o loadOptions
	for _, opt := range r.opts {
		opt(&o)
	}
	entries, err := os.ReadDir(r.dir)
	if err != nil {
		return ""
	}
	var names []string
	for _, e := range entries {
		if name := filepath.Join(r.dir, e.Name()); !e.IsDir() && relevant(name, o.dataFile) {
			names = append(names, name)
		}
	}
	if o.dataFile != "" {
		names = append(names, o.dataFile)
	}
	sort.Strings(names)
	h := sha256.New()
	for _, name := range names {
		b, err := os.ReadFile(name)
		if err != nil {
			fmt.Fprintf(h, "%s\x00unreadable\x00", name) // absent or unreadable: still a state to compare
			continue
		}
		fmt.Fprintf(h, "%s\x00%d\x00", name, len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func relevant(name, dataFile string) bool {
	base := filepath.Base(name)
	if len(base) > 0 && (base[0] == '.' || base[len(base)-1] == '~') {
		return false // editor temporaries
	}
	return filepath.Ext(name) == ".rego" || filepath.Ext(name) == ".json" || (dataFile != "" && filepath.Clean(name) == filepath.Clean(dataFile))
}
