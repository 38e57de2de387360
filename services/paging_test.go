package services_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/client"
	"github.com/sshca/sshca/services"
)

// pagedService answers ListCertificates with a page whose Next is next, and keeps the query.
type pagedService struct {
	fakeService
	q    ca.CertQuery
	next ca.CertCursor
}

func (p *pagedService) ListCertificates(_ context.Context, _ string, q ca.CertQuery) (ca.CertPage, error) {
	p.q = q
	return ca.CertPage{Certificates: []ca.ListedCertificate{{Certificate: ca.Certificate{Serial: 7, ValidBefore: time.Now()}}}, Next: p.next}, nil
}

// TestInventoryPageParameters: GET /v1/certs on a real server takes limit (default 1000, 1 to
// 10000) and an opaque cursor, and answers next_cursor (absent on the last page). A limit out of
// range or not a plain number, and a cursor that is malformed or made up (a serial of 0, a time
// beyond a score's range, another version, padding, leading zeros, a sign) are 400s naming the
// parameter, never a 500 and never reaching the service; the edges of what is allowed pass.
func TestInventoryPageParameters(t *testing.T) {
	svc := &pagedService{}
	srv := httptest.NewServer(services.NewHTTPHandler(services.MakeEndpoints(svc), services.HTTPOptions{}))
	defer srv.Close()
	get := func(query string) (int, client.InventoryResponse, string) {
		t.Helper()
		return getPage[client.InventoryResponse](t, srv.URL+"/v1/certs?"+query)
	}
	enc := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

	code, out, body := get("")
	if code != http.StatusOK || svc.q.Limit != services.DefaultPageLimit || !svc.q.After.IsZero() || strings.Contains(body, "next_cursor") {
		t.Errorf("no parameters: %d %s, query %+v; want the default limit, the start, no next_cursor", code, body, svc.q)
	}
	pos := ca.CertCursor{ValidBefore: 1764500000000, Serial: 18446744073709551615}
	svc.next = pos
	code, out, _ = get("limit=1")
	if code != http.StatusOK || svc.q.Limit != 1 || out.NextCursor != pos.String() {
		t.Errorf("limit=1: %d, query %+v, next %q", code, svc.q, out.NextCursor)
	}
	code, _, _ = get("limit=10000&cursor=" + url.QueryEscape(out.NextCursor))
	if code != http.StatusOK || svc.q.Limit != 10000 || svc.q.After != pos {
		t.Errorf("the next page: %d, query %+v, want after %+v", code, svc.q, pos)
	}

	svc.q = ca.CertQuery{}
	for _, bad := range []struct{ query, field string }{
		{"limit=0", "limit"}, {"limit=-1", "limit"}, {"limit=10001", "limit"}, {"limit=abc", "limit"}, {"limit=1e3", "limit"},
		{"limit=01", "limit"}, {"limit=", "limit"}, {"limit=%2B5", "limit"}, {"limit=5&limit=6", "limit"}, {"limit=99999999999999999999", "limit"},
		{"cursor=%25%25", "cursor"}, {"cursor=abc", "cursor"}, {"cursor=" + enc("c1:1764500000000:0"), "cursor"},
		{"cursor=" + enc("c2:1764500000000:7"), "cursor"}, {"cursor=" + enc("c1:9007199254740993:7"), "cursor"},
		{"cursor=" + enc("c1:-5:7"), "cursor"}, {"cursor=" + enc("c1:0100:7"), "cursor"}, {"cursor=" + enc("c1:1:18446744073709551616"), "cursor"},
		{"cursor=" + enc("c1:1:7:8"), "cursor"}, {"cursor=" + base64.URLEncoding.EncodeToString([]byte("c1:1:77")), "cursor"},
		{"cursor=" + enc("c1:+1:7"), "cursor"}, {"cursor=" + strings.Repeat("A", 100), "cursor"},
		// Found by FuzzParseCursors: stray bits in the last character, and a CR the decoder skips.
		{"cursor=YzE6Mzo0OB", "cursor"}, {"cursor=Y%0DzE6Mzo0", "cursor"},
	} {
		code, _, body := get(bad.query)
		var eb client.ErrorBody
		_ = json.Unmarshal([]byte(body), &eb)
		if code != http.StatusBadRequest || !strings.HasPrefix(eb.Error, bad.field) {
			t.Errorf("%s: %d %s, want 400 naming %s", bad.query, code, body, bad.field)
		}
	}
	if svc.q != (ca.CertQuery{}) {
		t.Errorf("a refused query reached the service: %+v", svc.q)
	}
	// The edges that pass: a cursor at the largest exact score, at time 0, at serial 1.
	for _, c := range []ca.CertCursor{{ValidBefore: 1 << 53, Serial: 1}, {ValidBefore: 0, Serial: 5}} {
		if code, _, body := get("cursor=" + c.String()); code != http.StatusOK || svc.q.After != c {
			t.Errorf("cursor %+v: %d %s, query %+v", c, code, body, svc.q)
		}
	}
}

