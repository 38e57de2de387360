package ca

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// RenewClaims is the payload of a renewal proof of possession: the host's current
// certificate, and a short validity with a single-use ID. The token is
// base64url(JSON payload) "." base64url(SSH signature of "sshca-renew-v1\x00" + payload),
// signed by the certificate's own private key.
type RenewClaims struct {
	Certificate string `json:"certificate"`
	IssuedAt    int64  `json:"iat"`
	Expiry      int64  `json:"exp"`
	ID          string `json:"jti"`
}

// RenewContext is what the signature covers besides the payload.
const RenewContext = "sshca-renew-v1\x00"

// MaxRenewTokenAge bounds a proof of possession's lifetime.
const MaxRenewTokenAge = 5 * time.Minute

// SignRenewToken builds a renewal proof of possession with the host key.
func SignRenewToken(key ssh.Signer, cert *ssh.Certificate, now time.Time, id string) (string, error) {
	payload, err := json.Marshal(RenewClaims{
		Certificate: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(cert))),
		IssuedAt:    now.Unix(), Expiry: now.Add(2 * time.Minute).Unix(), ID: id,
	})
	if err != nil {
		return "", err
	}
	sig, err := key.Sign(nil, append([]byte(RenewContext), payload...))
	if err != nil {
		return "", fmt.Errorf("sign renewal token: %w", err)
	}
	enc := base64.RawURLEncoding
	return enc.EncodeToString(payload) + "." + enc.EncodeToString(ssh.Marshal(sig)), nil
}

// Renew issues a new host certificate for the same key and host names as the current one the
// proof of possession carries: the current certificate must be ours, unexpired and unrevoked,
// and the token signed by its key, fresh and unused. The policy decides with kind "renew".
func (a *Authority) Renew(ctx context.Context, token string) (Issued, error) {
	cert, claims, err := a.verifyRenewToken(ctx, token)
	if err != nil {
		return Issued{}, err
	}
	name := cert.KeyId
	if i := strings.LastIndexByte(name, '#'); i >= 0 {
		name = name[:i]
	}
	id := Identity{Issuer: "sshca:renew", Subject: name, Workload: true, Groups: []string{}, AMR: []string{},
		Claims: map[string]any{"serial": strconv.FormatUint(cert.Serial, 10), "key_id": cert.KeyId},
		Token:  TokenUse{SingleUse: true, ID: "renew|" + claims.ID, IssuedAt: time.Unix(claims.IssuedAt, 0), Expiry: time.Unix(claims.Expiry, 0)}}
	if id.Token.ID == "renew|" {
		return Issued{}, Unauthenticated("renewal token has no jti", nil)
	}
	return a.issueFor(ctx, id, Request{Kind: HostCert, PublicKey: cert.Key, Principals: cert.ValidPrincipals,
		TTL: a.renewTTL(cert)}, ActionRenew)
}

// backdating is how far before its signing a certificate becomes valid: the signer's
// allowance for clock skew (signer.Options.Skew, 30 s by default), and the window the
// authority fixes in the template when it records a certificate before signing it (preRecord).
// A certificate's lifetime as asked for is its validity window less this.
const backdating = 30 * time.Second

// renewTTL asks for the lifetime the current certificate was issued with, so that a host that
// was given minutes keeps minutes, and one given a day keeps a day as far as the policy still
// grants it (the policy and the service's maximum cap what is asked). A window that cannot be
// a lifetime this service issues (from before the one-minute floor, or beyond today's
// maximum) is brought within the bounds rather than refused: a renewal is a host keeping the
// access it has.
func (a *Authority) renewTTL(cert *ssh.Certificate) time.Duration {
	limit := a.MaxTTL(HostCert)
	if cert.ValidBefore <= cert.ValidAfter || cert.ValidBefore-cert.ValidAfter > uint64((limit+backdating)/time.Second) {
		return limit // also a window too long for a time.Duration
	}
	ttl := time.Duration(cert.ValidBefore-cert.ValidAfter)*time.Second - backdating
	return min(max(ttl, MinTTL), limit)
}

