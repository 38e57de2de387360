package services

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/go-kit/kit/endpoint"
	kithttp "github.com/go-kit/kit/transport/http"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/client"
	"github.com/sshca/sshca/revocation"
)

// revokeRequest is the body of POST /v1/revocations as sent, with the bearer token.
type revokeRequest struct {
	client.RevokeRequest

	token string
}

type revokeResponse struct {
	client.RevokeResponse
	Err error `json:"-"`
}

func (r revokeResponse) Failed() error { return r.Err }

type revocationsResponse struct {
	client.RevocationsResponse
	Err error `json:"-"`
}

func (r revocationsResponse) Failed() error { return r.Err }

type inventoryRequest struct {
	token string
	query ca.CertQuery
}

type inventoryResponse struct {
	client.InventoryResponse
	Err error `json:"-"`
}

func (r inventoryResponse) Failed() error { return r.Err }

type krlResponse struct {
	States []ca.RevocationState
	Err    error
}

func (r krlResponse) Failed() error { return r.Err }

// hostKeysResponse is what clients are told about host CA keys: the keys to trust (Keys) and
// what is revoked under them (States, as ca.Authority.HostRevocationStates gives them). It
// answers both GET /v1/ca/known_hosts and GET /v1/krl/host, so the two never disagree.
type hostKeysResponse struct {
	Keys []ssh.PublicKey
	krlResponse
}

func makeHostCAKeysEndpoint(s Service) endpoint.Endpoint {
	return func(ctx context.Context, _ any) (any, error) {
		states, err := s.HostRevocationStates(ctx)
		return hostKeysResponse{Keys: s.HostCAKeys(), krlResponse: krlResponse{States: states, Err: err}}, nil
	}
}

// revokedKeys are the public keys the states revoke outright (banned keys, compromised CA
// keys), each once, in the states' order, with whether it is a compromised CA key (an entry of
// the state without a CA).
func revokedKeys(states []ca.RevocationState) (keys []ssh.PublicKey, compromised []bool) {
	seen := map[string]int{}
	for _, st := range states {
		for _, e := range st.Entries {
			if e.Kind != ca.RevokedKey {
				continue
			}
			b, err := base64.StdEncoding.DecodeString(e.Value)
			if err != nil {
				continue
			}
			k, err := ssh.ParsePublicKey(b)
			if err != nil {
				continue // the KRL encoder refuses it too, and says so
			}
			if i, ok := seen[string(b)]; ok {
				compromised[i] = compromised[i] || st.CA == nil
				continue
			}
			seen[string(b)] = len(keys)
			keys, compromised = append(keys, k), append(compromised, st.CA == nil)
		}
	}
	return keys, compromised
}

func makeRevokeEndpoint(s Service) endpoint.Endpoint {
	return func(ctx context.Context, request any) (any, error) {
		req := request.(revokeRequest)
		if req.token == "" {
			return revokeResponse{Err: errMissingToken}, nil
		}
		r := ca.RevokeRequest{KeyID: req.KeyID, Identity: req.Identity, AllMatches: req.AllMatches, Reason: req.Reason}
		if req.Serial != "" {
			n, err := strconv.ParseUint(req.Serial, 10, 64)
			if err != nil || n == 0 {
				return revokeResponse{Err: ca.Invalid("serial %q is not a non-zero decimal 64-bit number (send it as a JSON string)", truncate(req.Serial, 40))}, nil
			}
			r.Serial = n
		}
		if req.PublicKey != "" {
			k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(req.PublicKey))
			if err != nil {
				return revokeResponse{Err: ca.Invalid("public_key is not an OpenSSH public key in authorized_keys format")}, nil
			}
			if c, ok := k.(*ssh.Certificate); ok {
				k = c.Key // revoking a certificate's key revokes it and every other cert for the key
			}
			r.PublicKey = k
		}
		res, err := s.Revoke(ctx, req.token, r)
		if err != nil {
			return revokeResponse{Err: err}, nil
		}
		out := revokeResponse{RevokeResponse: client.RevokeResponse{Revoked: entriesJSON(res.Revoked), Certificates: certsJSON(res.Certificates),
			Matches: res.Matches, Version: strconv.FormatUint(res.Version, 10)}}
		if !res.BlockedUntil.IsZero() {
			out.BlockedUntil = res.BlockedUntil.Format(time.RFC3339)
		}
		return out, nil
	}
}

// unrevokeRequest is the body of POST /v1/revocations/lift as sent, with the bearer token.
type unrevokeRequest struct {
	client.UnrevokeRequest

	token string
}

type unrevokeResponse struct {
	client.UnrevokeResponse
	Err error `json:"-"`
}

func (r unrevokeResponse) Failed() error { return r.Err }

