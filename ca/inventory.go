package ca

import (
	"cmp"
	"context"
	"encoding/base64"
	"slices"
	"strconv"
	"strings"
	"unicode"

	"golang.org/x/crypto/ssh"
)

// CertQuery selects certificates from the inventory (Authority.ListCertificates). Every field
// is optional; together they narrow the answer.
type CertQuery struct {
	// Identity is a canonical name ("issuer|subject") or an alias ("alice@example.com",
	// "email:…", "username:…"), resolved as revoke-by-identity resolves it; "" for everyone.
	Identity string
	// Principal keeps the certificates that name it (a user name, or a host name); "" for all.
	Principal string
	// Live keeps only the certificates that still grant access: not revoked.
	Live bool
	// After is where the page starts: after this position (CertPage.Next of the page
	// before); zero for the first page.
	After CertCursor
	// Limit is how many certificates of the inventory one page reads, at most; 0 reads them
	// all (the console's and in-process callers'; the API always sets it). Principal and Live
	// are applied to what was read, so a page may hold fewer, even none, and still have a Next.
	Limit int
}

// CertCursor is a position in the inventory's order: by ValidBefore (unix ms), then by the
// serial's decimal digits compared as text (the order of the store's index, a sorted set whose
// members are the serials). A page after a cursor holds the certificates after that position,
// so the pages of one listing neither skip nor repeat a certificate that is live throughout,
// whatever is recorded or expires between them (a certificate recorded meanwhile with an
// earlier ValidBefore than the cursor's is not listed: it comes before the position). Zero
// (Serial 0, which no certificate has) is the start.
type CertCursor struct {
	ValidBefore int64 // unix ms
	Serial      uint64
}

// IsZero reports whether c is the start.
func (c CertCursor) IsZero() bool { return c.Serial == 0 }

// CursorOf is the position of c.
func CursorOf(c Certificate) CertCursor {
	return CertCursor{ValidBefore: c.ValidBefore.UnixMilli(), Serial: c.Serial}
}

// Compare orders cursors as the inventory's index does: -1 when c comes before d, 0 when they
// are equal, +1 after.
func (c CertCursor) Compare(d CertCursor) int {
	if n := cmp.Compare(c.ValidBefore, d.ValidBefore); n != 0 {
		return n
	}
	return strings.Compare(strconv.FormatUint(c.Serial, 10), strconv.FormatUint(d.Serial, 10))
}

// cursorVersion prefixes an encoded cursor, so that a later encoding can tell old ones apart.
const cursorVersion = "c1"

// maxCursorMS is the largest ValidBefore a cursor may name: 2^53 ms, the last integer a sorted
// set's score (a float64) holds exactly, some 285,000 years from 1970.
const maxCursorMS = 1 << 53

// String encodes c as the opaque next_cursor of GET /v1/certs: base64url (unpadded) of
// "c1:<ValidBefore ms>:<serial>"; "" for the start.
func (c CertCursor) String() string {
	if c.IsZero() {
		return ""
	}
	return base64.RawURLEncoding.EncodeToString([]byte(cursorVersion + ":" + strconv.FormatInt(c.ValidBefore, 10) + ":" + strconv.FormatUint(c.Serial, 10)))
}

