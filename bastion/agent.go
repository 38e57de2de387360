package bastion

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/bodylimit"
	"github.com/sshca/sshca/krl"
	"github.com/sshca/sshca/revocation"
)

// Options configure an Agent. KRLPath and at least one source are required.
type Options struct {
	KRLPath    string // sshd's RevokedKeys
	UserCAPath string // sshd's TrustedUserCAKeys (optional)
	// KRLLink and UserCALink (optional) are the paths sshd reads, in a directory the agent
	// cannot write (/etc/ssh), that must be symbolic links leading to KRLPath and UserCAPath.
	// When one is removed or re-pointed, Status.FilesAlert says so and Run returns an
	// ErrSSHDLink error: the service manager re-creates the links before restarting the agent.
	KRLLink, UserCALink string
	// GuardEvery is how often the files are re-checked besides watching them (default 1s): a
	// file deleted or changed behind the agent's back is put back within it.
	GuardEvery time.Duration
	// Drift, when set, checks sshd's effective configuration against the baseline.
	Drift *DriftCheck

	noWatch bool // tests: the periodic re-check alone (export_test.go)
	// Feed is the primary source, Redis in production (read-only credentials suffice); HTTP
	// the fallback, or the only source.
	Feed Feed
	HTTP *HTTPSource
	// PollEvery is the HTTP polling interval (default 1s) against a server without the long
	// poll of GET /v1/krl, and the pause after a failed request.
	PollEvery time.Duration
	// LongPollWait is how long one long poll of GET /v1/krl may wait for a change (default
	// 25s; the server caps it). Negative: never long poll, only poll every PollEvery.
	LongPollWait time.Duration
	// CARefresh is how often the set of trusted CA keys is re-read, from Redis or over HTTPS
	// (default 15s): it bounds how long a newly generated CA key takes to reach sshd's
	// TrustedUserCAKeys.
	CARefresh time.Duration
	// OnRevoked is called with every newly revoked entry (lockdown of live sessions).
	OnRevoked func(ctx context.Context, entries []ca.RevocationEntry)
	// OnKRL is called with each KRL installed, from either source: lockdown of live sessions
	// in HTTPS mode (no change stream), and in both modes of whatever a change does not name
	// (a state reloaded after a gap or a new CA key, sessions learned after the change).
	OnKRL func(k *krl.KRL)
	// Clock is read for every timestamp and drives every wait: the reconnection backoff, the
	// polling interval, the CA re-read, the file guard's and the drift check's intervals.
	// Default the real clock; tests pass a clockwork.FakeClock and advance it.
	Clock clockwork.Clock
	Log   *slog.Logger
}

// Status is what the agent reports on its health endpoint.
type Status struct {
	Source     string    `json:"source"`
	Connected  bool      `json:"connected"`
	KRLVersion uint64    `json:"krl_version"`
	KRLWritten time.Time `json:"krl_written"`
	LastError  string    `json:"last_error,omitempty"`
	// Alert says why the source's KRL is not installed when it offers an older version than
	// the one in place: its store lost or rolled back its revocation state (the installed
	// version is a witness of the newest state). Cleared when a newer KRL is installed.
	Alert string `json:"alert,omitempty"`
	// OfferedVersion is the version of the older KRL last refused.
	OfferedVersion uint64 `json:"offered_krl_version,omitempty"`
	// FilesRestored counts the files sshd reads that the agent put back after they were
	// deleted or changed behind its back (a counter since start).
	FilesRestored uint64 `json:"files_restored"`
	// FilesAlert says why sshd does not read what the agent writes (a link removed or
	// re-pointed, a file that could not be put back); Run returns an error with it.
	FilesAlert string `json:"files_alert,omitempty"`
	// LastSync is when a source last confirmed that the installed KRL is current: a KRL
	// installed, a 304 from the HTTPS source, or an answer of the Redis change stream (which
	// blocks at most 5 s). Unlike KRLWritten it moves while nothing is revoked, so its age
	// is what says the KRL may be stale (sshca_bastion_sync_age_seconds).
	LastSync time.Time `json:"last_sync"`
	// ConfigDrift is how many of sshd's effective settings differ from the hardened
	// configuration, len(SSHDDrift) (sshca_bastion_config_drift); 0 when not checked.
	ConfigDrift int `json:"config_drift"`
	// SSHDDrift lists the effective values of sshd that differ from the baseline, per
	// connection (see DriftReport); its length is the drift gauge. Empty when none or unchecked.
	SSHDDrift []string `json:"sshd_drift,omitempty"`
	// SSHDUnchecked lists Match criteria the drift check could not reach.
	SSHDUnchecked []string `json:"sshd_unchecked,omitempty"`
	// SSHDCheckError says why sshd's effective configuration could not be read.
	SSHDCheckError string `json:"sshd_check_error,omitempty"`
	// SSHDChecked is when the drift check last ran (zero: never, or not configured).
	SSHDChecked time.Time `json:"sshd_checked,omitzero"`
}

