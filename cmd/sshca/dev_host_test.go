package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sshca/sshca/identity/devissuer"
)

// devSecrets holds the dev secret of each `sshca dev` a test started, by base URL.
var devSecrets sync.Map

func readDevSecretT(t *testing.T, state string) string {
	t.Helper()
	s, err := readDevSecret(state)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// devCall is call for the /dev/ routes that want the secret of the `sshca dev` at url.
func devCall(t *testing.T, method, url string, body any) (int, []byte) {
	t.Helper()
	secret := ""
	devSecrets.Range(func(base, s any) bool {
		if strings.HasPrefix(url, base.(string)+"/") {
			secret = s.(string)
			return false
		}
		return true
	})
	if secret == "" {
		t.Fatalf("no sshca dev started for %s", url)
	}
	return callWith(t, method, url, map[string]string{devissuer.SecretHeader: secret}, body)
}

// callWith sends a JSON body (nil for none) with the given headers; a "Host" entry sets the
// request's Host header.
func callWith(t *testing.T, method, url string, hdr map[string]string, body any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := noRedirects.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out
}

var noRedirects = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// hiddenField returns the value of the hidden form field name in an HTML page.
func hiddenField(page, name string) string {
	m := regexp.MustCompile(`name="` + regexp.QuoteMeta(name) + `" value="([^"]*)"`).FindStringSubmatch(page)
	if m == nil {
		return ""
	}
	return m[1]
}

// TestDevHostCheck: `sshca dev` refuses every route, open or not, for a request whose Host is
// not a loopback name with its own port (DNS rebinding), and answers those that are.
func TestDevHostCheck(t *testing.T) {
	base, _ := startDev(t)
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(base, "http://"))
	secret, _ := devSecrets.Load(base)
	wrongPort := "9999"
	if port == wrongPort {
		wrongPort = "9998"
	}
	verifier := "a-verifier-of-at-least-43-characters-0123456789abcdef"
	routes := []struct{ method, path string }{
		{"GET", "/healthz"},
		{"GET", "/readyz"},
		{"GET", "/metrics"},
		{"GET", "/v1/ca/user.pub"},
		{"GET", "/v1/ca/known_hosts"},
		{"GET", "/v1/login/config"},
		{"GET", "/v1/krl"},
		{"POST", "/v1/certs/user"},
		{"GET", "/dev/oidc/.well-known/openid-configuration"},
		{"GET", "/dev/oidc/jwks"},
		{"POST", "/dev/oidc/device_authorization"},
		{"POST", "/dev/oidc/token"},
		{"GET", "/dev/oidc/authorize?response_type=code&client_id=sshca&redirect_uri=http://127.0.0.1:1/cb&code_challenge_method=S256&code_challenge=" + verifier},
		{"POST", "/dev/token"},
		{"POST", "/dev/device/approve"},
		{"GET", "/no/such/route"},
	}
	for _, host := range []string{
		"evil.example:8080",
		"evil.example:" + port,
		"127.0.0.1.evil.example",
		"127.0.0.1.evil.example:" + port,
		"localhost:" + wrongPort,
		"127.0.0.1:" + wrongPort,
		"localhost",
		"127.0.0.1",
		"[::1]",
		"localhost.:" + port,
		"0.0.0.0:" + port,
		"127.0.0.2:" + port,
	} {
		for _, r := range routes {
			// The secret is sent too: the Host check holds even for a caller that has it.
			code, body := callWith(t, r.method, base+r.path, map[string]string{"Host": host, devissuer.SecretHeader: secret.(string)},
				map[string]any{"sub": "alice", "user_code": "BCDF-GHJK", "claims": map[string]any{"sub": "alice"}})
			if code != http.StatusMisdirectedRequest || !strings.Contains(string(body), "DNS rebinding") {
				t.Errorf("Host %q, %s %s = %d %s; want 421", host, r.method, r.path, code, body)
			}
		}
	}
	for _, host := range []string{"127.0.0.1:" + port, "localhost:" + port, "[::1]:" + port, "LocalHost:" + port} {
		for _, r := range []struct{ method, path string }{{"GET", "/healthz"}, {"GET", "/dev/oidc/.well-known/openid-configuration"}, {"GET", "/dev/oidc/jwks"}} {
			if code, body := callWith(t, r.method, base+r.path, map[string]string{"Host": host}, nil); code != http.StatusOK {
				t.Errorf("Host %q, %s %s = %d %s; want 200 (discovery and JWKS need no secret)", host, r.method, r.path, code, body)
			}
		}
	}
}