// ParseCertCursor decodes what String made; "" is the start. Anything else, malformed or made
// up (a serial of 0, a time out of range, digits with a sign or leading zeros), is Invalid
// naming the cursor and what to do: a cursor is only ever one a server gave. A cursor made up
// with a well-formed position is not refused, and needs not be: it only moves the start of a
// listing the caller may read whole.
func ParseCertCursor(s string) (CertCursor, error) {
	if s == "" {
		return CertCursor{}, nil
	}
	bad := Invalid("cursor %.40q is not one this server gave: pass the next_cursor of the page before as it is, or leave cursor out to start from the first page", s)
	if len(s) > 64 || !base64URLOnly(s) {
		return CertCursor{}, bad
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(s) // Strict: one encoding a position, no stray bits
	if err != nil {
		return CertCursor{}, bad
	}
	parts := strings.Split(string(b), ":")
	if len(parts) != 3 || parts[0] != cursorVersion || !canonicalDigits(parts[1]) || !canonicalDigits(parts[2]) {
		return CertCursor{}, bad
	}
	ms, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil || ms > maxCursorMS {
		return CertCursor{}, bad
	}
	serial, err := strconv.ParseUint(parts[2], 10, 64)
	if err != nil || serial == 0 {
		return CertCursor{}, bad
	}
	return CertCursor{ValidBefore: ms, Serial: serial}, nil
}

// base64URLOnly: only the characters of unpadded base64url. The decoder skips CR and LF, which
// would give one position several encodings.
func base64URLOnly(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// canonicalDigits: one or more ASCII digits, without a leading zero unless it is "0", so that
// one position has one encoding.
func canonicalDigits(s string) bool {
	if s == "" || len(s) > 20 || (len(s) > 1 && s[0] == '0') {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// CertPage is one page of the inventory: its certificates in CertCursor order, and Next, the
// position to ask the next page after; zero on the last page.
type CertPage struct {
	Certificates []ListedCertificate
	Next         CertCursor
}

// Revocation reasons of a ListedCertificate, what makes bastions refuse it.
const (
	RevokedBySerial     = "serial"
	RevokedByKeyID      = "key_id"
	RevokedByPublicKey  = "public_key"
	RevokedByCompromise = "ca_compromised"
)

// ListedCertificate is an unexpired certificate of the inventory and whether it is revoked:
// Revoked is "" when it still grants access, else the first of RevokedBySerial,
// RevokedByKeyID, RevokedByPublicKey (its key banned under any CA key) and RevokedByCompromise
// (its CA key marked compromised) that applies.
type ListedCertificate struct {
	Certificate
	Revoked string
}

// maxQueryField bounds CertQuery's strings: no identity or principal sshca issues is longer.
const maxQueryField = 256

// ListCertificates authorizes the caller (kind "read", audited as a read: an auditor may list
// without being allowed to revoke) and lists one page of the unexpired certificates that q
// selects, in CertCursor order (soonest to expire first), each flagged when revoked: at most
// q.Limit certificates of the inventory after q.After, then filtered by q.Principal and q.Live.
// Without an identity it reads a page of the store's global index of live certificates
// (CertStore.LivePage), so a page costs what it holds, not what is alive or was ever issued.
// Errors: Invalid for a malformed query, Unauthenticated or Denied from the token and policy,
// Unavailable when a store does not answer.
func (a *Authority) ListCertificates(ctx context.Context, token string, q CertQuery) (CertPage, error) {
	if err := checkQueryField("identity", q.Identity); err != nil {
		return CertPage{}, err
	}
	if err := checkQueryField("principal", q.Principal); err != nil {
		return CertPage{}, err
	}
	if q.Limit < 0 {
		return CertPage{}, Invalid("limit %d is negative: give how many certificates a page may hold", q.Limit)
	}
	target := "list certificates"
	if q.Identity != "" {
		target += " of " + q.Identity
	}
	if q.Principal != "" {
		target += " with principal " + q.Principal
	}
	if err := a.authenticateReader(ctx, token, target); err != nil {
		return CertPage{}, err
	}
	now := a.now()
	var certs []Certificate
	var next CertCursor
	if q.Identity == "" {
		page, n, err := a.store.LivePage(ctx, now, q.After, q.Limit)
		if err != nil {
			return CertPage{}, Unavailable("certificate inventory unavailable", err)
		}
		certs, next = page, n
	} else {
		matches, err := a.identityMatches(ctx, q.Identity, now)
		if err != nil {
			return CertPage{}, err
		}
		// Also the name as given: records written before identities were canonical. Each
		// name's page comes from its own index (a workload identity may hold a second's
		// issuance of thousands), and the page is their merge up to the lowest of their next
		// positions (a name's certificates beyond its own next were not read), at most Limit.
		var frontier CertCursor
		for _, name := range dedupe(append(matches, q.Identity)) {
			page, n, err := a.store.LivePageOf(ctx, name, now, q.After, q.Limit)
			if err != nil {
				return CertPage{}, Unavailable("certificate inventory unavailable", err)
			}
			certs = append(certs, page...)
			if !n.IsZero() && (frontier.IsZero() || n.Compare(frontier) < 0) {
				frontier = n
			}
		}
		slices.SortFunc(certs, func(x, y Certificate) int { return CursorOf(x).Compare(CursorOf(y)) })
		certs = slices.CompactFunc(certs, func(x, y Certificate) bool { return x.Serial == y.Serial })
		if !frontier.IsZero() {
			certs = slices.DeleteFunc(certs, func(c Certificate) bool { return CursorOf(c).Compare(frontier) > 0 })
			next = frontier
		}
		if q.Limit > 0 && len(certs) > q.Limit {
			certs = certs[:q.Limit]
			next = CursorOf(certs[len(certs)-1])
		}
	}
	if q.Principal != "" {
		certs = slices.DeleteFunc(certs, func(c Certificate) bool { return !slices.Contains(c.Principals, q.Principal) })
	}
	revoked, err := a.revokedCheck(ctx)
	if err != nil {
		return CertPage{}, err
	}
	out := make([]ListedCertificate, 0, len(certs))
	for _, c := range certs {
		l := ListedCertificate{Certificate: c, Revoked: revoked(c)}
		if q.Live && l.Revoked != "" {
			continue
		}
		out = append(out, l)
	}
	return CertPage{Certificates: out, Next: next}, nil
}

// checkQueryField refuses a filter no certificate could match and that would only fill the
// audit record: too long, or with control characters or spaces.
func checkQueryField(name, v string) error {
	if len(v) > maxQueryField {
		return Invalid("%s is longer than %d bytes: give the %s as it appears in `sshca certs list`", name, maxQueryField, name)
	}
	if strings.ContainsFunc(v, func(r rune) bool { return unicode.IsControl(r) || unicode.IsSpace(r) || r == unicode.ReplacementChar }) {
		return Invalid("%s contains spaces or control characters: give one %s, e.g. %s", name, name, map[string]string{
			"identity": "alice@example.com", "principal": "root"}[name])
	}
	return nil
}

// revokedCheck reads the revocation state of every CA key (user and host, active, retired and
// compromised) once, and answers for a certificate record why it is revoked ("" when it is
// not), as a bastion's KRL would: its serial or key ID in the scope of the key that signed it,
// its public key in any scope, or its CA key compromised.
func (a *Authority) revokedCheck(ctx context.Context) (func(Certificate) string, error) {
	type scope struct{ serials, keyIDs map[string]bool }
	scopes := map[string]scope{}
	keys := map[string]bool{} // SHA256 fingerprints of banned public keys
	compromised := map[string]bool{}
	for _, ring := range []Publisher{a.userKeys, a.hostKeys} {
		for _, k := range ring.Compromised() {
			compromised[ssh.FingerprintSHA256(k)] = true
		}
		for _, k := range ring.Scopes() {
			st, err := a.revocations.State(ctx, k)
			if err != nil {
				return nil, storeErr("revocation store unavailable", err)
			}
			sc := scope{serials: map[string]bool{}, keyIDs: map[string]bool{}}
			for _, e := range st.Entries {
				switch e.Kind {
				case RevokedSerial:
					sc.serials[e.Value] = true
				case RevokedKeyID:
					sc.keyIDs[e.Value] = true
				case RevokedKey:
					if fp, ok := entryFingerprint(e.Value); ok {
						keys[fp] = true
					}
				}
			}
			scopes[ssh.FingerprintSHA256(k)] = sc
		}
	}
	return func(c Certificate) string {
		sc := scopes[c.CAFingerprint]
		switch {
		case sc.serials[strconv.FormatUint(c.Serial, 10)]:
			return RevokedBySerial
		case c.KeyID != "" && sc.keyIDs[c.KeyID]:
			return RevokedByKeyID
		case keys[c.KeyFingerprint]:
			return RevokedByPublicKey
		case compromised[c.CAFingerprint]:
			return RevokedByCompromise
		}
		return ""
	}, nil
}

// entryFingerprint is the SHA256 fingerprint of a RevokedKey entry's value (base64 of the
// key's wire form), as the inventory records keys.
func entryFingerprint(v string) (string, bool) {
	b, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		return "", false
	}
	k, err := ssh.ParsePublicKey(b)
	if err != nil {
		return "", false
	}
	return ssh.FingerprintSHA256(k), true
}