func makeUnrevokeEndpoint(s Service) endpoint.Endpoint {
	return func(ctx context.Context, request any) (any, error) {
		req := request.(unrevokeRequest)
		if req.token == "" {
			return unrevokeResponse{Err: errMissingToken}, nil
		}
		k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(req.PublicKey))
		if err != nil {
			return unrevokeResponse{Err: ca.Invalid("public_key is not an OpenSSH public key in authorized_keys format")}, nil
		}
		if c, ok := k.(*ssh.Certificate); ok {
			k = c.Key // a ban is of the key
		}
		res, err := s.Unrevoke(ctx, req.token, ca.UnrevokeRequest{PublicKey: k, Reason: req.Reason})
		if err != nil {
			return unrevokeResponse{Err: err}, nil
		}
		return unrevokeResponse{UnrevokeResponse: client.UnrevokeResponse{Lifted: res.Lifted, Version: strconv.FormatUint(res.Version, 10)}}, nil
	}
}

func decodeUnrevokeRequest(_ context.Context, r *http.Request) (any, error) {
	var req unrevokeRequest
	err := decodeJSON(r, &req.UnrevokeRequest)
	if err != nil {
		return nil, err
	}
	if req.token, err = bearer(r); err != nil {
		return nil, err
	}
	return req, nil
}

// revocationsRequest is GET /v1/revocations as decoded: the bearer token and the page.
type revocationsRequest struct {
	token string
	after ca.RevocationCursor
	limit int
}

func decodeRevocationsRequest(ctx context.Context, r *http.Request) (any, error) {
	t, err := decodeToken(ctx, r)
	if err != nil {
		return nil, err
	}
	q := r.URL.Query()
	req := revocationsRequest{token: t.(string)}
	if req.limit, err = pageLimit(q); err != nil {
		return nil, err
	}
	if req.after, err = ca.ParseRevocationCursor(q.Get("cursor")); err != nil {
		return nil, err
	}
	return req, nil
}

func makeRevocationsEndpoint(s Service) endpoint.Endpoint {
	return func(ctx context.Context, request any) (any, error) {
		req := request.(revocationsRequest)
		page, err := s.RevocationsPage(ctx, req.token, req.after, req.limit)
		if err != nil {
			return revocationsResponse{Err: err}, nil
		}
		return revocationsResponse{RevocationsResponse: client.RevocationsResponse{UserCA: scopeOf(page.User), HostCA: scopeOf(page.Host),
			NextCursor: page.Next.String()}}, nil
	}
}

func makeInventoryEndpoint(s Service) endpoint.Endpoint {
	return func(ctx context.Context, request any) (any, error) {
		req := request.(inventoryRequest)
		page, err := s.ListCertificates(ctx, req.token, req.query)
		if err != nil {
			return inventoryResponse{Err: err}, nil
		}
		out := make([]client.Certificate, 0, len(page.Certificates))
		for _, c := range page.Certificates {
			j := certJSON(c.Certificate)
			j.Revoked = c.Revoked
			out = append(out, j)
		}
		return inventoryResponse{InventoryResponse: client.InventoryResponse{Certificates: out, NextCursor: page.Next.String()}}, nil
	}
}

func makeKRLEndpoint(s Service) endpoint.Endpoint {
	return func(ctx context.Context, _ any) (any, error) {
		states, err := s.UserRevocationStates(ctx)
		return krlResponse{States: states, Err: err}, nil
	}
}

func scopeOf(st ca.RevocationState) client.RevocationScope {
	out := client.RevocationScope{Version: strconv.FormatUint(st.Version, 10), Entries: entriesJSON(st.Entries)}
	if st.CA != nil {
		out.CA = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(st.CA)))
		out.Fingerprint = ssh.FingerprintSHA256(st.CA)
	}
	return out
}

func entriesJSON(es []ca.RevocationEntry) []client.RevocationEntry {
	out := make([]client.RevocationEntry, 0, len(es))
	for _, e := range es {
		if e.Expiry.IsZero() { // until lifted
			out = append(out, client.RevocationEntry{Kind: string(e.Kind), Value: e.Value, Permanent: true})
			continue
		}
		out = append(out, client.RevocationEntry{Kind: string(e.Kind), Value: e.Value, Expires: e.Expiry.UTC().Format(time.RFC3339)})
	}
	return out
}

func certsJSON(cs []ca.Certificate) []client.Certificate {
	out := make([]client.Certificate, 0, len(cs))
	for _, c := range cs {
		out = append(out, certJSON(c))
	}
	return out
}

func certJSON(c ca.Certificate) client.Certificate {
	return client.Certificate{Serial: strconv.FormatUint(c.Serial, 10), KeyID: c.KeyID, Kind: string(c.Kind), Identity: c.Identity,
		Principals: c.Principals, KeyFingerprint: c.KeyFingerprint, CAFingerprint: c.CAFingerprint,
		ValidAfter: c.ValidAfter.Format(time.RFC3339), ValidBefore: c.ValidBefore.Format(time.RFC3339),
		Ticket: c.Ticket, AccessRequest: c.AccessRequest, Approvers: c.Approvers}
}

