package services

import (
	"context"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/sshca/sshca/ca"
)

// The push channel of GET /v1/krl: a long poll. A bastion agent sends
//
//	GET /v1/krl?wait=25s
//	If-None-Match: <the ETag of the KRL it has>
//
// and gets the KRL at once (200) when its ETag differs from the current one, else the answer
// waits until the revocation state changes (200, the new KRL) or the wait ends (304, the same
// ETag), and the agent asks again at once. A server without the long poll ignores wait and
// answers at once, so the agent's fallback is its polling (bastion.HTTPSource).
//
// Why a bounded wait and not a stream with heartbeats: a long poll that ends within MaxWait
// (25 s) is a plain HTTP/1.1 request and response, so every proxy and load balancer passes it
// unchanged, and it ends before the common idle timeouts (60 s for AWS ALB, nginx's
// proxy_read_timeout and HAProxy's usual timeout server; 30 s for Google Cloud's default backend
// timeout). The re-poll is the heartbeat. Chunked whitespace would need a framing of its own
// around a binary KRL, and server-sent events a client that parses them.

// KRLFeed is what the long poll needs: the revocation states GET /v1/krl publishes, read now,
// and a notice of their next change. One follower per replica implements it
// (revocation.Follower, wired in cmd/sshca), following every scope's feed with one XREAD loop
// however many agents wait: a wake costs one read of the states, shared by every waiting agent.
type KRLFeed interface {
	// States are the revocation states of every user CA key, read now.
	States(ctx context.Context) ([]ca.RevocationState, error)
	// Changed returns a channel that is closed at the next change of the states after the call
	// (a revocation through any replica, a new scope, the follower reconnecting).
	Changed() <-chan struct{}
}

// MaxLongPollWait is the longest wait a long poll of GET /v1/krl holds; a longer wait asked
// for is shortened to it. See the package comment on the push channel for why 25 s.
const MaxLongPollWait = 25 * time.Second

// IsLongPoll reports whether r is a long poll: GET /v1/krl or GET /v1/requests/{id} with a wait
// query parameter above zero (the second is `sshca request create` waiting for a decision).
// Long polls wait on purpose: they are exempt from the request deadline (RequestDeadline's
// exempt hook) and from the in-flight bounds, and capped per source address and per replica
// instead (RateLimits.LongPollsPerAddress, KRLLongPolls, RequestLongPolls). A wait of zero, or
// one that does not parse (answered 400 at once), is an ordinary request: it neither takes a
// long poll's slot nor escapes the bounds of the requests that answer at once.
func IsLongPoll(r *http.Request) bool {
	if r.Method != http.MethodGet {
		return false
	}
	id, ok := strings.CutPrefix(r.URL.Path, "/v1/requests/")
	if r.URL.Path != "/v1/krl" && (!ok || id == "" || strings.Contains(id, "/")) {
		return false
	}
	q := r.URL.Query()
	if !q.Has("wait") {
		return false
	}
	wait, err := parseWait(q.Get("wait"))
	return err == nil && wait > 0
}

// parseWait reads the wait parameter: a Go duration ("25s") or whole seconds ("25"), at most
// MaxLongPollWait (longer is shortened).
func parseWait(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		n, nerr := strconv.ParseUint(s, 10, 32)
		if nerr != nil {
			return 0, ca.Invalid("wait %q is not a duration: send wait=25s (at most %s), or no wait for an immediate answer", s, MaxLongPollWait)
		}
		d = time.Duration(n) * time.Second
	}
	if d < 0 {
		return 0, ca.Invalid("wait %q is negative: send wait=25s (at most %s)", s, MaxLongPollWait)
	}
	return min(d, MaxLongPollWait), nil
}

// renderedKRL is one read of the states, encoded once for every waiter.
type renderedKRL struct {
	etag, version string
	body          []byte
	err           error
}

