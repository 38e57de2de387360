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
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v1/certs?"+query, nil)
		req.Header.Set("Authorization", "Bearer t")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var out client.InventoryResponse
		_ = json.Unmarshal(b, &out)
		return resp.StatusCode, out, string(b)
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
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v1/recordings?"+query, nil)
		req.Header.Set("Authorization", "Bearer t")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var out client.RecordingList
		_ = json.Unmarshal(b, &out)
		return resp.StatusCode, out, string(b)
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
