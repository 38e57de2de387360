package main

import (
	"context"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sshca/sshca/bastion"
	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/internal/testenv"
)

// TestRevocationHTTPSLockdown: a bastion agent with no Redis, polling the CA over HTTPS (a
// TLS front on loopback, its certificate pinned), with real sshd and ssh: a revoked
// certificate is refused and the live session it opened is ended, from the KRL alone.
func TestRevocationHTTPSLockdown(t *testing.T) {
	testenv.Need(t, "sshd", "/usr/sbin")
	testenv.Need(t, "ssh")
	r := testenv.StartRedis(t)
	idp := startIssuer(t, "sshca")
	base := startServe(t, serveConfig(t, r.Addr, identity.IssuerConfig{IssuerURL: idp.URL(), Audiences: []string{"sshca"}}))
	target, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	front := httptest.NewTLSServer(httputil.NewSingleHostReverseProxy(target))
	t.Cleanup(front.Close)
	dir := t.TempDir()
	serverCA := filepath.Join(dir, "server-ca.pem")
	writeFile(t, serverCA, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: front.Certificate().Raw})))
	mint := func(claims map[string]any) string {
		tok, err := idp.Mint(claims)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}

	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan *bastion.Agent, 1)
	agentDone := make(chan error, 1)
	flags := agentFlags{server: front.URL, serverCA: serverCA, krlPath: filepath.Join(dir, "sshca.krl"),
		userCA: filepath.Join(dir, "user_ca.pub"), health: "127.0.0.1:0", sshdLog: filepath.Join(dir, "sshd.log"), poll: 100 * time.Millisecond}
	go func() { agentDone <- runAgent(ctx, flags, testLog(t), ready) }()
	t.Cleanup(func() { cancel(); <-agentDone })
	select {
	case <-ready:
	case err := <-agentDone:
		t.Fatalf("agent: %v", err)
	}
	waitFor(t, 10*time.Second, "the agent writes the trusted CA keys from HTTPS", func() bool {
		b, err := os.ReadFile(flags.userCA)
		return err == nil && strings.HasPrefix(string(b), "ecdsa-sha2-nistp256 ")
	})

	hostKey := keygen(t, dir, "host_key")
	hc := issue(t, base, "host", mint(map[string]any{"sub": "ci", "groups": []string{"ci"}}), map[string]any{
		"public_key": readFile(t, hostKey+".pub"), "hostnames": []string{"127.0.0.1"}})
	writeFile(t, hostKey+"-cert.pub", hc.Certificate+"\n")
	_, knownHosts := call(t, http.MethodGet, base+"/v1/ca/known_hosts", "", nil)
	kh := filepath.Join(dir, "known_hosts")
	writeFile(t, kh, string(knownHosts))
	sshd := testenv.StartSSHD(t, testenv.SSHDConfig{
		HostKey: hostKey, HostCertificate: hostKey + "-cert.pub",
		TrustedUserCAKeys: flags.userCA, RevokedKeys: flags.krlPath,
		Principals: []string{"alice"}, LogFile: flags.sshdLog,
	})

	userKey := keygen(t, dir, "alice")
	alice := mint(map[string]any{"sub": "u-alice", "preferred_username": "alice", "email": "alice@example.com", "email_verified": true})
	c := issue(t, base, "user", alice, map[string]any{"public_key": readFile(t, userKey+".pub"), "ttl": "10m"})
	certPath := filepath.Join(dir, "alice-cert.pub")
	writeFile(t, certPath, c.Certificate+"\n")
	session := exec.Command("ssh", sshArgs(sshd, userKey, certPath, kh, "sleep 120")...)
	if err := session.Start(); err != nil {
		t.Fatal(err)
	}
	sessionDone := make(chan error, 1)
	go func() { sessionDone <- session.Wait() }()
	waitFor(t, 10*time.Second, "sshd logs the session", func() bool {
		return strings.Contains(sshd.Log(), "Starting session: command")
	})

	admin := mint(map[string]any{"sub": "admin", "preferred_username": "admin1", "email": "admin@example.com", "email_verified": true, "groups": []string{"sshca-admins"}})
	if code, out := call(t, http.MethodPost, base+"/v1/revocations", admin, map[string]any{"serial": c.Serial, "reason": "test"}); code != http.StatusOK {
		t.Fatalf("POST /v1/revocations = %d %s", code, out)
	}
	waitFor(t, 5*time.Second, "the revoked certificate is refused", func() bool {
		_, err := sshd.SSH(userKey, certPath, kh, "true")
		return err != nil
	})
	select {
	case <-sessionDone:
	case <-time.After(5 * time.Second):
		session.Process.Kill()
		t.Fatal("the live session of the revoked certificate was not ended in HTTPS mode")
	}
}