// pagedRecordings answers SessionRecordings with an empty page whose Next is next, and keeps
// the filter.
type pagedRecordings struct {
	f    ca.RecordingFilter
	next ca.RecordingCursor
}

func (p *pagedRecordings) AcceptRecording(context.Context, string, string, int64, []byte) (ca.RecordingAccepted, error) {
	return ca.RecordingAccepted{}, nil
}

func (p *pagedRecordings) SessionRecordings(_ context.Context, _ string, f ca.RecordingFilter) (ca.RecordingPage, error) {
	p.f = f
	return ca.RecordingPage{Next: p.next}, nil
}

func (p *pagedRecordings) SessionRecordingLines(context.Context, string, string) (ca.SessionRecording, [][]byte, error) {
	return ca.SessionRecording{}, nil, nil
}

// TestRecordingPageParameters: GET /v1/recordings pages as GET /v1/certs does: limit (default
// 1000, 1 to 10000), an opaque cursor naming a start and a session ID, next_cursor; bad ones are
// 400s naming the parameter that never reach the service.
func TestRecordingPageParameters(t *testing.T) {
	rec := &pagedRecordings{}
	srv := httptest.NewServer(services.NewHTTPHandler(services.MakeEndpoints(&fakeService{}), services.HTTPOptions{Recordings: rec}))
	defer srv.Close()
	get := func(query string) (int, client.RecordingList, string) {
		t.Helper()
		return getPage[client.RecordingList](t, srv.URL+"/v1/recordings?"+query)
	}
	pos := ca.RecordingCursor{Start: 1764500000000, ID: "0123456789abcdef01234567"}
	rec.next = pos
	code, out, body := get("")
	if code != http.StatusOK || rec.f.Limit != services.DefaultPageLimit || out.NextCursor != pos.String() {
		t.Fatalf("no parameters: %d %s, filter %+v", code, body, rec.f)
	}
	rec.next = ca.RecordingCursor{}
	if code, _, body := get("limit=10000&cursor=" + out.NextCursor); code != http.StatusOK || rec.f.After != pos || rec.f.Limit != 10000 || strings.Contains(body, "next_cursor") {
		t.Errorf("the next, last page: %d %s, filter %+v", code, body, rec.f)
	}
	rec.f = ca.RecordingFilter{}
	enc := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	for _, bad := range []struct{ query, field string }{
		{"limit=0", "limit"}, {"limit=10001", "limit"}, {"limit=x", "limit"},
		{"cursor=zz", "cursor"}, {"cursor=" + enc("r1:1:0123456789ABCDEF01234567"), "cursor"}, {"cursor=" + enc("r1:1:../../x"), "cursor"},
		{"cursor=" + enc("c1:1:7"), "cursor"}, {"cursor=" + enc("r1:-1:0123456789abcdef01234567"), "cursor"},
	} {
		code, _, body := get(bad.query)
		var eb client.ErrorBody
		_ = json.Unmarshal([]byte(body), &eb)
		if code != http.StatusBadRequest || !strings.HasPrefix(eb.Error, bad.field) {
			t.Errorf("%s: %d %s, want 400 naming %s", bad.query, code, body, bad.field)
		}
	}
	if rec.f != (ca.RecordingFilter{}) {
		t.Errorf("a refused query reached the service: %+v", rec.f)
	}
}

// pagedRevocations answers RevocationsPage with a page whose Next is next, and keeps what it
// was asked.
type pagedRevocations struct {
	fakeService
	asked bool
	after ca.RevocationCursor
	limit int
	next  ca.RevocationCursor
}

