package bastion_test

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sshca/sshca/bastion"
	"github.com/sshca/sshca/internal/testenv"
)

var update = flag.Bool("update", false, "rewrite deploy/bastion/sshd_config")

// bastionHost is a directory with what a bastion's sshd needs: a host key and certificate,
// a user CA, a KRL and principals files, and the options that point at them.
type bastionHost struct {
	dir, keygen string
	opts        bastion.SSHDConfigOptions
}

func newBastionHost(t testing.TB) *bastionHost {
	t.Helper()
	h := &bastionHost{dir: t.TempDir(), keygen: testenv.Need(t, "ssh-keygen")}
	h.run(t, "-q", "-t", "ed25519", "-N", "", "-C", "host", "-f", h.path("host"))
	h.run(t, "-q", "-t", "ed25519", "-N", "", "-C", "user-ca", "-f", h.path("ca"))
	h.run(t, "-q", "-s", h.path("ca"), "-h", "-I", "host", "-n", "127.0.0.1", h.path("host.pub"))
	h.run(t, "-q", "-k", "-f", h.path("krl"))
	h.opts = bastion.SSHDConfigOptions{
		Port: testenv.FreePort(t), ListenAddresses: []string{"127.0.0.1"},
		HostKeys: []string{h.path("host")}, HostCertificates: []string{h.path("host-cert.pub")},
		TrustedUserCAKeys: h.path("ca.pub"), RevokedKeys: h.path("krl"),
		AuthorizedPrincipalsFile: h.path("principals-%u"),
	}
	return h
}

func (h *bastionHost) path(name string) string { return filepath.Join(h.dir, name) }

func (h *bastionHost) run(t testing.TB, args ...string) string {
	t.Helper()
	return testenv.Run(t, h.keygen, args...)
}

// write renders the options, adds site lines where the rendering says they go (above its
// `Match all` block; they can only set what the rendering leaves unset: sshd keeps the first
// value), appends the lines of appended, and checks the result with sshd -t.
func (h *bastionHost) write(t testing.TB, site []string, appended ...string) (sshd, path string) {
	t.Helper()
	sshd = testenv.Need(t, "sshd", "/usr/sbin")
	cfg, err := bastion.SSHDConfig(h.opts)
	if err != nil {
		t.Fatal(err)
	}
	head, tail, ok := strings.Cut(cfg, "\n## Every connection")
	if !ok {
		t.Fatal("the rendering has no Match all block")
	}
	cfg = head + strings.Join(site, "\n") + "\n\n## Every connection" + tail + strings.Join(appended, "\n") + "\n"
	path = h.path("sshd_config")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(sshd, "-t", "-f", path).CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) != 0 {
		t.Fatalf("sshd -t: %v\n%s\nconfiguration:\n%s", err, out, cfg)
	}
	return sshd, path
}

