package services

import (
	"container/list"
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/sshca/sshca/client"
)

// RateLimits configure the limits that protect one replica. They act per replica: behind a
// load balancer, N replicas allow N times these rates. A zero field takes its value from
// DefaultRateLimits.
//
// Requests fall in three classes: probes (/healthz, /readyz, /metrics), never limited; KRL and
// CA key pulls (GET /v1/krl, /v1/krl/host, /v1/ca/...), which have limits of their own so that
// issuance load cannot starve revocation delivery; and the rest of the API.
type RateLimits struct {
	// PerAddress is the sustained rate, in requests per second, of one source address (an IPv4
	// address, or an IPv6 /64) to the API other than KRL pulls; Burst is how many it may make
	// at once. Checked before the bearer token is verified (the largest CPU cost of a request).
	PerAddress float64
	Burst      int
	// PerIdentity is the sustained rate, in certificate requests per second, of one canonical
	// identity (ca.Identity.Name), whatever its addresses; IdentityBurst is how many at once.
	// Checked by the authority right after authentication (ca.Config.IdentityLimiter).
	PerIdentity   float64
	IdentityBurst int
	// KRLPerAddress and KRLBurst are the per-address rate (requests per second) and burst of
	// KRL and CA key pulls.
	KRLPerAddress float64
	KRLBurst      int
	// InFlight is how many API requests (KRL pulls apart) one replica works on at once; more
	// are shed with 503 and Retry-After at once rather than queued, before latency collapses.
	// KRLInFlight is the same bound for KRL and CA key pulls.
	InFlight    int
	KRLInFlight int
	// LongPollsPerAddress is how many long polls (GET /v1/krl and /v1/requests/{id} with a
	// wait, IsLongPoll) one source address may hold open at once; more get 429 with Retry-After. Long polls wait on
	// purpose, so they hold no in-flight slot (a fleet of waiting bastions would starve KRL
	// pulls) but take a token of the KRL rate like any pull.
	LongPollsPerAddress int
	// KRLLongPolls and RequestLongPolls bound the long polls one replica holds open at once,
	// from all addresses together, of GET /v1/krl (bastion agents waiting for a revocation) and
	// of GET /v1/requests/{id} (`sshca request create` waiting for a decision); more get 503
	// with Retry-After, so that clients behind many addresses cannot hold an unbounded number
	// of goroutines, connections and (for request waits, one read a second each) Redis reads.
	// The KRL default lets one replica hold a fleet of 10,000 HTTPS agents alone (each ≈ 2
	// goroutines, 1.1 file descriptors and 50–100 KiB, docs/scaling.md: ≈ 0.5–1 GiB in all)
	// when the other replicas are down.
	KRLLongPolls     int
	RequestLongPolls int
	// MaxEntries bounds each limiter map (addresses, KRL addresses, identities): beyond it the
	// least recently seen entry is dropped. Entries idle for Idle (or for as long as their
	// bucket takes to refill, if longer) are dropped too; a dropped entry starts again full.
	MaxEntries int
	Idle       time.Duration
	// TrustedProxies are the peers whose X-Forwarded-For names the source address (ClientIP).
	TrustedProxies []netip.Prefix
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// DefaultRateLimits are generous enough for an office behind one NAT address and a fleet of
// bastions pulling KRLs every few seconds, and small enough that one address cannot keep a
// replica's CPU busy verifying tokens.
var DefaultRateLimits = RateLimits{
	PerAddress:    20,
	Burst:         100,
	PerIdentity:   1,
	IdentityBurst: 20,
	KRLPerAddress: 20,
	KRLBurst:      100,
	InFlight:      128,
	KRLInFlight:   128,
	// Bastions behind one NAT address each hold one.
	LongPollsPerAddress: 64,
	KRLLongPolls:        10_000,
	// People waiting for approval; each wait reads its request from Redis every second.
	RequestLongPolls: 1_000,
	MaxEntries:       100_000,
	Idle:             10 * time.Minute,
}

// withDefaults is l with every zero field taken from DefaultRateLimits.
func (l RateLimits) withDefaults() RateLimits {
	d := DefaultRateLimits
	setF := func(v *float64, def float64) {
		if *v == 0 {
			*v = def
		}
	}
	setI := func(v *int, def int) {
		if *v == 0 {
			*v = def
		}
	}
	setF(&l.PerAddress, d.PerAddress)
	setI(&l.Burst, d.Burst)
	setF(&l.PerIdentity, d.PerIdentity)
	setI(&l.IdentityBurst, d.IdentityBurst)
	setF(&l.KRLPerAddress, d.KRLPerAddress)
	setI(&l.KRLBurst, d.KRLBurst)
	setI(&l.InFlight, d.InFlight)
	setI(&l.KRLInFlight, d.KRLInFlight)
	setI(&l.LongPollsPerAddress, d.LongPollsPerAddress)
	setI(&l.KRLLongPolls, d.KRLLongPolls)
	setI(&l.RequestLongPolls, d.RequestLongPolls)
	setI(&l.MaxEntries, d.MaxEntries)
	if l.Idle == 0 {
		l.Idle = d.Idle
	}
	if l.Now == nil {
		l.Now = time.Now
	}
	return l
}

// RateLimiter enforces RateLimits: Handler in front of the HTTP API, Allow as the authority's
// ca.IdentityLimiter.
type RateLimiter struct {
	now        func() time.Time
	trusted    []netip.Prefix
	addresses  *buckets
	krl        *buckets
	identities *buckets
	// slots and krlSlots are the in-flight semaphores.
	slots    chan struct{}
	krlSlots chan struct{}
	// longPolls counts the long polls open by address key, at most longPollCap each.
	longPollCap int
	pollsMu     sync.Mutex
	longPolls   map[string]int
	// krlPolls and requestPolls are the replica's long polls of each kind open (semaphores).
	krlPolls, requestPolls chan struct{}
	limited                *prometheus.CounterVec
}

// NewRateLimiter builds the limiters of l; reg, when not nil, gets the counter
// sshca_requests_limited_total{limit} (limit: address, identity, krl_address, in_flight,
// krl_in_flight, long_poll_address, krl_long_polls, request_long_polls) and the gauge
// sshca_long_polls_open{kind} (kind: krl, request).
func NewRateLimiter(l RateLimits, reg prometheus.Registerer) *RateLimiter {
	l = l.withDefaults()
	r := &RateLimiter{
		now:          l.Now,
		trusted:      l.TrustedProxies,
		addresses:    newBuckets(rate.Limit(l.PerAddress), l.Burst, l.MaxEntries, l.Idle),
		krl:          newBuckets(rate.Limit(l.KRLPerAddress), l.KRLBurst, l.MaxEntries, l.Idle),
		identities:   newBuckets(rate.Limit(l.PerIdentity), l.IdentityBurst, l.MaxEntries, l.Idle),
		slots:        make(chan struct{}, l.InFlight),
		krlSlots:     make(chan struct{}, l.KRLInFlight),
		longPollCap:  l.LongPollsPerAddress,
		longPolls:    map[string]int{},
		krlPolls:     make(chan struct{}, l.KRLLongPolls),
		requestPolls: make(chan struct{}, l.RequestLongPolls),
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sshca_requests_limited_total",
			Help: "Requests refused by a rate limit (429) or shed by an in-flight limit (503), by limit: address, identity, krl_address, in_flight, krl_in_flight, long_poll_address, krl_long_polls, request_long_polls.",
		}, []string{"limit"}),
	}
	for _, limit := range []string{"address", "identity", "krl_address", "in_flight", "krl_in_flight", "krl_long_polls", "request_long_polls"} {
		r.limited.WithLabelValues(limit) // exported at 0 before the first refusal
	}
	if reg != nil {
		reg.MustRegister(r.limited)
		open := func(kind string, sem chan struct{}) prometheus.Collector {
			return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sshca_long_polls_open", Help: "Long polls this replica holds open, by kind (krl: GET /v1/krl, request: GET /v1/requests/{id}, with wait); at limits.rate.krl_long_polls or request_long_polls more are shed with 503.",
				ConstLabels: prometheus.Labels{"kind": kind}}, func() float64 { return float64(len(sem)) })
		}
		reg.MustRegister(open("krl", r.krlPolls), open("request", r.requestPolls))
	}
	return r
}

