package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sshca/sshca/internal/testenv"
)

var (
	verificationRE = regexp.MustCompile(`open (http://\S+) and enter the code ([A-Z]{4}-[A-Z]{4})`)
	formFieldRE    = regexp.MustCompile(`<input (?:type="hidden" )?name="([a-z_]+)" value="([^"]*)"`)
)

// TestDeviceVerificationPage: against `sshca dev`, the URL `sshca login` prints opens a page
// (not a 404) with a form for the code and the claims; posting it without the per-run secret
// is refused and leaves the sign-in pending; posting it as the page carries it approves, and
// the CLI's polling gets the token and a certificate with the typed identity.
func TestDeviceVerificationPage(t *testing.T) {
	base, _ := startDev(t)
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("SSH_AUTH_SOCK", "")
	msg := &testenv.SyncBuffer{}
	done := make(chan error, 1)
	go func() {
		done <- runLogin(context.Background(), &bytes.Buffer{}, msg, loginFlags{server: base, noAgent: true})
	}()
	var page, code string
	deadline := time.Now().Add(20 * time.Second)
	for page == "" {
		if m := verificationRE.FindStringSubmatch(msg.String()); m != nil {
			page, code = m[1], m[2]
			break
		}
		select {
		case err := <-done:
			t.Fatalf("sshca login ended before printing a URL: %v\n%s", err, msg.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("sshca login printed no verification URL:\n%s", msg.String())
		}
		time.Sleep(20 * time.Millisecond)
	}

	resp, err := http.Get(page)
	if err != nil {
		t.Fatal(err)
	}
	html, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET %s = %d %s\n%s", page, resp.StatusCode, resp.Header.Get("Content-Type"), html)
	}
	form := url.Values{}
	for _, m := range formFieldRE.FindAllStringSubmatch(string(html), -1) {
		form.Set(m[1], m[2])
	}
	if form.Get("user_code") != code || form.Get("dev_secret") == "" || !strings.Contains(string(html), `action="device"`) {
		t.Fatalf("the page's form lacks the code %s or the secret: %v\n%s", code, form, html)
	}
	target, _ := url.Parse(page)
	target = target.ResolveReference(&url.URL{Path: "device"})
	form.Set("sub", "u-bob")
	form.Set("username", "bob")
	form.Set("email", "bob@example.com")
	form.Set("groups", "dev, bastion-users")
	form.Set("action", "approve")

	without := url.Values{}
	for k, v := range form {
		without[k] = v
	}
	without.Set("dev_secret", strings.Repeat("0", len(form.Get("dev_secret"))))
	for name, f := range map[string]url.Values{"wrong secret": without, "no secret": {"user_code": {code}, "sub": {"mallory"}}} {
		resp, err := http.PostForm(target.String(), f)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("POST %s with %s = %d, want 401\n%s", target, name, resp.StatusCode, b)
		}
	}
	select {
	case err := <-done:
		t.Fatalf("sshca login finished on a refused approval: %v\n%s", err, msg.String())
	case <-time.After(1500 * time.Millisecond): // the issuer asks to poll every second
	}

	resp, err = http.PostForm(target.String(), form)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), "Signed in as u-bob") {
		t.Fatalf("POST %s = %d\n%s", target, resp.StatusCode, b)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("sshca login: %v\n%s", err, msg.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("sshca login did not finish after the approval:\n%s", msg.String())
	}
	cert := parseCert(t, readFile(t, filepath.Join(home, ".ssh", "sshca", "id_ed25519-cert.pub")))
	if !strings.HasPrefix(cert.KeyId, "bob@example.com~") || len(cert.ValidPrincipals) != 1 || cert.ValidPrincipals[0] != "bob" {
		t.Errorf("certificate key id %q principals %v, want bob@example.com's with principal bob", cert.KeyId, cert.ValidPrincipals)
	}

	// Approved once: the same code cannot be approved again.
	resp, err = http.PostForm(target.String(), form)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("a second approval of %s = %d, want 404", code, resp.StatusCode)
	}
}