// TestSSHDConfigAcceptedBySSHD: sshd -t accepts the rendering without a warning, and the
// effective configuration (sshd -T) is the hardened one.
func TestSSHDConfigAcceptedBySSHD(t *testing.T) {
	h := newBastionHost(t)
	sshd, path := h.write(t, nil)
	out, err := exec.Command(sshd, "-T", "-f", path).CombinedOutput()
	if err != nil {
		t.Fatalf("sshd -T: %v\n%s", err, out)
	}
	effective := string(out)
	for _, want := range []string{
		"pubkeyauthentication yes", "passwordauthentication no", "kbdinteractiveauthentication no",
		"hostbasedauthentication no", "permitemptypasswords no", "permitrootlogin no",
		"authorizedkeysfile none", "authenticationmethods publickey",
		"authorizedkeyscommand none", "authorizedprincipalscommand none",
		"trustedusercakeys " + h.path("ca.pub"), "revokedkeys " + h.path("krl"),
		"authorizedprincipalsfile " + h.path("principals-%u"),
		"hostcertificate " + h.path("host-cert.pub"),
		"loglevel VERBOSE", "maxauthtries 3", "logingracetime 20", "maxstartups 10:30:60",
		"clientaliveinterval 60", "clientalivecountmax 3", "usedns no",
		"allowtcpforwarding yes", "allowagentforwarding yes", "x11forwarding no", "permittunnel no",
		"gatewayports no", "permituserenvironment no", "permituserrc yes", "disableforwarding no",
		"kexalgorithms sntrup761x25519-sha512@openssh.com,curve25519-sha256,curve25519-sha256@libssh.org",
		"ciphers chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,aes128-gcm@openssh.com",
		"macs hmac-sha2-512-etm@openssh.com,hmac-sha2-256-etm@openssh.com",
	} {
		if !strings.Contains(effective, "\n"+want+"\n") {
			t.Errorf("effective configuration lacks %q", want)
		}
	}
	// The baseline the agent checks against is what sshd prints for the rendering.
	base, err := bastion.Baseline(h.opts)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range base {
		if !strings.Contains(effective, "\n"+k+" "+v+"\n") {
			t.Errorf("baseline %s %s is not what sshd prints", k, v)
		}
	}
	for _, l := range strings.Split(effective, "\n") {
		f := strings.Fields(l)
		if len(f) == 2 && (f[0] == "gssapikeyexchange" || f[0] == "gssapiauthentication") && f[1] != "no" {
			t.Errorf("%s %s", f[0], f[1])
		}
		// Debian's GSSAPI key exchange patch lists SHA-1 groups, used only with
		// GSSAPIKeyExchange, which is off (checked above).
		if len(f) != 2 || f[0] == "gssapikexalgorithms" || !strings.HasSuffix(f[0], "algorithms") && f[0] != "ciphers" && f[0] != "macs" {
			continue
		}
		for _, alg := range strings.Split(f[1], ",") {
			if alg == "ssh-rsa" || strings.HasPrefix(alg, "ssh-rsa-cert") || strings.Contains(alg, "dss") ||
				strings.Contains(alg, "sha1") || strings.Contains(alg, "cbc") || strings.Contains(alg, "md5") {
				t.Errorf("%s offers the weak %s", f[0], alg)
			}
		}
	}
}

// TestSSHDConfigForwardingOptions: a site can turn forwarding off entirely, or allow X11.
func TestSSHDConfigForwardingOptions(t *testing.T) {
	h := newBastionHost(t)
	h.opts.DisableForwarding, h.opts.X11Forwarding = true, true
	sshd, path := h.write(t, nil)
	out := testenv.Run(t, sshd, "-T", "-f", path)
	for _, want := range []string{"disableforwarding yes", "allowtcpforwarding no", "allowagentforwarding no", "x11forwarding no"} {
		if !strings.Contains(out, "\n"+want+"\n") {
			t.Errorf("DisableForwarding: effective configuration lacks %q", want)
		}
	}
	h.opts.DisableForwarding = false
	sshd, path = h.write(t, nil)
	if out := testenv.Run(t, sshd, "-T", "-f", path); !strings.Contains(out, "\nx11forwarding yes\n") {
		t.Error("X11Forwarding: x11forwarding is not yes")
	}
}

