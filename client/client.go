// Package client is a typed Go client of sshca's v1 HTTP API (DESIGN.md, "Contracts"), and the
// one definition of the API's request and response bodies: the server (services) encodes and
// decodes the same types. The sshca CLI is built on it; other Go programs may use it too.
//
// Every method takes the bearer token its endpoint needs ("" for the public ones) and returns
// an *Error for any answer other than 200 (and 304 for KRL), carrying the status, the
// service's message and reasons.
package client

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/bodylimit"
)

// MaxAnswerBytes bounds an answer the client reads (a longer one is a *bodylimit.Error),
// except a KRL (MaxKRLBytes) and a list (MaxListBytes).
const MaxAnswerBytes = 1 << 20

// MaxKRLBytes bounds a KRL the client reads (GET /v1/krl, /v1/krl/host), as the bastion agent
// bounds its pulls (bastion.MaxHTTPAnswerBytes): a KRL lists every serial, key ID and key
// revoked, 32 bytes a banned key, so a long list passes 1 MiB, and a client that cannot read
// the KRL keeps trusting everything revoked since it last could.
const MaxKRLBytes = 256 << 20

// MaxListBytes bounds the lists the client reads: a page of the inventory (GET /v1/certs), a
// few hundred bytes a certificate (MaxPageLimit of them is some 5 MiB), and the revocation list
// (GET /v1/revocations), about a hundred an entry. 1 MiB refused a fleet of a few thousand.
const MaxListBytes = 64 << 20

// Default deadlines of one call, when the caller's context has none sooner: a POST may wait for
// a policy decision and a KMS signature, a GET only reads.
const (
	PostTimeout = 30 * time.Second
	GetTimeout  = 15 * time.Second
)

// Client calls one sshca server.
type Client struct {
	server string
	// HTTP is the client requests go through (nil: http.DefaultClient), e.g. one with the
	// server's CA in its TLS root pool.
	HTTP *http.Client
}

// New returns a client of the server at base URL server (e.g. "https://sshca.example.com").
func New(server string) *Client {
	return &Client{server: strings.TrimRight(server, "/")}
}

// Error is an answer other than 200 from the service. Error() reads
// "POST /v1/certs/user: <message>: <reason>; <reason> (HTTP 403)".
type Error struct {
	// Status is the HTTP status code.
	Status int
	// Message is the service's "error" ("" when the answer had none, e.g. a proxy's page).
	Message string
	// Reasons are the service's "reasons" (a policy refusal's).
	Reasons []string
	// Endpoint is the method and path called, e.g. "POST /v1/revocations".
	Endpoint string
	// RetryAfter is the answer's Retry-After header (seconds), "" when absent.
	RetryAfter string
}

func (e *Error) Error() string {
	msg := e.Message
	if msg == "" {
		msg = "no error message in the answer"
	}
	if len(e.Reasons) > 0 {
		msg += ": " + strings.Join(e.Reasons, "; ")
	}
	return fmt.Sprintf("%s: %s (HTTP %d)", e.Endpoint, msg, e.Status)
}

// IssueUser asks for a user certificate (POST /v1/certs/user) with an OIDC ID token.
func (c *Client) IssueUser(ctx context.Context, token string, req CertRequest) (CertResponse, error) {
	var out CertResponse
	err := c.Do(ctx, http.MethodPost, "/v1/certs/user", token, req, &out)
	return out, err
}

// IssueHost asks for a host certificate (POST /v1/certs/host) with a workload token.
func (c *Client) IssueHost(ctx context.Context, token string, req CertRequest) (CertResponse, error) {
	var out CertResponse
	err := c.Do(ctx, http.MethodPost, "/v1/certs/host", token, req, &out)
	return out, err
}

// RenewHost renews a host certificate (POST /v1/certs/host/renew); token is a proof of
// possession signed by the host key (ca.SignRenewToken).
func (c *Client) RenewHost(ctx context.Context, token string) (CertResponse, error) {
	var out CertResponse
	err := c.Do(ctx, http.MethodPost, "/v1/certs/host/renew", token, struct{}{}, &out)
	return out, err
}

// Revoke revokes what req names (POST /v1/revocations).
func (c *Client) Revoke(ctx context.Context, token string, req RevokeRequest) (RevokeResponse, error) {
	var out RevokeResponse
	err := c.Do(ctx, http.MethodPost, "/v1/revocations", token, req, &out)
	return out, err
}

// Unrevoke lifts the ban of a public key (POST /v1/revocations/lift).
func (c *Client) Unrevoke(ctx context.Context, token string, req UnrevokeRequest) (UnrevokeResponse, error) {
	var out UnrevokeResponse
	err := c.Do(ctx, http.MethodPost, "/v1/revocations/lift", token, req, &out)
	return out, err
}