func (p *pagedRevocations) RevocationsPage(_ context.Context, _ string, after ca.RevocationCursor, limit int) (ca.RevocationPage, error) {
	p.asked, p.after, p.limit = true, after, limit
	return ca.RevocationPage{Next: p.next}, nil
}

// TestRevocationPageParameters: GET /v1/revocations pages as GET /v1/certs does: limit
// (default 1000, 1 to 10000), an opaque cursor naming a scope, an expiry (or "inf" for a
// permanent ban) and an entry, next_cursor absent on the last page; bad ones (another version
// or scope, a user scope without position, an expiry with a sign or leading zero, a member no
// entry could have) are 400s naming the parameter that never reach the service, and the edges
// that are allowed pass.
func TestRevocationPageParameters(t *testing.T) {
	svc := &pagedRevocations{}
	srv := httptest.NewServer(services.NewHTTPHandler(services.MakeEndpoints(svc), services.HTTPOptions{}))
	defer srv.Close()
	get := func(query string) (int, client.RevocationsResponse, string) {
		t.Helper()
		return getPage[client.RevocationsResponse](t, srv.URL+"/v1/revocations?"+query)
	}
	code, _, body := get("")
	if code != http.StatusOK || svc.limit != services.DefaultPageLimit || !svc.after.IsZero() || strings.Contains(body, "next_cursor") {
		t.Errorf("no parameters: %d %s, asked after %+v limit %d; want the default limit, the start, no next_cursor", code, body, svc.after, svc.limit)
	}
	pos := ca.RevocationCursor{Host: true, Entry: ca.EntryCursor{Expiry: ca.PermanentExpiry, Member: "key:AAAAC3NzaC1lZDI1NTE5AAAAIA=="}}
	svc.next = pos
	code, out, _ := get("limit=1")
	if code != http.StatusOK || svc.limit != 1 || out.NextCursor != pos.String() {
		t.Errorf("limit=1: %d, limit %d, next %q", code, svc.limit, out.NextCursor)
	}
	svc.next = ca.RevocationCursor{}
	if code, _, body := get("limit=10000&cursor=" + url.QueryEscape(out.NextCursor)); code != http.StatusOK || svc.limit != 10000 || svc.after != pos || strings.Contains(body, "next_cursor") {
		t.Errorf("the next, last page: %d %s, after %+v", code, body, svc.after)
	}

	svc.asked = false
	enc := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	for _, bad := range []struct{ query, field string }{
		{"limit=0", "limit"}, {"limit=10001", "limit"}, {"limit=x", "limit"}, {"limit=01", "limit"},
		{"cursor=%25%25", "cursor"}, {"cursor=zz", "cursor"}, {"cursor=" + enc("v1:u"), "cursor"}, {"cursor=" + enc("v1"), "cursor"},
		{"cursor=" + enc("v2:u:1:serial:7"), "cursor"}, {"cursor=" + enc("v1:x:1:serial:7"), "cursor"}, {"cursor=" + enc("v1:u:1"), "cursor"},
		{"cursor=" + enc("v1:u:-1:serial:7"), "cursor"}, {"cursor=" + enc("v1:u:01:serial:7"), "cursor"}, {"cursor=" + enc("v1:u:+inf:serial:7"), "cursor"},
		{"cursor=" + enc("v1:u:9007199254740993:serial:7"), "cursor"}, {"cursor=" + enc("v1:u:1:serial:0"), "cursor"},
		{"cursor=" + enc("v1:u:1:serial:07"), "cursor"}, {"cursor=" + enc("v1:u:1:bogus:7"), "cursor"}, {"cursor=" + enc("v1:u:1:key_id:"), "cursor"},
		{"cursor=" + enc("v1:u:1:key_id:a\nb"), "cursor"}, {"cursor=" + enc("v1:u:inf:key:!!"), "cursor"}, {"cursor=" + enc("v1:h:1:serial"), "cursor"},
		{"cursor=" + enc("c1:1:7"), "cursor"}, {"cursor=" + strings.Repeat("A", 5000), "cursor"},
	} {
		code, _, body := get(bad.query)
		var eb client.ErrorBody
		_ = json.Unmarshal([]byte(body), &eb)
		if code != http.StatusBadRequest || !strings.HasPrefix(eb.Error, bad.field) {
			t.Errorf("%s: %d %s, want 400 naming %s", bad.query, code, body, bad.field)
		}
	}
	if svc.asked {
		t.Errorf("a refused query reached the service: after %+v limit %d", svc.after, svc.limit)
	}
	// The edges that pass: the host scope's start, time 0, the largest exact score, a key ID
	// with a colon and non-ASCII text.
	for _, c := range []ca.RevocationCursor{{Host: true}, {Entry: ca.EntryCursor{Expiry: 0, Member: "serial:1"}},
		{Entry: ca.EntryCursor{Expiry: 1 << 53, Member: "key_id:host:web#7"}}, {Host: true, Entry: ca.EntryCursor{Expiry: 5, Member: "key_id:zoë#1"}}} {
		if code, _, body := get("cursor=" + c.String()); code != http.StatusOK || svc.after != c {
			t.Errorf("cursor %+v: %d %s, after %+v", c, code, body, svc.after)
		}
	}
}