// krlHandler answers GET /v1/krl, with or without a wait.
type krlHandler struct {
	feed   KRLFeed
	render func(...ca.RevocationState) ([]byte, error)
	log    *slog.Logger
	stop   <-chan struct{}
	// readTimeout bounds each read of the states (requests that wait have no deadline).
	readTimeout time.Duration

	// clock ages last and times each poll's wait (the real clock; tests pass a
	// clockwork.FakeClock and advance it).
	clock clockwork.Clock

	mu sync.Mutex
	// wake is the read made after the change notice woke: the first waiter woken by a notice
	// reads and renders, the others take its answer (one read per change, not per waiter).
	wake *sharedRead
	// last is the newest successful read and the notice taken before it. A long poll from an
	// agent that already holds that KRL waits without reading again while the notice has not
	// fired and the read is younger than reuseRead: after a change every agent asks again at
	// once, and a read each (a transaction and the whole revocation set from the store, then
	// an encoding) would make one revocation cost the store and the CA O(agents) work.
	last *lastRead
	// confirm is the read under way for long polls that waited on a held read and end without a
	// notice (see confirmed): one read for every poll that arrived before it began.
	confirm *confirmRead
}

// confirmRead is a read begun at begin, shared by the polls that arrived before begin.
type confirmRead struct {
	begin time.Time
	done  chan struct{} // closed when krl is set
	krl   renderedKRL
}

// lastRead is a read and the change notice taken before it: the read is current while that
// notice is open (the follower has seen no change since).
type lastRead struct {
	next <-chan struct{}
	krl  renderedKRL
	at   time.Time // when the read began
}

// reuseRead bounds how long a read answers long polls without a new one: the follower does
// not wake waiters when the store stops answering, so a fresh read is what tells arriving
// agents (503) within about this long.
const reuseRead = time.Second

type sharedRead struct {
	after <-chan struct{} // the notice that woke the read
	done  chan struct{}   // closed when krl and next are set
	krl   renderedKRL
	next  <-chan struct{} // the notice taken before the read
}

func newKRLHandler(feed KRLFeed, render func(...ca.RevocationState) ([]byte, error), log *slog.Logger, stop <-chan struct{}, clock clockwork.Clock) *krlHandler {
	if clock == nil {
		clock = clockwork.NewRealClock()
	}
	return &krlHandler{feed: feed, render: render, log: log, stop: stop, readTimeout: DefaultRequestTimeout, clock: clock}
}

func (h *krlHandler) now() time.Time { return h.clock.Now() }

// remember keeps k, read after notice next was taken at begin, for long polls to reuse.
func (h *krlHandler) remember(next <-chan struct{}, k renderedKRL, begin time.Time) {
	if k.err != nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.last == nil || !begin.Before(h.last.at) {
		h.last = &lastRead{next: next, krl: k, at: begin}
	}
}

// held returns the last read when an agent holding etag inm may wait on it without a read of
// its own: nothing changed since the read (next is the notice taken before it), the read is
// recent, and the agent holds that very KRL. An agent behind or ahead of it (another replica
// answered it first) gets a read of its own.
func (h *krlHandler) held(next <-chan struct{}, inm string) (renderedKRL, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	l := h.last
	if l == nil || l.next != next || l.krl.etag != inm || h.now().Sub(l.at) >= reuseRead {
		return renderedKRL{}, false
	}
	return l.krl, true
}

// confirmed returns a read begun after since (when the poll arrived): the last read when it
// began later, else the confirming read under way when it began later, else a new one. A poll
// that waited on a held read answers from it when its wait ends without a notice: the held read
// began before the poll arrived, and the follower's notice lags the store (its XREAD, its
// backoff after a failure), so a revocation already acknowledged to the revoker may be missing
// from it. Polls held together time out together and share one read.
func (h *krlHandler) confirmed(since time.Time) renderedKRL {
	h.mu.Lock()
	if l := h.last; l != nil && l.at.After(since) {
		h.mu.Unlock()
		return l.krl
	}
	if c := h.confirm; c != nil && c.begin.After(since) {
		h.mu.Unlock()
		<-c.done
		return c.krl
	}
	c := &confirmRead{begin: h.now(), done: make(chan struct{})}
	h.confirm = c
	h.mu.Unlock()
	// Not the request's context: another poll may be the one that takes this answer.
	next := h.feed.Changed()
	c.krl = h.read(context.Background())
	h.remember(next, c.krl, c.begin)
	close(c.done)
	return c.krl
}

