package ca

import (
	"cmp"
	"context"
	"encoding/base64"
	"math"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/crypto/ssh"
)

// EntryCursor is a position in one revocation scope's order, the order of the store's sorted
// set of entries: by expiry (unix ms; PermanentExpiry, after every time, for an entry that lasts
// until lifted), then by the entry's member ("<kind>:<value>") compared byte by byte. Zero (no
// member) is the start. A page after a cursor holds the entries after that position, so the
// pages of one listing neither skip nor repeat an entry revoked throughout, whatever is
// revoked, lifted or expires between them (an entry revoked meanwhile that sorts before the
// cursor is not listed: it comes before the position).
type EntryCursor struct {
	Expiry int64 // unix ms, or PermanentExpiry
	Member string
}

// PermanentExpiry is the EntryCursor.Expiry of an entry without an expiry (a banned key): the
// store scores it +inf, after every time.
const PermanentExpiry = math.MaxInt64

// IsZero reports whether c is the start of a scope.
func (c EntryCursor) IsZero() bool { return c.Member == "" }

// EntryCursorOf is the position of e.
func EntryCursorOf(e RevocationEntry) EntryCursor {
	c := EntryCursor{Expiry: PermanentExpiry, Member: string(e.Kind) + ":" + e.Value}
	if !e.Expiry.IsZero() {
		c.Expiry = e.Expiry.UnixMilli()
	}
	return c
}

// Compare orders cursors as the scope's sorted set does: -1 when c comes before d, 0 equal,
// +1 after.
func (c EntryCursor) Compare(d EntryCursor) int {
	if n := cmp.Compare(c.Expiry, d.Expiry); n != 0 {
		return n
	}
	return strings.Compare(c.Member, d.Member)
}

// RevocationCursor is a position in GET /v1/revocations: every entry of the user CA key's
// scope, then every entry of the host CA key's, each scope in EntryCursor order. Zero is the
// start; Host with a zero Entry is the start of the host CA key's scope.
type RevocationCursor struct {
	Host  bool
	Entry EntryCursor
}

// IsZero reports whether c is the start.
func (c RevocationCursor) IsZero() bool { return !c.Host && c.Entry.IsZero() }

// revocationCursorVersion prefixes an encoded RevocationCursor.
const revocationCursorVersion = "v1"

// maxRevocationCursor bounds an encoded RevocationCursor: it carries an entry's member, and the
// longest is a banned RSA key (base64 of an 8,192-bit key's wire form, some 1,400 bytes).
const maxRevocationCursor = 4096

// String encodes c as the opaque next_cursor of GET /v1/revocations: base64url (unpadded) of
// "v1:<u|h>:<expiry ms|inf>:<kind>:<value>", or of "v1:h" for the start of the host CA key's
// scope; "" for the start.
func (c RevocationCursor) String() string {
	if c.IsZero() {
		return ""
	}
	scope := "u"
	if c.Host {
		scope = "h"
	}
	s := revocationCursorVersion + ":" + scope
	if !c.Entry.IsZero() {
		exp := "inf"
		if c.Entry.Expiry != PermanentExpiry {
			exp = strconv.FormatInt(c.Entry.Expiry, 10)
		}
		s += ":" + exp + ":" + c.Entry.Member
	}
	return base64.RawURLEncoding.EncodeToString([]byte(s))
}