// TestDevSecret: minting and approving need this run's secret; the file holding it is 0600,
// the banner names it without printing it, a secret of an earlier run stops working, and
// the file goes away when `sshca dev` stops.
func TestDevSecret(t *testing.T) {
	state := t.TempDir()
	base, banner, stop := startDevIn(t, state)
	path := filepath.Join(state, devSecretFile)
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("%s: %v %v, want mode 0600", path, st, err)
	}
	secret := readDevSecretT(t, state)
	if len(secret) < 32 {
		t.Fatalf("secret %q is too short", secret)
	}
	if !strings.Contains(banner, path) || !strings.Contains(banner, devissuer.SecretHeader) || strings.Contains(banner, secret) {
		t.Errorf("the banner must name %s and the header, and not print the secret:\n%s", path, banner)
	}
	claims := map[string]any{"sub": "alice", "email": "alice@example.com", "email_verified": true}
	approve := map[string]any{"user_code": "BCDF-GHJK", "claims": map[string]any{"sub": "alice"}}
	for name, hdr := range map[string]map[string]string{
		"none":            nil,
		"empty":           {devissuer.SecretHeader: ""},
		"wrong":           {devissuer.SecretHeader: strings.Repeat("0", len(secret))},
		"prefix":          {devissuer.SecretHeader: secret[:len(secret)-1]},
		"longer":          {devissuer.SecretHeader: secret + "0"},
		"as bearer token": {"Authorization": "Bearer " + secret},
	} {
		for _, r := range []struct {
			path string
			body any
		}{{"/dev/token", claims}, {"/dev/device/approve", approve}} {
			code, body := callWith(t, http.MethodPost, base+r.path, hdr, r.body)
			if code != http.StatusUnauthorized || !strings.Contains(string(body), devissuer.SecretHeader) || strings.Contains(string(body), "id_token") {
				t.Errorf("%s secret, POST %s = %d %s; want 401 naming the header", name, r.path, code, body)
			}
		}
	}
	// With the secret: a token, and an approval that reaches the lookup of its code.
	with := map[string]string{devissuer.SecretHeader: secret}
	if code, body := callWith(t, http.MethodPost, base+"/dev/token", with, claims); code != http.StatusOK || !strings.Contains(string(body), "id_token") {
		t.Errorf("POST /dev/token with the secret = %d %s", code, body)
	}
	if code, body := callWith(t, http.MethodPost, base+"/dev/device/approve", with, approve); code != http.StatusNotFound {
		t.Errorf("POST /dev/device/approve with the secret, unknown code = %d %s; want 404", code, body)
	}

	// The sign-in form: its page carries the secret, a post without it is refused.
	q := url.Values{"response_type": {"code"}, "client_id": {devAudience}, "redirect_uri": {"http://127.0.0.1:1/cb"},
		"code_challenge_method": {"S256"}, "code_challenge": {"E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"}, "sub": {"alice"}}
	code, page := callWith(t, http.MethodGet, base+"/dev/oidc/authorize?"+q.Encode(), nil, nil)
	if code != http.StatusOK || hiddenField(string(page), "dev_secret") != secret {
		t.Fatalf("sign-in page = %d, its form does not carry the secret:\n%s", code, page)
	}
	postForm := func(form url.Values) int {
		req, _ := http.NewRequest(http.MethodPost, base+"/dev/oidc/authorize", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		resp, err := noRedirects.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if c := postForm(q); c != http.StatusUnauthorized {
		t.Errorf("sign-in form without the secret = %d, want 401", c)
	}
	// One character changed, whatever the secret starts with (a fixed "0" matched one secret
	// in 16).
	first := "0"
	if secret[0] == '0' {
		first = "1"
	}
	q.Set("dev_secret", first+secret[1:])
	if c := postForm(q); c != http.StatusUnauthorized {
		t.Errorf("sign-in form with a wrong secret = %d, want 401", c)
	}
	q.Set("dev_secret", secret)
	if c := postForm(q); c != http.StatusFound {
		t.Errorf("sign-in form with the secret = %d, want 302 to the redirect URI", c)
	}

	// Stopped: the file is gone. Started again: a new secret, and the old one is refused.
	stop()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("%s still exists after sshca dev stopped: %v", path, err)
	}
	base2, _, _ := startDevIn(t, state)
	if readDevSecretT(t, state) == secret {
		t.Fatal("the secret did not change between runs")
	}
	if code, _ := callWith(t, http.MethodPost, base2+"/dev/token", with, claims); code != http.StatusUnauthorized {
		t.Errorf("the secret of the earlier run: %d, want 401", code)
	}
}