// Agent keeps the KRL and trusted CA key files current.
type Agent struct {
	o Options

	krlFile, userCAFile *ownedFile // userCAFile nil without UserCAPath

	mu     sync.Mutex
	status Status
}

// NewAgent checks the options.
func NewAgent(o Options) (*Agent, error) {
	if o.KRLPath == "" {
		return nil, errors.New("bastion: --krl is required")
	}
	if o.Feed == nil && o.HTTP == nil {
		return nil, errors.New("bastion: give --redis or --server (or both: Redis first, HTTPS as fallback)")
	}
	if o.PollEvery == 0 {
		o.PollEvery = time.Second
	}
	if o.LongPollWait == 0 {
		o.LongPollWait = 25 * time.Second
	}
	if o.Clock == nil {
		o.Clock = clockwork.NewRealClock()
	}
	if o.CARefresh == 0 {
		o.CARefresh = 15 * time.Second
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.GuardEvery == 0 {
		o.GuardEvery = time.Second
	}
	a := &Agent{o: o, status: Status{Source: "none"}, krlFile: &ownedFile{path: o.KRLPath, mode: 0o644}}
	if o.UserCAPath != "" {
		a.userCAFile = &ownedFile{path: o.UserCAPath, mode: 0o644}
	}
	return a, nil
}

// Status returns the current status.
func (a *Agent) Status() Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.status
}

// Prepare makes sure sshd can start: a valid (empty) KRL exists, and records the version of
// the one in place. Run calls it; call it alone before starting sshd.
func (a *Agent) Prepare() error {
	b, err := os.ReadFile(a.o.KRLPath)
	if errors.Is(err, os.ErrNotExist) {
		empty, err := (&krl.KRL{GeneratedDate: a.o.Clock.Now(), Comment: "sshca: empty until the first sync"}).MarshalBinary()
		if err != nil {
			return err
		}
		if err := a.krlFile.set(empty, false); err != nil {
			return err
		}
		a.o.Log.Info("wrote an empty KRL so sshd can start", "path", a.o.KRLPath)
		return nil
	}
	if err != nil {
		return fmt.Errorf("bastion: read %s: %w", a.o.KRLPath, err)
	}
	k, err := krl.Parse(b)
	if err != nil {
		// sshd refuses everyone with this file; the first good state from a source replaces it.
		a.o.Log.Error("the KRL in place is unreadable: sshd refuses every certificate until a source answers", "path", a.o.KRLPath, "err", err)
		return nil
	}
	a.krlFile.adopt(b)
	a.mu.Lock()
	a.status.KRLVersion = k.Version
	if st, err := os.Stat(a.o.KRLPath); err == nil {
		a.status.KRLWritten = st.ModTime()
	}
	a.mu.Unlock()
	return nil
}

// Run keeps the files current until ctx ends. It never returns because a source failed: it
// keeps the last good files, says so in Status, and reconnects with backoff. It returns an
// error when sshd's files cannot be kept true (see Options.KRLLink and Status.FilesAlert).
func (a *Agent) Run(ctx context.Context) error {
	if err := a.Prepare(); err != nil {
		return err
	}
	ctx, stopGuard := a.guarded(ctx) // ends ctx when sshd's files cannot be kept true
	defer stopGuard()
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		var err error
		if a.o.Feed != nil {
			err = a.runRedis(ctx)
		}
		if ctx.Err() != nil {
			break
		}
		// Agents that lost Redis together (a restart, a failover) must not come back together:
		// each reconnection reads a snapshot of every scope, and a fleet retrying on the same
		// schedule would send them all in the same instant.
		pause := retryPause(backoff)
		if err != nil {
			a.setError("redis", err)
			a.o.Log.Warn("revocation source lost; keeping the last good KRL", "source", "redis", "err", err, "retry_in", pause)
		}
		if a.o.HTTP != nil {
			// Poll over HTTPS meanwhile; go back to Redis after a while if there is one.
			until := time.Time{}
			if a.o.Feed != nil {
				until = a.o.Clock.Now().Add(pause + time.Second)
			}
			if err := a.runHTTP(ctx, until); err != nil && ctx.Err() == nil {
				a.setError("https", err)
			}
		} else {
			select {
			case <-ctx.Done():
			case <-a.o.Clock.After(pause):
			}
		}
		if err != nil {
			backoff = min(backoff*2, 5*time.Second)
		} else {
			backoff = 100 * time.Millisecond
		}
	}
	return guardErr(ctx)
}