// read reads the states and renders them, under a deadline of its own.
func (h *krlHandler) read(ctx context.Context) renderedKRL {
	ctx, cancel := context.WithTimeout(ctx, h.readTimeout)
	defer cancel()
	states, err := h.feed.States(ctx)
	if err != nil {
		return renderedKRL{err: err}
	}
	etag, version := krlETag(states)
	body, err := h.render(states...)
	if err != nil {
		return renderedKRL{err: err}
	}
	return renderedKRL{etag: etag, version: version, body: body}
}

// afterWake is the read that follows notice woke, shared by every waiter it woke, and the
// notice to wait on next.
func (h *krlHandler) afterWake(woke <-chan struct{}) (renderedKRL, <-chan struct{}) {
	h.mu.Lock()
	s := h.wake
	if s == nil || s.after != woke {
		s = &sharedRead{after: woke, done: make(chan struct{})}
		h.wake = s
		h.mu.Unlock()
		// Not the request's context: another waiter may be the one that takes this answer.
		s.next = h.feed.Changed()
		begin := h.now()
		s.krl = h.read(context.Background())
		h.remember(s.next, s.krl, begin)
		close(s.done)
	} else {
		h.mu.Unlock()
		<-s.done
	}
	return s.krl, s.next
}

func (h *krlHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	inm := r.Header.Get("If-None-Match")
	var wait time.Duration
	if r.URL.Query().Has("wait") {
		var err error
		if wait, err = parseWait(r.URL.Query().Get("wait")); err != nil {
			answerFailure(ctx, h.log, err, w)
			return
		}
	}
	if r.URL.Query().Has("wait") {
		// The client knows by this that the server long polls (else it polls).
		w.Header().Set("X-KRL-Wait", wait.String())
	}
	arrived := h.now()
	next := h.feed.Changed() // before the read, so that no change falls between
	cur, held := renderedKRL{}, false
	if wait > 0 && inm != "" {
		cur, held = h.held(next, inm)
	}
	if !held {
		begin := h.now()
		cur = h.read(ctx)
		h.remember(next, cur, begin)
	}
	if cur.err != nil || wait == 0 || inm == "" || inm != cur.etag {
		h.answer(ctx, w, inm, cur)
		return
	}
	// The server's write timeout would cut the answer off; the wait bounds it instead. The
	// real clock here, not h.clock: a socket's deadline is the runtime's.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(wait + 2*h.readTimeout + 5*time.Second))
	timer := h.clock.NewTimer(wait)
	defer timer.Stop()
	for cur.err == nil && cur.etag == inm {
		select {
		case <-next:
			cur, next = h.afterWake(next)
			held = false // read after the notice, so after the poll arrived
		case <-timer.Chan():
			if held {
				cur = h.confirmed(arrived)
			}
			h.answer(ctx, w, inm, cur)
			return
		case <-h.stop:
			// Shutting down: answer now, so the graceful drain does not wait for the wait
			// (the agent asks again at once, and reaches another replica).
			if held {
				cur = h.confirmed(arrived)
			}
			h.answer(ctx, w, inm, cur)
			return
		case <-ctx.Done():
			return
		}
	}
	h.answer(ctx, w, inm, cur)
}

// answer writes k: 304 when the client has it, else the KRL; a failed read is its error (503
// for a store that cannot answer).
func (h *krlHandler) answer(ctx context.Context, w http.ResponseWriter, inm string, k renderedKRL) {
	if k.err != nil {
		answerFailure(ctx, h.log, k.err, w)
		return
	}
	w.Header().Set("ETag", k.etag)
	w.Header().Set("X-KRL-Version", k.version)
	w.Header().Set("Cache-Control", "no-cache")
	if inm == k.etag {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(k.body)))
	_, _ = w.Write(k.body)
}

// InstrumentKRLFeed times the feed's reads and records the version of the KRL they publish
// (sshca_krl_version{ca="user"}), as InstrumentingMiddleware does for the Service's.
func InstrumentKRLFeed(m *Metrics) func(KRLFeed) KRLFeed {
	return func(f KRLFeed) KRLFeed { return instrumentedFeed{f, m} }
}

type instrumentedFeed struct {
	KRLFeed
	m *Metrics
}

func (f instrumentedFeed) States(ctx context.Context) (states []ca.RevocationState, err error) {
	defer func(begin time.Time) {
		f.m.observe("krl", begin, err)
		f.m.servedKRL("user", states, err)
	}(time.Now())
	return f.KRLFeed.States(ctx)
}
