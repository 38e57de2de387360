// Package notify delivers access request events (ca.AccessEvent) to webhooks: queued in the
// store's outbox on the request path (Dispatcher.Queue, one XADD), and sent by a background loop
// (Dispatcher.Run) that one replica at a time handles per event. Each POST carries the event's
// ID for de-duplication and an HMAC-SHA256 signature over "timestamp.body" (Sign, Verify), as
// generic JSON or a Slack-compatible {"text": ...} with user text escaped. Redirects are never
// followed, every send has a timeout and reads at most 4 KiB of the answer, failures are
// retried with backoff and counted in metrics.
package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/store"
)

// The headers of a webhook POST.
const (
	HeaderEventID   = "X-Sshca-Event-Id"
	HeaderTimestamp = "X-Sshca-Timestamp" // unix seconds
	HeaderSignature = "X-Sshca-Signature" // "v1=" + hex HMAC-SHA256(secret, timestamp + "." + body)
)

// Webhook is one receiver: its URL (https, or http on loopback), its format ("json": the event
// as is; "slack": {"text": ...}), and the secret its signatures are keyed with.
type Webhook struct {
	URL    string
	Format string
	Secret []byte
}

// Outbox is the store's notification outbox (store.Redis, store.Memory).
type Outbox interface {
	AppendEvent(ctx context.Context, event []byte) error
	TakeEvents(ctx context.Context, consumer string, count int64, block, claimAfter time.Duration) ([]store.OutboxEntry, error)
	AckEvent(ctx context.Context, id string) error
}

// Options configure a Dispatcher. Webhooks and Outbox are required.
type Options struct {
	Webhooks []Webhook
	Outbox   Outbox
	// Consumer names this replica in the outbox's consumer group (default: random).
	Consumer string
	// ClaimAfter is how long an event taken and not acknowledged waits before it is taken
	// again, by this replica or another (default 30s): the delay between rounds of retries.
	ClaimAfter time.Duration
	// Attempts bounds the sends of one event to one webhook (default 8); past it the event is
	// dropped for that webhook, logged and counted.
	Attempts int
	// Timeout bounds one POST (default 5s).
	Timeout time.Duration
	// SweepEvery is how often expired requests are looked for (default 10s).
	SweepEvery time.Duration
	Registerer prometheus.Registerer
	Logger     *slog.Logger
	// Clock stamps signatures and drives every wait: the sweep interval and the pauses
	// between sends (default the real clock; tests advance a clockwork.FakeClock).
	Clock clockwork.Clock
}

// Dispatcher queues and sends events. It implements ca.Notifier.
type Dispatcher struct {
	o      Options
	client *http.Client
	sent   *prometheus.CounterVec

	mu sync.Mutex
	// expire queues the events of requests that expired (ca.Authority.NotifyExpired).
	expire func(context.Context) (int, error)
	// tries counts the sends of an event to each webhook so far, by outbox ID; delivered
	// marks the webhooks that took it (a retry skips them).
	tries     map[string][]int
	delivered map[string][]bool
}

var _ ca.Notifier = (*Dispatcher)(nil)

