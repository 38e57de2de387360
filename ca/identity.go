package ca

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// An identity is the pair (issuer, subject) that a verified token names (OIDC Core 1.0, 2: "sub"
// is unique only within its issuer). These are its forms:
//
//   - Name, the canonical text used everywhere a record names the identity (inventory, identity
//     blocks, audit): "<issuer>|<subject>", each part percent-escaped (escapeIdentityPart), so
//     the first "|" separates them and no two pairs share a name.
//   - DisplayName, for people: the verified e-mail, else the username, else the subject.
//   - the key ID's identity part (KeyIDName): the display name, escaped for sshd's log and cut to
//     fit, then "~" and Handle, 16 hex digits of SHA-256 of the pair, so that sshd's log stays
//     readable and names exactly one identity.
//   - Aliases, the forms under which `sshca revoke --identity` may name it besides Name:
//     "email:<verified e-mail, lower case>" and "username:<username>".

// Name is the canonical name of the identity: "<issuer>|<subject>", percent-escaped.
func (id Identity) Name() string {
	return escapeIdentityPart(id.Issuer) + "|" + escapeIdentityPart(id.Subject)
}

// DisplayName is how a person recognises the identity: the verified e-mail, else the username,
// else the subject.
func (id Identity) DisplayName() string {
	switch {
	case id.Email != "":
		return id.Email
	case id.Username != "":
		return id.Username
	}
	return id.Subject
}

// Handle is a short stable name of the pair: the first 8 bytes of SHA-256 of issuer, NUL,
// subject, in hex.
func (id Identity) Handle() string {
	var buf [256]byte // issuer, NUL and subject fit here in the usual case: no allocation
	b := append(append(append(buf[:0], id.Issuer...), 0), id.Subject...)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// MaxKeyIDName is the most bytes the identity part of a key ID takes (DESIGN.md: printable ASCII
// without '#' or spaces, at most 128 bytes).
const MaxKeyIDName = 128

// KeyIDName is the identity part of a key ID: "<display name>~<handle>", the display name with
// every byte outside 0x21–0x7E and every '#', '/', '%' and '~' percent-encoded, cut on an escape
// boundary so the whole is at most MaxKeyIDName bytes. A sign-in is never refused for the
// characters of its claims: they are escaped instead.
func (id Identity) KeyIDName() string {
	handle := id.Handle()
	return escapeKeyID(id.DisplayName(), MaxKeyIDName-1-len(handle)) + "~" + handle
}

// Aliases are the other names under which the identity can be revoked: its verified e-mail
// (lower case) and its username, as "email:…" and "username:…". The index kept at issuance
// maps each to the canonical Name.
func (id Identity) Aliases() []string {
	var out []string
	if id.Email != "" {
		out = append(out, EmailAlias(id.Email))
	}
	if id.Username != "" {
		out = append(out, "username:"+id.Username)
	}
	return out
}

// EmailAlias is the alias of a verified e-mail address.
func EmailAlias(email string) string { return "email:" + strings.ToLower(email) }

// IdentityForm says how a name given to revoke-by-identity is read: a canonical name (it holds
// "|"), an e-mail address (it holds "@"), or a username. It returns the canonical name, or the
// alias to resolve through the index.
func IdentityForm(s string) (canonical, alias string) {
	switch {
	case strings.Contains(s, "|"):
		return s, ""
	case strings.Contains(s, "@"):
		return "", EmailAlias(s)
	}
	return "", "username:" + s
}

// escapeIdentityPart percent-encodes the bytes of an issuer or subject that would make the
// canonical name ambiguous or unprintable: '%', '|', and everything outside 0x21–0x7E.
func escapeIdentityPart(s string) string {
	return percentEncode(s, func(c byte) bool { return c < 0x21 || c > 0x7e || c == '%' || c == '|' }, len(s)*3)
}

// escapeKeyID percent-encodes what must not reach a key ID (sshd logs it verbatim: a newline
// would forge a log line) and cuts the result at max bytes, never inside an escape.
func escapeKeyID(s string, max int) string {
	return percentEncode(s, func(c byte) bool {
		return c < 0x21 || c > 0x7e || c == '#' || c == '/' || c == '%' || c == '~'
	}, max)
}

func percentEncode(s string, escape func(byte) bool, max int) string {
	clean := len(s) <= max
	for i := 0; clean && i < len(s); i++ {
		clean = !escape(s[i])
	}
	if clean {
		return s // the usual case: nothing to escape, nothing to cut, no copy
	}
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(min(max, 3*len(s)))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !escape(c) {
			if b.Len()+1 > max {
				break
			}
			b.WriteByte(c)
			continue
		}
		if b.Len()+3 > max {
			break
		}
		b.WriteByte('%')
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&15])
	}
	return b.String()
}