// Allow takes one token from the identity's bucket (ca.IdentityLimiter); when empty, it says
// how long until one is available.
func (r *RateLimiter) Allow(identity string) (bool, time.Duration) {
	ok, wait := r.identities.take(identity, r.now())
	if !ok {
		r.limited.WithLabelValues("identity").Inc()
	}
	return ok, wait
}

// requestClass sorts requests into the classes of RateLimits.
type requestClass int

const (
	classAPI requestClass = iota
	classKRL
	classProbe
)

func classify(r *http.Request) requestClass {
	switch p := r.URL.Path; {
	case p == "/healthz" || p == "/readyz" || p == "/metrics":
		return classProbe
	case (r.Method == http.MethodGet || r.Method == http.MethodHead) &&
		(p == "/v1/krl" || p == "/v1/krl/host" || strings.HasPrefix(p, "/v1/ca/")):
		return classKRL
	default:
		return classAPI
	}
}

// Handler limits the requests next serves: per source address first (before any token is
// looked at), then by the in-flight bound of the request's class, or for a long poll by the
// long polls its address holds open and then by the long polls of its kind the replica holds.
// A request over a rate or a long poll over its address's cap gets 429 and one shed (in
// flight, or a long poll over its kind's cap) gets 503, all with Retry-After in seconds.
func (r *RateLimiter) Handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		class := classify(req)
		if class == classProbe {
			next.ServeHTTP(w, req)
			return
		}
		b, slots, rateName, slotName := r.addresses, r.slots, "address", "in_flight"
		if class == classKRL {
			b, slots, rateName, slotName = r.krl, r.krlSlots, "krl_address", "krl_in_flight"
		}
		key := AddressKey(ClientIP(req, r.trusted))
		if ok, wait := b.take(key, r.now()); !ok {
			r.limited.WithLabelValues(rateName).Inc()
			refuse(w, http.StatusTooManyRequests, wait, "too many requests from this address")
			return
		}
		if IsLongPoll(req) {
			if !r.openLongPoll(key) {
				r.limited.WithLabelValues("long_poll_address").Inc()
				// A slot frees when one of the address's polls ends, within MaxLongPollWait.
				refuse(w, http.StatusTooManyRequests, MaxLongPollWait/5,
					fmt.Sprintf("too many long polls (GET /v1/krl or /v1/requests/{id} with wait) open from this address (at most %d)", r.longPollCap))
				return
			}
			defer r.closeLongPoll(key)
			sem, limit, what := r.krlPolls, "krl_long_polls", "GET /v1/krl"
			if req.URL.Path != "/v1/krl" {
				sem, limit, what = r.requestPolls, "request_long_polls", "GET /v1/requests/{id}"
			}
			select {
			case sem <- struct{}{}:
				defer func() { <-sem }()
			default:
				r.limited.WithLabelValues(limit).Inc()
				// Polls end within MaxLongPollWait (request waits within ca.MaxAccessWait):
				// a fifth of it, which the agent spreads (bastion.HTTPSource).
				refuse(w, http.StatusServiceUnavailable, MaxLongPollWait/5,
					fmt.Sprintf("server busy: this replica holds as many long polls of %s with wait as it may (%d, limits.rate.%s)", what, cap(sem), limit))
				return
			}
			next.ServeHTTP(w, req)
			return
		}
		select {
		case slots <- struct{}{}:
			defer func() { <-slots }()
		default:
			r.limited.WithLabelValues(slotName).Inc()
			refuse(w, http.StatusServiceUnavailable, time.Second, "server busy: too many requests in flight")
			return
		}
		next.ServeHTTP(w, req)
	})
}

