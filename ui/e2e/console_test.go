package e2e

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/dom"
	"github.com/chromedp/chromedp"
)

var screenshots = flag.String("screenshots", "", "directory to write a PNG of each console page into (go tool task screenshots)")

// dev is a running `sshca dev` built from this checkout.
type dev struct {
	bin, state, base string
}

// startDev builds sshca and runs `sshca dev` on a free loopback port with a fresh state
// directory; the test's cleanup interrupts it and waits for it to exit.
func startDev(t *testing.T) *dev {
	t.Helper()
	dir := t.TempDir()
	d := &dev{bin: filepath.Join(dir, "sshca"), state: filepath.Join(dir, "state")}
	build := exec.Command("go", "build", "-o", d.bin, "./cmd/sshca")
	build.Dir = "../.."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/sshca: %v\n%s", err, out)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cmd := exec.Command(d.bin, "dev", "--listen", addr, "--state", d.state)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "dev.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("sshca dev log:\n%s", b)
		}
	})
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		ok := false
		for sc.Scan() {
			if !ok && strings.Contains(sc.Text(), "Press Ctrl-C") {
				ok = true
				ready <- true
			}
		}
		if !ok {
			ready <- false
		}
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatal("sshca dev exited before it was ready")
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("sshca dev not ready within 2 minutes")
	}
	d.base = "http://" + addr
	return d
}

// cli runs sshca as who (a dev token minted for them) and returns its standard output.
func (d *dev) cli(t *testing.T, who, groups string, args ...string) string {
	t.Helper()
	tok, err := exec.Command(d.bin, "dev", "token", "--server", d.base, "--state", d.state, "--sub", who,
		"--email", who+"@example.com", "--groups", groups, "--mfa").Output()
	if err != nil {
		t.Fatalf("sshca dev token: %v", err)
	}
	cmd := exec.Command(d.bin, append(args, "--server", d.base)...)
	cmd.Env = append(os.Environ(), "SSHCA_TOKEN="+strings.TrimSpace(string(tok)))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("sshca %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

func (d *dev) createRequest(t *testing.T, reason string) string {
	t.Helper()
	out := d.cli(t, "alice", "developers", "request", "create", "--principal", "root", "--ttl", "30m", "--reason", reason, "--no-wait")
	id := strings.SplitN(out, "\n", 2)[0]
	if !strings.HasPrefix(id, "req_") {
		t.Fatalf("request create printed %q", out)
	}
	return id
}

// newBrowser starts headless Chromium with the flags of the shared notes and a fresh
// profile under the test's temporary directory.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("SSHCA_REQUIRE_TOOLS") != "" {
			t.Fatal("chromium is required (SSHCA_REQUIRE_TOOLS): apt-get install chromium, or go tool task deps")
		}
		t.Skip("chromium not installed (apt-get install chromium, or go tool task deps)")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.NoFirstRun, chromedp.Flag("headless", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1200, 800))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	ctx, cancelTimeout := context.WithTimeout(ctx, 3*time.Minute)
	t.Cleanup(func() { cancelTimeout(); cancel(); cancelAlloc() })
	return ctx
}

func run(t *testing.T, ctx context.Context, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(ctx, actions...); err != nil {
		url, _ := chromedp.Run(ctx, chromedp.Location())
		t.Fatalf("%s (at %s): %v\n%s", what, url, err, pageText(ctx))
	}
}

// value runs one action that reads a value.
func value[T any](t *testing.T, ctx context.Context, what string, a chromedp.Action[T]) T {
	t.Helper()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		url, _ := chromedp.Run(ctx, chromedp.Location())
		t.Fatalf("%s (at %s): %v\n%s", what, url, err, pageText(ctx))
	}
	return v
}

func text(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	return value(t, ctx, "read "+sel, chromedp.Text(chromedp.CSS(sel)))
}

