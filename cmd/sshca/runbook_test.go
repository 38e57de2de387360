package main

import (
	"bufio"
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/internal/testenv"
)

// runbookStep is one `sh` block of deploy/runbooks/rotate-ca-keys.md.
type runbookStep struct {
	name, script string
	expect       []string
}

func readRunbook(t *testing.T) []runbookStep {
	f, err := os.Open(filepath.Join("..", "..", "deploy", "runbooks", "rotate-ca-keys.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var steps []runbookStep
	var cur *runbookStep
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "```sh":
			cur = &runbookStep{}
		case line == "```" && cur != nil:
			if cur.name != "" {
				steps = append(steps, *cur)
			}
			cur = nil
		case cur != nil && strings.HasPrefix(line, "# step: "):
			cur.name = strings.TrimPrefix(line, "# step: ")
		case cur != nil && strings.HasPrefix(line, "# expect: "):
			cur.expect = append(cur.expect, strings.TrimPrefix(line, "# expect: "))
		case cur != nil:
			cur.script += line + "\n"
		}
	}
	return steps
}

// TestRunbook executes the rotation runbook's commands, taken from the document itself, against
// `sshca serve` with a keyring, a bastion agent and a real sshd, and checks on the host what
// the runbook promises: old-key certificates keep working until retired, new certificates work
// after promote, and after `compromised` the old key's certificates are refused within a
// second while the new key's keep working.
func TestRunbook(t *testing.T) {
	testenv.Need(t, "sshd", "/usr/sbin")
	steps := readRunbook(t)
	if len(steps) < 6 {
		t.Fatalf("the runbook has %d executable steps", len(steps))
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	if out, err := exec.Command("go", "build", "-o", filepath.Join(bin, "sshca"), ".").CombinedOutput(); err != nil {
		t.Fatalf("build sshca: %v\n%s", err, out)
	}
	r := testenv.StartRedis(t)
	idp := startIssuer(t, "sshca")
	cfg := serveConfig(t, r.Addr, identity.IssuerConfig{IssuerURL: idp.URL(), Audiences: []string{"sshca"}})
	cfg.Keyring = KeyringConfig{Enabled: true, KMS: "softkms:", KeyDir: filepath.Join(dir, "keys"), TrustRefresh: 2 * time.Second, Refresh: 200 * time.Millisecond}
	base := startServe(t, cfg)
	admin, _ := idp.Mint(map[string]any{"sub": "sre", "preferred_username": "sre", "groups": []string{"sshca-admins"}})

	ctx, cancel := context.WithCancel(context.Background())
	agentDone := make(chan error, 1)
	flags := agentFlags{redis: redisTarget{url: "redis://" + r.Addr}, krlPath: filepath.Join(dir, "sshca.krl"), userCA: filepath.Join(dir, "user_ca.pub"),
		health: "127.0.0.1:0", poll: time.Second, caRefresh: 300 * time.Millisecond}
	go func() { agentDone <- runAgent(ctx, flags, testLog(t), nil) }()
	t.Cleanup(func() { cancel(); <-agentDone })
	trusted := func() int {
		b, _ := os.ReadFile(flags.userCA)
		return strings.Count(string(b), "\n")
	}
	waitFor(t, 10*time.Second, "the agent writes the trusted CA keys", func() bool { return trusted() == 1 })

	hostKey := keygen(t, dir, "host_key")
	ci, _ := idp.Mint(map[string]any{"sub": "ci", "groups": []string{"ci"}})
	hc := issue(t, base, "host", ci, map[string]any{"public_key": readFile(t, hostKey+".pub"), "hostnames": []string{"127.0.0.1"}})
	writeFile(t, hostKey+"-cert.pub", hc.Certificate+"\n")
	_, kh := call(t, http.MethodGet, base+"/v1/ca/known_hosts", "", nil)
	writeFile(t, filepath.Join(dir, "known_hosts"), string(kh))
	sshd := testenv.StartSSHD(t, testenv.SSHDConfig{HostKey: hostKey, HostCertificate: hostKey + "-cert.pub",
		TrustedUserCAKeys: flags.userCA, RevokedKeys: flags.krlPath, Principals: []string{"alice"}})
	userKey := keygen(t, dir, "alice")
	certN := 0
	newCert := func() string {
		certN++
		tok, _ := idp.Mint(map[string]any{"sub": "u-alice", "preferred_username": "alice"})
		c := issue(t, base, "user", tok, map[string]any{"public_key": readFile(t, userKey+".pub")})
		p := filepath.Join(dir, "cert"+string(rune('0'+certN))+".pub")
		writeFile(t, p, c.Certificate+"\n")
		return p
	}
	works := func(cert string) bool {
		_, err := sshd.SSH(userKey, cert, filepath.Join(dir, "known_hosts"), "true")
		return err == nil
	}
	run := func(s runbookStep) {
		t.Helper()
		cmd := exec.Command("bash", "-e", "-o", "pipefail", "-c", s.script)
		cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "SSHCA_SERVER="+base, "SSHCA_TOKEN="+admin)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("runbook step %q failed: %v\n%s", s.name, err, out)
		}
		for _, e := range s.expect {
			if !strings.Contains(string(out), e) {
				t.Fatalf("runbook step %q: output lacks %q:\n%s", s.name, e, out)
			}
		}
		t.Logf("step %s:\n%s", s.name, out)
	}

	old := newCert() // signed by the original key
	if !works(old) {
		t.Fatal("the first certificate does not log in")
	}
	// A certificate of the original key, revoked before any rotation: it must stay refused,
	// on the bastion and in /v1/krl, whatever happens to its key.
	revoked := newCert()
	rc := parseCert(t, readFile(t, revoked))
	if c, out := call(t, http.MethodPost, base+"/v1/revocations", admin, map[string]any{"serial": strconv.FormatUint(rc.Serial, 10), "reason": "test"}); c != 200 {
		t.Fatalf("revoke: %d %s", c, out)
	}
	waitFor(t, 5*time.Second, "the revoked certificate is refused", func() bool { return !works(revoked) })
	var second string // signed by the key the emergency rotation marks compromised
	for _, s := range steps {
		switch s.name {
		case "promote":
			time.Sleep(2100 * time.Millisecond) // the configured trust refresh
		}
		run(s)
		switch s.name {
		case "generate":
			waitFor(t, 5*time.Second, "bastions trust the next key", func() bool { return trusted() == 2 })
			if !works(old) {
				t.Fatal("old certificate refused after generate")
			}
		case "promote":
			time.Sleep(400 * time.Millisecond) // replicas refresh the keyring
			second = newCert()
			if !works(second) || !works(old) {
				t.Fatalf("after promote: new cert works=%v, old cert works=%v", works(second), works(old))
			}
		case "emergency-generate":
			waitFor(t, 5*time.Second, "bastions trust the replacement", func() bool { return trusted() == 3 })
		case "emergency-promote":
			time.Sleep(400 * time.Millisecond)
		case "compromised":
			// second was signed by the key just marked compromised; a new one by the replacement.
			if second == "" {
				t.Fatal("the runbook has no promote step before compromised")
			}
			start := time.Now()
			waitFor(t, time.Second, "the compromised key's certificates are refused", func() bool { return !works(second) })
			t.Logf("compromised-key certificate refused %s after the command", time.Since(start))
			if fresh := newCert(); !works(fresh) {
				t.Fatal("a certificate from the replacement key is refused")
			}
			if !works(old) {
				t.Fatal("a certificate from the (retired, not compromised) first key is refused")
			}
		}
	}

	if works(revoked) {
		t.Error("a certificate revoked before the rotation logs in after it")
	}
	_, krlBytes := call(t, http.MethodGet, base+"/v1/krl", "", nil)
	writeFile(t, filepath.Join(dir, "served.krl"), string(krlBytes))
	if out, _ := exec.Command("ssh-keygen", "-Q", "-f", filepath.Join(dir, "served.krl"), revoked).CombinedOutput(); !strings.Contains(string(out), "REVOKED") {
		t.Errorf("/v1/krl after the rotation forgot a revocation of the old key: %s", out)
	}

	// The host CA: a compromised key is announced with @revoked and in the host KRL.
	hostCA := strings.Fields(string(kh))[2:4]
	for _, args := range [][]string{{"keys", "generate", "--ca", "host"}, {"keys", "promote", "--ca", "host", "--force"}} {
		if out, err := runCLIEnv(t, base, admin, args...); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	list, _ := runCLIEnv(t, base, admin, "keys", "list")
	var oldHost string
	for _, l := range strings.Split(list, "\n") {
		if f := strings.Fields(l); len(f) > 2 && f[0] == "host" && f[1] == "retired" {
			oldHost = f[2]
		}
	}
	if out, err := runCLIEnv(t, base, admin, "keys", "compromised", oldHost); err != nil {
		t.Fatalf("compromised host key: %v\n%s", err, out)
	}
	time.Sleep(400 * time.Millisecond)
	_, kh2 := call(t, http.MethodGet, base+"/v1/ca/known_hosts", "", nil)
	if !strings.Contains(string(kh2), "@revoked * "+strings.Join(hostCA, " ")) {
		t.Errorf("known_hosts does not revoke the compromised host key:\n%s", kh2)
	}
	_, hostKRL := call(t, http.MethodGet, base+"/v1/krl/host", "", nil)
	writeFile(t, filepath.Join(dir, "host.krl"), string(hostKRL))
	writeFile(t, filepath.Join(dir, "old_host_ca.pub"), strings.Join(hostCA, " ")+"\n")
	out, _ := exec.Command("ssh-keygen", "-Q", "-f", filepath.Join(dir, "host.krl"), filepath.Join(dir, "old_host_ca.pub")).CombinedOutput()
	if !strings.Contains(string(out), "REVOKED") {
		t.Errorf("the host KRL does not revoke the compromised host CA key: %s", out)
	}
}

// runCLIEnv runs the CLI in-process with the server and token in the environment.
func runCLIEnv(t *testing.T, server, token string, args ...string) (string, error) {
	t.Setenv("SSHCA_SERVER", server)
	t.Setenv("SSHCA_TOKEN", token)
	return runCLI(t, "", args...)
}
