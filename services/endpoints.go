package services

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"slices"
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
// built as one string instead of through a buffer, an encoder and two copies. A signed
// certificate is encoded by certBytes.
func authorizedKeyLine(k ssh.PublicKey) string {
	blob := []byte(nil)
	if c, ok := k.(*ssh.Certificate); ok {
		blob = certBytes(c)
	}
	if blob == nil {
		blob = k.Marshal()
	}
	return k.Type() + " " + base64.StdEncoding.EncodeToString(blob)
}

// certBytes is c.Marshal() (the wire form of PROTOCOL.certkeys §"Certified keys": type, nonce,
// the key's public fields, serial, type, key ID, principals, validity, critical options,
// extensions, reserved, signature key, signature) appended into one buffer. x/crypto's Marshal
// builds it by reflection, through a dozen intermediate slices: about 16 % of the HTTP layer's
// CPU per certificate and 25 allocations (BenchmarkIssueHTTP). FuzzCertBytes holds it to
// c.Marshal(). Nil when c has no signature or a key whose encoding does not start with its
// type (x/crypto's Marshal is then the one to ask).
func certBytes(c *ssh.Certificate) []byte {
	if c.Signature == nil || c.Key == nil || c.SignatureKey == nil {
		return nil
	}
	key := c.Key.Marshal()
	keyType, keyFields, ok := sshString(key)
	if !ok || len(keyType) == 0 {
		return nil
	}
	sigKey := c.SignatureKey.Marshal()
	options, extensions := sortedKeys(c.CriticalOptions), sortedKeys(c.Extensions)
	n := 4 + len(c.Type()) + 4 + len(c.Nonce) + len(keyFields) + 8 + 4 + 4 + len(c.KeyId) + 4 + 8 + 8 + 4 + 4 + 4 + len(c.Reserved) +
		4 + len(sigKey) + 4 + 4 + len(c.Signature.Format) + 4 + len(c.Signature.Blob) + len(c.Signature.Rest)
	for _, p := range c.ValidPrincipals {
		n += 4 + len(p)
	}
	for _, m := range []map[string]string{c.CriticalOptions, c.Extensions} {
		for k, v := range m {
			n += 4 + len(k) + 4
			if v != "" {
				n += 4 + len(v)
			}
		}
	}
	b := make([]byte, 0, n)
	b = appendSSHString(b, c.Type())
	b = appendSSHString(b, c.Nonce)
	b = append(b, keyFields...)
	b = binary.BigEndian.AppendUint64(b, c.Serial)
	b = binary.BigEndian.AppendUint32(b, c.CertType)
	b = appendSSHString(b, c.KeyId)
	b = appendLength(b, func(b []byte) []byte {
		for _, p := range c.ValidPrincipals {
			b = appendSSHString(b, p)
		}
		return b
	})
	b = binary.BigEndian.AppendUint64(b, c.ValidAfter)
	b = binary.BigEndian.AppendUint64(b, c.ValidBefore)
	for _, t := range []struct {
		m    map[string]string
		keys []string
	}{{c.CriticalOptions, options}, {c.Extensions, extensions}} {
		b = appendLength(b, func(b []byte) []byte {
			// Each option: its name, then its value wrapped as a string in a string (empty
			// for a flag), names in lexical order.
			for _, k := range t.keys {
				b = appendSSHString(b, k)
				if v := t.m[k]; v != "" {
					b = binary.BigEndian.AppendUint32(b, uint32(4+len(v)))
					b = appendSSHString(b, v)
				} else {
					b = binary.BigEndian.AppendUint32(b, 0)
				}
			}
			return b
		})
	}
	b = appendSSHString(b, c.Reserved)
	b = appendSSHString(b, sigKey)
	b = appendLength(b, func(b []byte) []byte {
		b = appendSSHString(b, c.Signature.Format)
		b = appendSSHString(b, c.Signature.Blob)
		return append(b, c.Signature.Rest...)
	})
	return b
}

// appendSSHString appends s as an SSH string (RFC 4251 §5: uint32 length, then the bytes).
func appendSSHString[T string | []byte](b []byte, s T) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

// appendLength appends what fill appends, as an SSH string: its length first.
func appendLength(b []byte, fill func([]byte) []byte) []byte {
	at := len(b)
	b = fill(append(b, 0, 0, 0, 0))
	binary.BigEndian.PutUint32(b[at:], uint32(len(b)-at-4))
	return b
}

// sshString splits the SSH string at the start of b from the rest.
func sshString(b []byte) (s, rest []byte, ok bool) {
	if len(b) < 4 {
		return nil, nil, false
	}
	n := binary.BigEndian.Uint32(b)
	if uint64(len(b)-4) < uint64(n) {
		return nil, nil, false
	}
	return b[4 : 4+n], b[4+n:], true
}

func sortedKeys(m map[string]string) []string {
	if len(m) == 0 {
		return nil
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