// ParseRevocationCursor decodes what String made; "" is the start. Anything else is Invalid
// naming the cursor (as ParseCertCursor): not base64url, another version or scope, an expiry
// that is not canonical digits or "inf", or a member that no entry could have (an unknown
// kind, a serial of 0, a key ID with control characters, a key that is not base64). One
// position has one encoding.
func ParseRevocationCursor(s string) (RevocationCursor, error) {
	if s == "" {
		return RevocationCursor{}, nil
	}
	bad := Invalid("cursor %.40q is not one this server gave: pass the next_cursor of the page before as it is, or leave cursor out to start from the first page", s)
	if len(s) > maxRevocationCursor || !base64URLOnly(s) {
		return RevocationCursor{}, bad
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(s) // Strict: one encoding a position
	if err != nil {
		return RevocationCursor{}, bad
	}
	parts := strings.SplitN(string(b), ":", 4)
	if len(parts) < 2 || parts[0] != revocationCursorVersion || (parts[1] != "u" && parts[1] != "h") {
		return RevocationCursor{}, bad
	}
	c := RevocationCursor{Host: parts[1] == "h"}
	if len(parts) == 2 {
		if !c.Host { // the user scope's start is ""
			return RevocationCursor{}, bad
		}
		return c, nil
	}
	if len(parts) != 4 {
		return RevocationCursor{}, bad
	}
	c.Entry.Expiry = PermanentExpiry
	if parts[2] != "inf" {
		if !canonicalDigits(parts[2]) {
			return RevocationCursor{}, bad
		}
		ms, err := strconv.ParseInt(parts[2], 10, 64)
		if err != nil || ms > maxCursorMS {
			return RevocationCursor{}, bad
		}
		c.Entry.Expiry = ms
	}
	if !entryMember(parts[3]) {
		return RevocationCursor{}, bad
	}
	c.Entry.Member = parts[3]
	return c, nil
}

// entryMember: "<kind>:<value>" as the store keeps an entry that revocation.ValidEntry took: a
// non-zero serial in canonical digits, a key ID of printable UTF-8, a key in standard base64.
func entryMember(m string) bool {
	kind, v, ok := strings.Cut(m, ":")
	if !ok || v == "" {
		return false
	}
	switch EntryKind(kind) {
	case RevokedSerial:
		return canonicalDigits(v) && v != "0"
	case RevokedKeyID:
		return utf8.ValidString(v) && !strings.ContainsFunc(v, unicode.IsControl)
	case RevokedKey:
		_, err := base64.StdEncoding.Strict().DecodeString(v)
		return err == nil
	}
	return false
}

// RevocationPager reads a revocation scope a page at a time (GET /v1/revocations), as the store
// keeps it: a scope's list grows with every certificate revoked and every key banned.
type RevocationPager interface {
	// StatePage is State with at most limit entries (0: all) after the position after, in
	// EntryCursor order, and where the next page starts (zero: none is left). CA and Version
	// are the scope's at the time of the read.
	StatePage(ctx context.Context, caKey ssh.PublicKey, after EntryCursor, limit int) (st RevocationState, next EntryCursor, err error)
}

// RevocationPage is one page of GET /v1/revocations: entries of the user CA key's scope, then
// of the host CA key's, at most the limit in all, and Next, where the next page starts (zero
// on the last). Both states carry their CA key and version on every page.
type RevocationPage struct {
	User, Host RevocationState
	Next       RevocationCursor
}

// RevocationsPage authorizes the caller (kind "read", audited) and returns one page of what is
// revoked under the active user and host CA keys: at most limit entries (0: all) after the
// position after. Errors: Invalid for a negative limit, Unauthenticated or Denied from the token
// and policy, Unavailable when the store does not answer.
func (a *Authority) RevocationsPage(ctx context.Context, token string, after RevocationCursor, limit int) (RevocationPage, error) {
	if limit < 0 {
		return RevocationPage{}, Invalid("limit %d is negative: give how many entries a page may hold", limit)
	}
	if err := a.authenticateReader(ctx, token, "list revocations"); err != nil {
		return RevocationPage{}, err
	}
	userKey, hostKey := a.user.PublicKey(), a.host.PublicKey()
	read := func(k ssh.PublicKey, after EntryCursor, limit int) (RevocationState, EntryCursor, error) {
		st, next, err := a.revocations.StatePage(ctx, k, after, limit)
		if err != nil {
			return RevocationState{}, EntryCursor{}, storeErr("revocation store unavailable", err)
		}
		if st.CA == nil {
			st.CA = k
		}
		return st, next, nil
	}
	var page RevocationPage
	var next EntryCursor
	var err error
	if after.Host {
		if page.User, _, err = read(userKey, endOfScope, 1); err != nil {
			return RevocationPage{}, err
		}
		if page.Host, next, err = read(hostKey, after.Entry, limit); err != nil {
			return RevocationPage{}, err
		}
		if !next.IsZero() {
			page.Next = RevocationCursor{Host: true, Entry: next}
		}
		return page, nil
	}
	if page.User, next, err = read(userKey, after.Entry, limit); err != nil {
		return RevocationPage{}, err
	}
	switch {
	case !next.IsZero():
		page.Next = RevocationCursor{Entry: next}
	case limit > 0 && len(page.User.Entries) >= limit:
		page.Next = RevocationCursor{Host: true} // the host scope starts on the next page
	default:
		rest := 0
		if limit > 0 {
			rest = limit - len(page.User.Entries)
		}
		if page.Host, next, err = read(hostKey, EntryCursor{}, rest); err != nil {
			return RevocationPage{}, err
		}
		if !next.IsZero() {
			page.Next = RevocationCursor{Host: true, Entry: next}
		}
		return page, nil
	}
	page.Host, _, err = read(hostKey, endOfScope, 1)
	if err != nil {
		return RevocationPage{}, err
	}
	return page, nil
}

// endOfScope is a position after every entry a scope can hold (members start with a kind's
// ASCII letters): a page after it has the scope's key and version and no entry, what a page of
// GET /v1/revocations says of a scope it holds no entry of.
var endOfScope = EntryCursor{Expiry: PermanentExpiry, Member: "\xff"}
