package client

import (
	"context"
	"net/http"
	"net/url"
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

// Requests lists the access requests the caller may see (GET /v1/requests): its own and those
// it may decide; mine keeps its own only, pending the pending ones only.
func (c *Client) Requests(ctx context.Context, token string, mine, pending bool) ([]AccessRequest, error) {
	q := url.Values{}
	if mine {
		q.Set("mine", "true")
	}
	if pending {
		q.Set("pending", "true")
	}
	path := "/v1/requests"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var out AccessRequestList
	err := c.Do(ctx, http.MethodGet, path, token, nil, &out)
	return out.Requests, err
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