// getPage GETs url with a bearer token and answers the status, the body decoded as T (zero
// when it is not), and the body.
func getPage[T any](t *testing.T, url string) (int, T, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Authorization", "Bearer t")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out T
	_ = json.Unmarshal(b, &out)
	return resp.StatusCode, out, string(b)
}

// pagedRequests answers AccessRequestsPage with an empty page whose Next is next, and keeps
// the query; the other calls are not used.
type pagedRequests struct {
	services.AccessRequests
	asked bool
	q     ca.RequestQuery
	next  ca.RequestCursor
}

func (p *pagedRequests) AccessRequestsPage(_ context.Context, _ string, q ca.RequestQuery) (ca.RequestPage, error) {
	p.asked, p.q = true, q
	return ca.RequestPage{Next: p.next}, nil
}

// TestRequestPageParameters: GET /v1/requests pages as GET /v1/certs does, its filters kept:
// limit (default 1000, 1 to 10000), an opaque cursor naming a creation time and a request ID (a stop 16 cursor, in KeepUntil order, is a 400),
// next_cursor absent on the last page; bad ones are 400s naming the parameter that never reach
// the domain.
func TestRequestPageParameters(t *testing.T) {
	reqs := &pagedRequests{}
	srv := httptest.NewServer(services.NewHTTPHandler(services.MakeEndpoints(&fakeService{}), services.HTTPOptions{Requests: reqs}))
	defer srv.Close()
	pos := ca.RequestCursor{CreatedAt: 1764500000000, ID: "req_abcdefghijklmnop"}
	reqs.next = pos
	code, out, body := getPage[client.AccessRequestList](t, srv.URL+"/v1/requests?pending=true")
	if code != http.StatusOK || reqs.q != (ca.RequestQuery{Pending: true, Limit: services.DefaultPageLimit}) || out.NextCursor != pos.String() {
		t.Fatalf("first page: %d %s, query %+v", code, body, reqs.q)
	}
	reqs.next = ca.RequestCursor{}
	code, _, body = getPage[client.AccessRequestList](t, srv.URL+"/v1/requests?mine=true&limit=10000&cursor="+out.NextCursor)
	if code != http.StatusOK || reqs.q != (ca.RequestQuery{Mine: true, After: pos, Limit: 10000}) || strings.Contains(body, "next_cursor") {
		t.Errorf("the next, last page: %d %s, query %+v", code, body, reqs.q)
	}
	reqs.asked = false
	enc := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	for _, bad := range []struct{ query, field string }{
		{"limit=0", "limit"}, {"limit=10001", "limit"}, {"limit=x", "limit"}, {"pending=true&limit=-3", "limit"},
		{"cursor=zz", "cursor"}, {"cursor=" + enc("q2:1:req_ABCDEFGHIJKLMNOP"), "cursor"}, {"cursor=" + enc("q2:1:req_abc"), "cursor"},
		{"cursor=" + enc("q2:1:../../x"), "cursor"}, {"cursor=" + enc("q3:1:req_abcdefghijklmnop"), "cursor"},
		{"cursor=" + enc("q2:01:req_abcdefghijklmnop"), "cursor"}, {"cursor=" + enc("q2:9007199254740993:req_abcdefghijklmnop"), "cursor"},
		// A position in stop 16's KeepUntil order, well formed: refused, not read in the new order.
		{"cursor=" + enc("q1:1764500000000:req_abcdefghijklmnop"), "cursor"},
		{"cursor=" + pos.String() + "A", "cursor"}, {"cursor=" + enc("c1:1:7"), "cursor"},
	} {
		code, _, body := getPage[client.AccessRequestList](t, srv.URL+"/v1/requests?"+bad.query)
		var eb client.ErrorBody
		_ = json.Unmarshal([]byte(body), &eb)
		if code != http.StatusBadRequest || !strings.HasPrefix(eb.Error, bad.field) {
			t.Errorf("%s: %d %s, want 400 naming %s", bad.query, code, body, bad.field)
		}
	}
	if reqs.asked {
		t.Errorf("a refused query reached the domain: %+v", reqs.q)
	}
}

