package main

import (
	"net/http"
	"path/filepath"
	"testing"
	"time"

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
	dir := t.TempDir()
	frontURL, serverCA := tlsFront(t, base, dir)
	mint := minter(t, idp)
	flags := agentFlags{server: frontURL, serverCA: serverCA, krlPath: filepath.Join(dir, "sshca.krl"),
		userCA: filepath.Join(dir, "user_ca.pub"), health: "127.0.0.1:0", sshdLog: filepath.Join(dir, "sshd.log"), poll: 100 * time.Millisecond}
	startAgent(t, flags)
	sshd, kh := startBastionSSHD(t, base, mint, dir, flags)

	userKey := keygen(t, dir, "alice")
	alice := mint(map[string]any{"sub": "u-alice", "preferred_username": "alice", "email": "alice@example.com", "email_verified": true})
	c := issue(t, base, "user", alice, map[string]any{"public_key": readFile(t, userKey+".pub"), "ttl": "10m"})
	certPath := filepath.Join(dir, "alice-cert.pub")
	writeFile(t, certPath, c.Certificate+"\n")
	sessionDone := startSession(t, sshd, userKey, certPath, kh)

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
		t.Fatal("the live session of the revoked certificate was not ended in HTTPS mode")
	}
}
