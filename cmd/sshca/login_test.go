package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/sshca/sshca/identity/devissuer"
	"github.com/sshca/sshca/internal/testenv"
)

var userCodeRE = regexp.MustCompile(`enter the code ([A-Z]{4}-[A-Z]{4})`)

// login runs `sshca login` in the background and answers its device-flow prompt with approve.
func login(t *testing.T, base string, f loginFlags, approve func(code string)) (string, error) {
	t.Helper()
	f.server = base
	msg := &testenv.SyncBuffer{}
	done := make(chan error, 1)
	go func() { done <- runLogin(context.Background(), &bytes.Buffer{}, msg, f) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if m := userCodeRE.FindStringSubmatch(msg.String()); m != nil {
			approve(m[1])
			break
		}
		select {
		case err := <-done:
			return msg.String(), err
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("sshca login printed no user code:\n%s", msg.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case err := <-done:
		return msg.String(), err
	case <-time.After(30 * time.Second):
		t.Fatalf("sshca login did not finish:\n%s", msg.String())
		return "", nil
	}
}

func approveAs(t *testing.T, base string, claims map[string]any) func(string) {
	return func(code string) {
		if c, out := devCall(t, http.MethodPost, base+"/dev/device/approve", map[string]any{"user_code": code, "claims": claims}); c != 200 {
			t.Errorf("approve: %d %s", c, out)
		}
	}
}

// TestLoginEndToEnd: `sshca login` signs in with the device flow against the development
// issuer, creates a key, writes the certificate, adds both to a real ssh-agent for the
// certificate's lifetime, and plain ssh through the agent logs in to a real sshd.
func TestLoginEndToEnd(t *testing.T) {
	testenv.Need(t, "sshd", "/usr/sbin")
	agentBin := testenv.Need(t, "ssh-agent")
	base, _ := startDev(t)
	home := t.TempDir()
	t.Setenv("HOME", home)
	sock := filepath.Join(t.TempDir(), "agent.sock")
	agentCmd := exec.Command(agentBin, "-D", "-a", sock)
	if err := agentCmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { agentCmd.Process.Kill(); agentCmd.Wait() })
	waitFor(t, 5*time.Second, "ssh-agent listens", func() bool { _, err := os.Stat(sock); return err == nil })
	t.Setenv("SSH_AUTH_SOCK", sock)

	alice := map[string]any{"sub": "u-alice", "preferred_username": "alice", "email": "alice@example.com", "email_verified": true}
	out, err := login(t, base, loginFlags{ttl: "5m"}, approveAs(t, base, alice))
	if err != nil {
		t.Fatalf("sshca login: %v\n%s", err, out)
	}
	if !strings.Contains(out, "principals alice, valid until ") {
		t.Errorf("login output:\n%s", out)
	}
	keyPath := filepath.Join(home, ".ssh", "sshca", "id_ed25519")
	if st, err := os.Stat(keyPath); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key %s: %v %v, want mode 0600", keyPath, st.Mode(), err)
	}
	if st, _ := os.Stat(filepath.Dir(keyPath)); st.Mode().Perm() != 0o700 {
		t.Errorf("key directory mode %v, want 0700", st.Mode().Perm())
	}
	listing := testenv.Run(t, "ssh-add", "-l")
	if !strings.Contains(listing, "ED25519-CERT") {
		t.Fatalf("ssh-agent does not hold the certificate:\n%s", listing)
	}

	// A real sshd, and plain ssh with nothing but the agent.
	dir := t.TempDir()
	hostKey := keygen(t, dir, "host_key")
	ci := devToken(t, base, map[string]any{"sub": "ci", "groups": []string{"ci"}})
	hc := issue(t, base, "host", ci, map[string]any{"public_key": readFile(t, hostKey+".pub"), "hostnames": []string{"127.0.0.1"}})
	writeFile(t, hostKey+"-cert.pub", hc.Certificate+"\n")
	_, userCA := call(t, http.MethodGet, base+"/v1/ca/user.pub", "", nil)
	writeFile(t, filepath.Join(dir, "user_ca.pub"), string(userCA))
	kh, err := runCLI(t, "", "ssh-config", "--server", base)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "known_hosts"), kh) // comments and the @cert-authority line
	sshd := testenv.StartSSHD(t, testenv.SSHDConfig{HostKey: hostKey, HostCertificate: hostKey + "-cert.pub",
		TrustedUserCAKeys: filepath.Join(dir, "user_ca.pub"), Principals: []string{"alice"}})
	ssh := exec.Command("ssh", "-F", "none", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
		"-o", "UserKnownHostsFile="+filepath.Join(dir, "known_hosts"), "-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "IdentityAgent="+sock, "-o", "IdentityFile=none", "-p", strconv.Itoa(sshd.Port), sshd.User+"@127.0.0.1", "echo", "via-agent")
	if b, err := ssh.CombinedOutput(); err != nil || !strings.Contains(string(b), "via-agent") {
		t.Fatalf("ssh through the agent: %v\n%s", err, b)
	}

	// Denied consent, an expired code, no agent, an unreachable server: a clear message each.
	_, err = login(t, base, loginFlags{}, func(code string) {
		devCall(t, http.MethodPost, base+"/dev/device/approve", map[string]any{"user_code": code, "deny": true})
	})
	if err == nil || !strings.Contains(err.Error(), "sign-in was denied") {
		t.Errorf("denied: %v", err)
	}
	old := devissuer.DeviceCodeTTL
	devissuer.DeviceCodeTTL = 2 * time.Second
	_, err = login(t, base, loginFlags{}, func(string) {})
	devissuer.DeviceCodeTTL = old
	if err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("expired: %v", err)
	}
	t.Setenv("SSH_AUTH_SOCK", "")
	_, err = login(t, base, loginFlags{}, approveAs(t, base, alice))
	if err == nil || !strings.Contains(err.Error(), "ssh-agent is not running") {
		t.Errorf("no agent: %v", err)
	}
	if err := runLogin(context.Background(), &bytes.Buffer{}, &bytes.Buffer{}, loginFlags{server: "http://127.0.0.1:1"}); err == nil || !strings.Contains(err.Error(), "cannot reach the sshca server") {
		t.Errorf("unreachable: %v", err)
	}
	if err := runLogin(context.Background(), &bytes.Buffer{}, &bytes.Buffer{}, loginFlags{server: base, key: filepath.Join(dir, "missing")}); err == nil {
		t.Error("login with an unreadable key succeeded")
	}
}