// retryPause is the pause before reconnecting after backoff: a uniformly random duration
// between backoff/2 and backoff ("equal jitter"), so that a fleet's reconnections after a
// shared outage spread over half the backoff (2.5 s at the 5 s cap) instead of arriving at once,
// while none retries sooner than half the backoff.
func retryPause(backoff time.Duration) time.Duration {
	return backoff/2 + rand.N(backoff/2+1)
}

type scope struct {
	state ca.RevocationState
	pos   string
}

// feedRead is the outcome of one read of the feed.
type feedRead struct {
	changes map[string][]revocation.Change
	err     error
}

// runRedis follows the feed until ctx ends or the source fails. Every scope is read by one
// blocking read at a time (revocation.ScopeReader), so the agent holds one connection in it and one for
// the rest, however many CA keys were ever made; a scope that appears (a new CA key) is
// snapshotted, installed, and read at once (a new read replaces the one under way), and one that
// leaves (a key registered as a host CA) is dropped from the KRL.
func (a *Agent) runRedis(ctx context.Context) error {
	r := a.o.Feed
	trusted, err := r.TrustedCAs(ctx)
	if err != nil {
		return err
	}
	if err := a.writeCAs(trusted); err != nil {
		return err
	}
	scopes := map[string]*scope{}
	if _, err := a.trackScopes(ctx, scopes); err != nil {
		return err
	}
	if err := a.install(scopes, "redis"); err != nil {
		return err
	}
	reader := &revocation.ScopeReader{}
	// Each read answers on a channel of its own, buffered: a read abandoned (the CA set
	// changed while it blocked) or still blocked when runRedis returns ends by itself within
	// feedBlock (go-redis does not interrupt a blocking read when its context ends), and
	// neither leaks nor is mistaken for the current one.
	var reads chan feedRead
	startRead := func() {
		reads = nil
		if len(scopes) == 0 {
			return
		}
		pos := make(map[string]string, len(scopes))
		for fp, s := range scopes {
			pos[fp] = s.pos
		}
		ch := make(chan feedRead, 1)
		reads = ch
		go func() {
			cs, err := reader.Read(ctx, r, a.o.Log, pos, feedBlock)
			ch <- feedRead{cs, err}
		}()
	}
	startRead()
	recheck := a.o.Clock.NewTicker(a.o.CARefresh)
	defer recheck.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case rd := <-reads: // nil (never ready) while no scope is followed
			if rd.err != nil {
				return rd.err
			}
			if len(rd.changes) == 0 {
				a.synced() // nothing new: what is installed is current
				startRead()
				continue
			}
			revoked, err := a.apply(ctx, scopes, rd.changes)
			if err != nil {
				return err
			}
			// Follow on before ending sessions: a change made meanwhile waits for no one.
			startRead()
			if err := a.install(scopes, "redis"); err != nil {
				return err
			}
			if a.o.OnRevoked != nil && len(revoked) > 0 {
				a.o.OnRevoked(ctx, revocation.LiveEntries(revoked, a.o.Clock.Now())) // not what a lift removed
			}
		case <-recheck.Chan():
			changed, err := a.trackScopes(ctx, scopes)
			if err != nil {
				return err
			}
			if changed {
				if err := a.install(scopes, "redis"); err != nil {
					return err
				}
				// Read the new set at once rather than after the read under way: the new key
				// is the active one, and what is revoked next goes into its scope (a
				// compromised key's ban). The abandoned read's changes are read again from
				// the same positions; its connection is back within feedBlock.
				startRead()
			}
			nowTrusted, err := r.TrustedCAs(ctx)
			if err != nil {
				return err
			}
			if err := a.writeCAs(nowTrusted); err != nil {
				return err
			}
		}
	}
}