// TestSSHDConfigLogin runs sshd with the rendered configuration and logs in with the real ssh
// client: a CA-signed certificate gets in; a plain key, a revoked certificate, a certificate
// for another principal and a password do not.
func TestSSHDConfigLogin(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("sshd runs sessions only as root; this test logs in as root (prohibit-password)")
	}
	sshBin := testenv.Need(t, "ssh")
	h := newBastionHost(t)
	h.opts.PermitRootLogin = "prohibit-password" // the test user is root
	if err := os.WriteFile(h.path("principals-root"), []byte("alice\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	h.run(t, "-q", "-t", "ed25519", "-N", "", "-f", h.path("user"))
	cert := func(name, principal string, serial int) string {
		t.Helper()
		h.run(t, "-q", "-t", "ed25519", "-N", "", "-f", h.path(name))
		h.run(t, "-q", "-s", h.path("ca"), "-I", "alice@example.com#"+strconv.Itoa(serial), "-n", principal,
			"-z", strconv.Itoa(serial), "-V", "+5m", h.path(name+".pub"))
		return h.path(name)
	}
	good := cert("good", "alice", 42)
	revoked := cert("revoked", "alice", 43)
	other := cert("other", "mallory", 44)
	plain := h.path("plain")
	h.run(t, "-q", "-t", "ed25519", "-N", "", "-f", plain)
	if err := os.WriteFile(h.path("krl.spec"), []byte("serial: 43\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h.run(t, "-q", "-k", "-f", h.path("krl"), "-s", h.path("ca.pub"), h.path("krl.spec"))

	// Test directories live under /tmp (StrictModes would refuse them) and the pid file must
	// not be the system's: both are left unset by the rendering, so appending works.
	sshd, path := h.write(t, []string{"StrictModes no", "PidFile " + h.path("sshd.pid")})
	var log testenv.SyncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, sshd, "-D", "-e", "-f", path)
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("sshd log:\n%s", log.String())
		}
	})
	addr := "127.0.0.1:" + strconv.Itoa(h.opts.Port)
	testenv.WaitDial(t, addr, 10*time.Second)

	ssh := func(key string, opts ...string) (string, error) {
		args := []string{"-F", "none", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
			"-o", "UserKnownHostsFile=/dev/null", "-o", "GlobalKnownHostsFile=/dev/null",
			"-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "ConnectTimeout=10",
			"-o", "LogLevel=ERROR", "-p", strconv.Itoa(h.opts.Port)}
		if key != "" {
			args = append(args, "-i", key)
		}
		args = append(append(args, opts...), "root@127.0.0.1", "echo", "logged-in")
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, sshBin, args...).CombinedOutput()
		return string(out), err
	}
	withCert := func(key string) []string { return []string{"-o", "CertificateFile=" + key + "-cert.pub"} }

	if out, err := ssh(good, withCert(good)...); err != nil || !strings.Contains(out, "logged-in") {
		t.Fatalf("a certificate from the CA was refused: %v\n%s", err, out)
	}
	// LogLevel VERBOSE names the certificate's key ID and serial, which the agent relies on.
	testenv.Eventually(t, 5*time.Second, "sshd logs the certificate's serial", func() bool {
		return strings.Contains(log.String(), "ID alice@example.com#42 (serial 42) CA ED25519")
	})
	refused := func(what, key string, opts ...string) {
		t.Helper()
		out, err := ssh(key, opts...)
		if err == nil || strings.Contains(out, "logged-in") {
			t.Errorf("%s logged in:\n%s", what, out)
		} else if !strings.Contains(out, "Permission denied (publickey)") {
			t.Errorf("%s: want Permission denied (publickey), got %v\n%s", what, err, out)
		}
	}
	refused("a plain key without a certificate", plain)
	refused("a certificate whose serial is in the KRL", revoked, withCert(revoked)...)
	refused("a certificate for a principal not in the principals file", other, withCert(other)...)
	// The server offers publickey alone: a client that wants a password gets nothing to try.
	refused("password authentication", "", "-o", "PreferredAuthentications=password,keyboard-interactive",
		"-o", "PubkeyAuthentication=no")
	if !strings.Contains(log.String(), "Authentication key ED25519-CERT") || !strings.Contains(log.String(), "revoked by file") {
		t.Error("sshd did not log refusing the revoked certificate")
	}
}

func TestSSHDConfigRefusesInjection(t *testing.T) {
	for name, o := range map[string]bastion.SSHDConfigOptions{
		"newline":        {TrustedUserCAKeys: "/etc/x\nPasswordAuthentication yes"},
		"carriage":       {RevokedKeys: "/etc/x\rPermitRootLogin yes"},
		"space":          {AuthorizedPrincipalsFile: "/etc/a b"},
		"tab":            {HostKeys: []string{"/etc/a\tb"}},
		"comment":        {HostCertificates: []string{"/etc/x#y"}},
		"quote":          {ListenAddresses: []string{`"0.0.0.0"`}},
		"empty listen":   {ListenAddresses: []string{""}},
		"port":           {Port: 70000},
		"negative port":  {Port: -1},
		"root login yes": {PermitRootLogin: "yes"},
		"root injection": {PermitRootLogin: "no\nPasswordAuthentication yes"},
	} {
		if cfg, err := bastion.SSHDConfig(o); err == nil {
			t.Errorf("%s: accepted:\n%s", name, cfg)
		}
	}
	_, err := bastion.SSHDConfig(bastion.SSHDConfigOptions{Port: 70000, RevokedKeys: "a b"})
	if err == nil || !strings.Contains(err.Error(), "port") || !strings.Contains(err.Error(), "RevokedKeys") {
		t.Errorf("want every problem reported together, got %v", err)
	}
}

