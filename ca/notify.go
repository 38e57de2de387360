package ca

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"time"
)

// AccessEvent is a notification about an access request (issue 17, notifications): what
// happened, to which request, and who did it. Its JSON is the generic webhook payload; ID lets
// receivers drop duplicates (an event may be sent more than once, never lost once queued).
type AccessEvent struct {
	ID string `json:"id"`
	// Type is "create", "approve", "deny", "expire", "break_glass", "review", "cancel" or
	// "revoke".
	Type string    `json:"type"`
	Time time.Time `json:"time"`
	// Actor is who did it (display name; "" for expire).
	Actor             string   `json:"actor,omitempty"`
	Request           string   `json:"request"`
	Requester         string   `json:"requester"`
	Principals        []string `json:"principals"`
	TTLSeconds        int64    `json:"ttl_seconds"`
	Reason            string   `json:"reason"`
	Ticket            string   `json:"ticket,omitempty"`
	BreakGlass        bool     `json:"break_glass,omitempty"`
	State             string   `json:"state"`
	Approvals         int      `json:"approvals"`
	ApprovalsRequired int      `json:"approvals_required"`
	// Note is the actor's reason (approve, deny, review, cancel).
	Note string `json:"note,omitempty"`
}

// Notifier queues access events for delivery (notify.Outbox). Queue must be quick and must not
// wait on the receivers: it is called on the request path, after the change it reports is
// stored; a failure is logged and never fails the request.
type Notifier interface {
	Queue(ctx context.Context, ev AccessEvent) error
}

// NewAccessEvent is the event of type typ about r at now, by actor with note.
func NewAccessEvent(typ string, r AccessRequest, actor, note string, now time.Time) AccessEvent {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return AccessEvent{ID: hex.EncodeToString(b[:]), Type: typ, Time: now.UTC(), Actor: actor, Request: r.ID,
		Requester: r.Requester.DisplayName(), Principals: nonNil(r.Principals), TTLSeconds: r.TTLSeconds, Reason: r.Reason,
		Ticket: r.Ticket, BreakGlass: r.BreakGlass, State: string(r.StateAt(now)), Approvals: len(r.Approvers()),
		ApprovalsRequired: r.ApprovalsRequired, Note: note}
}

// notify queues an event, if a Notifier is configured; a failure is logged only.
func (a *Authority) notify(ctx context.Context, typ string, r AccessRequest, actor Identity, note string) {
	if a.notifier == nil {
		return
	}
	name := ""
	if actor.Issuer != "" || actor.Subject != "" {
		name = actor.DisplayName()
	}
	ev := NewAccessEvent(typ, r, name, note, a.now())
	if err := a.notifier.Queue(context.WithoutCancel(ctx), ev); err != nil {
		a.log.ErrorContext(ctx, "notification not queued", "type", typ, "request", r.ID, "err", err)
	}
}
