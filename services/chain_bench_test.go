package services_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/services"
)

// cannedService answers every IssueRequest with one certificate signed up front, so that a
// benchmark through it measures the HTTP layer alone, not the authority.
type cannedService struct {
	fakeService
	issued ca.Issued
}

func (c *cannedService) IssueRequest(context.Context, string, ca.CertRequest) (ca.Issued, error) {
	return c.issued, nil
}

// servedChain is the handler chain of sshca serve around the API's mux, in the order
// cmd/sshca/server.go stacks it: panic recovery outermost (newHTTPServer), metrics, request
// ID, rate limits, deadline, then the routes; the Service behind the endpoints goes through the logging and instrumenting
// middlewares, and the log is JSON with request IDs, as serve's. Only the Service is canned.
func servedChain(tb testing.TB, log io.Writer) (http.Handler, []byte) {
	tb.Helper()
	_, caKey, _ := ed25519.GenerateKey(rand.Reader)
	signer, _ := ssh.NewSignerFromKey(caKey)
	userPub, _, _ := ed25519.GenerateKey(rand.Reader)
	key, _ := ssh.NewPublicKey(userPub)
	now := time.Now()
	cert := &ssh.Certificate{Key: key, Serial: 1234567890123, CertType: ssh.UserCert, KeyId: "alice@example.com#1234567890123",
		ValidPrincipals: []string{"alice"}, ValidAfter: uint64(now.Add(-time.Minute).Unix()), ValidBefore: uint64(now.Add(5 * time.Minute).Unix())}
	if err := cert.SignCert(rand.Reader, signer); err != nil {
		tb.Fatal(err)
	}
	svcImpl := &cannedService{fakeService: fakeService{key: signer}, issued: ca.Issued{Cert: cert, Record: ca.Certificate{
		Serial: cert.Serial, KeyID: cert.KeyId, Kind: ca.UserCert, Identity: "alice@example.com", Principals: cert.ValidPrincipals,
		ValidAfter: now.Add(-time.Minute), ValidBefore: now.Add(5 * time.Minute), PolicyRevision: "r1"}}}

	reg := prometheus.NewRegistry()
	metrics := services.NewMetrics(reg)
	reqLog := services.LogRequestIDs(slog.New(slog.NewJSONHandler(log, nil)))
	var svc services.Service = svcImpl
	svc = services.InstrumentingMiddleware(metrics)(svc)
	svc = services.LoggingMiddleware(reqLog)(svc)
	proxies := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	// Limits high enough that the benchmark's one address is never limited.
	limiter := services.NewRateLimiter(services.RateLimits{PerAddress: 1e9, Burst: 1e9, TrustedProxies: proxies}, reg)
	mux := services.NewHTTPHandler(services.MakeEndpoints(svc), services.HTTPOptions{Logger: reqLog, TrustedProxies: proxies})
	h := metrics.InstrumentHTTP(mux, services.RequestID(proxies, limiter.Handler(services.RequestDeadline(2*time.Second, services.IsLongPoll, mux))))
	h = services.Recover(reqLog, h) // as newHTTPServer puts it around every server's handler
	body := []byte(`{"public_key": "` + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key))) + ` alice@laptop", "principals": ["alice"], "ttl": "5m"}`)
	return h, body
}

// discardWriter is a ResponseWriter that keeps only the status code and the headers (cleared
// for each request), so the benchmark measures the handler, not a recorder.
type discardWriter struct {
	h    http.Header
	code int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) WriteHeader(code int)        { w.code = code }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }

// BenchmarkIssueHTTP is the cost of the HTTP layer of POST /v1/certs/user in process, the
// authority excepted (a canned Service): routing, metrics, request ID, rate limits, deadline,
// go-kit's decoding of the JSON body and encoding of the answer, the logging and
// instrumenting middlewares and their log line (JSON, to io.Discard). A bearer token of a
// realistic size (ES256 ID token, ~800 bytes) rides in the header.
func BenchmarkIssueHTTP(b *testing.B) {
	h, body := servedChain(b, io.Discard)
	tmpl := httptest.NewRequest(http.MethodPost, "/v1/certs/user", nil)
	tmpl.RemoteAddr = "192.0.2.10:40000"
	tmpl.Header.Set("Content-Type", "application/json")
	tmpl.Header.Set("Authorization", "Bearer "+strings.Repeat("eyJhbGciOiJFUzI1NiJ9", 40))
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	cpu, ops := testenv.CPUPerOp(b), 0
	for b.Loop() {
		r := *tmpl
		r.Body = io.NopCloser(bytes.NewReader(body))
		clear(w.h)
		h.ServeHTTP(w, &r)
		if w.code != http.StatusOK {
			b.Fatalf("status %d", w.code)
		}
		ops++
	}
	cpu(ops)
}

// TestIssueOneLogLine: through serve's chain, an issued certificate leaves one log line, the
// logging middleware's "issue", carrying what an operator needs to find the certificate and
// its request (request ID, identity, serial, key ID, principals, validity end, policy, result,
// time taken), and never the bearer token or the public key.
func TestIssueOneLogLine(t *testing.T) {
	var logs bytes.Buffer
	h, body := servedChain(t, &logs)
	const token = "eyJhbGciOiJFUzI1NiJ9.secret-token-part"
	req := httptest.NewRequest(http.MethodPost, "/v1/certs/user", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	if w.Code != http.StatusOK {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	if len(lines) != 1 {
		t.Fatalf("%d log lines, want one:\n%s", len(lines), logs.String())
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"level": "INFO", "msg": "issue", "kind": "user", "source_ip": "192.0.2.1", "result": "issued",
		"identity": "alice@example.com", "serial": float64(1234567890123), "key_id": "alice@example.com#1234567890123",
		"principals": []any{"alice"}, "policy": "r1", "request_id": w.Header().Get(services.RequestIDHeader)}
	for k, v := range want {
		if !reflect.DeepEqual(got[k], v) {
			t.Errorf("%s = %#v, want %#v", k, got[k], v)
		}
	}
	for _, k := range []string{"took", "valid_before", "time"} {
		if got[k] == nil {
			t.Errorf("no %s in %v", k, got)
		}
	}
	if strings.Contains(lines[0], "secret-token-part") || strings.Contains(lines[0], "AAAA") {
		t.Errorf("the line holds the token or the key: %s", lines[0])
	}
}
