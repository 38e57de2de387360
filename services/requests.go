package services

import (
	"context"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/go-kit/kit/endpoint"
	kithttp "github.com/go-kit/kit/transport/http"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/client"
)

// AccessRequests is the access request API (/v1/requests), each call authenticated by the
// bearer token and decided by the policy (kinds "request" and "approve"; "revoke" to end
// another's request). *ca.Authority implements it.
type AccessRequests interface {
	CreateAccessRequest(ctx context.Context, token string, nr ca.NewAccessRequest) (ca.AccessRequest, error)
	GetAccessRequest(ctx context.Context, token, id string) (ca.AccessRequest, error)
	// WaitAccessRequest is GetAccessRequest that waits, at most wait, until the request is no
	// longer as seen (ca.AccessRequest.WaitTag; "" for as it is now) or has ended.
	WaitAccessRequest(ctx context.Context, token, id string, wait time.Duration, seen string) (ca.AccessRequest, error)
	// AccessRequestsPage lists a page of the requests the caller may see (GET /v1/requests).
	AccessRequestsPage(ctx context.Context, token string, q ca.RequestQuery) (ca.RequestPage, error)
	DecideAccessRequest(ctx context.Context, token, id string, d ca.AccessDecision) (ca.AccessRequest, error)
	CancelAccessRequest(ctx context.Context, token, id, reason string) (ca.AccessRequest, error)
	ReviewAccessRequest(ctx context.Context, token, id, reason string) (ca.AccessRequest, error)
}

var _ AccessRequests = (*ca.Authority)(nil)

// requestCall is one call of the access request API as decoded: the operation its method and
// path name, the request ID in the path, the body, the list filters and the bearer token.
type requestCall struct {
	op       string // create, get, wait, list, approve, deny, cancel, review
	id       string
	wait     time.Duration // op wait: at most MaxLongPollWait
	seen     string        // op wait: the tag of the request the client holds
	create   client.NewAccessRequest
	decision client.AccessDecision
	list     ca.RequestQuery // op list: filters and page
	token    string
	sourceIP string
}

type requestResponse struct {
	client.AccessRequest
	Err error `json:"-"`
}

func (r requestResponse) Failed() error { return r.Err }

type requestListResponse struct {
	client.AccessRequestList
	Err error `json:"-"`
}

func (r requestListResponse) Failed() error { return r.Err }

// makeRequestsEndpoint serves every call of the access request API. A wait ends at once when
// stop is closed (the server is shutting down: its graceful drain must not wait for it).
func makeRequestsEndpoint(s AccessRequests, now func() time.Time, stop <-chan struct{}) endpoint.Endpoint {
	return func(ctx context.Context, request any) (any, error) {
		c := request.(requestCall)
		if c.token == "" {
			return requestResponse{Err: errMissingToken}, nil
		}
		var r ca.AccessRequest
		var err error
		switch c.op {
		case "list":
			page, err := s.AccessRequestsPage(ctx, c.token, c.list)
			if err != nil {
				return requestListResponse{Err: err}, nil
			}
			out := client.AccessRequestList{Requests: make([]client.AccessRequest, 0, len(page.Requests)), NextCursor: page.Next.String()}
			for _, r := range page.Requests {
				out.Requests = append(out.Requests, AccessRequestView(r, now()))
			}
			return requestListResponse{AccessRequestList: out}, nil
		case "create":
			r, err = s.CreateAccessRequest(ctx, c.token, ca.NewAccessRequest{Principals: c.create.Principals, TTL: c.create.TTL,
				Reason: c.create.Reason, SourceIP: c.sourceIP, BreakGlass: c.create.BreakGlass})
		case "get":
			r, err = s.GetAccessRequest(ctx, c.token, c.id)
		case "wait":
			wctx, cancel := context.WithCancel(ctx)
			defer cancel()
			if stop != nil {
				go func() {
					select {
					case <-stop:
						cancel()
					case <-wctx.Done():
					}
				}()
			}
			r, err = s.WaitAccessRequest(wctx, c.token, c.id, c.wait, c.seen)
		case "approve", "deny":
			r, err = s.DecideAccessRequest(ctx, c.token, c.id, ca.AccessDecision{Approve: c.op == "approve",
				ContentHash: c.decision.ContentHash, Reason: c.decision.Reason})
		case "cancel":
			r, err = s.CancelAccessRequest(ctx, c.token, c.id, c.decision.Reason)
		case "review":
			r, err = s.ReviewAccessRequest(ctx, c.token, c.id, c.decision.Reason)
		}
		if err != nil {
			return requestResponse{Err: err}, nil
		}
		return requestResponse{AccessRequest: AccessRequestView(r, now())}, nil
	}
}

