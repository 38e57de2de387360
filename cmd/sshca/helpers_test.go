package main

import (
	"bytes"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/policies"
)

// testLog writes the service's log into the test's log.
func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// startDev runs `sshca dev` in-process on a free loopback port with a fresh state dir.
func startDev(t *testing.T) (base, state string) {
	t.Helper()
	base, state, _ = startDevBanner(t)
	return base, state
}

// startDevBanner is startDev, also returning the banner `sshca dev` printed.
func startDevBanner(t *testing.T) (base, state, banner string) {
	t.Helper()
	state = t.TempDir()
	base, banner, _ = startDevIn(t, state)
	devSecrets.Store(base, readDevSecretT(t, state))
	return base, state, banner
}

// devToken mints a token from the dev issuer with the given claims.
func devToken(t *testing.T, base string, claims map[string]any) string {
	t.Helper()
	code, body := devCall(t, http.MethodPost, base+"/dev/token", claims)
	if code != http.StatusOK {
		t.Fatalf("POST /dev/token = %d %s", code, body)
	}
	var r struct {
		IDToken string `json:"id_token"`
	}
	if err := json.Unmarshal(body, &r); err != nil || r.IDToken == "" {
		t.Fatalf("POST /dev/token: %v %s", err, body)
	}
	return r.IDToken
}

// call sends body (a string is sent as is, anything else as JSON) and returns status and body.
func call(t *testing.T, method, url, token string, body any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out
}

// keygen creates an SSH key pair with ssh-keygen and returns the private key path.
func keygen(t *testing.T, dir, name string, args ...string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if len(args) == 0 {
		args = []string{"-t", "ed25519"}
	}
	testenv.Run(t, testenv.Need(t, "ssh-keygen"), append(args, "-q", "-N", "", "-C", name, "-f", path)...)
	return path
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// tlsFront puts a TLS reverse proxy on loopback in front of the server at base (closed at the
// end of the test), as a bastion's --server; it returns its URL and its certificate written to
// dir/server-ca.pem, to pin with --server-ca.
func tlsFront(t *testing.T, base, dir string) (frontURL, caFile string) {
	t.Helper()
	target, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	front := httptest.NewTLSServer(httputil.NewSingleHostReverseProxy(target))
	t.Cleanup(front.Close)
	caFile = filepath.Join(dir, "server-ca.pem")
	writeFile(t, caFile, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: front.Certificate().Raw})))
	return front.URL, caFile
}

// standingRootData writes the shipped policy data with one change, a standing grant of root to
// group ops, and returns its path (for Config.Policy.DataFile). The shipped data grants root
// only through an access request or break-glass (issue 17); tests of a privileged certificate
// outside that flow (its audit record, the inventory) run on this test data instead.
func standingRootData(t *testing.T) string {
	t.Helper()
	b, err := policies.Embedded.ReadFile("data.json")
	if err != nil {
		t.Fatal(err)
	}
	var data struct {
		Settings map[string]json.RawMessage `json:"sshca_settings"`
	}
	if err := json.Unmarshal(b, &data); err != nil {
		t.Fatal(err)
	}
	var user map[string]any
	if err := json.Unmarshal(data.Settings["user"], &user); err != nil {
		t.Fatal(err)
	}
	grants, ok := user["group_principals"].(map[string]any)
	if !ok {
		t.Fatalf("shipped data has no user.group_principals: %s", data.Settings["user"])
	}
	grants["ops"] = []string{"root"}
	if data.Settings["user"], err = json.Marshal(user); err != nil {
		t.Fatal(err)
	}
	if b, err = json.Marshal(data); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "standing-root.json")
	writeFile(t, path, string(b))
	return path
}