// Revocations lists what is revoked, per CA key (GET /v1/revocations): it asks page after
// page (the server's default size) until the server gives no next cursor, and answers every
// entry of each scope with the key and version of the last page. An entry revoked throughout
// is listed once; one revoked or lifted while it pages may or may not be.
func (c *Client) Revocations(ctx context.Context, token string) (RevocationsResponse, error) {
	return c.RevocationsPaged(ctx, token, 0, nil)
}

// RevocationsPaged is Revocations with limit entries a page (0: the server's default,
// DefaultPageLimit), calling onPage, when set, after each page with how many pages and entries
// have come so far.
func (c *Client) RevocationsPaged(ctx context.Context, token string, limit int, onPage func(pages, entries int)) (RevocationsResponse, error) {
	var all RevocationsResponse
	var user, host []RevocationEntry
	err := followPages(ctx, "/v1/revocations", func(ctx context.Context, cursor string) (string, int, error) {
		page, err := c.RevocationsPage(ctx, token, limit, cursor)
		if err != nil {
			return "", 0, err
		}
		user, host = append(user, page.UserCA.Entries...), append(host, page.HostCA.Entries...)
		all = page
		return page.NextCursor, len(user) + len(host), nil
	}, onPage)
	if err != nil {
		return RevocationsResponse{}, err
	}
	all.UserCA.Entries, all.HostCA.Entries, all.NextCursor = nonNilEntries(user), nonNilEntries(host), ""
	return all, nil
}

func nonNilEntries(es []RevocationEntry) []RevocationEntry {
	if es == nil {
		return []RevocationEntry{}
	}
	return es
}

// RevocationsPage asks for one page of GET /v1/revocations after cursor (a NextCursor of the
// page before; "" for the first), limit entries at most (0: the server's default).
func (c *Client) RevocationsPage(ctx context.Context, token string, limit int, cursor string) (RevocationsResponse, error) {
	var out RevocationsResponse
	err := c.do(ctx, http.MethodGet, pagePath("/v1/revocations", url.Values{}, limit, cursor), token, nil, &out, GetTimeout, MaxListBytes)
	return out, err
}

// followPages asks for pages of path (page reads the one after cursor and answers the next
// cursor and how many items have come so far) until a page has no next cursor, calling
// onPage, when set, after each with how many pages and items came so far. A server that gives
// a cursor it gave before, at once or pages later (A, B, A), would loop for ever: that is an
// error. Each cursor is remembered by its SHA-256 (32 bytes a page, where a revocation
// cursor may be 4 KiB).
func followPages(ctx context.Context, path string, page func(ctx context.Context, cursor string) (next string, items int, err error), onPage func(pages, items int)) error {
	cursor := ""
	seen := map[[sha256.Size]byte]struct{}{}
	for pages := 1; ; pages++ {
		next, items, err := page(ctx, cursor)
		if err != nil {
			return err
		}
		if onPage != nil {
			onPage(pages, items)
		}
		if next == "" {
			return nil
		}
		h := sha256.Sum256([]byte(next))
		if _, again := seen[h]; again {
			return fmt.Errorf("sshca: GET %s: the server gave a cursor it gave before (page %d): the list would not end; this is a server fault, report it", path, pages)
		}
		seen[h] = struct{}{}
		cursor = next
	}
}

// pagePath is path with the query v and a page's limit (when above 0) and cursor (when given).
func pagePath(path string, v url.Values, limit int, cursor string) string {
	if limit > 0 {
		v.Set("limit", strconv.Itoa(limit))
	}
	if cursor != "" {
		v.Set("cursor", cursor)
	}
	if len(v) > 0 {
		path += "?" + v.Encode()
	}
	return path
}

// CertQuery selects certificates of GET /v1/certs; every field is optional.
type CertQuery struct {
	// Identity is a canonical name, an e-mail or "username:…"; Principal a principal the
	// certificate names; Live keeps only those not revoked.
	Identity, Principal string
	Live                bool
	// Limit is the size of a page (0: the server's default, DefaultPageLimit).
	Limit int
	// OnPage, when set, is called after each page with how many pages and certificates have
	// come so far (Inventory).
	OnPage func(pages, certs int)
}