func (r *RateLimiter) openLongPoll(key string) bool {
	r.pollsMu.Lock()
	defer r.pollsMu.Unlock()
	if r.longPolls[key] >= r.longPollCap {
		return false
	}
	r.longPolls[key]++
	return true
}

func (r *RateLimiter) closeLongPoll(key string) {
	r.pollsMu.Lock()
	defer r.pollsMu.Unlock()
	if r.longPolls[key]--; r.longPolls[key] <= 0 {
		delete(r.longPolls, key) // the map holds only addresses with polls open
	}
}

// refuse answers code with Retry-After (whole seconds, at least 1) and an error body that says
// when to retry.
func refuse(w http.ResponseWriter, code int, wait time.Duration, msg string) {
	secs := retryAfterSeconds(wait)
	w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
	writeJSON(w, code, client.ErrorBody{Error: fmt.Sprintf("%s; retry in %ds", msg, secs)})
}

// retryAfterSeconds is wait rounded up to whole seconds, at least 1 (Retry-After: 0 invites an
// immediate retry).
func retryAfterSeconds(wait time.Duration) int64 {
	return max(1, int64((wait+time.Second-1)/time.Second))
}

// AddressKey is the rate-limit key of a source address: an IPv4 address as is, an IPv6 address
// by its /64 (one subscriber's allocation; an IPv4-mapped one as IPv4). A string that is not an
// address is its own key.
func AddressKey(ip string) string {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return ip
	}
	if a.Is4() {
		// ParseAddr takes only the canonical dotted quad (no leading zeros, no zone), so the
		// key is the string as it came, without building it again for every request.
		return ip
	}
	a = a.Unmap().WithZone("")
	if a.Is4() {
		return a.String()
	}
	return netip.PrefixFrom(a, 64).Masked().String()
}

