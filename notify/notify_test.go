package notify_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jonboulle/clockwork"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/notify"
	"github.com/sshca/sshca/store"
)

// receiver is a webhook receiver on loopback that verifies each POST and keeps what it got.
type receiver struct {
	t      *testing.T
	secret []byte
	srv    *httptest.Server
	mu     sync.Mutex
	bodies map[string][]byte // by event ID
	count  map[string]int
	status func(n int) int // the answer to the n-th POST (1-based); nil: 200
	n      int
}

func newReceiver(t *testing.T, secret string) *receiver {
	r := &receiver{t: t, secret: []byte(secret), bodies: map[string][]byte{}, count: map[string]int{}}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		if err := notify.Verify(r.secret, req.Header.Get(notify.HeaderTimestamp), req.Header.Get(notify.HeaderSignature), body, time.Now(), 5*time.Minute); err != nil {
			t.Errorf("receiver: %v", err)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		r.mu.Lock()
		r.n++
		n := r.n
		status := http.StatusOK
		if r.status != nil {
			status = r.status(n)
		}
		if status == http.StatusOK {
			id := req.Header.Get(notify.HeaderEventID)
			r.bodies[id] = body
			r.count[id]++
		}
		r.mu.Unlock()
		w.WriteHeader(status)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) got() (map[string][]byte, map[string]int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	b, c := map[string][]byte{}, map[string]int{}
	for k, v := range r.bodies {
		b[k] = v
	}
	for k, v := range r.count {
		c[k] = v
	}
	return b, c
}

func redisOutbox(t *testing.T) *store.Redis {
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { rdb.Close() })
	return store.NewRedis(rdb, store.RedisOptions{})
}

func event(id, reason string) ca.AccessEvent {
	return ca.AccessEvent{ID: id, Type: "create", Time: time.Now().UTC().Truncate(time.Second), Request: "req_aaaaaaaaaaaaaaaa",
		Requester: "alice@example.com", Principals: []string{"root"}, TTLSeconds: 1800, Reason: reason, State: "pending", ApprovalsRequired: 1}
}

func run(t *testing.T, d *notify.Dispatcher) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

// TestWebhookDelivery: an event reaches a generic and a Slack receiver, signed over
// "timestamp.body", with its ID; the Slack text escapes what the requester wrote.
func TestWebhookDelivery(t *testing.T) {
	out := redisOutbox(t)
	plain, slack := newReceiver(t, "s1"), newReceiver(t, "s2")
	reg := prometheus.NewRegistry()
	d, err := notify.New(notify.Options{Outbox: out, Registerer: reg, Webhooks: []notify.Webhook{
		{URL: plain.srv.URL, Format: "json", Secret: []byte("s1")}, {URL: slack.srv.URL, Format: "slack", Secret: []byte("s2")}}})
	if err != nil {
		t.Fatal(err)
	}
	run(t, d)
	hostile := "OPS-1 <!channel> & <https://evil.example|click me>"
	ev := event("e1", hostile)
	if err := d.Queue(t.Context(), ev); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "both receivers get the event", func() bool {
		a, _ := plain.got()
		b, _ := slack.got()
		return a["e1"] != nil && b["e1"] != nil
	})
	a, _ := plain.got()
	var got ca.AccessEvent
	if err := json.Unmarshal(a["e1"], &got); err != nil || got.Reason != hostile || got.Request != ev.Request || !got.Time.Equal(ev.Time) {
		t.Errorf("generic payload %s: %v", a["e1"], err)
	}
	b, _ := slack.got()
	var s struct{ Text string }
	if err := json.Unmarshal(b["e1"], &s); err != nil {
		t.Fatal(err)
	}
	if strings.ContainsAny(s.Text, "<>") || !strings.Contains(s.Text, "&lt;!channel&gt; &amp; &lt;https://evil.example|click me&gt;") {
		t.Errorf("slack text not escaped: %s", s.Text)
	}
	if n := testutil.ToFloat64(d.Metric().WithLabelValues("sent")); n != 2 {
		t.Errorf("sent %v, want 2", n)
	}
}

