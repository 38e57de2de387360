package ca

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Waiting for a decision: `sshca request create` asks for its request with a wait (a long poll,
// GET /v1/requests/{id}?wait=25s&seen=pending/0) instead of asking every few seconds. The wait
// ends as soon as the request is no longer as the client saw it. A change made through this
// authority wakes waiting calls at once; one made on another replica is seen at the next read,
// within AccessWaitPoll.

// AccessWaitPoll is how often a waiting call reads its request again, for changes made on
// other replicas.
const AccessWaitPoll = time.Second

// MaxAccessWait bounds one wait, whatever the caller asks for.
const MaxAccessWait = time.Minute

// accessWaitRead bounds each read of a waiting call: the call itself is exempt from the request
// deadline, its reads are not.
const accessWaitRead = 2 * time.Second

// WaitTag is what a client holds of a request when it waits: its state at now and how many
// approvals it was shown (those for its content, as the API lists them), "pending/1". It
// changes with every change a requester waits for. The client computes it from what it was
// shown (client.AccessRequest.WaitTag), so both count the same approvals.
func (r AccessRequest) WaitTag(now time.Time) string {
	hash, n := r.ContentHash(), 0
	for _, a := range r.Approvals {
		if a.ContentHash == hash {
			n++
		}
	}
	return string(r.StateAt(now)) + "/" + strconv.Itoa(n)
}

// ValidWaitTag reports whether s has the form WaitTag makes.
func ValidWaitTag(s string) bool {
	state, n, ok := strings.Cut(s, "/")
	if !ok {
		return false
	}
	switch AccessRequestState(state) {
	case RequestPending, RequestApproved, RequestDenied, RequestExpired, RequestCancelled, RequestRevoked:
	default:
		return false
	}
	v, err := strconv.ParseUint(n, 10, 16)
	return err == nil && strconv.FormatUint(v, 10) == n
}

// WaitAccessRequest is GetAccessRequest that waits: it answers the request as soon as its
// WaitTag differs from seen ("" for the tag of its first read), the request has ended, wait
// (at most MaxAccessWait) has passed, or ctx is done (then with the request as last read, not
// an error: the server is shutting down or the client left). The token is checked once, at
// the start; each read of the store is bounded by its own deadline.
func (a *Authority) WaitAccessRequest(ctx context.Context, token, reqID string, wait time.Duration, seen string) (AccessRequest, error) {
	id, err := a.auth.Authenticate(ctx, token)
	if err != nil {
		return AccessRequest{}, err
	}
	read := func() (AccessRequest, error) {
		rctx, cancel := context.WithTimeout(ctx, accessWaitRead)
		defer cancel()
		return a.loadAccessRequest(rctx, reqID)
	}
	// Listen before the first read, so that a change made between the read and the wait
	// below still wakes it.
	changed := a.accessChanged.wait()
	r, err := read()
	if err != nil {
		return AccessRequest{}, err
	}
	if !r.SameRequester(id) && !a.mayDecide(ctx, id, r) {
		return AccessRequest{}, &Error{Kind: KindNotFound, Msg: "no access request " + reqID + " that you may see"}
	}
	if seen == "" {
		seen = r.WaitTag(a.now())
	}
	done := a.after(min(max(wait, 0), MaxAccessWait))
	for {
		if r.WaitTag(a.now()) != seen || r.StateAt(a.now()).Final() {
			return r, nil
		}
		select {
		case <-done:
			return r, nil
		case <-ctx.Done():
			return r, nil
		case <-changed:
		case <-a.after(AccessWaitPoll):
		}
		changed = a.accessChanged.wait()
		next, err := read()
		if err != nil {
			if ctx.Err() != nil {
				return r, nil
			}
			return AccessRequest{}, err
		}
		r = next
	}
}

// changeNotice wakes every waiter at the next change: wait returns a channel closed by the
// next signal.
type changeNotice struct {
	mu sync.Mutex
	ch chan struct{} // nil until someone waits
}

func (n *changeNotice) wait() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ch == nil {
		n.ch = make(chan struct{})
	}
	return n.ch
}

func (n *changeNotice) signal() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ch != nil {
		close(n.ch)
		n.ch = nil
	}
}