// TestLoginBrowser: `sshca login --browser` signs in with the authorization code flow, PKCE
// and a loopback redirect; a scripted browser fills the development sign-in page.
func TestLoginBrowser(t *testing.T) {
	base, _ := startDev(t)
	t.Setenv("HOME", t.TempDir())
	old := openBrowser
	defer func() { openBrowser = old }()
	openBrowser = func(authURL string) error {
		go func() {
			resp, err := http.Get(authURL) // the sign-in page
			if err != nil {
				t.Error(err)
				return
			}
			page, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			u, _ := url.Parse(authURL)
			form := u.Query()
			form.Set("dev_secret", hiddenField(string(page), "dev_secret")) // as a browser posts the page's form
			form.Set("sub", "alice")
			form.Set("email", "alice@example.com")
			resp, err = http.PostForm(u.Scheme+"://"+u.Host+u.Path, form) // follows the redirect to the CLI
			if err != nil {
				t.Error(err)
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !strings.Contains(string(b), "signed in") {
				t.Errorf("callback page: %s", b)
			}
		}()
		return nil
	}
	var msg bytes.Buffer
	if err := runLogin(context.Background(), &bytes.Buffer{}, &msg, loginFlags{server: base, browser: true, noAgent: true}); err != nil {
		t.Fatalf("login --browser: %v\n%s", err, msg.String())
	}
	if !strings.Contains(msg.String(), "principals alice") {
		t.Errorf("output:\n%s", msg.String())
	}
	// A code cannot be exchanged without the PKCE verifier.
	resp, err := http.PostForm(base+"/dev/oidc/token", url.Values{"grant_type": {"authorization_code"}, "code": {"nope"}, "code_verifier": {"x"}})
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(out), "invalid_grant") {
		t.Errorf("bogus code exchange: %d %s", resp.StatusCode, out)
	}
}

// TestLoginBrowserGivesUpOnItsClock: `sshca login --browser` waits browserSignInWait for the
// redirect on its clock (a clockwork.FakeClock that only the test moves): not done a second
// before, it gives up at the mark with a message that says what to do, however little real
// time passed.
func TestLoginBrowserGivesUpOnItsClock(t *testing.T) {
	base, _ := startDev(t)
	t.Setenv("HOME", t.TempDir())
	opened := make(chan string, 1)
	old := openBrowser
	defer func() { openBrowser = old }()
	openBrowser = func(authURL string) error { opened <- authURL; return nil } // the user never signs in
	clk := clockwork.NewFakeClock()
	done := make(chan error, 1)
	var msg testenv.SyncBuffer
	go func() {
		done <- runLogin(context.Background(), &bytes.Buffer{}, &msg, loginFlags{server: base, browser: true, noAgent: true, clock: clk})
	}()
	select {
	case <-opened:
	case err := <-done:
		t.Fatalf("login --browser ended before opening the browser: %v\n%s", err, msg.String())
	case <-time.After(30 * time.Second):
		t.Fatal("login --browser opened no browser")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := clk.BlockUntilContext(ctx, 1); err != nil {
		t.Fatalf("login --browser does not wait on its clock: %v", err)
	}
	clk.Advance(browserSignInWait - time.Second)
	select {
	case err := <-done:
		t.Fatalf("login --browser gave up a second before %s: %v", browserSignInWait, err)
	case <-time.After(200 * time.Millisecond):
	}
	clk.Advance(time.Second)
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "no sign-in within 5m0s; run sshca login again") {
			t.Errorf("after %s: %v", browserSignInWait, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("login --browser still waits %s into a %s wait", browserSignInWait, browserSignInWait)
	}
}