// New returns a Dispatcher; its metric sshca_notifications_total{result} (sent, failed,
// dropped, queue_failed) is registered with o.Registerer when set.
func New(o Options) (*Dispatcher, error) {
	if o.Outbox == nil || len(o.Webhooks) == 0 {
		return nil, errors.New("notify: an outbox and at least one webhook are required")
	}
	if o.Consumer == "" {
		var b [6]byte
		_, _ = rand.Read(b[:])
		o.Consumer = "sshca-" + hex.EncodeToString(b[:])
	}
	if o.ClaimAfter <= 0 {
		o.ClaimAfter = 30 * time.Second
	}
	if o.Attempts <= 0 {
		o.Attempts = 8
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	if o.SweepEvery <= 0 {
		o.SweepEvery = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Clock == nil {
		o.Clock = clockwork.NewRealClock()
	}
	d := &Dispatcher{o: o, tries: map[string][]int{}, delivered: map[string][]bool{},
		client: &http.Client{Timeout: o.Timeout,
			// A receiver that redirects is misconfigured or hostile: the event, signed for
			// it, goes nowhere else.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sshca_notifications_total",
			Help: "Webhook notifications by result: sent, failed (to be retried), dropped (out of attempts), queue_failed."}, []string{"result"})}
	for _, r := range []string{"sent", "failed", "dropped", "queue_failed"} {
		d.sent.WithLabelValues(r)
	}
	if o.Registerer != nil {
		if err := o.Registerer.Register(d.sent); err != nil {
			return nil, fmt.Errorf("notify: metrics: %w", err)
		}
	}
	return d, nil
}

// Metric is sshca_notifications_total.
func (d *Dispatcher) Metric() *prometheus.CounterVec { return d.sent }

// SetExpire sets what Run calls every SweepEvery to queue the events of expired requests.
func (d *Dispatcher) SetExpire(f func(context.Context) (int, error)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.expire = f
}

// Queue appends ev to the outbox (ca.Notifier); it does not wait for any receiver.
func (d *Dispatcher) Queue(ctx context.Context, ev ca.AccessEvent) error {
	b, err := json.Marshal(ev)
	if err == nil {
		err = d.o.Outbox.AppendEvent(ctx, b)
	}
	if err != nil {
		d.sent.WithLabelValues("queue_failed").Inc()
		return fmt.Errorf("notify: queue: %w", err)
	}
	return nil
}

// Run sends queued events until ctx ends.
func (d *Dispatcher) Run(ctx context.Context) error {
	nextSweep := time.Time{}
	for ctx.Err() == nil {
		if now := d.o.Clock.Now(); !now.Before(nextSweep) {
			nextSweep = now.Add(d.o.SweepEvery)
			d.mu.Lock()
			expire := d.expire
			d.mu.Unlock()
			if expire != nil {
				if _, err := expire(ctx); err != nil && ctx.Err() == nil {
					d.o.Logger.Warn("notify: looking for expired access requests failed", "err", err)
				}
			}
		}
		entries, err := d.o.Outbox.TakeEvents(ctx, d.o.Consumer, 16, time.Second, d.o.ClaimAfter)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			d.o.Logger.Warn("notify: reading the outbox failed", "err", err)
			d.sleep(ctx, time.Second)
			continue
		}
		for _, e := range entries {
			d.handle(ctx, e)
		}
	}
	return nil
}

// handle sends one event to every webhook that has not taken it, a few times with backoff,
// and acknowledges it once every webhook took it or is out of attempts. An event left
// unacknowledged is taken again after ClaimAfter.
func (d *Dispatcher) handle(ctx context.Context, e store.OutboxEntry) {
	var ev ca.AccessEvent
	if err := json.Unmarshal(e.Event, &ev); err != nil {
		d.o.Logger.Error("notify: dropping an event that does not decode", "outbox_id", e.ID, "err", err)
		d.sent.WithLabelValues("dropped").Inc()
		_ = d.o.Outbox.AckEvent(ctx, e.ID)
		return
	}
	d.mu.Lock()
	tries, done := d.tries[e.ID], d.delivered[e.ID]
	if tries == nil {
		tries, done = make([]int, len(d.o.Webhooks)), make([]bool, len(d.o.Webhooks))
		d.tries[e.ID], d.delivered[e.ID] = tries, done
	}
	d.mu.Unlock()
	for wait := 200 * time.Millisecond; ; wait *= 3 {
		pending := false
		for i, w := range d.o.Webhooks {
			if done[i] || tries[i] >= d.o.Attempts {
				continue
			}
			tries[i]++
			if err := d.send(ctx, w, ev); err != nil {
				d.sent.WithLabelValues("failed").Inc()
				d.o.Logger.Warn("notify: webhook send failed", "event", ev.ID, "type", ev.Type, "webhook", i, "attempt", tries[i], "err", err)
				if tries[i] >= d.o.Attempts {
					d.sent.WithLabelValues("dropped").Inc()
					d.o.Logger.Error("notify: event dropped for a webhook after its last attempt", "event", ev.ID, "type", ev.Type, "webhook", i)
					continue
				}
				pending = true
				continue
			}
			done[i] = true
			d.sent.WithLabelValues("sent").Inc()
		}
		if !pending {
			break
		}
		if wait > 2*time.Second || ctx.Err() != nil {
			return // the outbox hands it out again after ClaimAfter
		}
		d.sleep(ctx, wait)
	}
	if err := d.o.Outbox.AckEvent(ctx, e.ID); err != nil {
		d.o.Logger.Warn("notify: acknowledging an event failed; it may be sent again", "event", ev.ID, "err", err)
		return
	}
	d.mu.Lock()
	delete(d.tries, e.ID)
	delete(d.delivered, e.ID)
	d.mu.Unlock()
}

