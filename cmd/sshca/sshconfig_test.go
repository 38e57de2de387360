package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/internal/testenv"
)

// TestSSHConfigWrite installs the configuration with the real binary under a fresh $HOME (no
// ~/.ssh), then: ssh -G shows the sshca settings for a matching host and none for another;
// plain ssh through the written config reaches a real sshd, the Match exec line running
// `sshca login --if-expiring --quiet` (the certificate is valid, so no sign-in); once the
// host's key is banned the next ssh is refused, the KRL refreshed by that same exec line. A
// second run keeps one Include line at the top, also after the user edited ~/.ssh/config, and
// --bastion adds ProxyJump for the hosts but not for the bastion itself.
func TestSSHConfigWrite(t *testing.T) {
	testenv.Need(t, "sshd", "/usr/sbin")
	sshBin := testenv.Need(t, "ssh")
	testenv.Need(t, "ssh-keygen")
	base, _ := startDev(t)
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "bin", "sshca")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build sshca: %v\n%s", err, out)
	}
	home := filepath.Join(tmp, "home")
	if err := os.Mkdir(home, 0o755); err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "HOME="+home, "SSH_AUTH_SOCK=")
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("sshca %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	sshDir := filepath.Join(home, ".ssh")
	config := filepath.Join(sshDir, "config")
	include := "Include " + filepath.Join(sshDir, "sshca.conf")

	// The host: a real sshd with a host certificate from the dev host CA.
	dir := t.TempDir()
	hostKey := keygen(t, dir, "host")
	ci := devToken(t, base, map[string]any{"sub": "ci", "groups": []string{"ci"}})
	hc := issue(t, base, "host", ci, map[string]any{"public_key": readFile(t, hostKey+".pub"), "hostnames": []string{"127.0.0.1"}, "ttl": "1h"})
	writeFile(t, hostKey+"-cert.pub", hc.Certificate+"\n")
	_, userCA := call(t, http.MethodGet, base+"/v1/ca/user.pub", "", nil)
	writeFile(t, filepath.Join(dir, "user_ca.pub"), string(userCA))
	sshd := testenv.StartSSHD(t, testenv.SSHDConfig{HostKey: hostKey, HostCertificate: hostKey + "-cert.pub",
		TrustedUserCAKeys: filepath.Join(dir, "user_ca.pub"), Principals: []string{"alice"}})

	out := run("ssh-config", "--server", base, "--hosts", "127.0.0.1", "--write")
	if !strings.Contains(out, "added \""+include+"\" at the top") {
		t.Errorf("first --write does not say it added the Include line:\n%s", out)
	}
	for path, want := range map[string]os.FileMode{sshDir: 0o700, filepath.Join(sshDir, "sshca"): 0o700, config: 0o600, filepath.Join(sshDir, "sshca.conf"): 0o600} {
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: %v mode %v, want %v", path, err, fi, want)
		}
	}
	conf := readFile(t, filepath.Join(sshDir, "sshca.conf"))
	if strings.Contains(conf, "Host *\n") || strings.Contains(conf, "%") {
		t.Errorf("sshca.conf has Host * or a %% token:\n%s", conf)
	}
	if !strings.Contains(conf, `exec "`+bin+` login --if-expiring --quiet --server `+base+`"`) {
		t.Errorf("sshca.conf has no Match exec line running sshca login --if-expiring --quiet:\n%s", conf)
	}

	// Alice's certificate is where sshca login keeps it, valid for 10 minutes: the exec line
	// must not ask her to sign in.
	userKey := filepath.Join(sshDir, "sshca", "id_ed25519")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", userKey).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v %s", err, out)
	}
	alice := devToken(t, base, map[string]any{"sub": "u-alice", "preferred_username": "alice", "email": "alice@example.com", "email_verified": true})
	uc := issue(t, base, "user", alice, map[string]any{"public_key": readFile(t, userKey+".pub"), "ttl": "10m"})
	writeFile(t, userKey+"-cert.pub", uc.Certificate+"\n")
	sshG := func(host string) string {
		t.Helper()
		cmd := exec.Command(sshBin, "-G", "-F", config, "-p", strconv.Itoa(sshd.Port), host)
		cmd.Env = env
		b, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("ssh -G %s: %v\n%s", host, err, b)
		}
		return string(b)
	}
	krlPath := filepath.Join(sshDir, "sshca", "revoked_hosts.krl")
	khPath := filepath.Join(sshDir, "sshca", "known_hosts")
	g := sshG("127.0.0.1")
	for _, want := range []string{"stricthostkeychecking true", "userknownhostsfile " + khPath, "revokedhostkeys " + krlPath,
		"certificatefile " + filepath.Join(sshDir, "sshca", "id_ed25519-cert.pub")} {
		if !strings.Contains(g, "\n"+want+"\n") {
			t.Errorf("ssh -G 127.0.0.1 lacks %q:\n%s", want, g)
		}
	}
	if g := sshG("elsewhere.example"); strings.Contains(g, "revokedhostkeys") || strings.Contains(g, khPath) || strings.Contains(g, "stricthostkeychecking true") {
		t.Errorf("ssh -G elsewhere.example (not in --hosts) has sshca settings:\n%s", g)
	}
	if kh := readFile(t, khPath); !strings.Contains(kh, "@cert-authority ") {
		t.Errorf("known_hosts has no @cert-authority line:\n%s", kh)
	}

	sshTo := func() (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, sshBin, "-F", config, "-o", "BatchMode=yes", "-o", "IdentityAgent=none",
			"-o", "GlobalKnownHostsFile=/dev/null", "-p", strconv.Itoa(sshd.Port), "-l", sshd.User, "127.0.0.1", "echo", "reached-host")
		cmd.Env = env
		b, err := cmd.CombinedOutput()
		return string(b), err
	}
	if out, err := sshTo(); err != nil || !strings.Contains(out, "reached-host") {
		t.Fatalf("ssh through the written config: %v\n%s", err, out)
	}

	// Ban the host's key; the known_hosts written above has no @revoked line for it, so only
	// the KRL that the Match exec line refreshes can refuse it.
	admin := devToken(t, base, map[string]any{"sub": "admin", "preferred_username": "admin1", "groups": []string{"sshca-admins"}})
	if code, out := call(t, http.MethodPost, base+"/v1/revocations", admin, map[string]any{"public_key": readFile(t, hostKey+".pub"), "reason": "host key leaked"}); code != http.StatusOK {
		t.Fatalf("ban the host key: %d %s", code, out)
	}
	if out, err := sshTo(); err == nil || !strings.Contains(out, "revoked by file "+krlPath) {
		t.Errorf("ssh to a host whose key is banned: %v\n%s\nwant refused, revoked by file %s", err, out, krlPath)
	}

	// Idempotent, and the Include moves back to the top after the user added lines above it.
	run("ssh-config", "--server", base, "--hosts", "127.0.0.1", "--write")
	writeFile(t, config, "Host *\n    ServerAliveInterval 30\n"+readFile(t, config))
	out = run("ssh-config", "--server", base, "--hosts", "127.0.0.1,*.corp.example", "--write", "--bastion", "jump@bastion.corp.example:2222")
	cfg := readFile(t, config)
	if !strings.HasPrefix(cfg, include+"\n") || strings.Count(cfg, include) != 1 || !strings.Contains(cfg, "ServerAliveInterval 30") {
		t.Errorf("~/.ssh/config after three runs and an edit, want one Include line first and the user's lines kept:\n%s", cfg)
	}
	if again := run("ssh-config", "--server", base, "--hosts", "127.0.0.1,*.corp.example", "--write", "--bastion", "jump@bastion.corp.example:2222"); !strings.Contains(again, "already includes it first") {
		t.Errorf("a run with nothing to change says:\n%s", again)
	}
	if g := sshG("db1.corp.example"); !strings.Contains(g, "\nproxyjump jump@bastion.corp.example:2222\n") {
		t.Errorf("ssh -G db1.corp.example has no ProxyJump through the bastion:\n%s", g)
	}
	if g := sshG("bastion.corp.example"); strings.Contains(g, "proxyjump") {
		t.Errorf("ssh -G bastion.corp.example would jump through itself:\n%s", g)
	}

	// What --write refuses.
	for _, args := range [][]string{
		{"--hosts", "*"}, {"--hosts", "*,?"}, {"--hosts", "a b"}, {"--hosts", "%h"}, {"--hosts", "x", "--bastion", "a;b"},
	} {
		cmd := exec.Command(bin, append([]string{"ssh-config", "--server", base, "--write"}, args...)...)
		cmd.Env = env
		if b, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(b), args[len(args)-2]) {
			t.Errorf("ssh-config --write %v: %v %s, want refused naming %s", args, err, b, args[len(args)-2])
		}
	}
}

