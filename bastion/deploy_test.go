package bastion_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/sshca/sshca/bastion"
)

// TestShippedAgentUnit: the systemd unit's agent writes the files the shipped sshd_config
// reads (through the links the unit makes), writes an empty KRL before sshd starts, and runs
// confined as its own user.
func TestShippedAgentUnit(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "deploy", "systemd", "sshca-bastion-agent.service"))
	if err != nil {
		t.Fatal(err)
	}
	unit := strings.ReplaceAll(string(b), "\\\n", " ")
	directive := func(name string) []string {
		var vs []string
		for _, l := range strings.Split(unit, "\n") {
			if v, ok := strings.CutPrefix(l, name+"="); ok {
				vs = append(vs, v)
			}
		}
		return vs
	}
	flag := func(name string) string {
		m := regexp.MustCompile(`--` + name + ` (\S+)`).FindStringSubmatch(strings.Join(directive("ExecStart"), " "))
		if m == nil {
			t.Fatalf("ExecStart has no --%s", name)
		}
		return m[1]
	}
	links := map[string]string{} // link -> target, resolved
	for _, pre := range directive("ExecStartPre") {
		if f := strings.Fields(pre); len(f) == 4 && strings.HasSuffix(f[0], "/ln") && f[1] == "-sfn" {
			target := f[2]
			if !filepath.IsAbs(target) {
				target = filepath.Join(filepath.Dir(f[3]), target)
			}
			links[f[3]] = target
		}
	}
	for _, c := range []struct{ sshdPath, flag string }{
		{bastion.DefaultRevokedKeys, "krl"},
		{bastion.DefaultTrustedUserCAKeys, "user-ca"},
	} {
		if got, want := links[c.sshdPath], flag(c.flag); got != want {
			t.Errorf("sshd reads %s, which links to %q; the agent writes --%s %s", c.sshdPath, got, c.flag, want)
		}
		// The agent checks the link it exits for, and ExecStartPre (run on every restart)
		// makes exactly that one.
		if got := flag(c.flag + "-link"); got != c.sshdPath {
			t.Errorf("--%s-link %s, but sshd reads %s", c.flag, got, c.sshdPath)
		}
		if rw := directive("ReadWritePaths"); len(rw) != 1 || filepath.Dir(flag(c.flag)) != rw[0] {
			t.Errorf("--%s %s is not in ReadWritePaths %v", c.flag, flag(c.flag), rw)
		}
	}
	if got := flag("sshd-config"); got != "/etc/ssh/sshd_config" {
		t.Errorf("--sshd-config %s: the drift check must read the sshd_config sshd reads", got)
	}
	krlPath := flag("krl")
	if !strings.Contains(strings.Join(directive("ExecStartPre"), "\n"), "test -s "+krlPath+" || exec /usr/bin/ssh-keygen -q -k -f "+krlPath) {
		t.Error("no ExecStartPre writes an empty KRL when there is none")
	}
	for name, want := range map[string]string{
		"User": "sshca-bastion", "ProtectSystem": "strict", "NoNewPrivileges": "yes", "PrivateTmp": "yes",
		"ProtectHome": "read-only", "Restart": "always", "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX AF_NETLINK",
		"Before": "ssh.service sshd.service",
	} {
		if got := directive(name); len(got) != 1 || got[0] != want {
			t.Errorf("%s=%v, want %s", name, got, want)
		}
	}
	if strings.Contains(strings.Join(directive("ExecStart"), " "), "--redis") {
		t.Error("--redis on the command line would show the Redis password to every local user")
	}
}