func decodeRevokeRequest(_ context.Context, r *http.Request) (any, error) {
	var req revokeRequest
	err := decodeJSON(r, &req.RevokeRequest)
	if err != nil {
		return nil, err
	}
	if req.token, err = bearer(r); err != nil {
		return nil, err
	}
	return req, nil
}

func decodeToken(_ context.Context, r *http.Request) (any, error) {
	t, err := bearer(r)
	if err != nil {
		return nil, err
	}
	if t == "" {
		return nil, errMissingToken
	}
	return t, nil
}

func decodeInventoryRequest(_ context.Context, r *http.Request) (any, error) {
	t, err := bearer(r)
	if err != nil {
		return nil, err
	}
	if t == "" {
		return nil, errMissingToken
	}
	q := r.URL.Query()
	req := inventoryRequest{token: t, query: ca.CertQuery{Identity: q.Get("identity"), Principal: q.Get("principal")}}
	if v := q.Get("live"); v != "" {
		if req.query.Live, err = strconv.ParseBool(v); err != nil {
			return nil, ca.Invalid("live %q: want true or false (GET /v1/certs?live=true)", v)
		}
	}
	if req.query.Limit, err = pageLimit(q); err != nil {
		return nil, err
	}
	if req.query.After, err = ca.ParseCertCursor(q.Get("cursor")); err != nil {
		return nil, err
	}
	return req, nil
}

// DefaultPageLimit and MaxPageLimit bound the pages of a list (GET /v1/certs?limit=N): a page
// of 10,000 certificates is some 5 MB of JSON, well within what the client reads
// (client.MaxListBytes), and one Redis script and 20 MGETs to read.
const (
	DefaultPageLimit = client.DefaultPageLimit
	MaxPageLimit     = client.MaxPageLimit
)

// pageLimit is the limit of a list's query: DefaultPageLimit when absent, else a whole number
// from 1 to MaxPageLimit, or Invalid naming limit and its range.
func pageLimit(q url.Values) (int, error) {
	vs, ok := q["limit"]
	if !ok {
		return DefaultPageLimit, nil
	}
	if len(vs) == 1 && canonicalInt(vs[0]) {
		if n, err := strconv.Atoi(vs[0]); err == nil && n >= 1 && n <= MaxPageLimit {
			return n, nil
		}
	}
	return 0, ca.Invalid("limit %.20q: give a whole number from 1 to %d, or leave it out for %d", strings.Join(vs, ","), MaxPageLimit, DefaultPageLimit)
}

// canonicalInt: decimal digits without sign or leading zero, at most 6 of them.
func canonicalInt(s string) bool {
	if s == "" || len(s) > 6 || s[0] == '0' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// encodeKRL answers with the binary KRL of the states (GET /v1/krl of user CA keys, GET
// /v1/krl/host of host CA keys), its version as ETag, and 304 when the client has it.
func encodeKRL(render func(...ca.RevocationState) ([]byte, error), log *slog.Logger) kithttp.EncodeResponseFunc {
	return func(ctx context.Context, w http.ResponseWriter, response any) error {
		var resp krlResponse
		switch r := response.(type) {
		case krlResponse:
			resp = r
		case hostKeysResponse:
			resp = r.krlResponse
		}
		if resp.Err != nil {
			answerFailure(ctx, log, resp.Err, w)
			return nil
		}
		etag, version := krlETag(resp.States)
		w.Header().Set("ETag", etag)
		w.Header().Set("X-KRL-Version", version)
		w.Header().Set("Cache-Control", "no-cache")
		if inm, _ := ctx.Value(ifNoneMatchKey{}).(string); inm == etag {
			w.WriteHeader(http.StatusNotModified)
			return nil
		}
		b, err := render(resp.States...)
		if err != nil {
			return err
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		_, err = w.Write(b)
		return err
	}
}

// krlETag is the ETag of the KRL of states, and the version it names: the one the KRL carries
// (revocation.Version: the generation in the high bits); the ETag adds which scopes, so a new
// CA key changes it too.
func krlETag(states []ca.RevocationState) (etag, version string) {
	scopes := ""
	for _, st := range states {
		scopes += shortFingerprint(st.CA)
	}
	version = strconv.FormatUint(revocation.Version(states...), 10)
	return `"` + version + "-" + shortHash(scopes) + `"`, version
}

func shortHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:6])
}

func shortFingerprint(k ssh.PublicKey) string {
	if k == nil {
		return "none"
	}
	fp := strings.TrimPrefix(ssh.FingerprintSHA256(k), "SHA256:")
	if len(fp) > 12 {
		fp = fp[:12]
	}
	return strings.NewReplacer("/", "_", "+", "-").Replace(fp)
}

var errMissingToken = ca.Unauthenticated("missing bearer token: send \"Authorization: Bearer <ID token>\"", nil)

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

type ifNoneMatchKey struct{}

// withIfNoneMatch carries the request's If-None-Match to the KRL encoder.
func withIfNoneMatch(ctx context.Context, r *http.Request) context.Context {
	return context.WithValue(ctx, ifNoneMatchKey{}, r.Header.Get("If-None-Match"))
}