// pagedDiscovery answers DiscoveriesPage with an empty page whose Next is next, and keeps what
// it was asked; the other calls are not used.
type pagedDiscovery struct {
	services.Discovery
	asked bool
	after ca.DiscoveryCursor
	limit int
	next  ca.DiscoveryCursor
}

func (p *pagedDiscovery) DiscoveriesPage(_ context.Context, _ string, after ca.DiscoveryCursor, limit int) (ca.DiscoveryPage, error) {
	p.asked, p.after, p.limit = true, after, limit
	return ca.DiscoveryPage{Next: p.next}, nil
}

// TestDiscoveryPageParameters: GET /v1/discovery pages as GET /v1/certs does: limit (default
// 1000, 1 to 10000), an opaque cursor naming a host, next_cursor absent on the last page; bad
// ones (a host with spaces or control characters, longer than a DNS name, empty) are 400s
// naming the parameter that never reach the domain.
func TestDiscoveryPageParameters(t *testing.T) {
	d := &pagedDiscovery{}
	srv := httptest.NewServer(services.NewHTTPHandler(services.MakeEndpoints(&fakeService{}), services.HTTPOptions{Discovery: d}))
	defer srv.Close()
	pos := ca.DiscoveryCursor{Host: "web-01.prod.example.com"}
	d.next = pos
	code, out, body := getPage[client.DiscoveryList](t, srv.URL+"/v1/discovery")
	if code != http.StatusOK || d.limit != services.DefaultPageLimit || !d.after.IsZero() || out.NextCursor != pos.String() {
		t.Fatalf("first page: %d %s, after %+v limit %d", code, body, d.after, d.limit)
	}
	d.next = ca.DiscoveryCursor{}
	code, _, body = getPage[client.DiscoveryList](t, srv.URL+"/v1/discovery?limit=10000&cursor="+out.NextCursor)
	if code != http.StatusOK || d.after != pos || d.limit != 10000 || strings.Contains(body, "next_cursor") {
		t.Errorf("the next, last page: %d %s, after %+v", code, body, d.after)
	}
	d.asked = false
	enc := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	for _, bad := range []struct{ query, field string }{
		{"limit=0", "limit"}, {"limit=10001", "limit"}, {"limit=1.5", "limit"},
		{"cursor=zz", "cursor"}, {"cursor=" + enc("d1:"), "cursor"}, {"cursor=" + enc("d1:a b"), "cursor"}, {"cursor=" + enc("d1:a\nb"), "cursor"},
		{"cursor=" + enc("d1:"+strings.Repeat("a", 254)), "cursor"}, {"cursor=" + enc("d2:web"), "cursor"}, {"cursor=" + enc("d1:wéb"), "cursor"},
		{"cursor=" + enc("c1:1:7"), "cursor"},
	} {
		code, _, body := getPage[client.DiscoveryList](t, srv.URL+"/v1/discovery?"+bad.query)
		var eb client.ErrorBody
		_ = json.Unmarshal([]byte(body), &eb)
		if code != http.StatusBadRequest || !strings.HasPrefix(eb.Error, bad.field) {
			t.Errorf("%s: %d %s, want 400 naming %s", bad.query, code, body, bad.field)
		}
	}
	if d.asked {
		t.Errorf("a refused query reached the domain: after %+v limit %d", d.after, d.limit)
	}
	for _, c := range []ca.DiscoveryCursor{{Host: strings.Repeat("a", 253)}, {Host: "2001:db8::1"}, {Host: "x"}} {
		if code, _, body := getPage[client.DiscoveryList](t, srv.URL+"/v1/discovery?cursor="+c.String()); code != http.StatusOK || d.after != c {
			t.Errorf("cursor %+v: %d %s", c, code, body)
		}
	}
}