// Inventory lists the unexpired certificates q selects, revoked ones flagged (GET /v1/certs),
// soonest to expire first: it asks page after page (q.Limit certificates each, the server's
// default when 0) until the server gives no next cursor, calling q.OnPage after each.
// Certificates recorded while it pages may or may not be listed; one live throughout is
// listed once.
func (c *Client) Inventory(ctx context.Context, token string, q CertQuery) ([]Certificate, error) {
	var all []Certificate
	err := followPages(ctx, "/v1/certs", func(ctx context.Context, cursor string) (string, int, error) {
		page, err := c.InventoryPage(ctx, token, q, cursor)
		all = append(all, page.Certificates...)
		return page.NextCursor, len(all), err
	}, q.OnPage)
	if err != nil {
		return nil, err
	}
	return all, nil
}

// InventoryPage asks for one page of the certificates q selects, after cursor (a NextCursor
// of the page before; "" for the first).
func (c *Client) InventoryPage(ctx context.Context, token string, q CertQuery, cursor string) (InventoryResponse, error) {
	var out InventoryResponse
	v := url.Values{}
	if q.Identity != "" {
		v.Set("identity", q.Identity)
	}
	if q.Principal != "" {
		v.Set("principal", q.Principal)
	}
	if q.Live {
		v.Set("live", "true")
	}
	path := pagePath("/v1/certs", v, q.Limit, cursor)
	err := c.do(ctx, http.MethodGet, path, token, nil, &out, GetTimeout, MaxListBytes)
	return out, err
}

// LoginConfig is what `sshca login` signs users in with (GET /v1/login/config).
func (c *Client) LoginConfig(ctx context.Context) (LoginConfig, error) {
	var out LoginConfig
	err := c.Do(ctx, http.MethodGet, "/v1/login/config", "", nil, &out)
	return out, err
}

// UserCAKeys are the published user CA keys (GET /v1/ca/user.pub), what TrustedUserCAKeys
// lists.
func (c *Client) UserCAKeys(ctx context.Context) ([]ssh.PublicKey, error) {
	b, _, err := c.get(ctx, "/v1/ca/user.pub", "", MaxAnswerBytes)
	if err != nil {
		return nil, err
	}
	var keys []ssh.PublicKey
	for len(bytes.TrimSpace(b)) > 0 {
		k, _, _, rest, err := ssh.ParseAuthorizedKey(b)
		if err != nil {
			return nil, fmt.Errorf("GET /v1/ca/user.pub: unreadable key line: %w", err)
		}
		keys = append(keys, k)
		b = rest
	}
	return keys, nil
}

// KnownHosts is the known_hosts text of the host CA keys (GET /v1/ca/known_hosts):
// @cert-authority lines, and @revoked lines for compromised keys.
func (c *Client) KnownHosts(ctx context.Context) (string, error) {
	b, _, err := c.get(ctx, "/v1/ca/known_hosts", "", MaxAnswerBytes)
	return string(b), err
}

// KRL is an answer of GET /v1/krl.
type KRL struct {
	// Data is the KRL in OpenSSH's binary format (empty when NotModified).
	Data []byte
	// ETag identifies this KRL; pass it to the next call to get NotModified while it holds.
	ETag string
	// Version is the KRL's monotonic version (0 when NotModified).
	Version uint64
	// NotModified: the KRL is still the one ifNoneMatch names.
	NotModified bool
}

// KRL fetches the current KRL of user certificates (GET /v1/krl). ifNoneMatch is the ETag
// of the KRL the caller has ("" for none).
func (c *Client) KRL(ctx context.Context, ifNoneMatch string) (KRL, error) {
	b, resp, err := c.get(ctx, "/v1/krl", ifNoneMatch, MaxKRLBytes)
	if err != nil {
		return KRL{}, err
	}
	out := KRL{ETag: resp.Header.Get("ETag"), NotModified: resp.StatusCode == http.StatusNotModified}
	if !out.NotModified {
		out.Data = b
		out.Version, _ = strconv.ParseUint(resp.Header.Get("X-KRL-Version"), 10, 64)
	}
	return out, nil
}

// HostKRL fetches the KRL of revoked hosts (GET /v1/krl/host), in OpenSSH's binary format for
// clients' RevokedHostKeys: host certificates revoked by serial or key ID, banned keys and
// compromised host CA keys.
func (c *Client) HostKRL(ctx context.Context) ([]byte, error) {
	b, _, err := c.get(ctx, "/v1/krl/host", "", MaxKRLBytes)
	return b, err
}

// Keys is the CA keyring (GET /v1/keys).
func (c *Client) Keys(ctx context.Context, token string) (ca.Keyring, error) {
	var out KeyResponse
	if err := c.Do(ctx, http.MethodGet, "/v1/keys", token, nil, &out); err != nil {
		return ca.Keyring{}, err
	}
	if out.Ring == nil {
		return ca.Keyring{}, errors.New("GET /v1/keys: the answer has no keyring")
	}
	return *out.Ring, nil
}