// buckets are token buckets by key, at most max of them: the least recently used is dropped
// when a new key needs room, and entries idle longer than idle are dropped as they reach the
// back of the list. Dropping an entry idle for as long as its bucket takes to refill loses
// nothing (it would be full again).
type buckets struct {
	limit rate.Limit
	burst int
	max   int
	idle  time.Duration

	mu    sync.Mutex
	byKey map[string]*list.Element
	lru   list.List // of *bucket, most recently used first
}

type bucket struct {
	key  string
	lim  *rate.Limiter
	last time.Time
}

func newBuckets(limit rate.Limit, burst, maxEntries int, idle time.Duration) *buckets {
	if refill := time.Duration(float64(burst) / float64(limit) * float64(time.Second)); refill > idle {
		idle = refill
	}
	return &buckets{limit: limit, burst: burst, max: maxEntries, idle: idle, byKey: make(map[string]*list.Element)}
}

// take takes one token from key's bucket at now; when there is none, it says how long until
// there is.
func (b *buckets) take(key string, now time.Time) (bool, time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for e := b.lru.Back(); e != nil && now.Sub(e.Value.(*bucket).last) >= b.idle; e = b.lru.Back() {
		b.drop(e)
	}
	e, ok := b.byKey[key]
	if ok {
		b.lru.MoveToFront(e)
	} else {
		if b.lru.Len() >= b.max {
			b.drop(b.lru.Back())
		}
		e = b.lru.PushFront(&bucket{key: key, lim: rate.NewLimiter(b.limit, b.burst)})
		b.byKey[key] = e
	}
	bk := e.Value.(*bucket)
	bk.last = now
	res := bk.lim.ReserveN(now, 1)
	if !res.OK() {
		return false, time.Second
	}
	if wait := res.DelayFrom(now); wait > 0 {
		res.CancelAt(now)
		return false, wait
	}
	return true, 0
}

func (b *buckets) drop(e *list.Element) {
	b.lru.Remove(e)
	delete(b.byKey, e.Value.(*bucket).key)
}

// len is how many entries the map holds.
func (b *buckets) len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.byKey)
}