// trackScopes makes scopes those of the CA keys the feed lists now: a new one is added with
// its snapshot, one no longer listed is dropped. changed says whether the set changed.
func (a *Agent) trackScopes(ctx context.Context, scopes map[string]*scope) (changed bool, err error) {
	cas, err := a.o.Feed.CAs(ctx)
	if err != nil {
		return false, err
	}
	listed := make(map[string]bool, len(cas))
	for _, k := range cas {
		fp := ssh.FingerprintSHA256(k)
		listed[fp] = true
		if scopes[fp] != nil {
			continue
		}
		st, pos, err := a.o.Feed.Snapshot(ctx, fp)
		if err != nil {
			return false, err
		}
		if st.CA == nil {
			st.CA = k
		}
		scopes[fp] = &scope{state: st, pos: pos}
		changed = true
	}
	for fp := range scopes {
		if !listed[fp] {
			delete(scopes, fp)
			changed = true
		}
	}
	return changed, nil
}

// apply brings the scopes up to the changes read (fingerprint → changes in feed order), each
// scope in turn, and returns the entries the changes carried, for ending sessions. A scope
// whose changes do not follow from its state (a gap, or versions that went back) is reloaded
// from its snapshot instead: never skip anything.
func (a *Agent) apply(ctx context.Context, scopes map[string]*scope, changes map[string][]revocation.Change) ([]ca.RevocationEntry, error) {
	fps := make([]string, 0, len(changes))
	for fp := range changes {
		fps = append(fps, fp)
	}
	sort.Strings(fps)
	var revoked []ca.RevocationEntry
	for _, fp := range fps {
		s := scopes[fp]
		if s == nil {
			continue // dropped while the read was under way
		}
		for _, c := range changes[fp] {
			reload := false
			switch {
			case c.Version <= s.state.Version && !feedAfter(c.ID, s.pos):
				continue // already in the snapshot
			case c.Version <= s.state.Version:
				// Made after everything we hold, at a version we hold already: the store's
				// versions went back (restored from an old copy, a failover to a lagging
				// replica). The snapshot says so (its generation mark), or its older KRL is
				// refused with an alert; never skip it silently.
				a.o.Log.Warn("revocation change at an older version than the state; reloading the state", "ca", fp, "have", s.state.Version, "got", c.Version)
				reload = true
			case c.Version == s.state.Version+1:
				s.state.Entries = append(s.state.Entries, c.Entries...)
				s.state.Version = c.Version
				s.state.Changed = c.At // the KRL's date, as the server's (revocation.BuildKRL)
				s.pos = c.ID
			default:
				// A gap: our position was trimmed away, or we missed a change. Reload the
				// whole state rather than skip anything.
				a.o.Log.Info("revocation stream gap; reloading the state", "ca", fp, "have", s.state.Version, "got", c.Version)
				reload = true
			}
			if reload {
				st, pos, err := a.o.Feed.Snapshot(ctx, fp)
				if err != nil {
					return nil, err
				}
				if st.CA == nil {
					st.CA = s.state.CA
				}
				s.state, s.pos = st, pos
			}
			revoked = append(revoked, c.Entries...)
		}
	}
	return revoked, nil
}

// install builds the KRL from the scopes (dropping expired entries) and installs it.
func (a *Agent) install(scopes map[string]*scope, source string) error {
	now := a.o.Clock.Now()
	fps := make([]string, 0, len(scopes))
	for fp := range scopes {
		fps = append(fps, fp)
	}
	sort.Strings(fps)
	states := make([]ca.RevocationState, 0, len(fps))
	for _, fp := range fps {
		st := scopes[fp].state
		// The snapshot's entries then the changes', in order: a lift undoes the revocation
		// before it, a ban (zero Expiry) lasts until lifted.
		st.Entries = revocation.LiveEntries(st.Entries, now)
		states = append(states, st)
	}
	k, err := revocation.BuildKRL(states...)
	if err != nil {
		return err
	}
	b, err := k.MarshalBinary()
	if err != nil {
		return err
	}
	return a.installKRL(b, source)
}