func shot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	if *screenshots == "" {
		return
	}
	png := value(t, ctx, "screenshot "+name, chromedp.FullScreenshot(100))
	if err := os.WriteFile(filepath.Join(*screenshots, name+".png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
}

// signIn signs in from the page at start (the console's sign-in link, or a /ui/login URL)
// through the dev issuer's form.
func signIn(t *testing.T, ctx context.Context, start, sub, groups string, clickLink bool) {
	t.Helper()
	acts := []chromedp.Action[chromedp.Void]{chromedp.Navigate(start)}
	if clickLink {
		acts = append(acts, chromedp.WaitVisible(chromedp.CSS("#signin")), chromedp.Click(chromedp.CSS("#signin")))
	}
	acts = append(acts, chromedp.WaitVisible(chromedp.CSS(`input[name="sub"]`)),
		chromedp.SetValue(chromedp.CSS(`input[name="sub"]`), sub),
		chromedp.SetValue(chromedp.CSS(`input[name="email"]`), sub+"@example.com"),
		chromedp.SetValue(chromedp.CSS(`input[name="groups"]`), groups),
		chromedp.Click(chromedp.CSS("form button")),
		chromedp.WaitVisible(chromedp.CSS("header .who")))
	run(t, ctx, "sign in as "+sub, acts...)
	if who := text(t, ctx, "header .who"); who != sub {
		t.Fatalf("signed in as %q, want %q", who, sub)
	}
}

func TestConsole(t *testing.T) {
	if *screenshots != "" {
		if err := os.MkdirAll(*screenshots, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	d := startDev(t)
	ctx := newBrowser(t)
	req1 := d.createRequest(t, "OPS-1234 disk full on db-1")
	req2 := d.createRequest(t, "OPS-1240 rotate logs")

	run(t, ctx, "signed-out page", chromedp.Navigate(d.base+"/ui/"), chromedp.WaitVisible(chromedp.CSS("#signin")))
	shot(t, ctx, "console-signin")

	// A foreign return path: signing in from a link that names another site lands on /ui/.
	signIn(t, ctx, d.base+"/ui/login?return="+"https%3A%2F%2Fevil.example%2Fui%2F", "bob", "sre-leads", false)
	loc := value(t, ctx, "location", chromedp.Location())
	if loc != d.base+"/ui/" {
		t.Fatalf("after sign-in with a foreign return path the browser is at %s, want %s/ui/", loc, d.base)
	}
	pending := text(t, ctx, "#pending")
	for _, want := range []string{req1, req2, "OPS-1234 disk full on db-1", "needs 1 more approval", "root", "30m0s"} {
		if !strings.Contains(pending, want) {
			t.Fatalf("pending page lacks %q:\n%s", want, pending)
		}
	}
	shot(t, ctx, "console-pending")

	run(t, ctx, "request 2", chromedp.Navigate(d.base+"/ui/requests/"+req2), chromedp.WaitVisible(chromedp.CSS("#approve")))
	hash2 := value(t, ctx, "content hash", chromedp.Value(chromedp.CSS(`form[action$="/approve"] input[name="content_hash"]`)))

	// A forged CSRF token is refused and changes nothing.
	run(t, ctx, "forged csrf", chromedp.Navigate(d.base+"/ui/requests/"+req1),
		chromedp.WaitVisible(chromedp.CSS("#approve")),
		chromedp.SetValue(chromedp.CSS(`form[action$="/approve"] input[name="csrf"]`), "forged-token"),
		chromedp.Click(chromedp.CSS("#approve")), chromedp.WaitVisible(chromedp.CSS("#error")))
	if e := text(t, ctx, "#error"); !strings.Contains(e, "csrf token") {
		t.Fatalf("forged csrf: %q", e)
	}
	run(t, ctx, "request 1", chromedp.Navigate(d.base+"/ui/requests/"+req1), chromedp.WaitVisible(chromedp.CSS("#state")))
	if s := text(t, ctx, "#state"); s != "pending" {
		t.Fatalf("after a forged csrf token request 1 is %q", s)
	}
	shot(t, ctx, "console-request")

	run(t, ctx, "approve", chromedp.SetValue(chromedp.CSS("#approve-reason"), "looked at OPS-1234"),
		chromedp.Click(chromedp.CSS("#approve")), chromedp.WaitNotPresent(chromedp.CSS("#approve")), chromedp.WaitVisible(chromedp.CSS("#history")))
	if s := text(t, ctx, "#state"); s != "approved" {
		t.Fatalf("after approval request 1 is %q; page error: %s", s, pageText(ctx))
	}
	if h := text(t, ctx, "#history"); !strings.Contains(h, "bob") || !strings.Contains(h, "looked at OPS-1234") {
		t.Fatalf("history lacks the approval:\n%s", h)
	}
	shot(t, ctx, "console-history")

	// The requester gets a certificate under the request; the console shows who holds it.
	key := filepath.Join(t.TempDir(), "id_ed25519")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	d.cli(t, "alice", "developers", "cert", "user", "--key", key+".pub", "--request", req1, "--ttl", "5m")
	out, err := exec.Command("ssh-keygen", "-L", "-f", key+"-cert.pub").Output()
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`Serial: (\d+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no serial in\n%s", out)
	}
	run(t, ctx, "who holds access", chromedp.Navigate(d.base+"/ui/access?principal=root"), chromedp.WaitVisible(chromedp.CSS("#access")))
	if a := text(t, ctx, "#access"); !strings.Contains(a, string(m[1])) || !strings.Contains(a, req1) || !strings.Contains(a, "alice") {
		t.Fatalf("who holds access lacks serial %s of %s:\n%s", m[1], req1, a)
	}
	shot(t, ctx, "console-access")

	// An administrator revokes it from the same page: the request and its certificate are
	// revoked (the KRL that bastions install lists the certificate).
	run(t, ctx, "sign out", chromedp.Click(chromedp.CSS("header form button")), chromedp.WaitVisible(chromedp.CSS("#signin")))
	// The console lists the requests one may see (its own and those it may decide, as the API
	// does), so this administrator is also an approver.
	signIn(t, ctx, d.base+"/ui/access", "carol", "sshca-admins,sre-leads", true)
	if inv := text(t, ctx, "#inventory"); !strings.Contains(inv, string(m[1])) || !strings.Contains(inv, "live") {
		t.Fatalf("an administrator's inventory lacks live serial %s:\n%s", m[1], inv)
	}
	run(t, ctx, "revoke", chromedp.SetValue(chromedp.CSS(".revoke-reason"), "INC-7 laptop lost"), chromedp.Click(chromedp.CSS("button.revoke")),
		chromedp.WaitNotPresent(chromedp.CSS("button.revoke")), chromedp.WaitVisible(chromedp.CSS("#access")))
	if a := text(t, ctx, "#access"); !strings.Contains(a, "revoked") || !strings.Contains(a, string(m[1])) {
		t.Fatalf("after revocation who holds access shows:\n%s", a)
	}
	if inv := text(t, ctx, "#inventory"); !strings.Contains(inv, string(m[1])) || !strings.Contains(inv, "revoked (serial)") {
		t.Fatalf("after revocation the inventory shows:\n%s", inv)
	}
	shot(t, ctx, "console-revoked")
	resp, err := http.Get(d.base + "/v1/krl")
	if err != nil {
		t.Fatal(err)
	}
	krl, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	krlPath := filepath.Join(t.TempDir(), "krl")
	if err := os.WriteFile(krlPath, krl, 0o600); err != nil {
		t.Fatal(err)
	}
	if q, _ := exec.Command("ssh-keygen", "-Q", "-f", krlPath, key+"-cert.pub").CombinedOutput(); !strings.Contains(string(q), "REVOKED") {
		t.Fatalf("the KRL does not revoke the certificate: %s", q)
	}

	// The requester signs in and cannot approve their own request, even by posting the form.
	run(t, ctx, "sign out", chromedp.Click(chromedp.CSS("header form button")), chromedp.WaitVisible(chromedp.CSS("#signin")))
	signIn(t, ctx, d.base+"/ui/requests/"+req2, "alice", "developers,sre-leads", true)
	if s := text(t, ctx, "p.own"); !strings.Contains(s, "your own request") {
		t.Fatalf("the requester's page: %q", s)
	}
	csrf := value(t, ctx, "csrf", chromedp.Value(chromedp.CSS(`header input[name="csrf"]`)))
	nodes := value(t, ctx, "own note", chromedp.Nodes(chromedp.CSS("p.own")))
	form := fmt.Sprintf(`<form method="post" action="/ui/requests/%s/approve"><input type="hidden" name="csrf" value="%s">`+
		`<input type="hidden" name="content_hash" value="%s"><button id="self-approve">Approve</button></form>`, req2, csrf, hash2)
	// The requester's own forged form, put in the page through DevTools (the page runs no
	// script): it carries a valid CSRF token and the request's content hash.
	setHTML := func(ctx context.Context, tg *chromedp.Target) (chromedp.Void, error) {
		_, err := cdp.Call(ctx, tg, dom.SetOuterHTML, dom.SetOuterHTMLParams{NodeID: nodes[0].NodeID, OuterHTML: form})
		return chromedp.Void{}, err
	}
	run(t, ctx, "self-approve", setHTML, chromedp.Click(chromedp.CSS("#self-approve")), chromedp.WaitVisible(chromedp.CSS("#error")))
	if e := text(t, ctx, "#error"); !strings.Contains(e, "your own access request") {
		t.Fatalf("self-approval: %q", e)
	}
	run(t, ctx, "request 2", chromedp.Navigate(d.base+"/ui/requests/"+req2), chromedp.WaitVisible(chromedp.CSS("#state")))
	if s := text(t, ctx, "#state"); s != "pending" {
		t.Fatalf("after self-approval request 2 is %q", s)
	}
}

func pageText(ctx context.Context) string {
	s, _ := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("main")))
	return s
}
