package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// The notification outbox: events appended to a Redis stream (Keys.Outbox) on the request path,
// sent by a background loop (notify.Dispatcher). The stream's one consumer group (OutboxGroup)
// hands each event to one replica; an event a replica took and did not acknowledge (it died, or
// its sends keep failing) is taken over by another once idle for the claim time (XAUTOCLAIM), so
// an event survives restarts and is sent until acknowledged. Receivers de-duplicate by event ID:
// a send that succeeded just before a crash is sent again.

// OutboxGroup is the outbox's consumer group.
const OutboxGroup = "notifiers"

// OutboxMaxLen is about how many events the outbox keeps, sent or not.
const OutboxMaxLen = 10000

// OutboxEntry is one event taken from the outbox: its stream ID, its JSON, and whether it was
// handed out before (Deliveries 0 the first time, more when taken over).
type OutboxEntry struct {
	ID         string
	Event      []byte
	Deliveries int64
}

// AppendEvent appends one event (JSON) to the outbox.
func (r *Redis) AppendEvent(ctx context.Context, event []byte) error {
	err := r.rdb.XAdd(ctx, &redis.XAddArgs{Stream: r.keys.Outbox(), MaxLen: OutboxMaxLen, Approx: true,
		Values: []any{"event", string(event)}}).Err()
	if err != nil {
		return fmt.Errorf("store: outbox append: %w", err)
	}
	return nil
}

// TakeEvents hands consumer up to count events: first those another consumer took and left
// unacknowledged for claimAfter, then new ones, waiting up to block for them.
func (r *Redis) TakeEvents(ctx context.Context, consumer string, count int64, block, claimAfter time.Duration) ([]OutboxEntry, error) {
	key := r.keys.Outbox()
	if err := r.rdb.XGroupCreateMkStream(ctx, key, OutboxGroup, "0").Err(); err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		return nil, fmt.Errorf("store: outbox group: %w", err)
	}
	msgs, _, err := r.rdb.XAutoClaim(ctx, &redis.XAutoClaimArgs{Stream: key, Group: OutboxGroup, MinIdle: claimAfter,
		Start: "0-0", Count: count, Consumer: consumer}).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("store: outbox claim: %w", err)
	}
	if len(msgs) > 0 {
		out := entries(msgs)
		for i := range out {
			out[i].Deliveries = 1 // handed out before, at least once
		}
		return out, nil
	}
	streams, err := r.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: OutboxGroup, Consumer: consumer, Streams: []string{key, ">"},
		Count: count, Block: block}).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("store: outbox read: %w", err)
	}
	var out []OutboxEntry
	for _, s := range streams {
		out = append(out, entries(s.Messages)...)
	}
	return out, nil
}

func entries(msgs []redis.XMessage) []OutboxEntry {
	out := make([]OutboxEntry, 0, len(msgs))
	for _, m := range msgs {
		ev, _ := m.Values["event"].(string)
		out = append(out, OutboxEntry{ID: m.ID, Event: []byte(ev)})
	}
	return out
}

// AckEvent marks an event sent: it is not handed out again.
func (r *Redis) AckEvent(ctx context.Context, id string) error {
	_, err := r.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.XAck(ctx, r.keys.Outbox(), OutboxGroup, id)
		p.XDel(ctx, r.keys.Outbox(), id)
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: outbox ack: %w", err)
	}
	return nil
}

// memOutbox is the outbox of a Memory store.
type memOutbox struct {
	mu      sync.Mutex
	seq     int
	events  []OutboxEntry
	taken   map[string]memTaken
	changed chan struct{}
}

type memTaken struct {
	consumer string
	at       time.Time
}

func (o *memOutbox) init() {
	if o.taken == nil {
		o.taken, o.changed = map[string]memTaken{}, make(chan struct{})
	}
}

// AppendEvent appends one event to the outbox.
func (m *Memory) AppendEvent(_ context.Context, event []byte) error {
	o := &m.outbox
	o.mu.Lock()
	defer o.mu.Unlock()
	o.init()
	o.seq++
	o.events = append(o.events, OutboxEntry{ID: fmt.Sprintf("%d-0", o.seq), Event: append([]byte(nil), event...)})
	close(o.changed)
	o.changed = make(chan struct{})
	return nil
}

// TakeEvents hands consumer up to count events not taken, or taken by anyone longer than
// claimAfter ago, waiting up to block for one.
func (m *Memory) TakeEvents(ctx context.Context, consumer string, count int64, block, claimAfter time.Duration) ([]OutboxEntry, error) {
	deadline := time.After(block)
	for {
		o := &m.outbox
		o.mu.Lock()
		o.init()
		now := m.now()
		var out []OutboxEntry
		for i, e := range o.events {
			if int64(len(out)) == count {
				break
			}
			t, taken := o.taken[e.ID]
			if taken && now.Sub(t.at) < claimAfter {
				continue
			}
			if taken {
				o.events[i].Deliveries++
			}
			o.taken[e.ID] = memTaken{consumer, now}
			out = append(out, o.events[i])
		}
		changed := o.changed
		o.mu.Unlock()
		if len(out) > 0 || block <= 0 {
			return out, nil
		}
		select {
		case <-changed:
		case <-deadline:
			return nil, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// AckEvent marks an event sent.
func (m *Memory) AckEvent(_ context.Context, id string) error {
	o := &m.outbox
	o.mu.Lock()
	defer o.mu.Unlock()
	o.init()
	for i, e := range o.events {
		if e.ID == id {
			o.events = append(o.events[:i], o.events[i+1:]...)
			break
		}
	}
	delete(o.taken, id)
	return nil
}
