package main

import (
	"encoding/json"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sshca/sshca/internal/testenv"
)

type issuedCert struct {
	Certificate string   `json:"certificate"`
	Serial      string   `json:"serial"`
	KeyID       string   `json:"key_id"`
	Principals  []string `json:"principals"`
	ValidAfter  string   `json:"valid_after"`
	ValidBefore string   `json:"valid_before"`
}

// issue asks for a certificate and fails the test unless it is issued.
func issue(t *testing.T, base, kind, token string, body map[string]any) issuedCert {
	t.Helper()
	code, out := call(t, http.MethodPost, base+"/v1/certs/"+kind, token, body)
	if code != http.StatusOK {
		t.Fatalf("POST /v1/certs/%s = %d %s", kind, code, out)
	}
	var c issuedCert
	if err := json.Unmarshal(out, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

// checkWithKeygen reads a certificate back with ssh-keygen -L (which verifies its signature)
// and checks its principals and validity window.
func checkWithKeygen(t *testing.T, certPath string, c issuedCert, ttl time.Duration) {
	t.Helper()
	out := testenv.Run(t, testenv.Need(t, "ssh-keygen"), "-L", "-f", certPath)
	for _, p := range c.Principals {
		if !regexp.MustCompile(`(?m)^\s+` + regexp.QuoteMeta(p) + `$`).MatchString(out) {
			t.Errorf("ssh-keygen -L does not list principal %q:\n%s", p, out)
		}
	}
	if !strings.Contains(out, "Serial: "+c.Serial) || !strings.Contains(out, `Key ID: "`+c.KeyID+`"`) {
		t.Errorf("ssh-keygen -L: serial %s / key id %s missing:\n%s", c.Serial, c.KeyID, out)
	}
	m := regexp.MustCompile(`Valid: from (\S+) to (\S+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("ssh-keygen -L shows no validity:\n%s", out)
	}
	from, err1 := time.ParseInLocation("2006-01-02T15:04:05", m[1], time.Local)
	to, err2 := time.ParseInLocation("2006-01-02T15:04:05", m[2], time.Local)
	if err1 != nil || err2 != nil {
		t.Fatalf("validity %q %q: %v %v", m[1], m[2], err1, err2)
	}
	if got := to.Sub(from); got != ttl+30*time.Second {
		t.Errorf("validity window = %s, want ttl %s + 30s skew", got, ttl)
	}
	if d := time.Until(to) - ttl; d > 5*time.Second || d < -5*time.Second {
		t.Errorf("valid_before is %s from now, want about %s", time.Until(to), ttl)
	}
}

// TestEndToEndOpenSSH: a real sshd trusts the user CA from /v1/ca/user.pub and presents a host
// certificate from /v1/certs/host; a real ssh, knowing only the @cert-authority line, logs in
// with a user certificate from /v1/certs/user.
func TestEndToEndOpenSSH(t *testing.T) {
	testenv.Need(t, "sshd", "/usr/sbin")
	testenv.Need(t, "ssh")
	base, _ := startDev(t)
	dir := t.TempDir()

	// The host: a CI identity gets a host certificate for 127.0.0.1.
	hostKey := keygen(t, dir, "host_key")
	ciToken := devToken(t, base, map[string]any{"sub": "ci-job-1", "preferred_username": "ci", "groups": []string{"ci"}})
	hc := issue(t, base, "host", ciToken, map[string]any{
		"public_key": readFile(t, hostKey+".pub"), "hostnames": []string{"127.0.0.1", "localhost"}, "ttl": "2h"})
	writeFile(t, hostKey+"-cert.pub", hc.Certificate+"\n")
	checkWithKeygen(t, hostKey+"-cert.pub", hc, 2*time.Hour)

	_, userCA := call(t, http.MethodGet, base+"/v1/ca/user.pub", "", nil)
	writeFile(t, filepath.Join(dir, "user_ca.pub"), string(userCA))
	_, knownHosts := call(t, http.MethodGet, base+"/v1/ca/known_hosts", "", nil)
	if !strings.HasPrefix(string(knownHosts), "@cert-authority * ssh-ed25519 ") {
		t.Fatalf("known_hosts = %q", knownHosts)
	}
	writeFile(t, filepath.Join(dir, "known_hosts"), string(knownHosts))

	sshd := testenv.StartSSHD(t, testenv.SSHDConfig{
		HostKey: hostKey, HostCertificate: hostKey + "-cert.pub",
		TrustedUserCAKeys: filepath.Join(dir, "user_ca.pub"),
		Principals:        []string{"alice"},
	})

	// The user: alice signs in and gets a 5-minute certificate.
	userKey := keygen(t, dir, "alice")
	aliceToken := devToken(t, base, map[string]any{"sub": "u-alice", "preferred_username": "alice", "email": "alice@example.com", "email_verified": true})
	uc := issue(t, base, "user", aliceToken, map[string]any{"public_key": readFile(t, userKey+".pub"), "ttl": "5m"})
	if strings.Join(uc.Principals, ",") != "alice" || !strings.HasPrefix(uc.KeyID, "alice@example.com~") {
		t.Fatalf("user cert principals %v key id %q", uc.Principals, uc.KeyID)
	}
	writeFile(t, userKey+"-cert.pub", uc.Certificate+"\n")
	checkWithKeygen(t, userKey+"-cert.pub", uc, 5*time.Minute)

	out, err := sshd.SSH(userKey, userKey+"-cert.pub", filepath.Join(dir, "known_hosts"), "echo", "hello-from-sshd")
	if err != nil || !strings.Contains(out, "hello-from-sshd") {
		t.Fatalf("ssh with the certificate failed: %v\n%s", err, out)
	}

	// Without the certificate, or with bob's, sshd refuses: the login above was the cert's doing.
	// (ssh loads <key>-cert.pub by itself, so the bare key goes under another name.)
	bare := filepath.Join(dir, "bare")
	writeFile(t, bare, readFile(t, userKey))
	if out, err := sshd.SSH(bare, "", filepath.Join(dir, "known_hosts"), "true"); err == nil {
		t.Fatalf("ssh without a certificate succeeded:\n%s", out)
	}
	bobKey := keygen(t, dir, "bob")
	bobToken := devToken(t, base, map[string]any{"sub": "u-bob", "preferred_username": "bob"})
	bc := issue(t, base, "user", bobToken, map[string]any{"public_key": readFile(t, bobKey+".pub")})
	writeFile(t, bobKey+"-cert.pub", bc.Certificate+"\n")
	checkWithKeygen(t, bobKey+"-cert.pub", bc, 10*time.Minute) // the policy's default TTL
	if out, err := sshd.SSH(bobKey, bobKey+"-cert.pub", filepath.Join(dir, "known_hosts"), "true"); err == nil {
		t.Fatalf("bob's certificate (principal bob) logged in as a user that accepts only alice:\n%s", out)
	}
	// A known_hosts without the CA line: StrictHostKeyChecking refuses the host.
	writeFile(t, filepath.Join(dir, "empty_known_hosts"), "")
	if out, err := sshd.SSH(userKey, userKey+"-cert.pub", filepath.Join(dir, "empty_known_hosts"), "true"); err == nil {
		t.Fatalf("ssh trusted a host without the @cert-authority line:\n%s", out)
	}
}