// installKRL decodes b (sshd must be able to read it), refuses an older version than the one
// in place, and replaces the file atomically.
func (a *Agent) installKRL(b []byte, source string) error {
	k, err := krl.Parse(b)
	if err != nil {
		return fmt.Errorf("bastion: refusing to install an unreadable KRL: %w", err)
	}
	a.mu.Lock()
	current := a.status.KRLVersion
	a.mu.Unlock()
	if k.Version < current {
		// Fail static, and say so: a source behind the installed KRL lost revocations (a store
		// restored from an old snapshot, a failover to a lagging replica, an empty restart),
		// and nothing it revokes from now on reaches sshd until it is rebuilt.
		hg, hn := revocation.SplitVersion(current)
		og, on := revocation.SplitVersion(k.Version)
		alert := fmt.Sprintf("the %s source offers KRL version %d (generation %d, change %d), older than the installed %d (generation %d, change %d): "+
			"its revocation state was lost or rolled back; keeping the installed KRL until the store is rebuilt (sshca store rebuild)",
			source, k.Version, og, on, current, hg, hn)
		a.o.Log.Error("refusing to install an older KRL", "have", current, "offered", k.Version, "source", source, "alert", alert)
		a.mu.Lock()
		a.status.Source, a.status.Connected, a.status.LastError = source, false, alert
		a.status.Alert, a.status.OfferedVersion = alert, k.Version
		a.mu.Unlock()
		return nil
	}
	if err := a.krlFile.set(b, false); err != nil {
		return err
	}
	a.mu.Lock()
	a.status.KRLVersion = k.Version
	a.status.KRLWritten = a.o.Clock.Now()
	a.status.LastSync = a.status.KRLWritten
	a.status.Source, a.status.Connected, a.status.LastError = source, true, ""
	a.status.Alert, a.status.OfferedVersion = "", 0
	a.mu.Unlock()
	a.o.Log.Debug("KRL installed", "version", k.Version, "source", source)
	if a.o.OnKRL != nil {
		a.o.OnKRL(k)
	}
	return nil
}

func (a *Agent) writeCAs(keys []ssh.PublicKey) error {
	if a.o.UserCAPath == "" || len(keys) == 0 {
		return nil
	}
	var b bytes.Buffer
	for _, k := range keys {
		b.WriteString(strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))) + " sshca-user-ca\n")
	}
	return a.writeCAFile(b.Bytes())
}

func (a *Agent) writeCAFile(b []byte) error {
	return a.userCAFile.set(b, true)
}

func (a *Agent) setError(source string, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.status.Source, a.status.Connected, a.status.LastError = source, false, err.Error()
}

func (a *Agent) setConnected(source string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.status.Alert != "" {
		return // the source still offers the older KRL it was refused for (304)
	}
	a.status.Source, a.status.Connected, a.status.LastError = source, true, ""
	a.status.LastSync = a.o.Clock.Now()
}

// synced notes that the Redis change stream answered: the KRL in place is current, unless a
// refused older KRL (Alert) says it is not.
func (a *Agent) synced() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.status.Alert == "" && a.status.Connected {
		a.status.LastSync = a.o.Clock.Now()
	}
}

// feedAfter reports whether feed position id ("<ms>-<seq>", a Redis stream ID) comes after
// pos; an ID that does not parse counts as after (reload rather than skip).
func feedAfter(id, pos string) bool {
	parse := func(s string) (uint64, uint64, bool) {
		a, b, ok := strings.Cut(s, "-")
		ms, err1 := strconv.ParseUint(a, 10, 64)
		seq, err2 := strconv.ParseUint(b, 10, 64)
		return ms, seq, ok && err1 == nil && err2 == nil
	}
	im, is, ok1 := parse(id)
	pm, ps, ok2 := parse(pos)
	if !ok1 || !ok2 {
		return true
	}
	return im > pm || im == pm && is > ps
}

// HTTPSource pulls the KRL and the user CA keys from the CA service over HTTPS, trusting only
// a pinned CA certificate: a KRL is unsigned, so the channel must be authenticated. It long
// polls GET /v1/krl (?wait=, If-None-Match: the server answers when the KRL changes or the
// wait ends) and falls back to polling a server that does not (no X-KRL-Wait in its answer).
type HTTPSource struct {
	base   string
	client *http.Client
	// maxAnswer bounds what get reads of an answer (0: MaxHTTPAnswerBytes).
	maxAnswer int64
	etag      string
	// caRead is when the user CA keys were last read (zero: not yet).
	caRead time.Time
}

