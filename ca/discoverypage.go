package ca

import (
	"context"
	"encoding/base64"
	"strings"
)

// DiscoveryCursor is a position in the list of discovery reports: by host name, compared byte
// by byte. A host's report replaces its last one and none is ever removed, so a page after a
// cursor holds the hosts named after it: the pages of one listing neither skip nor repeat a
// host, and a host first reporting meanwhile is listed if its name comes after the position.
// Zero (no host) is the start.
type DiscoveryCursor struct {
	Host string
}

// IsZero reports whether c is the start.
func (c DiscoveryCursor) IsZero() bool { return c.Host == "" }

// discoveryCursorVersion prefixes an encoded DiscoveryCursor.
const discoveryCursorVersion = "d1:"

// maxDiscoveryHost bounds a cursor's host name: a DNS name is at most 253 bytes.
const maxDiscoveryHost = 253

// String encodes c as the opaque next_cursor of GET /v1/discovery: base64url (unpadded) of
// "d1:<host>"; "" for the start.
func (c DiscoveryCursor) String() string {
	if c.IsZero() {
		return ""
	}
	return base64.RawURLEncoding.EncodeToString([]byte(discoveryCursorVersion + c.Host))
}

// ParseDiscoveryCursor decodes what String made; "" is the start. Anything else (not
// base64url, another version, a host name that is empty, longer than a DNS name or holds
// anything but printable ASCII without spaces) is Invalid naming the cursor, as
// ParseCertCursor.
func ParseDiscoveryCursor(s string) (DiscoveryCursor, error) {
	if s == "" {
		return DiscoveryCursor{}, nil
	}
	bad := Invalid("cursor %.40q is not one this server gave: pass the next_cursor of the page before as it is, or leave cursor out to start from the first page", s)
	if len(s) > 4+(len(discoveryCursorVersion)+maxDiscoveryHost)*4/3 || !base64URLOnly(s) {
		return DiscoveryCursor{}, bad
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(s) // Strict: one encoding a position
	if err != nil {
		return DiscoveryCursor{}, bad
	}
	host, ok := strings.CutPrefix(string(b), discoveryCursorVersion)
	if !ok || host == "" || len(host) > maxDiscoveryHost || strings.ContainsFunc(host, func(r rune) bool { return r <= ' ' || r > '~' }) {
		return DiscoveryCursor{}, bad
	}
	return DiscoveryCursor{Host: host}, nil
}

// DiscoveryPage is one page of discovery reports, by host name, and where the next starts
// (zero: none).
type DiscoveryPage struct {
	Records []DiscoveryRecord
	Next    DiscoveryCursor
}

// DiscoveriesPage lists one page of the hosts' last reports to an admin (policy kind "admin"):
// at most limit (0: all) after the position after, by host name. Errors: Invalid for a negative
// limit, Unauthenticated or Denied from the token and policy, Unavailable when the store does
// not answer.
func (a *Authority) DiscoveriesPage(ctx context.Context, st DiscoveryStore, token string, after DiscoveryCursor, limit int) (DiscoveryPage, error) {
	if limit < 0 {
		return DiscoveryPage{}, Invalid("limit %d is negative: give how many hosts a page may hold", limit)
	}
	if err := a.Authorize(ctx, token, ActionAdmin, "list discovered keys"); err != nil {
		return DiscoveryPage{}, err
	}
	recs, next, err := st.DiscoveryPage(ctx, after.Host, limit)
	if err != nil {
		return DiscoveryPage{}, Unavailable("discovery store unavailable", err)
	}
	return DiscoveryPage{Records: recs, Next: DiscoveryCursor{Host: next}}, nil
}

// DiscoveriesPage is Authority.DiscoveriesPage on the desk's store.
func (d DiscoveryDesk) DiscoveriesPage(ctx context.Context, token string, after DiscoveryCursor, limit int) (DiscoveryPage, error) {
	return d.Authority.DiscoveriesPage(ctx, d.Store, token, after, limit)
}
