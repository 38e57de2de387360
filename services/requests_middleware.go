package services

import (
	"context"
	"log/slog"
	"time"

	"github.com/sshca/sshca/ca"
)

// AccessRequestsMiddleware decorates AccessRequests, as Middleware decorates Service: the
// access request API is logged and counted like every other call (sshca_api_calls_total
// methods request_create, request_get, request_list, request_approve, request_deny,
// request_cancel, request_review).
type AccessRequestsMiddleware func(AccessRequests) AccessRequests

// LoggingAccessRequests logs every access request call with its outcome and duration at info
// level, as LoggingMiddleware does: the request's ID and state, never the token (the
// authority logs what a request asks for and why).
func LoggingAccessRequests(log *slog.Logger) AccessRequestsMiddleware {
	return func(next AccessRequests) AccessRequests { return requestLogging{next, log} }
}

type requestLogging struct {
	next AccessRequests
	log  *slog.Logger
}

func (m requestLogging) logged(ctx context.Context, op string, begin time.Time, r ca.AccessRequest, err error, attrs ...any) {
	if r.ID != "" {
		attrs = append(attrs, "request", r.ID, "state", r.Status)
	}
	logCall(ctx, m.log, "access request "+op, begin, err, attrs...)
}

func (m requestLogging) CreateAccessRequest(ctx context.Context, token string, nr ca.NewAccessRequest) (r ca.AccessRequest, err error) {
	defer func(begin time.Time) {
		m.logged(ctx, "create", begin, r, err, "principals", nr.Principals, "break_glass", nr.BreakGlass)
	}(time.Now())
	return m.next.CreateAccessRequest(ctx, token, nr)
}

func (m requestLogging) GetAccessRequest(ctx context.Context, token, id string) (r ca.AccessRequest, err error) {
	defer func(begin time.Time) { m.logged(ctx, "get", begin, r, err, "id", id) }(time.Now())
	return m.next.GetAccessRequest(ctx, token, id)
}

func (m requestLogging) WaitAccessRequest(ctx context.Context, token, id string, wait time.Duration, seen string) (r ca.AccessRequest, err error) {
	defer func(begin time.Time) { m.logged(ctx, "wait", begin, r, err, "id", id, "wait", wait) }(time.Now())
	return m.next.WaitAccessRequest(ctx, token, id, wait, seen)
}

func (m requestLogging) AccessRequestsPage(ctx context.Context, token string, q ca.RequestQuery) (page ca.RequestPage, err error) {
	defer func(begin time.Time) {
		logCall(ctx, m.log, "access request list", begin, err, "mine", q.Mine, "pending", q.Pending, "requests", len(page.Requests), "more", !page.Next.IsZero())
	}(time.Now())
	return m.next.AccessRequestsPage(ctx, token, q)
}

func (m requestLogging) DecideAccessRequest(ctx context.Context, token, id string, d ca.AccessDecision) (r ca.AccessRequest, err error) {
	defer func(begin time.Time) { m.logged(ctx, decideOp(d), begin, r, err, "id", id) }(time.Now())
	return m.next.DecideAccessRequest(ctx, token, id, d)
}

func (m requestLogging) CancelAccessRequest(ctx context.Context, token, id, reason string) (r ca.AccessRequest, err error) {
	defer func(begin time.Time) { m.logged(ctx, "cancel", begin, r, err, "id", id) }(time.Now())
	return m.next.CancelAccessRequest(ctx, token, id, reason)
}

func (m requestLogging) ReviewAccessRequest(ctx context.Context, token, id, reason string) (r ca.AccessRequest, err error) {
	defer func(begin time.Time) { m.logged(ctx, "review", begin, r, err, "id", id) }(time.Now())
	return m.next.ReviewAccessRequest(ctx, token, id, reason)
}

func decideOp(d ca.AccessDecision) string {
	if d.Approve {
		return "approve"
	}
	return "deny"
}

// InstrumentingAccessRequests counts and times every access request call
// (sshca_api_calls_total and sshca_api_call_duration_seconds, methods request_*).
func InstrumentingAccessRequests(m *Metrics) AccessRequestsMiddleware {
	return func(next AccessRequests) AccessRequests { return requestInstrumenting{next, m} }
}

type requestInstrumenting struct {
	next AccessRequests
	m    *Metrics
}

func (mw requestInstrumenting) CreateAccessRequest(ctx context.Context, token string, nr ca.NewAccessRequest) (_ ca.AccessRequest, err error) {
	defer func(begin time.Time) { mw.m.observe("request_create", begin, err) }(time.Now())
	return mw.next.CreateAccessRequest(ctx, token, nr)
}

func (mw requestInstrumenting) GetAccessRequest(ctx context.Context, token, id string) (_ ca.AccessRequest, err error) {
	defer func(begin time.Time) { mw.m.observe("request_get", begin, err) }(time.Now())
	return mw.next.GetAccessRequest(ctx, token, id)
}

// WaitAccessRequest is counted apart (request_wait): it lasts up to its wait on purpose, and
// would swamp request_get's durations.
func (mw requestInstrumenting) WaitAccessRequest(ctx context.Context, token, id string, wait time.Duration, seen string) (_ ca.AccessRequest, err error) {
	defer func(begin time.Time) { mw.m.observe("request_wait", begin, err) }(time.Now())
	return mw.next.WaitAccessRequest(ctx, token, id, wait, seen)
}

func (mw requestInstrumenting) AccessRequestsPage(ctx context.Context, token string, q ca.RequestQuery) (_ ca.RequestPage, err error) {
	defer func(begin time.Time) { mw.m.observe("request_list", begin, err) }(time.Now())
	return mw.next.AccessRequestsPage(ctx, token, q)
}

func (mw requestInstrumenting) DecideAccessRequest(ctx context.Context, token, id string, d ca.AccessDecision) (_ ca.AccessRequest, err error) {
	defer func(begin time.Time) { mw.m.observe("request_"+decideOp(d), begin, err) }(time.Now())
	return mw.next.DecideAccessRequest(ctx, token, id, d)
}

func (mw requestInstrumenting) CancelAccessRequest(ctx context.Context, token, id, reason string) (_ ca.AccessRequest, err error) {
	defer func(begin time.Time) { mw.m.observe("request_cancel", begin, err) }(time.Now())
	return mw.next.CancelAccessRequest(ctx, token, id, reason)
}

func (mw requestInstrumenting) ReviewAccessRequest(ctx context.Context, token, id, reason string) (_ ca.AccessRequest, err error) {
	defer func(begin time.Time) { mw.m.observe("request_review", begin, err) }(time.Now())
	return mw.next.ReviewAccessRequest(ctx, token, id, reason)
}