func (a *Authority) verifyRenewToken(ctx context.Context, token string) (*ssh.Certificate, RenewClaims, error) {
	var c RenewClaims
	cert, err := a.verifyHostProof(ctx, token, RenewContext, "renewal", &c, &c)
	if err != nil {
		return nil, RenewClaims{}, err
	}
	return cert, c, nil
}

// verifyHostProof checks a proof signed by a host key under sigContext (renewal, discovery
// report: a different context for each, so that neither proof stands for the other), its
// payload decoded into claims, whose common fields are base. The certificate must be ours,
// valid now and unrevoked, its key fit and the signature by it.
func (a *Authority) verifyHostProof(ctx context.Context, token, sigContext, what string, claims any, base *RenewClaims) (*ssh.Certificate, error) {
	bad := func(why string) (*ssh.Certificate, error) {
		return nil, Unauthenticated(what+" token rejected: "+why, nil)
	}
	if token == "" {
		return bad("missing bearer token (a proof of possession signed by the host key)")
	}
	p, s, ok := strings.Cut(token, ".")
	enc := base64.RawURLEncoding
	payload, err1 := enc.DecodeString(p)
	sigBytes, err2 := enc.DecodeString(s)
	if !ok || err1 != nil || err2 != nil {
		return bad("not <payload>.<signature> in base64url")
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(claims); err != nil {
		return bad("payload is not the " + what + " JSON")
	}
	c := base
	now := a.now()
	iat, exp := time.Unix(c.IssuedAt, 0), time.Unix(c.Expiry, 0)
	switch {
	case exp.Before(now):
		return bad("expired; sign a new one")
	case iat.After(now.Add(30*time.Second)) || exp.Sub(iat) > MaxRenewTokenAge:
		return bad("issued in the future or valid too long (at most 5 minutes)")
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(c.Certificate))
	if err != nil {
		return bad("certificate unreadable")
	}
	cert, isCert := pub.(*ssh.Certificate)
	if !isCert || cert.CertType != ssh.HostCert {
		return bad("not a host certificate")
	}
	if !bytes.Equal(cert.SignatureKey.Marshal(), a.host.PublicKey().Marshal()) {
		return bad("certificate not signed by this host CA")
	}
	checker := ssh.CertChecker{Clock: a.now}
	if len(cert.ValidPrincipals) == 0 {
		return bad("certificate names no host")
	}
	if err := checker.CheckCert(cert.ValidPrincipals[0], cert); err != nil {
		return bad("current certificate is not valid now; get a new one with a workload token")
	}
	// A certificate issued before keys were checked may be for a key anyone can sign for (the
	// Ed25519 identity point verifies one constant signature for every message), and would
	// renew itself forever. The signature below proves possession of nothing then, so this is
	// a refused credential (401), not a malformed request: no retry with this certificate can
	// succeed, and the host needs a new key and a certificate from its workload token.
	if problem := weakKey(cert.Key); problem != "" {
		return bad("the certificate's key is unfit (" + problem + "); make a new host key and get a certificate for it with a workload token")
	}
	var sig ssh.Signature
	if err := ssh.Unmarshal(sigBytes, &sig); err != nil {
		return bad("signature unreadable")
	}
	if err := cert.Key.Verify(append([]byte(sigContext), payload...), &sig); err != nil {
		return bad("not signed by the certificate's key")
	}
	st, err := a.revocations.State(ctx, a.host.PublicKey())
	if err != nil {
		return nil, Unavailable("revocation store unavailable", err)
	}
	for _, e := range st.Entries {
		if (e.Kind == RevokedSerial && e.Value == strconv.FormatUint(cert.Serial, 10)) ||
			(e.Kind == RevokedKeyID && e.Value == cert.KeyId) ||
			(e.Kind == RevokedKey && e.Value == keyEntry(cert.Key)) {
			return nil, Denied("revoked", "the current certificate (or its key) was revoked; it cannot be renewed")
		}
	}
	return cert, nil
}