// TestWebhookRetriesAndRedirects: a receiver that fails is retried with backoff until it
// accepts; a redirect is never followed (its target never hears of the event) and counts as
// a failure.
func TestWebhookRetriesAndRedirects(t *testing.T) {
	out := redisOutbox(t)
	flaky := newReceiver(t, "k")
	flaky.status = func(n int) int {
		if n <= 2 {
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	}
	target := newReceiver(t, "k")
	redirect := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target.srv.URL, http.StatusTemporaryRedirect)
	}))
	t.Cleanup(redirect.Close)
	d, err := notify.New(notify.Options{Outbox: out, Attempts: 3, ClaimAfter: 200 * time.Millisecond, Webhooks: []notify.Webhook{
		{URL: flaky.srv.URL, Secret: []byte("k")}, {URL: redirect.URL, Secret: []byte("k")}}})
	if err != nil {
		t.Fatal(err)
	}
	run(t, d)
	if err := d.Queue(t.Context(), event("e2", "x")); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "the flaky receiver accepts on its third try", func() bool {
		_, c := flaky.got()
		return c["e2"] == 1
	})
	testenv.Eventually(t, 10*time.Second, "the redirecting webhook is out of attempts", func() bool {
		return testutil.ToFloat64(d.Metric().WithLabelValues("dropped")) == 1
	})
	if _, c := target.got(); len(c) != 0 {
		t.Errorf("a redirect was followed: %v", c)
	}
	if n := testutil.ToFloat64(d.Metric().WithLabelValues("failed")); n != 5 {
		t.Errorf("failed %v, want 5 (2 flaky, 3 redirected)", n)
	}
}

// TestOneReplicaSendsEach: two replicas on one outbox; every event reaches the receiver once.
func TestOneReplicaSendsEach(t *testing.T) {
	out := redisOutbox(t)
	r := newReceiver(t, "k")
	for _, name := range []string{"a", "b"} {
		d, err := notify.New(notify.Options{Outbox: out, Consumer: name, Webhooks: []notify.Webhook{{URL: r.srv.URL, Secret: []byte("k")}}})
		if err != nil {
			t.Fatal(err)
		}
		run(t, d)
	}
	q, _ := notify.New(notify.Options{Outbox: out, Webhooks: []notify.Webhook{{URL: r.srv.URL, Secret: []byte("k")}}})
	const n = 20
	for i := range n {
		if err := q.Queue(t.Context(), event(strings.Repeat("x", i+1), "r")); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, 10*time.Second, "every event delivered", func() bool { _, c := r.got(); return len(c) == n })
	time.Sleep(300 * time.Millisecond)
	_, c := r.got()
	for id, k := range c {
		if k != 1 {
			t.Errorf("event %s delivered %d times", id, k)
		}
	}
}

