package bastion_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sshca/sshca/bastion"
	"github.com/sshca/sshca/client"
	"github.com/sshca/sshca/internal/testenv"
)

// testAccount creates a local account (useradd) for the test and removes it at the end. Its
// password field is "*", which sshd without PAM does not take for a locked account ("!").
func testAccount(t *testing.T, home string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("creating accounts needs root")
	}
	useradd := testenv.Need(t, "useradd", "/usr/sbin")
	userdel := testenv.Need(t, "userdel", "/usr/sbin")
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := "skd" + hex.EncodeToString(b)
	if out, err := exec.Command(useradd, "-M", "-d", home, "-s", "/bin/sh", "-p", "*", name).CombinedOutput(); err != nil {
		t.Fatalf("useradd %s: %v\n%s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command(userdel, name).CombinedOutput(); err != nil {
			t.Errorf("userdel %s: %v\n%s", name, err, out)
		}
	})
	return name
}

// sshAs runs the real ssh client as account with one identity (and certificate, if given).
func sshAs(s *testenv.SSHD, knownHosts, account, key, cert string) (string, error) {
	args := []string{"-F", "none", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
		"-o", "UserKnownHostsFile=" + knownHosts, "-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "ConnectTimeout=10",
		"-i", key, "-p", strconv.Itoa(s.Port)}
	if cert != "" {
		args = append(args, "-o", "CertificateFile="+cert)
	}
	args = append(args, account+"@127.0.0.1", "echo", "in-as-"+account)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ssh", args...).CombinedOutput()
	return string(out), err
}

// discoveryHost is a private sshd whose AuthorizedKeysFile points into a temporary
// directory, with two accounts the test creates: "fromAcct" has a key limited by from= and
// "usedAcct" a key that logs in.
type discoveryHost struct {
	h                  *bastionHost
	sshd               *testenv.SSHD
	keys, log, known   string
	fromAcct, usedAcct string
}

