package main

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/sshca/sshca/client"
)

// TestStatusHint: the line the CLI adds under an error fits the call. A 404 that carries
// sshca's own error (no such serial, request or session) is not sent to check --server, as a
// 404 from a wrong URL is; a 403 outside issuance does not ask for fewer principals.
func TestStatusHint(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/revocations" {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"error":"no live certificate with that serial or key ID in the inventory"}`))
			return
		}
		http.NotFound(w, r) // what a wrong path or an older server answers
	}))
	defer srv.Close()
	for _, c := range []struct {
		name, path, want, notWant string
	}{
		{"sshca's own 404", "/v1/revocations", "no live certificate", "check --server"},
		{"a wrong path", "/v1/nothing", "check --server", ""},
	} {
		err := postJSON(t.Context(), srv.URL+c.path, "tok", map[string]string{"serial": "1"}, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) || (c.notWant != "" && strings.Contains(err.Error(), c.notWant)) {
			t.Errorf("%s: %v; want %q in it, not %q", c.name, err, c.want, c.notWant)
		}
	}
	for _, c := range []struct {
		endpoint, want, notWant string
	}{
		{"POST /v1/certs/user", "ask for less", ""},
		{"POST /v1/certs/host", "ask for less", ""},
		{"POST /v1/revocations", "ask its owners", "ask for less"},
		{"GET /v1/certs", "ask its owners", "ask for less"},
	} {
		h := statusHint(&client.Error{Status: http.StatusForbidden, Message: "policy denied the request", Endpoint: c.endpoint})
		if !strings.Contains(h, c.want) || (c.notWant != "" && strings.Contains(h, c.notWant)) {
			t.Errorf("403 from %s: hint %q; want %q, not %q", c.endpoint, h, c.want, c.notWant)
		}
	}
}

// TestCheckConfigSuggestsServe: `sshca check-config` is no command, and the error says which is.
func TestCheckConfigSuggestsServe(t *testing.T) {
	_, err := runCLI(t, "", "check-config", "x.yaml")
	if err == nil || !strings.Contains(err.Error(), "serve") {
		t.Fatalf("sshca check-config: %v; want a suggestion of serve (--check-config)", err)
	}
}

// TestFlagUsageNames: pflag takes a back-quoted word of a flag's usage as the name of its
// value, so "state directory of `sshca dev`" printed as "--state sshca dev". A value name is
// one word.
func TestFlagUsageNames(t *testing.T) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, line := range strings.Split(c.LocalFlags().FlagUsages(), "\n") {
			// "  -s, --state string   usage": the flag and its value name, then at least three
			// spaces of padding before the usage.
			head, _, _ := strings.Cut(strings.TrimSpace(line), "   ")
			fields := strings.Fields(head)
			if len(fields) > 0 && strings.HasSuffix(fields[0], ",") {
				fields = fields[1:]
			}
			if len(fields) > 2 {
				t.Errorf("%s: %q: the value name has several words (a back-quoted phrase in the usage)", c.CommandPath(), head)
			}
		}
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(newRootCommand())
}

// TestCertUserMissingKeySaysHow: a --key that is not there says how to get one, before any
// call to the server (none listens at the URL given).
func TestCertUserMissingKeySaysHow(t *testing.T) {
	t.Setenv("SSHCA_TOKEN", "x")
	key := filepath.Join(t.TempDir(), "id_ed25519.pub")
	_, err := runCLI(t, "", "cert", "user", "--server", "http://127.0.0.1:1", "--key", key)
	if err == nil || !strings.Contains(err.Error(), "--key") || !strings.Contains(err.Error(), "ssh-keygen -t ed25519 -f "+strings.TrimSuffix(key, ".pub")) {
		t.Fatalf("cert user with a missing key: %v; want how to give or make one", err)
	}
}

// TestLoginKeyGivenThePublicKey: login --key FILE.pub (what cert user takes) says to give the
// private key; a file that is neither is still "not an OpenSSH private key".
func TestLoginKeyGivenThePublicKey(t *testing.T) {
	dir := t.TempDir()
	priv := filepath.Join(dir, "k")
	if err := createKey(priv); err != nil {
		t.Fatal(err)
	}
	_, _, err := loadOrCreateKey(priv + ".pub")
	if err == nil || !strings.Contains(err.Error(), "is a public key") || !strings.Contains(err.Error(), "--key "+priv+")") {
		t.Fatalf("login --key k.pub: %v", err)
	}
	junk := filepath.Join(dir, "junk")
	if err := os.WriteFile(junk, []byte("not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := loadOrCreateKey(junk); err == nil || !strings.Contains(err.Error(), "not an OpenSSH private key") {
		t.Fatalf("login --key junk: %v", err)
	}
	if _, _, err := loadOrCreateKey(priv); err != nil {
		t.Fatalf("login --key k: %v", err)
	}
}