// requestTimeout bounds a request that does not wait on purpose.
const requestTimeout = 10 * time.Second

// MaxHTTPAnswerBytes bounds an answer an HTTPSource reads (a longer one is an error naming the
// URL and the bound, and the agent keeps its last good KRL): a KRL lists every revoked serial,
// key ID and key of a CA in force, a few bytes to a few hundred each (PROTOCOL.krl), so 256 MiB
// is millions of entries, where a server that answers without end would otherwise fill the
// bastion's memory.
const MaxHTTPAnswerBytes = 256 << 20

// NewHTTPSource returns a source for the server at base (https only), trusting the PEM CA
// certificates in caFile and nothing else.
func NewHTTPSource(base, caFile string) (*HTTPSource, error) {
	u, err := url.Parse(base)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("bastion: --server %q must be an https URL: a KRL is unsigned, only TLS with a pinned CA protects it", base)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("bastion: --server-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("bastion: --server-ca %s holds no PEM certificate", caFile)
	}
	// No client timeout: each request has a deadline of its own (a long poll waits longer).
	return &HTTPSource{base: strings.TrimRight(base, "/"), client: &http.Client{
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}},
	}}, nil
}

// get fetches path with If-None-Match etag; a wait above zero asks for a long poll of that
// wait, and waited says whether the server granted one (X-KRL-Wait).
func (h *HTTPSource) get(ctx context.Context, path, etag string, wait time.Duration) (b []byte, newETag string, code int, waited bool, err error) {
	// The real clock, not Options.Clock: this deadline interrupts a socket, which only the
	// runtime's timers can do.
	ctx, cancel := context.WithTimeout(ctx, wait+requestTimeout)
	defer cancel()
	if wait > 0 {
		path += "?wait=" + url.QueryEscape(wait.String())
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.base+path, nil)
	if err != nil {
		return nil, "", 0, false, err
	}
	if etag != "" {
		req.Header.Set("If-None-Match", etag)
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return nil, "", 0, false, err
	}
	defer resp.Body.Close()
	max := h.maxAnswer
	if max == 0 {
		max = MaxHTTPAnswerBytes
	}
	b, err = bodylimit.ReadAll(resp, max)
	if err != nil {
		return nil, "", 0, false, err
	}
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusNotModified {
		return nil, "", resp.StatusCode, false, &httpStatusError{path: path, code: resp.StatusCode, retryAfter: retryAfter(resp.Header.Get("Retry-After")), longPoll: wait > 0}
	}
	return b, resp.Header.Get("ETag"), resp.StatusCode, resp.Header.Get("X-KRL-Wait") != "", nil
}

// httpStatusError is an answer other than 200 or 304; retryAfter is the pause its Retry-After
// asked for (0: none); longPoll says whether the request asked for a long poll (wait).
type httpStatusError struct {
	path       string
	code       int
	retryAfter time.Duration
	longPoll   bool
}

// shedLongPoll reports whether err is a long poll turned away by a cap on long polls (503 from
// a replica at limits.rate.krl_long_polls, 429 from an address at long_polls_per_address):
// the same request would be refused again while the agents holding the slots ask again at
// once after each answer, so only a pull without wait (which no long poll cap counts) is sure
// to bring the KRL.
func shedLongPoll(err error) bool {
	var se *httpStatusError
	return errors.As(err, &se) && se.longPoll && (se.code == http.StatusServiceUnavailable || se.code == http.StatusTooManyRequests)
}

func (e *httpStatusError) Error() string {
	if e.retryAfter > 0 {
		return fmt.Sprintf("GET %s: HTTP %d, retry after %s", e.path, e.code, e.retryAfter)
	}
	return fmt.Sprintf("GET %s: HTTP %d", e.path, e.code)
}

// maxRetryAfter bounds the pause a server's Retry-After may impose: the agent fails static
// meanwhile, so a longer one (a misconfigured proxy) would leave the KRL stale for as long.
const maxRetryAfter = time.Minute