// send POSTs ev to w, signed; any answer but 2xx is an error. At most 4 KiB of the answer is
// read.
func (d *Dispatcher) send(ctx context.Context, w Webhook, ev ca.AccessEvent) error {
	body, err := Payload(w.Format, ev)
	if err != nil {
		return err
	}
	ts := strconv.FormatInt(d.o.Clock.Now().Unix(), 10)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(HeaderEventID, ev.ID)
	req.Header.Set(HeaderTimestamp, ts)
	req.Header.Set(HeaderSignature, Sign(w.Secret, ts, body))
	resp, err := d.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return nil
}

// Sign is the signature header value of body sent at ts (unix seconds): "v1=" and the hex
// HMAC-SHA256 of "ts.body" keyed with secret.
func Sign(secret []byte, ts string, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return "v1=" + hex.EncodeToString(m.Sum(nil))
}

// Verify checks a received webhook: the signature over "ts.body" with secret, and a timestamp
// no further than maxAge from now (a replayed old event is refused).
func Verify(secret []byte, ts, signature string, body []byte, now time.Time, maxAge time.Duration) error {
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return errors.New("notify: timestamp is not unix seconds")
	}
	if d := now.Sub(time.Unix(sec, 0)); d > maxAge || d < -maxAge {
		return fmt.Errorf("notify: timestamp %s is more than %s away", ts, maxAge)
	}
	if !hmac.Equal([]byte(Sign(secret, ts, body)), []byte(signature)) {
		return errors.New("notify: signature does not match")
	}
	return nil
}

// Payload is the body sent to a webhook of the format: the event's JSON ("json"), or a
// Slack-compatible {"text": ...} ("slack").
func Payload(format string, ev ca.AccessEvent) ([]byte, error) {
	switch format {
	case "", "json":
		return json.Marshal(ev)
	case "slack":
		return json.Marshal(map[string]string{"text": SlackText(ev)})
	}
	return nil, fmt.Errorf("notify: unknown webhook format %q", format)
}

// SlackText says what happened in one line of Slack mrkdwn. Every text that comes from a user
// (requester, actor, principals, reason, ticket, note) is escaped (&, <, >), so that it cannot
// render as a link or a mention such as <!channel>.
func SlackText(ev ca.AccessEvent) string {
	e := slackEscape
	what := map[string]string{
		"create": "requested", "approve": "approval", "deny": "denied", "expire": "expired",
		"break_glass": "BREAK-GLASS access taken", "review": "break-glass reviewed", "cancel": "cancelled", "revoke": "revoked",
	}[ev.Type]
	if what == "" {
		what = e(ev.Type)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "sshca: %s: %s for %s (%s)", what, e(strings.Join(ev.Principals, ", ")), e(ev.Requester),
		time.Duration(ev.TTLSeconds)*time.Second)
	if ev.Actor != "" {
		fmt.Fprintf(&b, " by %s", e(ev.Actor))
	}
	fmt.Fprintf(&b, "; reason: %s", e(ev.Reason))
	if ev.Note != "" {
		fmt.Fprintf(&b, "; note: %s", e(ev.Note))
	}
	fmt.Fprintf(&b, "; request %s is %s, %d of %d approvals", e(ev.Request), e(ev.State), ev.Approvals, ev.ApprovalsRequired)
	return b.String()
}

// slackEscape escapes the three characters Slack's mrkdwn gives meaning to
// (https://api.slack.com/reference/surfaces/formatting#escaping).
func slackEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}

// sleep waits d on the dispatcher's clock, or until ctx ends.
func (d *Dispatcher) sleep(ctx context.Context, wait time.Duration) {
	t := d.o.Clock.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.Chan():
	}
}