// TestCertStillValid: login --if-expiring keeps a certificate for its key with more than a
// minute left, and signs in for anything else.
func TestCertStillValid(t *testing.T) {
	_, caPriv, _ := ed25519.GenerateKey(rand.Reader)
	caSigner, _ := ssh.NewSignerFromKey(caPriv)
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	key, _ := ssh.NewPublicKey(pub)
	otherPub, _, _ := ed25519.GenerateKey(rand.Reader)
	other, _ := ssh.NewPublicKey(otherPub)
	now := time.Unix(1_800_000_000, 0)
	dir := t.TempDir()
	write := func(name string, k ssh.PublicKey, after, before time.Time) string {
		c := &ssh.Certificate{Key: k, CertType: ssh.UserCert, ValidPrincipals: []string{"alice"},
			ValidAfter: uint64(after.Unix()), ValidBefore: uint64(before.Unix())}
		if err := c.SignCert(rand.Reader, caSigner); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name)
		writeFile(t, p, string(ssh.MarshalAuthorizedKey(c)))
		return p
	}
	for _, tc := range []struct {
		name string
		path string
		want bool
	}{
		{"ten minutes left", write("ok", key, now.Add(-time.Minute), now.Add(10*time.Minute)), true},
		{"thirty seconds left", write("short", key, now.Add(-time.Minute), now.Add(30*time.Second)), false},
		{"expired", write("expired", key, now.Add(-time.Hour), now.Add(-time.Minute)), false},
		{"not yet valid", write("future", key, now.Add(time.Minute), now.Add(time.Hour)), false},
		{"another key", write("other", other, now.Add(-time.Minute), now.Add(time.Hour)), false},
		{"missing", filepath.Join(dir, "none"), false},
	} {
		if _, got := certStillValid(tc.path, key, now); got != tc.want {
			t.Errorf("%s: kept %v, want %v", tc.name, got, tc.want)
		}
	}
}