func newDiscoveryHost(t *testing.T) *discoveryHost {
	t.Helper()
	testenv.Need(t, "ssh")
	h := newBastionHost(t)
	d := &discoveryHost{h: h, keys: filepath.Join(h.dir, "keys"), log: filepath.Join(h.dir, "sshd.log")}
	// sshd reads authorized_keys as the account: t.TempDir and its parent are root's, 0700.
	for _, dir := range []string{filepath.Dir(h.dir), h.dir} {
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	d.fromAcct = testAccount(t, filepath.Join(h.dir, "home-a"))
	d.usedAcct = testAccount(t, filepath.Join(h.dir, "home-b"))
	h.run(t, "-q", "-t", "ed25519", "-N", "", "-C", "from-key", "-f", h.path("from"))
	h.run(t, "-q", "-t", "ed25519", "-N", "", "-C", "used-key", "-f", h.path("used"))
	h.run(t, "-q", "-t", "rsa", "-b", "2048", "-N", "", "-C", "never-used", "-f", h.path("unused"))
	plant := func(account string, lines ...string) {
		dir := filepath.Join(d.keys, account)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pub := func(name string) string {
		b, err := os.ReadFile(h.path(name + ".pub"))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	plant(d.fromAcct, `from="10.9.8.0/24",no-agent-forwarding `+pub("from"))
	plant(d.usedAcct, pub("used"), pub("unused"))
	d.sshd = testenv.StartSSHD(t, testenv.SSHDConfig{
		HostKey: h.path("host"), HostCertificate: h.path("host-cert.pub"), TrustedUserCAKeys: h.path("ca.pub"),
		Principals:         []string{d.usedAcct},
		AuthorizedKeysFile: filepath.Join(d.keys, "%u", "authorized_keys"),
		LogFile:            d.log,
	})
	d.known = h.path("known_hosts")
	if err := os.WriteFile(d.known, []byte("[127.0.0.1]:"+strconv.Itoa(d.sshd.Port)+" "+pub("host")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return d
}

func (d *discoveryHost) discover(t *testing.T) client.DiscoveryReport {
	t.Helper()
	rep, err := bastion.Discovery{
		SSHD:    bastion.SSHDEffective{Config: filepath.Join(d.sshd.Dir, "sshd_config")},
		SSHDLog: d.log,
	}.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// TestDiscoveryRealSSHD: under a real sshd, discovery finds the keys planted for two accounts
// the test creates, with from= options, and shows as used the one key that logged in during
// the test (from sshd's own log line), and no other.
func TestDiscoveryRealSSHD(t *testing.T) {
	d := newDiscoveryHost(t)
	if out, err := sshAs(d.sshd, d.known, d.usedAcct, d.h.path("used"), ""); err != nil || !strings.Contains(out, "in-as-"+d.usedAcct) {
		t.Fatalf("login with the planted key: %v\n%s", err, out)
	}
	if out, err := sshAs(d.sshd, d.known, d.fromAcct, d.h.path("from"), ""); err == nil {
		t.Fatalf("a key limited to from=10.9.8.0/24 logged in from 127.0.0.1:\n%s", out)
	}
	testenv.Eventually(t, 5*time.Second, "sshd logs the accepted key", func() bool {
		b, _ := os.ReadFile(d.log)
		return strings.Contains(string(b), "Accepted publickey for "+d.usedAcct)
	})
	rep := d.discover(t)
	byComment := map[string]client.DiscoveredKey{}
	for _, k := range rep.Keys {
		if k.Account == d.fromAcct || k.Account == d.usedAcct {
			byComment[k.Comment] = k
		}
	}
	if len(byComment) != 3 {
		t.Fatalf("found %d of the 3 planted keys: %+v", len(byComment), rep.Keys)
	}
	from, used, unused := byComment["from-key"], byComment["used-key"], byComment["never-used"]
	if from.Account != d.fromAcct || len(from.Options) != 2 || from.Options[0] != `from="10.9.8.0/24"` || from.LastAccepted != nil {
		t.Errorf("from= key: %+v", from)
	}
	if used.Account != d.usedAcct || used.LastAccepted == nil || time.Since(*used.LastAccepted) > time.Minute || used.Type != "ssh-ed25519" {
		t.Errorf("the key that logged in is not shown as used now: %+v", used)
	}
	if unused.LastAccepted != nil || unused.Type != "ssh-rsa" || unused.Bits != 2048 {
		t.Errorf("unused RSA key: %+v", unused)
	}
	if rep.PasswordAuthentication || rep.KbdInteractiveAuthentication || rep.AuthorizedKeysCommand != "" {
		t.Errorf("sshd's effective authentication: %+v", rep)
	}
	if want := filepath.Join(d.keys, d.usedAcct, "authorized_keys"); used.File != want {
		t.Errorf("file %s, want %s", used.File, want)
	}
}

// TestDisableKeyRealSSHD: DisableKey comments out the key that logged in, as the file's owner
// (same inode, owner and mode; a backup and a marker in the state directory), and sshd then
// refuses that key while a certificate still logs in to the same account and the file's other
// key stays; a file its owner may not write is left alone (the agent's privileges are not
// used to write); RestoreKey lets the key in again.
func TestDisableKeyRealSSHD(t *testing.T) {
	d := newDiscoveryHost(t)
	h := d.h
	file := filepath.Join(d.keys, d.usedAcct, "authorized_keys")
	u, err := user.Lookup(d.usedAcct)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(file, uid, gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(file, 0o600); err != nil {
		t.Fatal(err)
	}
	h.run(t, "-q", "-t", "ed25519", "-N", "", "-C", "cert-user", "-f", h.path("certuser"))
	h.run(t, "-q", "-s", h.path("ca"), "-I", "alice@example.com#1", "-n", d.usedAcct, "-V", "-1m:+10m", h.path("certuser.pub"))
	login := func(key, cert string) error {
		out, err := sshAs(d.sshd, d.known, d.usedAcct, key, cert)
		if err == nil && !strings.Contains(out, "in-as-"+d.usedAcct) {
			return fmt.Errorf("unexpected output %q", out)
		}
		return err
	}
	if err := login(h.path("used"), ""); err != nil {
		t.Fatalf("the planted key does not log in before disable: %v", err)
	}
	fp := strings.Fields(h.run(t, "-l", "-E", "sha256", "-f", h.path("used.pub")))[1]
	before, _ := os.ReadFile(file)
	var st0 syscall.Stat_t
	if err := syscall.Stat(file, &st0); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(h.dir, "agent-state")
	rec, err := bastion.DisableKey(file, fp, state)
	if err != nil {
		t.Fatal(err)
	}
	var st1 syscall.Stat_t
	if err := syscall.Stat(file, &st1); err != nil {
		t.Fatal(err)
	}
	if st1.Ino != st0.Ino || st1.Uid != uint32(uid) || st1.Gid != uint32(gid) || st1.Mode != st0.Mode {
		t.Errorf("rewritten file: inode %d→%d, owner %d:%d, mode %o→%o", st0.Ino, st1.Ino, st1.Uid, st1.Gid, st0.Mode, st1.Mode)
	}
	if b, err := os.ReadFile(rec.Backup); err != nil || string(b) != string(before) {
		t.Errorf("backup %s: %v %q", rec.Backup, err, b)
	}
	if m, err := os.ReadFile(filepath.Join(state, "disabled.jsonl")); err != nil || !strings.Contains(string(m), fp) {
		t.Errorf("marker: %v %s", err, m)
	}
	if err := login(h.path("used"), ""); err == nil {
		t.Error("the disabled key still logs in")
	}
	if err := login(h.path("certuser"), h.path("certuser-cert.pub")); err != nil {
		t.Errorf("a certificate no longer logs in after disable: %v", err)
	}
	for _, k := range d.discover(t).Keys {
		if k.Fingerprint == fp {
			t.Errorf("discovery still lists the disabled key: %+v", k)
		}
	}
	after, _ := os.ReadFile(file)
	if !strings.Contains(string(after), "never-used") || strings.Count(string(after), bastion.DisabledPrefix) != 1 {
		t.Errorf("file after disable:\n%s", after)
	}
	if _, err := bastion.DisableKey(file, fp, state); err == nil {
		t.Error("disabling a key twice reports no error")
	}

	// The owner may not write this one: neither may the agent.
	if err := os.Chmod(file, 0o400); err != nil {
		t.Fatal(err)
	}
	if _, err := bastion.RestoreKey(file, fp); err == nil {
		t.Error("rewrote a file its owner may not write")
	}
	if b, _ := os.ReadFile(file); string(b) != string(after) {
		t.Error("a file its owner may not write was changed")
	}
	if err := os.Chmod(file, 0o600); err != nil {
		t.Fatal(err)
	}
	if n, err := bastion.RestoreKey(file, fp); err != nil || n != 1 {
		t.Fatalf("restore: %d %v", n, err)
	}
	if err := login(h.path("used"), ""); err != nil {
		t.Errorf("the restored key does not log in: %v", err)
	}
}