// AccessRequestView is the API form of an access request at now.
func AccessRequestView(r ca.AccessRequest, now time.Time) client.AccessRequest {
	rfc := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format(time.RFC3339)
	}
	out := client.AccessRequest{ID: r.ID, Requester: r.Requester.Name(), RequesterName: r.Requester.DisplayName(),
		Principals: r.Principals, TTLSeconds: r.TTLSeconds, Reason: r.Reason, Ticket: r.Ticket, BreakGlass: r.BreakGlass,
		State: string(r.StateAt(now)), CreatedAt: rfc(r.CreatedAt), PendingUntil: rfc(r.PendingUntil),
		ApprovalsRequired: r.ApprovalsRequired, Approvals: []client.Approval{}, DecidedAt: rfc(r.DecidedAt),
		DecidedBy: r.DecidedBy, DecisionReason: r.DecisionReason, NotAfter: rfc(r.NotAfter), ContentHash: r.ContentHash(),
		ReviewedAt: rfc(r.ReviewedAt), ReviewedBy: r.ReviewedBy, ReviewReason: r.ReviewReason}
	hash := r.ContentHash()
	for _, a := range r.Approvals {
		if a.ContentHash != hash {
			continue
		}
		out.Approvals = append(out.Approvals, client.Approval{Approver: a.Approver.Name(), ApproverName: a.Approver.DisplayName(),
			At: rfc(a.At), Reason: a.Reason})
	}
	for _, s := range r.Serials {
		out.Serials = append(out.Serials, strconv.FormatUint(s, 10))
	}
	return out
}

// mountRequests mounts the access request API: POST and GET /v1/requests, GET
// /v1/requests/{id} (with ?wait=25s&seen=pending/0, a long poll: IsLongPoll), POST
// /v1/requests/{id}/approve, /deny, /cancel and /review.
func mountRequests(mux *http.ServeMux, s AccessRequests, trusted []netip.Prefix, stop <-chan struct{}, encodeResponse kithttp.EncodeResponseFunc, opts []kithttp.ServerOption) {
	e := makeRequestsEndpoint(s, time.Now, stop)
	decode := func(op string) kithttp.DecodeRequestFunc {
		return func(_ context.Context, r *http.Request) (any, error) {
			c := requestCall{op: op, id: r.PathValue("id")}
			var err error
			switch op {
			case "get":
				if q := r.URL.Query(); q.Has("wait") {
					if c.wait, err = parseWait(q.Get("wait")); err != nil {
						return nil, err
					}
					if c.seen = q.Get("seen"); c.seen != "" && !ca.ValidWaitTag(c.seen) {
						return nil, ca.Invalid("seen %q is not a request's state and approvals: send the state and the number of approvals you hold, e.g. seen=pending/0", c.seen)
					}
					c.op = "wait"
				}
			case "create":
				err = decodeJSON(r, &c.create)
			case "approve", "deny", "cancel", "review":
				err = decodeJSON(r, &c.decision)
			case "list":
				q := r.URL.Query()
				c.list.Mine, c.list.Pending = q.Get("mine") == "true", q.Get("pending") == "true"
				if c.list.Limit, err = pageLimit(q); err != nil {
					return nil, err
				}
				c.list.After, err = ca.ParseRequestCursor(q.Get("cursor"))
			}
			if err != nil {
				return nil, err
			}
			c.sourceIP = ClientIP(r, trusted)
			if c.token, err = bearer(r); err != nil {
				return nil, err
			}
			return c, nil
		}
	}
	mux.Handle("POST /v1/requests", kithttp.NewServer(e, decode("create"), encodeResponse, opts...))
	mux.Handle("GET /v1/requests", kithttp.NewServer(e, decode("list"), encodeResponse, opts...))
	mux.Handle("GET /v1/requests/{id}", kithttp.NewServer(e, decode("get"), encodeResponse, opts...))
	for _, op := range []string{"approve", "deny", "cancel", "review"} {
		mux.Handle("POST /v1/requests/{id}/"+op, kithttp.NewServer(e, decode(op), encodeResponse, opts...))
	}
}
