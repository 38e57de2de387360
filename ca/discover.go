package ca

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// DiscoverContext is what a discovery report's proof signs besides its payload: not
// RenewContext, so that a report's proof never renews a certificate and a renewal proof is
// never taken for a report.
const DiscoverContext = "sshca-discover-v1\x00"

// DiscoverClaims is the payload of a discovery report's proof: the renewal proof's fields
// (the host's current certificate, iat/exp, jti) and the host name and SHA-256 (hex) of the
// exact report bytes it vouches for. The token is base64url(JSON) "." base64url(SSH signature
// of DiscoverContext + JSON) by the certificate's key.
type DiscoverClaims struct {
	RenewClaims
	Host         string `json:"host"`
	ReportSHA256 string `json:"report_sha256"`
}

// SignDiscoverProof signs a proof for report (the JSON body sent) with the host key.
func SignDiscoverProof(key ssh.Signer, cert *ssh.Certificate, host string, report []byte, now time.Time, id string) (string, error) {
	sum := sha256.Sum256(report)
	payload, err := json.Marshal(DiscoverClaims{
		RenewClaims: RenewClaims{
			Certificate: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(cert))),
			IssuedAt:    now.Unix(), Expiry: now.Add(2 * time.Minute).Unix(), ID: id,
		},
		Host: host, ReportSHA256: hex.EncodeToString(sum[:]),
	})
	if err != nil {
		return "", err
	}
	sig, err := key.Sign(nil, append([]byte(DiscoverContext), payload...))
	if err != nil {
		return "", fmt.Errorf("sign discovery proof: %w", err)
	}
	enc := base64.RawURLEncoding
	return enc.EncodeToString(payload) + "." + enc.EncodeToString(ssh.Marshal(sig)), nil
}

// DiscoveryRecord is the last discovery report a host sent: the report as the host sent it
// (JSON, client.DiscoveryReport; kept as bytes, since ca does not know the client's types),
// and when the CA received it.
type DiscoveryRecord struct {
	Host     string          `json:"host"`
	Received time.Time       `json:"received"`
	Report   json.RawMessage `json:"report"`
}

// DiscoveryStore keeps the last report of each host.
type DiscoveryStore interface {
	// PutDiscovery replaces the host's record.
	PutDiscovery(ctx context.Context, rec DiscoveryRecord) error
	// Discoveries lists every host's record, by host name.
	Discoveries(ctx context.Context) ([]DiscoveryRecord, error)
}

// AcceptDiscovery keeps a host's discovery report: the proof must be signed with
// DiscoverContext by the key of a current, unrevoked host certificate of ours, over these
// exact bytes, for a host name that the certificate names and the report gives as its
// "host". Anything else is refused (401; 400 for a report that is not JSON with a host).
func (a *Authority) AcceptDiscovery(ctx context.Context, st DiscoveryStore, token string, report []byte) (string, error) {
	var c DiscoverClaims
	cert, err := a.verifyHostProof(ctx, token, DiscoverContext, "discovery", &c, &c.RenewClaims)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(report)
	if c.ReportSHA256 != hex.EncodeToString(sum[:]) {
		return "", Unauthenticated("discovery token rejected: report_sha256 is not the SHA-256 of the body sent; sign the body you send", nil)
	}
	var head struct {
		Host string `json:"host"`
	}
	if err := json.Unmarshal(report, &head); err != nil || head.Host == "" {
		return "", Invalid("discovery report: not a JSON object with a \"host\" (the host name its certificate names)")
	}
	if head.Host != c.Host {
		return "", Invalid("discovery report: host %q differs from the proof's host %q; sign for the host the report is for", head.Host, c.Host)
	}
	if !slices.Contains(cert.ValidPrincipals, c.Host) {
		return "", Unauthenticated(fmt.Sprintf("discovery token rejected: host %q is not among the host names of the certificate; report under one of %q", c.Host, cert.ValidPrincipals), nil)
	}
	if err := st.PutDiscovery(ctx, DiscoveryRecord{Host: c.Host, Received: a.now().UTC(), Report: report}); err != nil {
		return "", Unavailable("discovery store unavailable", err)
	}
	return c.Host, nil
}

// Discoveries lists the last report of every host to an admin (policy kind "admin").
func (a *Authority) Discoveries(ctx context.Context, st DiscoveryStore, token string) ([]DiscoveryRecord, error) {
	if err := a.Authorize(ctx, token, ActionAdmin, "list discovered keys"); err != nil {
		return nil, err
	}
	recs, err := st.Discoveries(ctx)
	if err != nil {
		return nil, Unavailable("discovery store unavailable", err)
	}
	return recs, nil
}

// DiscoveryDesk binds the authority's discovery calls to the store the server wires.
type DiscoveryDesk struct {
	Authority *Authority
	Store     DiscoveryStore
}

// AcceptDiscovery is Authority.AcceptDiscovery on the desk's store.
func (d DiscoveryDesk) AcceptDiscovery(ctx context.Context, token string, report []byte) (string, error) {
	return d.Authority.AcceptDiscovery(ctx, d.Store, token, report)
}

// Discoveries is Authority.Discoveries on the desk's store.
func (d DiscoveryDesk) Discoveries(ctx context.Context, token string) ([]DiscoveryRecord, error) {
	return d.Authority.Discoveries(ctx, d.Store, token)
}