// retryAfter reads a Retry-After header in seconds (RFC 9110 §10.2.3; the date form is not
// used by sshca and reads as none), at most maxRetryAfter.
func retryAfter(h string) time.Duration {
	n, err := strconv.ParseUint(strings.TrimSpace(h), 10, 32)
	if err != nil {
		return 0
	}
	return min(time.Duration(n)*time.Second, maxRetryAfter)
}

// failurePause is the pause after a failed poll: PollEvery, or when the server said when to
// come back (503 from a replica that holds as many long polls as it may, 429 from a per-address
// cap) a uniformly random pause between that and half as much again, so that the agents it
// turned away do not come back in one instant.
func (a *Agent) failurePause(err error) time.Duration {
	var se *httpStatusError
	if errors.As(err, &se) && se.retryAfter > 0 {
		return max(a.o.PollEvery, se.retryAfter+rand.N(se.retryAfter/2+1))
	}
	return a.o.PollEvery
}

// runHTTP follows the server until ctx ends or until (when not zero): long polls one after
// the other while the server grants them, else polls every PollEvery; after a failure it
// pauses PollEvery, or longer as the server's Retry-After says (failurePause). After a long
// poll shed by a cap (shedLongPoll) the next request, after that pause, is a pull without
// wait, then a long poll again after PollEvery: the agents holding a full replica's slots
// take them back the instant each of their polls ends, so an agent that only ever asked to
// long poll again could be turned away for as long as they stay, and miss every revocation
// meanwhile.
func (a *Agent) runHTTP(ctx context.Context, until time.Time) error {
	h := a.o.HTTP
	pull := false // the last long poll was shed: pull without wait next
	for {
		wait := a.o.LongPollWait
		if !until.IsZero() {
			wait = min(wait, until.Sub(a.o.Clock.Now()))
		}
		if pull {
			wait, pull = 0, false
		}
		waited, err := a.pollOnce(ctx, h, max(wait, 0))
		pull = shedLongPoll(err)
		if err != nil {
			a.setError("https", err)
		}
		if !until.IsZero() && a.o.Clock.Now().After(until) {
			return nil
		}
		if err == nil && waited {
			continue // the wait was the pause; ask again at once
		}
		pause := a.o.PollEvery
		if err != nil {
			pause = a.failurePause(err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-a.o.Clock.After(pause):
		}
	}
}

// pollOnce fetches the user CA keys and the KRL once, long polling the KRL for up to wait; it
// says whether the server held the request (a long poll), so the caller asks again at once.
func (a *Agent) pollOnce(ctx context.Context, h *HTTPSource, wait time.Duration) (bool, error) {
	// The CA keys every CARefresh, as from Redis, not before every long poll: after a
	// revocation every agent of a fleet asks again at once, and a second request each would
	// double what one revocation costs the CA.
	if a.o.UserCAPath != "" && (h.caRead.IsZero() || a.o.Clock.Since(h.caRead) >= a.o.CARefresh) {
		b, _, _, _, err := h.get(ctx, "/v1/ca/user.pub", "", 0)
		if err != nil {
			return false, err
		}
		if len(bytes.TrimSpace(b)) > 0 {
			if err := a.writeCAFile(b); err != nil {
				return false, err
			}
		}
		h.caRead = a.o.Clock.Now()
	}
	if a.o.UserCAPath != "" {
		// The long poll ends by the next CA re-read: it answers early only on a revocation
		// change, and a new CA key (generated, then trusted in a second step) is not one, so a
		// full wait would let it reach TrustedUserCAKeys up to LongPollWait late, not CARefresh.
		wait = max(0, min(wait, a.o.CARefresh-a.o.Clock.Since(h.caRead)))
	}
	begin := a.o.Clock.Now()
	b, etag, code, waited, err := h.get(ctx, "/v1/krl", h.etag, wait)
	a.o.Log.Debug("KRL poll answered", "wait", wait, "code", code, "waited", waited, "took", a.o.Clock.Since(begin), "err", err)
	if err != nil {
		return false, err
	}
	if code == http.StatusNotModified {
		a.setConnected("https")
		// A 304 long before the wait ended: the server is shutting down (or something in
		// between answers for it); pause rather than ask again at once.
		return waited && a.o.Clock.Since(begin) >= wait/2, nil
	}
	if err := a.installKRL(b, "https"); err != nil {
		return false, err
	}
	h.etag = etag
	return waited, nil
}
