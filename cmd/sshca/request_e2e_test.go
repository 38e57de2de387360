package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/notify"
)

// TestAccessRequestEndToEnd: the CLI against `sshca serve` on a real redis-server, with a real
// sshd behind the bastion agent. alice (developers, no standing root) asks for root; she cannot approve it herself, and
// gets no certificate under it before it is approved; an SRE lead approves it with the CLI,
// alice's waiting `request create` sees it, and `cert user --request` gives a certificate that
// logs in as root; only alice can use the request. A denied request, an expired one and one
// missing an approval each fail with their reason. Cancelling the request revokes its
// certificate: sshd refuses it and its live session ends. Break-glass gives oncall root at once.
// A webhook on loopback hears of every step, signed.
func TestAccessRequestEndToEnd(t *testing.T) {
	testenv.Need(t, "sshd", "/usr/sbin")
	testenv.Need(t, "ssh")
	r := testenv.StartRedis(t)
	idp := startIssuer(t, "sshca")
	cfg := serveConfig(t, r.Addr, identity.IssuerConfig{IssuerURL: idp.URL(), Audiences: []string{"sshca"}})
	cfg.Limits.AccessRequestTimeout = 3 * time.Second // the expired request below
	dir := t.TempDir()
	// A webhook receiver on loopback that checks every signature and keeps the events.
	var hookMu sync.Mutex
	var events []ca.AccessEvent
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := notify.Verify([]byte("webhook-secret-0123456789"), r.Header.Get(notify.HeaderTimestamp), r.Header.Get(notify.HeaderSignature), body, time.Now(), time.Minute); err != nil {
			t.Errorf("webhook: %v", err)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		var ev ca.AccessEvent
		if err := json.Unmarshal(body, &ev); err != nil || ev.ID != r.Header.Get(notify.HeaderEventID) {
			t.Errorf("webhook body %s: %v", body, err)
		}
		hookMu.Lock()
		events = append(events, ev)
		hookMu.Unlock()
	}))
	t.Cleanup(hook.Close)
	writeFile(t, filepath.Join(dir, "webhook.secret"), "webhook-secret-0123456789\n")
	cfg.Notifications.Webhooks = []WebhookConfig{{URL: hook.URL, SecretFile: filepath.Join(dir, "webhook.secret")}}
	heard := func(typ, request string) bool {
		hookMu.Lock()
		defer hookMu.Unlock()
		for _, ev := range events {
			if ev.Type == typ && ev.Request == request {
				return true
			}
		}
		return false
	}
	base := startServe(t, cfg)
	mint := minter(t, idp)

	// Tokens as files, one fresh token per command (each may be single-use).
	token := func(who string) string {
		t.Helper()
		claims := map[string]map[string]any{
			"alice": {"sub": "u-alice", "preferred_username": "alice", "email": "alice@example.com", "email_verified": true,
				"groups": []string{"developers"}, "amr": []string{"pwd", "mfa"}},
			"lead": {"sub": "u-lead", "preferred_username": "lead", "email": "lead@example.com", "email_verified": true,
				"groups": []string{"sre-leads"}, "amr": []string{"pwd", "hwk"}},
			"lead2": {"sub": "u-lead2", "preferred_username": "lead2", "email": "lead2@example.com", "email_verified": true,
				"groups": []string{"sre-leads"}, "amr": []string{"hwk"}},
			// alice again, with another subject but the same verified e-mail, in sre-leads.
			"oncall": {"sub": "u-oncall", "preferred_username": "oncall", "email": "oncall@example.com", "email_verified": true,
				"groups": []string{"oncall"}, "amr": []string{"pwd", "mfa"}},
			"alice-lead": {"sub": "u-alice-2", "preferred_username": "alice2", "email": "Alice@example.com", "email_verified": true,
				"groups": []string{"sre-leads"}, "amr": []string{"hwk"}},
		}[who]
		claims["auth_time"] = time.Now().Unix()
		path := filepath.Join(dir, who+".token")
		writeFile(t, path, mint(claims))
		return path
	}
	cli := func(who string, args ...string) (string, error) {
		t.Helper()
		return runCLI(t, "", append(args, "--server", base, "--token-file", token(who))...)
	}

	flags := agentFlags{redis: redisTarget{url: "redis://" + r.Addr}, krlPath: filepath.Join(dir, "sshca.krl"), userCA: filepath.Join(dir, "user_ca.pub"),
		health: "127.0.0.1:0", sshdLog: filepath.Join(dir, "sshd.log"), poll: time.Second}
	startAgent(t, flags)
	hostKey := keygen(t, dir, "host_key")
	hc := issue(t, base, "host", mint(map[string]any{"sub": "ci", "groups": []string{"ci"}}), map[string]any{
		"public_key": readFile(t, hostKey+".pub"), "hostnames": []string{"127.0.0.1"}})
	writeFile(t, hostKey+"-cert.pub", hc.Certificate+"\n")
	_, knownHosts := call(t, "GET", base+"/v1/ca/known_hosts", "", nil)
	kh := filepath.Join(dir, "known_hosts")
	writeFile(t, kh, string(knownHosts))
	sshd := testenv.StartSSHD(t, testenv.SSHDConfig{HostKey: hostKey, HostCertificate: hostKey + "-cert.pub",
		TrustedUserCAKeys: flags.userCA, RevokedKeys: flags.krlPath, Principals: []string{"root"}, LogFile: flags.sshdLog})
	userKey := keygen(t, dir, "alice")

	// Without a request, alice's root is refused: no group of hers grants it.
	if out, err := cli("alice", "cert", "user", "--key", userKey+".pub", "--principal", "root", "--reason", "OPS-1234 disk full"); err == nil {
		t.Fatalf("root without a request:\n%s", out)
	}

	// alice asks, and waits (polling every 100 ms) while the rest happens.
	var waitOut testenv.SyncBuffer
	waitDone := make(chan error, 1)
	cmd := newRootCommand()
	cmd.SetOut(&waitOut)
	cmd.SetErr(&waitOut)
	cmd.SetArgs([]string{"request", "create", "--principal", "root", "--ttl", "30m", "--reason", "OPS-1234 disk full",
		"--poll", "100ms", "--server", base, "--token-file", token("alice")})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() { waitDone <- cmd.ExecuteContext(ctx) }()
	idRE := regexp.MustCompile(`(?m)^(req_[a-z2-7]{16})$`)
	var id string
	waitFor(t, 10*time.Second, "request create prints the request ID", func() bool {
		m := idRE.FindStringSubmatch(waitOut.String())
		if m != nil {
			id = m[1]
		}
		return m != nil
	})
	waitFor(t, 5*time.Second, "the progress line", func() bool { return strings.Contains(waitOut.String(), "waiting for approval: 0 of 1") })

	certUnder := func(who, reqID string) (string, error) {
		return cli(who, "cert", "user", "--key", userKey+".pub", "--request", reqID, "--ttl", "5m")
	}
	// Before approval: no certificate, with the reason.
	if out, err := certUnder("alice", id); err == nil || !strings.Contains(err.Error(), "is not approved yet") {
		t.Fatalf("certificate under a pending request: %v\n%s", err, out)
	}
	// Self-approval, as herself and as her other identity with the same e-mail.
	for _, who := range []string{"alice", "alice-lead"} {
		if out, err := cli(who, "request", "approve", id); err == nil || !strings.Contains(err.Error(), "cannot decide your own access request") {
			t.Fatalf("%s approved alice's request: %v\n%s", who, err, out)
		}
	}
	// The lead sees it pending, then approves it.
	out, err := cli("lead", "request", "list", "--pending")
	if err != nil || !strings.Contains(out, id) || !strings.Contains(out, "alice@example.com") {
		t.Fatalf("lead's pending list: %v\n%s", err, out)
	}
	out, err = cli("lead", "request", "approve", id, "--reason", "looked at OPS-1234")
	if err != nil || !strings.Contains(out, "principals  root") || !strings.Contains(out, "is approved (1 of 1 approvals)") {
		t.Fatalf("approve: %v\n%s", err, out)
	}
	select {
	case err := <-waitDone:
		if err != nil || !strings.Contains(waitOut.String(), "approved by lead@example.com") {
			t.Fatalf("request create's wait: %v\n%s", err, waitOut.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("request create did not see the approval:\n%s", waitOut.String())
	}

	// Only alice can use it; she gets root.
	if out, err := certUnder("lead", id); err == nil || !strings.Contains(err.Error(), "only its requester can use it") {
		t.Fatalf("lead used alice's request: %v\n%s", err, out)
	}
	out, err = certUnder("alice", id)
	if err != nil || !strings.Contains(out, "principals root") || !strings.Contains(out, "/OPS-1234/"+id+"#") {
		t.Fatalf("certificate under the approved request: %v\n%s", err, out)
	}
	certPath := userKey + "-cert.pub"
	if out, err := sshd.SSH(userKey, certPath, kh, "id", "-un"); err != nil || strings.TrimSpace(out) != "root" {
		t.Fatalf("ssh as root under the request: %v\n%s", err, out)
	}
	out, err = cli("alice", "request", "show", id)
	if err != nil || !strings.Contains(out, "request     "+id+" (approved)") || !strings.Contains(out, "lead@example.com at ") || !strings.Contains(out, "certificates ") {
		t.Fatalf("show: %v\n%s", err, out)
	}

	// A denied request.
	denied := createNoWait(t, cli, "root", "OPS-9 look around")
	if out, err := cli("lead", "request", "deny", denied); err == nil {
		t.Fatalf("deny without a reason:\n%s", out)
	}
	if out, err := cli("lead", "request", "deny", denied, "--reason", "use the runbook"); err != nil || !strings.Contains(out, "is denied") {
		t.Fatalf("deny: %v\n%s", err, out)
	}
	if out, err := certUnder("alice", denied); err == nil || !strings.Contains(err.Error(), "is denied") {
		t.Fatalf("certificate under a denied request: %v\n%s", err, out)
	}
	// A request missing an approval: prod-* needs two.
	prod := createNoWait(t, cli, "prod-db", "OPS-7 failover")
	if out, err := cli("lead", "request", "approve", prod); err != nil || !strings.Contains(out, "is pending (1 of 2 approvals)") {
		t.Fatalf("first of two approvals: %v\n%s", err, out)
	}
	if out, err := certUnder("alice", prod); err == nil || !strings.Contains(err.Error(), "it has 1 of 2 approvals") {
		t.Fatalf("certificate with one of two approvals: %v\n%s", err, out)
	}
	// An expired request: not approved within access_request_timeout (3s here).
	expired := createNoWait(t, cli, "root", "OPS-8 later")
	time.Sleep(3100 * time.Millisecond)
	if out, err := cli("lead2", "request", "approve", expired); err == nil || !strings.Contains(err.Error(), "is expired") {
		t.Fatalf("approving an expired request: %v\n%s", err, out)
	}
	if out, err := certUnder("alice", expired); err == nil || !strings.Contains(err.Error(), "is expired") {
		t.Fatalf("certificate under an expired request: %v\n%s", err, out)
	}

	// Cancelling the request revokes its certificate: the live session ends, sshd refuses it.
	session := startSession(t, sshd, userKey, certPath, kh)
	if out, err := cli("alice", "request", "cancel", id, "--reason", "disk cleaned"); err != nil || !strings.Contains(out, "is cancelled") || !strings.Contains(out, "revoked its certificates") {
		t.Fatalf("cancel: %v\n%s", err, out)
	}
	select {
	case <-session:
	case <-time.After(10 * time.Second):
		t.Fatal("the session of the cancelled request's certificate was not ended")
	}
	if out, err := sshd.SSH(userKey, certPath, kh, "true"); err == nil {
		t.Fatalf("the cancelled request's certificate still logs in:\n%s", out)
	}
	if out, err := certUnder("alice", id); err == nil || !strings.Contains(err.Error(), "is cancelled") {
		t.Fatalf("certificate under a cancelled request: %v\n%s", err, out)
	}
	if _, err := os.Stat(certPath); err != nil {
		t.Fatal(err)
	}

	// Break-glass: oncall takes root at once, logs in as root, and the webhook hears of it.
	out, err = cli("oncall", "request", "create", "--break-glass", "--principal", "root", "--ttl", "20m", "--reason", "INC-9 site down")
	if err != nil || !strings.Contains(out, "BREAK-GLASS access") {
		t.Fatalf("break-glass: %v\n%s", err, out)
	}
	bg := strings.SplitN(out, "\n", 2)[0]
	oncallKey := keygen(t, dir, "oncall")
	if out, err := cli("oncall", "cert", "user", "--key", oncallKey+".pub", "--request", bg, "--ttl", "5m"); err != nil {
		t.Fatalf("certificate under break-glass: %v\n%s", err, out)
	}
	if out, err := sshd.SSH(oncallKey, oncallKey+"-cert.pub", kh, "id", "-un"); err != nil || strings.TrimSpace(out) != "root" {
		t.Fatalf("ssh as root under break-glass: %v\n%s", err, out)
	}
	// Every decision reached the webhook, the expiry too (found by the sweep, sent once).
	for _, want := range [][2]string{{"create", id}, {"approve", id}, {"cancel", id}, {"deny", denied}, {"approve", prod},
		{"expire", expired}, {"break_glass", bg}} {
		waitFor(t, 20*time.Second, "the webhook hears "+want[0]+" of "+want[1], func() bool { return heard(want[0], want[1]) })
	}

	// The auditor's question: who had root, why, approved by whom, from the verified chain.
	out, err = runCLI(t, "", "audit", "report", "--redis", "redis://"+r.Addr, "--key-file", cfg.Audit.KeyFile, "--since", "1d",
		"--principal", "root", "--format", "json")
	if err != nil {
		t.Fatalf("audit report: %v\n%s", err, out)
	}
	var grants []struct {
		Requester, Request, Ticket, Ended string
		BreakGlass                        bool `json:"break_glass"`
		Approvers, Serials, Revoked       []string
	}
	if err := json.Unmarshal([]byte(out), &grants); err != nil {
		t.Fatalf("audit report JSON: %v\n%s", err, out)
	}
	byRequest := map[string]int{}
	for i, g := range grants {
		byRequest[g.Request] = i
	}
	g, ok := grants[byRequest[id]], len(grants) > 0
	if !ok || g.Request != id || g.Ticket != "OPS-1234" || len(g.Approvers) != 1 || !strings.Contains(g.Approvers[0], "|u-lead") ||
		len(g.Serials) != 1 || len(g.Revoked) != 1 || g.Ended != "cancel" {
		t.Errorf("the approved request in the report: %+v\n%s", g, out)
	}
	if i, ok := byRequest[bg]; !ok || !grants[i].BreakGlass || len(grants[i].Serials) != 1 {
		t.Errorf("the break-glass grant in the report: %v\n%s", ok, out)
	}
	for _, other := range []string{denied, prod, expired} {
		if _, ok := byRequest[other]; ok {
			t.Errorf("request %s granted nothing but is in the report:\n%s", other, out)
		}
	}
}

// createNoWait creates a request for alice and returns its ID.
func createNoWait(t *testing.T, cli func(string, ...string) (string, error), principal, reason string) string {
	t.Helper()
	out, err := cli("alice", "request", "create", "--principal", principal, "--ttl", "30m", "--reason", reason, "--no-wait")
	if err != nil {
		t.Fatalf("request create: %v\n%s", err, out)
	}
	id := strings.SplitN(out, "\n", 2)[0]
	if !strings.HasPrefix(id, "req_") {
		t.Fatalf("request create printed %q first", out)
	}
	return id
}