// TestShippedSSHDConfig: deploy/bastion/sshd_config is exactly the default rendering, so the
// two cannot drift (go test ./bastion -run TestShippedSSHDConfig -update rewrites it).
func TestShippedSSHDConfig(t *testing.T) {
	want, err := bastion.SSHDConfig(bastion.SSHDConfigOptions{})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("..", "deploy", "bastion", "sshd_config")
	if *update {
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./bastion -update)", err)
	}
	if string(got) != want {
		t.Errorf("%s differs from SSHDConfig(defaults); run go test ./bastion -run TestShippedSSHDConfig -update", path)
	}
}

func ExampleSSHDConfig() {
	cfg, err := bastion.SSHDConfig(bastion.SSHDConfigOptions{Port: 2222, ListenAddresses: []string{"192.0.2.10"}})
	if err != nil {
		panic(err)
	}
	for _, l := range strings.Split(cfg, "\n") {
		if strings.HasPrefix(l, "Port ") || strings.HasPrefix(l, "ListenAddress ") || strings.HasPrefix(l, "RevokedKeys ") {
			fmt.Println(l)
		}
	}
	// Output:
	// Port 2222
	// ListenAddress 192.0.2.10
	// RevokedKeys /etc/ssh/sshca.krl
}

// TestSSHDConfigRecordBlock: with RecordGroups, sshd's effective configuration for a member
// runs the recorder with ExposeAuthInfo, no ~/.ssh/rc and no forwarding (the block sits above
// Match all, whose values would otherwise win), and a non-member's is unchanged; without it
// the block is only a comment. A group list or pattern in one name is refused.
func TestSSHDConfigRecordBlock(t *testing.T) {
	effective := func(t *testing.T, h *bastionHost, user string) string {
		sshd, path := h.write(t, nil)
		out, err := exec.Command(sshd, "-T", "-C", "user="+user+",host=client,addr=127.0.0.1", "-f", path).CombinedOutput()
		if err != nil {
			t.Fatalf("sshd -T -C: %v\n%s", err, out)
		}
		return string(out)
	}
	h := newBastionHost(t)
	h.opts.RecordGroups = []string{"root"}
	h.opts.RecordCommand = "/opt/sshca/sshca-record"
	member := effective(t, h, "root")
	for _, want := range []string{"forcecommand /opt/sshca/sshca-record", "exposeauthinfo yes", "permituserrc no",
		"disableforwarding yes", "allowtcpforwarding no", "allowagentforwarding no", "x11forwarding no", "permittunnel no"} {
		if !strings.Contains(member, "\n"+want+"\n") {
			t.Errorf("a member's effective configuration lacks %q", want)
		}
	}
	other := effective(t, h, "nobody")
	for _, want := range []string{"permituserrc yes", "exposeauthinfo no", "disableforwarding no"} {
		if !strings.Contains(other, "\n"+want+"\n") {
			t.Errorf("a non-member's effective configuration lacks %q", want)
		}
	}
	if strings.Contains(other, "forcecommand /opt") {
		t.Error("a non-member's sessions are recorded")
	}
	h.opts.RecordGroups = nil
	if off := effective(t, h, "root"); strings.Contains(off, "forcecommand /") || !strings.Contains(off, "\npermituserrc yes\n") {
		t.Error("without RecordGroups the block is in force")
	}
	for _, bad := range []string{"a,b", "!root", "wheel*", "two words"} {
		h.opts.RecordGroups = []string{bad}
		if _, err := bastion.SSHDConfig(h.opts); err == nil || !strings.Contains(err.Error(), "RecordGroups") {
			t.Errorf("RecordGroups %q: %v, want refused naming RecordGroups", bad, err)
		}
	}
}
