package services

import (
	"context"
	"encoding/base64"
	"strconv"
	"time"

	"github.com/go-kit/kit/endpoint"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/client"
)

// Endpoints collects one endpoint per Service method.
type Endpoints struct {
	IssueUser  endpoint.Endpoint
	IssueHost  endpoint.Endpoint
	RenewHost  endpoint.Endpoint
	UserCAKeys endpoint.Endpoint
	HostCAKeys endpoint.Endpoint

	Revoke      endpoint.Endpoint
	Unrevoke    endpoint.Endpoint
	Revocations endpoint.Endpoint
	Inventory   endpoint.Endpoint
	KRL         endpoint.Endpoint
}

// MakeEndpoints returns the endpoints of s.
func MakeEndpoints(s Service) Endpoints {
	return Endpoints{
		IssueUser:  makeIssueEndpoint(s, ca.UserCert),
		IssueHost:  makeIssueEndpoint(s, ca.HostCert),
		RenewHost:  makeRenewEndpoint(s),
		UserCAKeys: func(context.Context, any) (any, error) { return caKeysResponse{Keys: s.UserCAKeys()}, nil },
		HostCAKeys: makeHostCAKeysEndpoint(s),

		Revoke:      makeRevokeEndpoint(s),
		Unrevoke:    makeUnrevokeEndpoint(s),
		Revocations: makeRevocationsEndpoint(s),
		Inventory:   makeInventoryEndpoint(s),
		KRL:         makeKRLEndpoint(s),
	}
}

// certRequest is the body of POST /v1/certs/user and /v1/certs/host as sent, with what the
// transport adds from the HTTP request.
type certRequest struct {
	client.CertRequest

	token    string
	sourceIP string
}

// certResponse is the answer to a certificate request. Err carries a business error to the
// transport's error encoder (go-kit's "failer" pattern).
type certResponse struct {
	client.CertResponse
	Err error `json:"-"`
}

func (r certResponse) Failed() error { return r.Err }

type caKeysResponse struct {
	Keys    []ssh.PublicKey
	Revoked []ssh.PublicKey
}

func makeIssueEndpoint(s Service, kind ca.CertKind) endpoint.Endpoint {
	return func(ctx context.Context, request any) (any, error) {
		req := request.(certRequest)
		r, err := toCertRequest(kind, req)
		if err != nil {
			return certResponse{Err: err}, nil
		}
		issued, err := s.IssueRequest(ctx, req.token, r)
		if err != nil {
			return certResponse{Err: err}, nil
		}
		return issuedResponse(issued), nil
	}
}

func makeRenewEndpoint(s Service) endpoint.Endpoint {
	return func(ctx context.Context, request any) (any, error) {
		issued, err := s.Renew(ctx, request.(string))
		if err != nil {
			return certResponse{Err: err}, nil
		}
		return issuedResponse(issued), nil
	}
}

func issuedResponse(issued ca.Issued) certResponse {
	c := issued.Cert
	return certResponse{CertResponse: client.CertResponse{
		Certificate: authorizedKeyLine(c),
		Serial:      strconv.FormatUint(c.Serial, 10),
		KeyID:       c.KeyId,
		Principals:  c.ValidPrincipals,
		ValidAfter:  issued.Record.ValidAfter.Format(time.RFC3339),
		ValidBefore: issued.Record.ValidBefore.Format(time.RFC3339),
	}}
}

// toCertRequest checks only the envelope: a bearer token is present, and the body names the
// field of its endpoint (principals or hostnames). The key and the TTL are parsed by the
// authority once the caller is authenticated (ca.Authority.IssueRequest).
func toCertRequest(kind ca.CertKind, req certRequest) (ca.CertRequest, error) {
	if req.token == "" {
		return ca.CertRequest{}, errMissingToken
	}
	principals := req.Principals
	switch {
	case kind == ca.UserCert && len(req.Hostnames) > 0:
		return ca.CertRequest{}, ca.Invalid("hostnames are for host certificates; user certificates take principals")
	case kind == ca.HostCert && len(req.Principals) > 0:
		return ca.CertRequest{}, ca.Invalid("principals are for user certificates; host certificates take hostnames")
	case kind == ca.HostCert:
		principals = req.Hostnames
	}
	if kind == ca.HostCert && req.AccessRequest != "" {
		return ca.CertRequest{}, ca.Invalid("access_request is for user certificates only")
	}
	return ca.CertRequest{Kind: kind, PublicKey: req.PublicKey, Principals: principals, TTL: req.TTL, Reason: req.Reason, SourceIP: req.sourceIP,
		AccessRequest: req.AccessRequest}, nil
}

// authorizedKeyLine is ssh.MarshalAuthorizedKey(k) without its newline ("<type> <base64>"),
// built as one string instead of through a buffer, an encoder and two copies. The
// certificate's bytes are x/crypto's Marshal, the encoding its signature was made over.
func authorizedKeyLine(k ssh.PublicKey) string {
	return k.Type() + " " + base64.StdEncoding.EncodeToString(k.Marshal())
}
