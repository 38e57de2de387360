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
// without being allowed to revoke) and lists the unexpired certificates that q selects, by
// serial, each flagged when revoked. Without an identity it reads the store's global index of
// live certificates (CertStore.AllLive), so its cost grows with the number of certificates
// alive now, not with how many were ever issued. Errors: Invalid for a malformed query,
// Unauthenticated or Denied from the token and policy, Unavailable when a store does not
// answer.
func (a *Authority) ListCertificates(ctx context.Context, token string, q CertQuery) ([]ListedCertificate, error) {
	if err := checkQueryField("identity", q.Identity); err != nil {
		return nil, err
	}
	if err := checkQueryField("principal", q.Principal); err != nil {
		return nil, err
	}
	target := "list certificates"
	if q.Identity != "" {
		target += " of " + q.Identity
	}
	if q.Principal != "" {
		target += " with principal " + q.Principal
	}
	if err := a.authenticateReader(ctx, token, target); err != nil {
		return nil, err
	}
	now := a.now()
	var certs []Certificate
	if q.Identity == "" {
		all, err := a.store.AllLive(ctx, now)
		if err != nil {
			return nil, Unavailable("certificate inventory unavailable", err)
		}
		certs = all
	} else {
		matches, err := a.identityMatches(ctx, q.Identity, now)
		if err != nil {
			return nil, err
		}
		// Also the name as given: records written before identities were canonical.
		seen := map[uint64]bool{}
		for _, name := range dedupe(append(matches, q.Identity)) {
			live, err := a.store.Live(ctx, name, now)
			if err != nil {
				return nil, Unavailable("certificate inventory unavailable", err)
			}
			for _, c := range live {
				if !seen[c.Serial] {
					seen[c.Serial] = true
					certs = append(certs, c)
				}
			}
		}
	}
	if q.Principal != "" {
		certs = slices.DeleteFunc(certs, func(c Certificate) bool { return !slices.Contains(c.Principals, q.Principal) })
	}
	revoked, err := a.revokedCheck(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]ListedCertificate, 0, len(certs))
	for _, c := range certs {
		l := ListedCertificate{Certificate: c, Revoked: revoked(c)}
		if q.Live && l.Revoked != "" {
			continue
		}
		out = append(out, l)
	}
	slices.SortFunc(out, func(x, y ListedCertificate) int { return cmp.Compare(x.Serial, y.Serial) })
	return out, nil
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