// TestVerify: the receiver's check refuses a wrong secret, a changed body and a stale timestamp.
func TestVerify(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	body := []byte(`{"id":"e"}`)
	sig := notify.Sign([]byte("k"), "1800000000", body)
	if err := notify.Verify([]byte("k"), "1800000000", sig, body, now, time.Minute); err != nil {
		t.Fatal(err)
	}
	for name, err := range map[string]error{
		"secret": notify.Verify([]byte("other"), "1800000000", sig, body, now, time.Minute),
		"body":   notify.Verify([]byte("k"), "1800000000", sig, []byte(`{"id":"f"}`), now, time.Minute),
		"stale":  notify.Verify([]byte("k"), "1800000000", sig, body, now.Add(2*time.Minute), time.Minute),
		"ts":     notify.Verify([]byte("k"), "1800000001", sig, body, now, time.Minute),
	} {
		if err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestWebhookBackoffOnItsClock: a receiver that keeps failing is sent an event again after
// 200 ms, 600 ms and 1.8 s of the dispatcher's clock (a clockwork.FakeClock advanced 100 ms
// at a time), then left to the outbox's next hand-out; each send is signed with that clock's
// time.
func TestWebhookBackoffOnItsClock(t *testing.T) {
	clk := clockwork.NewFakeClockAt(time.Unix(1_800_000_000, 0))
	var mu sync.Mutex
	var at []time.Time
	var stamps []string
	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		at, stamps = append(at, clk.Now()), append(stamps, r.Header.Get(notify.HeaderTimestamp))
		mu.Unlock()
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	t.Cleanup(failing.Close)
	d, err := notify.New(notify.Options{Outbox: store.NewMemory(nil), ClaimAfter: time.Hour, Clock: clk,
		Webhooks: []notify.Webhook{{URL: failing.URL, Secret: []byte("k")}}})
	if err != nil {
		t.Fatal(err)
	}
	run(t, d)
	if err := d.Queue(t.Context(), event("e9", "x")); err != nil {
		t.Fatal(err)
	}
	sends := func() int { mu.Lock(); defer mu.Unlock(); return len(at) }
	testenv.Step(t, clk, 1, 100*time.Millisecond, func() bool { return sends() == 4 })
	testenv.Eventually(t, 10*time.Second, "the fourth failure is counted", func() bool {
		return testutil.ToFloat64(d.Metric().WithLabelValues("failed")) == 4
	})
	mu.Lock()
	defer mu.Unlock()
	if diff := cmp.Diff([]time.Duration{200 * time.Millisecond, 600 * time.Millisecond, 1800 * time.Millisecond}, testenv.Gaps(at)); diff != "" {
		t.Errorf("pauses between sends on the dispatcher's clock (-want +got):\n%s", diff)
	}
	if stamps[0] != "1800000000" {
		t.Errorf("first send signed at %s, want the dispatcher's clock 1800000000", stamps[0])
	}
}

// countingOutbox counts the reads of an outbox.
type countingOutbox struct {
	notify.Outbox
	takes atomic.Int64
}

func (c *countingOutbox) TakeEvents(ctx context.Context, consumer string, count int64, block, claimAfter time.Duration) ([]store.OutboxEntry, error) {
	c.takes.Add(1)
	return c.Outbox.TakeEvents(ctx, consumer, count, block, claimAfter)
}

// TestSweepOnItsClock: expired requests are looked for at start and then once SweepEvery has
// passed on the dispatcher's clock: however many reads of the outbox come between, not before.
func TestSweepOnItsClock(t *testing.T) {
	start := time.Unix(1_800_000_000, 0)
	clk := clockwork.NewFakeClockAt(start)
	out := &countingOutbox{Outbox: store.NewMemory(nil)}
	d, err := notify.New(notify.Options{Outbox: out, SweepEvery: time.Minute, Clock: clk,
		Webhooks: []notify.Webhook{{URL: "http://127.0.0.1:1", Secret: []byte("k")}}})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var sweeps []time.Time
	d.SetExpire(func(context.Context) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		sweeps = append(sweeps, clk.Now())
		return 0, nil
	})
	swept := func() []time.Time { mu.Lock(); defer mu.Unlock(); return slices.Clone(sweeps) }
	run(t, d)
	testenv.Eventually(t, 10*time.Second, "the sweep at start", func() bool { return len(swept()) == 1 })
	clk.Advance(59 * time.Second)
	n := out.takes.Load()
	testenv.Eventually(t, 10*time.Second, "two more reads of the outbox", func() bool { return out.takes.Load() >= n+2 })
	if got := swept(); len(got) != 1 {
		t.Fatalf("swept at %v before SweepEvery had passed on the clock", got)
	}
	clk.Advance(time.Second)
	testenv.Eventually(t, 10*time.Second, "the sweep once SweepEvery has passed", func() bool { return len(swept()) == 2 })
	if diff := cmp.Diff([]time.Time{start, start.Add(time.Minute)}, swept()); diff != "" {
		t.Errorf("sweeps on the dispatcher's clock (-want +got):\n%s", diff)
	}
}