// TestDevTokenCommand: `sshca dev token` reads the secret from the state directory and gets
// a token that the server accepts; without the state directory it says what is missing.
func TestDevTokenCommand(t *testing.T) {
	base, state := startDev(t)
	out, err := runCLI(t, "", "dev", "token", "--server", base, "--state", state, "--sub", "alice", "--email", "alice@example.com")
	if err != nil {
		t.Fatalf("sshca dev token: %v\n%s", err, out)
	}
	tok := strings.TrimSpace(out)
	dir := t.TempDir()
	key := keygen(t, dir, "id")
	c := issue(t, base, "user", tok, map[string]any{"public_key": readFile(t, key+".pub"), "principals": []string{"alice"}, "ttl": "5m"})
	if len(c.Principals) != 1 || c.Principals[0] != "alice" {
		t.Errorf("certificate for %v, want alice", c.Principals)
	}

	out, err = runCLI(t, "", "dev", "token", "--server", base, "--state", t.TempDir(), "--sub", "alice")
	if err == nil || !strings.Contains(err.Error(), "dev secret") || !strings.Contains(err.Error(), "--state") {
		t.Errorf("without the secret file: %v\n%s", err, out)
	}
	wrong := t.TempDir()
	if err := os.WriteFile(filepath.Join(wrong, devSecretFile), []byte("not-the-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = runCLI(t, "", "dev", "token", "--server", base, "--state", wrong, "--sub", "alice")
	if err == nil || !strings.Contains(err.Error(), "HTTP 401") {
		t.Errorf("with a wrong secret: %v\n%s", err, out)
	}
}

// TestREADMEDevCurlLinesSendTheSecret: every README line that calls a /dev/ route that
// mints or approves sends the secret header.
func TestREADMEDevCurlLinesSendTheSecret(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, "curl") && (strings.Contains(line, "/dev/token") || strings.Contains(line, "/dev/device/approve")) {
			n++
			if !strings.Contains(line, devissuer.SecretHeader+": $(cat ") || !strings.Contains(line, devSecretFile) {
				t.Errorf("README line lacks the dev secret header read from %s:\n%s", devSecretFile, line)
			}
		}
	}
	if n == 0 {
		t.Error("README has no curl line for /dev/device/approve")
	}
}

// startDevIn runs `sshca dev` with the given state directory; stop ends it and waits.
func startDevIn(t *testing.T, state string) (base, banner string, stop func()) {
	t.Helper()
	return startDevLogging(t, state, testLog(t))
}

// startDevLogging is startDevIn with the service's log written to log.
func startDevLogging(t *testing.T, state string, log *slog.Logger) (base, banner string, stop func()) {
	t.Helper()
	var out bytes.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	errc := make(chan error, 1)
	go func() {
		errc <- runDev(ctx, devOptions{listen: "127.0.0.1:0", state: state, out: &out, log: log, ready: ready})
	}()
	select {
	case base = <-ready:
	case err := <-errc:
		cancel()
		t.Fatalf("sshca dev: %v", err)
	case <-time.After(60 * time.Second):
		cancel()
		t.Fatal("sshca dev did not start within 60s")
	}
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-errc }) }
	t.Cleanup(stop)
	return base, out.String(), stop
}
