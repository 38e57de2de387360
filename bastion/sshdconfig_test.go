package bastion_test

import (
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sshca/sshca/bastion"
	"github.com/sshca/sshca/internal/testenv"
)

var update = flag.Bool("update", false, "rewrite deploy/bastion/sshd_config")

// TestSSHDConfigAcceptedBySSHD: sshd -t accepts the rendered configuration.
func TestSSHDConfigAcceptedBySSHD(t *testing.T) {
	sshd := testenv.Need(t, "sshd", "/usr/sbin")
	keygen := testenv.Need(t, "ssh-keygen")
	dir := t.TempDir()
	testenv.Run(t, keygen, "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, "host"))
	testenv.Run(t, keygen, "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, "ca"))
	testenv.Run(t, keygen, "-q", "-s", filepath.Join(dir, "ca"), "-h", "-I", "host", "-n", "127.0.0.1", filepath.Join(dir, "host.pub"))
	testenv.Run(t, keygen, "-q", "-k", "-f", filepath.Join(dir, "krl"))
	cfg, err := bastion.SSHDConfig(bastion.SSHDConfigOptions{
		Port: testenv.FreePort(t), ListenAddresses: []string{"127.0.0.1"},
		HostKeys: []string{filepath.Join(dir, "host")}, HostCertificates: []string{filepath.Join(dir, "host-cert.pub")},
		TrustedUserCAKeys: filepath.Join(dir, "ca.pub"), RevokedKeys: filepath.Join(dir, "krl"),
		AuthorizedPrincipalsFile: filepath.Join(dir, "principals-%u"),
	})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "sshd_config")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = os.MkdirAll("/run/sshd", 0o755)
	if out, err := exec.Command(sshd, "-t", "-f", path).CombinedOutput(); err != nil {
		t.Fatalf("sshd -t rejects the configuration: %v\n%s\n%s", err, out, cfg)
	}
	out, err := exec.Command(sshd, "-T", "-f", path).CombinedOutput()
	if err != nil {
		t.Fatalf("sshd -T: %v\n%s", err, out)
	}
	for _, want := range []string{"passwordauthentication no", "kbdinteractiveauthentication no", "permitrootlogin no",
		"authorizedkeysfile none", "loglevel VERBOSE", "maxauthtries 3", "x11forwarding no", "revokedkeys " + filepath.Join(dir, "krl")} {
		if !strings.Contains(string(out), want+"\n") {
			t.Errorf("effective configuration lacks %q", want)
		}
	}
}

func TestSSHDConfigRefusesInjection(t *testing.T) {
	for _, bad := range []string{"/etc/x\nPasswordAuthentication yes", "a b", "x#y", ""} {
		if _, err := bastion.SSHDConfig(bastion.SSHDConfigOptions{TrustedUserCAKeys: bad + "z"}); err == nil && bad != "" {
			t.Errorf("%q accepted", bad)
		}
	}
	if _, err := bastion.SSHDConfig(bastion.SSHDConfigOptions{Port: 70000}); err == nil {
		t.Error("port 70000 accepted")
	}
}

// TestShippedSSHDConfig: deploy/bastion/sshd_config is exactly the default rendering
// (go test ./bastion -update rewrites it).
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
		t.Errorf("%s differs from SSHDConfig(defaults); run go test ./bastion -update", path)
	}
}
