package client

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// Access requests (POST/GET /v1/requests...). Every call carries the caller's bearer token.

// CreateRequest creates an access request (POST /v1/requests); it starts pending.
func (c *Client) CreateRequest(ctx context.Context, token string, req NewAccessRequest) (AccessRequest, error) {
	var out AccessRequest
	err := c.Do(ctx, http.MethodPost, "/v1/requests", token, req, &out)
	return out, err
}

// Request returns one access request (GET /v1/requests/{id}).
func (c *Client) Request(ctx context.Context, token, id string) (AccessRequest, error) {
	var out AccessRequest
	err := c.Do(ctx, http.MethodGet, "/v1/requests/"+url.PathEscape(id), token, nil, &out)
	return out, err
}

// RequestWait is the longest wait WaitRequest asks the server for (its bound of a long poll).
const RequestWait = 25 * time.Second

// WaitRequest returns the access request once it is no longer as the caller holds it (seen:
// its state and approvals, AccessRequest.WaitTag), or after wait (at most RequestWait) with the
// request as it is: GET /v1/requests/{id}?wait=25s&seen=pending/0, a long poll the server
// holds outside its request deadline. A server without the long poll answers at once.
func (c *Client) WaitRequest(ctx context.Context, token, id string, wait time.Duration, seen AccessRequest) (AccessRequest, error) {
	wait = min(max(wait, 0), RequestWait)
	q := url.Values{"wait": {wait.String()}, "seen": {seen.WaitTag()}}
	var out AccessRequest
	err := c.do(ctx, http.MethodGet, "/v1/requests/"+url.PathEscape(id)+"?"+q.Encode(), token, nil, &out, wait+GetTimeout, MaxAnswerBytes)
	return out, err
}

// Requests lists the access requests the caller may see (GET /v1/requests): its own and those
// it may decide; mine keeps only its own, pending only those waiting for a decision. It asks
// page after page (the server's default size) until the server gives no next cursor; a request
// that comes on two pages (decided meanwhile) is listed once, as the later page had it.
func (c *Client) Requests(ctx context.Context, token string, mine, pending bool) ([]AccessRequest, error) {
	return c.RequestsPaged(ctx, token, RequestQuery{Mine: mine, Pending: pending})
}

// RequestQuery selects the access requests of GET /v1/requests.
type RequestQuery struct {
	Mine, Pending bool
	// Limit is the size of a page (0: the server's default, DefaultPageLimit).
	Limit int
	// OnPage, when set, is called after each page with how many pages and requests have come
	// so far.
	OnPage func(pages, requests int)
}

// RequestsPaged is Requests with q's page size and progress.
func (c *Client) RequestsPaged(ctx context.Context, token string, q RequestQuery) ([]AccessRequest, error) {
	all := []AccessRequest{}
	at := map[string]int{} // ID -> index in all
	err := followPages(ctx, "/v1/requests", func(ctx context.Context, cursor string) (string, int, error) {
		page, err := c.RequestsPage(ctx, token, q, cursor)
		for _, r := range page.Requests {
			if i, ok := at[r.ID]; ok {
				all[i] = r
				continue
			}
			at[r.ID] = len(all)
			all = append(all, r)
		}
		return page.NextCursor, len(all), err
	}, q.OnPage)
	if err != nil {
		return nil, err
	}
	return all, nil
}

// RequestsPage asks for one page of GET /v1/requests after cursor (a NextCursor of the page
// before; "" for the first).
func (c *Client) RequestsPage(ctx context.Context, token string, q RequestQuery, cursor string) (AccessRequestList, error) {
	v := url.Values{}
	if q.Mine {
		v.Set("mine", "true")
	}
	if q.Pending {
		v.Set("pending", "true")
	}
	var out AccessRequestList
	err := c.do(ctx, http.MethodGet, pagePath("/v1/requests", v, q.Limit, cursor), token, nil, &out, GetTimeout, MaxListBytes)
	return out, err
}

// ApproveRequest approves the request whose content hashes to d.ContentHash
// (POST /v1/requests/{id}/approve).
func (c *Client) ApproveRequest(ctx context.Context, token, id string, d AccessDecision) (AccessRequest, error) {
	return c.decide(ctx, token, id, "approve", d)
}

// DenyRequest denies the request, with a reason (POST /v1/requests/{id}/deny).
func (c *Client) DenyRequest(ctx context.Context, token, id string, d AccessDecision) (AccessRequest, error) {
	return c.decide(ctx, token, id, "deny", d)
}

// CancelRequest ends the request (POST /v1/requests/{id}/cancel): its requester cancels it,
// an administrator revokes it; its certificates are revoked.
func (c *Client) CancelRequest(ctx context.Context, token, id string, d AccessDecision) (AccessRequest, error) {
	return c.decide(ctx, token, id, "cancel", d)
}

// ReviewRequest records the follow-up review of a break-glass request
// (POST /v1/requests/{id}/review).
func (c *Client) ReviewRequest(ctx context.Context, token, id string, d AccessDecision) (AccessRequest, error) {
	return c.decide(ctx, token, id, "review", d)
}

func (c *Client) decide(ctx context.Context, token, id, op string, d AccessDecision) (AccessRequest, error) {
	var out AccessRequest
	err := c.Do(ctx, http.MethodPost, "/v1/requests/"+url.PathEscape(id)+"/"+op, token, d, &out)
	return out, err
}

// WaitTag is what the server compares when the caller waits for a change (ca.AccessRequest.WaitTag):
// the state and the number of approvals that count, "pending/1".
func (r AccessRequest) WaitTag() string { return r.State + "/" + strconv.Itoa(len(r.Approvals)) }
