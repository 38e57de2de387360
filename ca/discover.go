package ca

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
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
	// DiscoveryPage lists at most limit records (0: all) of the hosts named after the host
	// after ("" for the first), by host name, and the last host of the page when hosts are
	// left after it ("" when none is).
	DiscoveryPage(ctx context.Context, after string, limit int) (page []DiscoveryRecord, next string, err error)
	// OrderDisable asks the host to disable the key with this fingerprint; DisableOrders
	// lists the host's pending orders; DoneDisable drops one.
	OrderDisable(ctx context.Context, host, fingerprint string) error
	DisableOrders(ctx context.Context, host string) ([]string, error)
	DoneDisable(ctx context.Context, host, fingerprint string) error
}

// AcceptDiscovery keeps a host's discovery report: the proof must be signed with
// DiscoverContext by the key of a current, unrevoked host certificate of ours, over these
// exact bytes, for a host name that the certificate names and the report gives as its
// "host". Anything else is refused (401; 400 for a report that is not JSON with a host).
// It returns the host name and the fingerprints of the keys an admin ordered disabled there
// that the report still lists (an order is done once a report no longer lists its key).
func (a *Authority) AcceptDiscovery(ctx context.Context, st DiscoveryStore, token string, report []byte) (string, []string, error) {
	var c DiscoverClaims
	cert, err := a.verifyHostProof(ctx, token, DiscoverContext, "discovery", &c, &c.RenewClaims)
	if err != nil {
		return "", nil, err
	}
	sum := sha256.Sum256(report)
	if c.ReportSHA256 != hex.EncodeToString(sum[:]) {
		return "", nil, Unauthenticated("discovery token rejected: report_sha256 is not the SHA-256 of the body sent; sign the body you send", nil)
	}
	var head struct {
		Host string `json:"host"`
		Keys []struct {
			Fingerprint string `json:"fingerprint"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(report, &head); err != nil || head.Host == "" {
		return "", nil, Invalid("discovery report: not a JSON object with a \"host\" (the host name its certificate names)")
	}
	if head.Host != c.Host {
		return "", nil, Invalid("discovery report: host %q differs from the proof's host %q; sign for the host the report is for", head.Host, c.Host)
	}
	if !slices.Contains(cert.ValidPrincipals, c.Host) {
		return "", nil, Unauthenticated(fmt.Sprintf("discovery token rejected: host %q is not among the host names of the certificate; report under one of %q", c.Host, cert.ValidPrincipals), nil)
	}
	if err := st.PutDiscovery(ctx, DiscoveryRecord{Host: c.Host, Received: a.now().UTC(), Report: report}); err != nil {
		return "", nil, Unavailable("discovery store unavailable", err)
	}
	orders, err := st.DisableOrders(ctx, c.Host)
	if err != nil {
		return "", nil, Unavailable("discovery store unavailable", err)
	}
	listed := map[string]bool{}
	for _, k := range head.Keys {
		listed[k.Fingerprint] = true
	}
	var pending []string
	for _, fp := range orders {
		if !listed[fp] {
			if err := st.DoneDisable(ctx, c.Host, fp); err != nil {
				return "", nil, Unavailable("discovery store unavailable", err)
			}
			continue
		}
		pending = append(pending, fp)
	}
	return c.Host, pending, nil
}

// fingerprintRE is OpenSSH's SHA256 fingerprint: "SHA256:" and 43 characters of unpadded
// base64.
var fingerprintRE = regexp.MustCompile(`^SHA256:[A-Za-z0-9+/]{43}$`)

// DisableDiscovered orders host to comment out the key with this fingerprint from the
// authorized_keys files its last report lists it in (policy kind "admin", audited with the
// reason). The host's next report gets the order and applies it; a later report that no
// longer lists the key ends the order. Restoring is done on the host only.
func (a *Authority) DisableDiscovered(ctx context.Context, st DiscoveryStore, token, host, fingerprint, reason string) error {
	switch {
	case host == "" || strings.ContainsAny(host, " \t\n/"):
		return Invalid("host: give the host name the report is under (sshca discover report lists them)")
	case !fingerprintRE.MatchString(fingerprint):
		return Invalid("fingerprint %q: want SHA256:<43 base64 characters>, as sshca discover report prints it", fingerprint)
	case strings.TrimSpace(reason) == "":
		return Invalid("reason is required: say why (it is recorded)")
	}
	target := fmt.Sprintf("disable long-lived key %s on %s: %s", fingerprint, host, reason)
	return a.AuthorizeThen(ctx, token, ActionAdmin, target, func(ctx context.Context) error {
		if err := st.OrderDisable(ctx, host, fingerprint); err != nil {
			return Unavailable("discovery store unavailable", err)
		}
		return nil
	})
}

// DiscoveryDesk binds the authority's discovery calls to the store the server wires.
type DiscoveryDesk struct {
	Authority *Authority
	Store     DiscoveryStore
}

// AcceptDiscovery is Authority.AcceptDiscovery on the desk's store.
func (d DiscoveryDesk) AcceptDiscovery(ctx context.Context, token string, report []byte) (string, []string, error) {
	return d.Authority.AcceptDiscovery(ctx, d.Store, token, report)
}

// DisableDiscovered is Authority.DisableDiscovered on the desk's store.
func (d DiscoveryDesk) DisableDiscovered(ctx context.Context, token, host, fingerprint, reason string) error {
	return d.Authority.DisableDiscovered(ctx, d.Store, token, host, fingerprint, reason)
}
