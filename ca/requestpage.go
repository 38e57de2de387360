package ca

import (
	"cmp"
	"encoding/base64"
	"strconv"
	"strings"
)

// RequestQuery selects a page of access requests (Authority.AccessRequestsPage).
type RequestQuery struct {
	// Mine keeps only the caller's own requests; Pending only those waiting for a decision.
	Mine, Pending bool
	// After is where the page starts (RequestPage.Next of the page before; zero: the first).
	After RequestCursor
	// Limit is how many kept requests one page reads, at most; 0 reads them all. The filters
	// apply to what was read.
	Limit int
}

// RequestPage is one page of access requests and where the next starts (zero: none).
type RequestPage struct {
	Requests []AccessRequest
	Next     RequestCursor
}

// RequestCursor is a position in the order the store keeps access requests in: by CreatedAt
// (unix ms), then by ID compared as text. Both are fixed when a request is created and no
// change moves them (AccessRequestStore.UpdateRequest keeps them), so a request kept
// throughout a listing that pages is listed exactly once, whatever is decided, approved,
// created or pruned between its pages (before stop 17 the order was KeepUntil's, which a
// decision moves later: such a request came again on a later page). Zero (no ID) is the start.
type RequestCursor struct {
	CreatedAt int64 // unix ms
	ID        string
}

// IsZero reports whether c is the start.
func (c RequestCursor) IsZero() bool { return c.ID == "" }

// RequestCursorOf is the position of r.
func RequestCursorOf(r AccessRequest) RequestCursor {
	return RequestCursor{CreatedAt: r.CreatedAt.UnixMilli(), ID: r.ID}
}

// Compare orders cursors as the store does: -1 when c comes before d, 0 equal, +1 after.
func (c RequestCursor) Compare(d RequestCursor) int {
	if n := cmp.Compare(c.CreatedAt, d.CreatedAt); n != 0 {
		return n
	}
	return strings.Compare(c.ID, d.ID)
}

// requestCursorVersion prefixes an encoded RequestCursor: "q2", creation order. "q1" named a
// position in KeepUntil order (stop 16), which this server no longer keeps.
const (
	requestCursorVersion    = "q2"
	oldRequestCursorVersion = "q1"
)

// String encodes c as the opaque next_cursor of GET /v1/requests: base64url (unpadded) of
// "q2:<CreatedAt ms>:<request ID>"; "" for the start.
func (c RequestCursor) String() string {
	if c.IsZero() {
		return ""
	}
	return base64.RawURLEncoding.EncodeToString([]byte(requestCursorVersion + ":" + strconv.FormatInt(c.CreatedAt, 10) + ":" + c.ID))
}

// ParseRequestCursor decodes what String made; "" is the start. Anything else (not base64url,
// another version, q1 included, a time that is not canonical digits within a score's exact range, an ID
// that NewAccessRequestID could not have made) is Invalid naming the cursor, as
// ParseCertCursor.
func ParseRequestCursor(s string) (RequestCursor, error) {
	if s == "" {
		return RequestCursor{}, nil
	}
	bad := Invalid("cursor %.40q is not one this server gave: pass the next_cursor of the page before as it is, or leave cursor out to start from the first page", s)
	if len(s) > 64 || !base64URLOnly(s) {
		return RequestCursor{}, bad
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(s) // Strict: one encoding a position
	if err != nil {
		return RequestCursor{}, bad
	}
	parts := strings.Split(string(b), ":")
	if len(parts) == 3 && parts[0] == oldRequestCursorVersion {
		// A listing that began on a replica of stop 16: its position is in another order, so
		// continuing from it could list a request twice or miss one.
		return RequestCursor{}, Invalid("cursor %.40q is from a server before an upgrade, which listed requests in another order: list again from the first page (leave cursor out)", s)
	}
	if len(parts) != 3 || parts[0] != requestCursorVersion || !canonicalDigits(parts[1]) || !ValidAccessRequestID(parts[2]) {
		return RequestCursor{}, bad
	}
	ms, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil || ms > maxCursorMS {
		return RequestCursor{}, bad
	}
	return RequestCursor{CreatedAt: ms, ID: parts[2]}, nil
}
