package services_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/services"
)

// failingKeys answers every key administration call with err.
type failingKeys struct{ err error }

func (f failingKeys) Keys(context.Context, string) (ca.Keyring, error) { return ca.Keyring{}, f.err }
func (f failingKeys) GenerateKey(context.Context, string, ca.CertKind, string) (ca.CAKey, error) {
	return ca.CAKey{}, f.err
}
func (f failingKeys) PromoteKey(context.Context, string, ca.CertKind, bool) (ca.CAKey, error) {
	return ca.CAKey{}, f.err
}
func (f failingKeys) RetireKey(context.Context, string, string, bool) (ca.CAKey, error) {
	return ca.CAKey{}, f.err
}
func (f failingKeys) CompromisedKey(context.Context, string, string) (ca.CAKey, error) {
	return ca.CAKey{}, f.err
}

// logRecords collects log records.
type logRecords struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (l *logRecords) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecords) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recs = append(l.recs, r.Clone())
	return nil
}
func (l *logRecords) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRecords) WithGroup(string) slog.Handler      { return l }

func (l *logRecords) take() []slog.Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.recs
	l.recs = nil
	return r
}

func attrs(r slog.Record) map[string]string {
	m := map[string]string{}
	r.Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value.String(); return true })
	return m
}

// TestServerErrorsLogged: a 503 from every endpoint, whatever carries it (a failer, the KRL's
// own encoder, key administration), is logged once at error level with the request's method,
// path and the cause, and the answer says only the caller-safe message. Every call also goes
// through the logging middleware (at info).
func TestServerErrorsLogged(t *testing.T) {
	cause := errors.New("dial tcp 10.0.0.9:6379: i/o timeout secret-cause")
	fail := ca.Unavailable("store unavailable", cause)
	logs := &logRecords{}
	log := slog.New(logs)
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	svc := &fakeService{err: fail}
	svc.key, _ = ssh.NewSignerFromKey(priv)
	var s services.Service = services.LoggingMiddleware(log)(svc)
	h := services.NewHTTPHandler(services.MakeEndpoints(s), services.HTTPOptions{
		Logger:    log,
		Keys:      services.LoggingKeyAdmin(log)(failingKeys{fail}),
		RenderKRL: func(...ca.RevocationState) ([]byte, error) { return []byte("KRL"), nil },
	})
	srv := httptest.NewServer(h)
	defer srv.Close()
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	sshPub, _ := ssh.NewPublicKey(pub)
	key := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub)))
	for _, tt := range []struct{ method, path, body string }{
		{"POST", "/v1/certs/user", `{"public_key":"` + key + `"}`},
		{"POST", "/v1/certs/host", `{"public_key":"` + key + `","hostnames":["web1"]}`},
		{"POST", "/v1/certs/host/renew", `{}`},
		{"POST", "/v1/revocations", `{"serial":"7","reason":"x"}`},
		{"GET", "/v1/revocations", ""},
		{"GET", "/v1/certs", ""},
		{"GET", "/v1/krl", ""},
		{"GET", "/v1/keys", ""},
		{"POST", "/v1/keys/generate", `{"ca":"user"}`},
		{"POST", "/v1/keys/promote", `{"ca":"host"}`},
		{"POST", "/v1/keys/retire", `{"fingerprint":"SHA256:x"}`},
		{"POST", "/v1/keys/compromised", `{"fingerprint":"SHA256:x"}`},
	} {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, srv.URL+tt.path+"?identity=alice", strings.NewReader(tt.body))
			req.Header.Set("Authorization", "Bearer tok")
			if tt.body != "" {
				req.Header.Set("Content-Type", "application/json")
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 503 || !strings.Contains(string(body), "store unavailable") || strings.Contains(string(body), "secret-cause") {
				t.Errorf("answer %d %s, want 503 with the message and without the cause", resp.StatusCode, body)
			}
			var errorLines, infoLines int
			for _, r := range logs.take() {
				a := attrs(r)
				switch r.Level {
				case slog.LevelError:
					errorLines++
					if a["method"] != tt.method || a["path"] != tt.path || a["status"] != "503" || !strings.Contains(a["err"], "secret-cause") {
						t.Errorf("error line %q %v, want the method, path, status and cause", r.Message, a)
					}
				case slog.LevelInfo:
					infoLines++
				}
			}
			if errorLines != 1 || infoLines != 1 {
				t.Errorf("%d error lines and %d info lines, want one of each", errorLines, infoLines)
			}
		})
	}
}