// GenerateKey creates a key in the KMS and adds it as the next key of req.CA
// (POST /v1/keys/generate); req.Type is optional.
func (c *Client) GenerateKey(ctx context.Context, token string, req KeyRequest) (ca.CAKey, error) {
	return c.keyOp(ctx, token, "generate", req)
}

// PromoteKey makes req.CA's next key active (POST /v1/keys/promote).
func (c *Client) PromoteKey(ctx context.Context, token string, req KeyRequest) (ca.CAKey, error) {
	return c.keyOp(ctx, token, "promote", req)
}

// RetireKey withdraws the retired key req.Fingerprint from publication (POST /v1/keys/retire).
func (c *Client) RetireKey(ctx context.Context, token string, req KeyRequest) (ca.CAKey, error) {
	return c.keyOp(ctx, token, "retire", req)
}

// CompromisedKey withdraws req.Fingerprint at once and revokes what it signed
// (POST /v1/keys/compromised).
func (c *Client) CompromisedKey(ctx context.Context, token string, req KeyRequest) (ca.CAKey, error) {
	return c.keyOp(ctx, token, "compromised", req)
}

func (c *Client) keyOp(ctx context.Context, token, op string, req KeyRequest) (ca.CAKey, error) {
	var out KeyResponse
	if err := c.Do(ctx, http.MethodPost, "/v1/keys/"+op, token, req, &out); err != nil {
		return ca.CAKey{}, err
	}
	if out.Key == nil {
		return ca.CAKey{}, fmt.Errorf("POST /v1/keys/%s: the answer has no key", op)
	}
	return *out.Key, nil
}

// Do calls path (with its query) on the server: body, when not nil, is sent as JSON, and a
// 200 answer is decoded into reply. It is what the typed methods use, for callers of an
// endpoint they do not name.
func (c *Client) Do(ctx context.Context, method, path, token string, body, reply any) error {
	timeout := GetTimeout
	if method != http.MethodGet {
		timeout = PostTimeout
	}
	return c.do(ctx, method, path, token, body, reply, timeout, MaxAnswerBytes)
}

// do is Do with the call's own deadline (a long poll's is its wait and then some), reading at
// most max bytes of the answer.
func (c *Client) do(ctx context.Context, method, path, token string, body, reply any, timeout time.Duration, max int64) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, c.server+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	data, _, err := c.sendMax(req, token, max)
	if err != nil {
		return err
	}
	if reply == nil {
		return nil
	}
	if err := json.Unmarshal(data, reply); err != nil {
		return fmt.Errorf("%s: unreadable answer: %w", endpoint(req), err)
	}
	return nil
}

// get GETs a non-JSON resource, reading at most max bytes of it; 304 is an answer too when
// ifNoneMatch is set.
func (c *Client) get(ctx context.Context, path, ifNoneMatch string, max int64) ([]byte, *http.Response, error) {
	ctx, cancel := context.WithTimeout(ctx, GetTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.server+path, nil)
	if err != nil {
		return nil, nil, err
	}
	if ifNoneMatch != "" {
		req.Header.Set("If-None-Match", ifNoneMatch)
	}
	return c.sendMax(req, "", max)
}

// send does req and reads the answer; an answer other than 200 (or 304 to a conditional
// request) is an *Error.
func (c *Client) send(req *http.Request, token string) ([]byte, *http.Response, error) {
	return c.sendMax(req, token, MaxAnswerBytes)
}

// sendMax is send reading at most max bytes of the answer.
func (c *Client) sendMax(req *http.Request, token string, max int64) ([]byte, *http.Response, error) {
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("server unreachable: %w", err)
	}
	// A longer answer is an error naming the URL and the bound, not an answer cut short.
	data, err := bodylimit.ReadAll(resp, max)
	if err != nil {
		return nil, nil, fmt.Errorf("read answer: %w", err)
	}
	notModified := resp.StatusCode == http.StatusNotModified && req.Header.Get("If-None-Match") != ""
	if resp.StatusCode != http.StatusOK && !notModified {
		return nil, nil, statusError(req, resp, data)
	}
	return data, resp, nil
}

func statusError(req *http.Request, resp *http.Response, data []byte) *Error {
	e := &Error{Status: resp.StatusCode, Endpoint: endpoint(req), RetryAfter: resp.Header.Get("Retry-After")}
	var body ErrorBody
	if json.Unmarshal(data, &body) == nil && body.Error != "" {
		e.Message, e.Reasons = body.Error, body.Reasons
	}
	return e
}

// endpoint names a request as "METHOD /path", without the server or the query.
func endpoint(req *http.Request) string {
	p := req.URL.Path
	if p == "" {
		p = "/"
	}
	return req.Method + " " + p
}
