package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sshca/sshca/internal/testenv"
)

// readmeSection returns the lines of the ```sh blocks of the README section whose heading is
// title (up to the next heading), and those of the last block before it.
func readmeSection(t *testing.T, title string) (blocks []string, before string) {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	in, done := false, false
	var cur *strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() && !done {
		line := sc.Text()
		switch {
		case cur == nil && line == title:
			in = true
		case cur == nil && in && strings.HasPrefix(line, "#"):
			done = true
		case line == "```sh":
			cur = &strings.Builder{}
		case line == "```" && cur != nil:
			if in {
				blocks = append(blocks, cur.String())
			} else {
				before = cur.String()
			}
			cur = nil
		case cur != nil:
			cur.WriteString(line + "\n")
		}
	}
	if !in {
		t.Fatalf("README.md has no heading %q", title)
	}
	return blocks, before
}

var (
	hostMarkRE = regexp.MustCompile(`\s+# host:.*$`)
	heredocRE  = regexp.MustCompile(`<<-?'?([A-Za-z_]+)'?`)
)

// readmeHost says where the README's `# host:` lines go instead of the machine's sshd.
type readmeHost struct {
	dir  string // stands for /etc/ssh
	sshd string // the sshd binary
	cfg  string // the throwaway sshd's sshd_config (stands for /etc/ssh/sshd_config)
}

// mapHostLine turns a `# host:` line (or a line of a heredoc it opens) into its test form:
// no sudo (the test runs as root, the throwaway sshd too), /etc/ssh/ as the throwaway sshd's
// directory, `sshd -t` checking its configuration, `systemctl reload ssh` reloading it, and
// package installation left out (the test needs the packages it installs already there).
func (h readmeHost) mapHostLine(line string) string {
	line = hostMarkRE.ReplaceAllString(line, "")
	if strings.Contains(line, "apt-get install") {
		return ": packages are prerequisites of the test, checked by testenv.Need"
	}
	line = strings.ReplaceAll(line, "sudo ", "")
	line = strings.ReplaceAll(line, "sshd -t", h.sshd+" -t -f "+h.cfg)
	line = strings.ReplaceAll(line, "systemctl reload ssh", "sshd_reload")
	return strings.ReplaceAll(line, "/etc/ssh/", h.dir+"/")
}

// mapScript maps the `# host:` lines of the blocks (and the heredocs they open) and joins
// them into one script; every line gets mapEverywhere.
func (h readmeHost) mapScript(t *testing.T, blocks []string, mapEverywhere func(string) string) (script string, hostLines int) {
	var b strings.Builder
	for _, block := range blocks {
		heredoc := ""
		for _, line := range strings.Split(strings.TrimSuffix(block, "\n"), "\n") {
			switch {
			case heredoc != "":
				if line == heredoc {
					heredoc = ""
				} else {
					line = strings.ReplaceAll(line, "/etc/ssh/", h.dir+"/")
				}
			case hostMarkRE.MatchString(line):
				hostLines++
				if m := heredocRE.FindStringSubmatch(line); m != nil {
					heredoc = m[1]
				}
				line = h.mapHostLine(line)
			}
			b.WriteString(mapEverywhere(line) + "\n")
		}
		if heredoc != "" {
			t.Fatalf("a heredoc (%s) of the README's sshd section does not end in its block", heredoc)
		}
	}
	return b.String(), hostLines
}

// TestREADMERealSSHD runs the README's "Use it with a real sshd" section word for word with
// bash, after the quickstart block before it, against a `sshca dev` of its own and a throwaway
// sshd configured as Debian 12 ships it (sshd_config.d included first). Lines marked
// `# host:` are pointed at that sshd (readmeHost.mapHostLine); everywhere, the service URL
// and the demo directory are the test's own, and `ssh` reaches the throwaway sshd's port
// with the known_hosts under $HOME (ssh itself reads the passwd entry's home) and strict host
// key checking. The login must succeed by certificate, for principal alice, into the
// account the section names.
func TestREADMERealSSHD(t *testing.T) {
	sshdBin := testenv.Need(t, "sshd", "/usr/sbin")
	sshBin := testenv.Need(t, "ssh")
	testenv.Need(t, "ssh-keygen")
	testenv.Need(t, "curl")
	blocks, quickstart := readmeSection(t, "### Use it with a real sshd")
	if len(blocks) < 2 || quickstart == "" {
		t.Fatalf("the README's sshd section has %d sh blocks and none before it", len(blocks))
	}
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}

	tmp := t.TempDir()
	bin := filepath.Join(tmp, "bin")
	if out, err := exec.Command("go", "build", "-o", filepath.Join(bin, "sshca"), ".").CombinedOutput(); err != nil {
		t.Fatalf("build sshca: %v\n%s", err, out)
	}
	home := filepath.Join(tmp, "home") // ~/.ssh does not exist yet: the section creates it
	state := filepath.Join(home, ".local", "state", "sshca-dev")
	if err := os.MkdirAll(state, 0o700); err != nil {
		t.Fatal(err)
	}
	base := startDevAt(t, state)

	// The host: an sshd as Debian configures it, with its own host key.
	host := readmeHost{dir: filepath.Join(tmp, "etc-ssh"), sshd: sshdBin}
	host.cfg = filepath.Join(host.dir, "sshd_config")
	if err := os.MkdirAll(filepath.Join(host.dir, "sshd_config.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	keygen(t, host.dir, "ssh_host_ed25519_key")
	port := testenv.FreePort(t)
	writeFile(t, host.cfg, strings.Join([]string{
		"Include " + host.dir + "/sshd_config.d/*.conf",
		"Port " + strconv.Itoa(port),
		"ListenAddress 127.0.0.1",
		"HostKey " + host.dir + "/ssh_host_ed25519_key",
		"AuthorizedKeysFile none", // only certificates can let the test in
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"UsePAM no",
		"StrictModes no",
		"LogLevel VERBOSE",
		"PidFile " + host.dir + "/sshd.pid",
	}, "\n")+"\n")
	sshdLog := filepath.Join(host.dir, "sshd.log")
	logFile, err := os.Create(sshdLog)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logFile.Close() })
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	sshd := exec.CommandContext(ctx, sshdBin, "-D", "-e", "-f", host.cfg)
	sshd.Stdout, sshd.Stderr = logFile, logFile
	if err := sshd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = sshd.Wait()
		if t.Failed() {
			t.Logf("sshd log:\n%s", readFile(t, sshdLog))
		}
	})
	testenv.WaitDial(t, fmt.Sprintf("127.0.0.1:%d", port), 10*time.Second)

	// ssh as the section runs it, pointed at the throwaway sshd's port.
	writeFileMode(t, filepath.Join(bin, "ssh"), fmt.Sprintf(`#!/bin/sh
exec %s -F none -p %d -o UserKnownHostsFile="$HOME/.ssh/known_hosts" -o GlobalKnownHostsFile=/dev/null \
  -o StrictHostKeyChecking=yes -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityAgent=none -o ConnectTimeout=10 "$@"
`, sshBin, port), 0o755)

	demo := filepath.Join(tmp, "sshca-demo")
	if err := os.MkdirAll(demo, 0o700); err != nil {
		t.Fatal(err)
	}
	keygen(t, demo, "id_ed25519")
	everywhere := strings.NewReplacer(
		"http://127.0.0.1:8080", base,
		"sshca dev token ", "sshca dev token --server "+base+" ",
		"/tmp/sshca-demo", demo,
	).Replace
	script, hostLines := host.mapScript(t, blocks, everywhere)
	if hostLines < 5 {
		t.Fatalf("the section marks %d lines # host:, the test expects those that write /etc/ssh and the reload", hostLines)
	}
	for _, bad := range []string{"/etc/ssh", "sudo", "systemctl"} {
		if strings.Contains(script, bad) {
			t.Fatalf("after mapping, the script still names %q: a line that needs the host lacks its # host: mark\n%s", bad, script)
		}
	}
	preamble := fmt.Sprintf(`sshd_reload() {
  n=$(grep -c 'Server listening' %[1]q)
  kill -HUP "$(cat %[2]q)"
  for i in $(seq 100); do
    [ "$(grep -c 'Server listening' %[1]q)" -gt "$n" ] && return 0
    sleep 0.1
  done
  echo "sshd did not come back after the reload" >&2; return 1
}
`, sshdLog, filepath.Join(host.dir, "sshd.pid"))

	env := append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "HOME="+home, "XDG_STATE_HOME=",
		"SSHCA_TOKEN=", "SSHCA_SERVER=", "SSH_AUTH_SOCK=")
	runBash := func(name, s string) string {
		t.Helper()
		cmd := exec.Command("bash", "-e", "-o", "pipefail", "-x", "-c", s)
		cmd.Env, cmd.Dir, cmd.Stdin = env, tmp, strings.NewReader("")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s failed: %v\nscript:\n%s\noutput:\n%s", name, err, s, out)
		}
		return string(out)
	}

	// What the quickstart leaves: its last certificate is for root, not alice.
	runBash("the quickstart's last block", everywhere(quickstart))
	if c := parseCert(t, readFile(t, filepath.Join(demo, "id_ed25519-cert.pub"))); strings.Join(c.ValidPrincipals, ",") != "root" {
		t.Fatalf("the quickstart left a certificate for %v, the test expects root", c.ValidPrincipals)
	}

	out := runBash("the README's sshd section", preamble+script)
	t.Logf("section output:\n%s", out)
	if !strings.Contains(out, "uid=") {
		t.Errorf("the section's ssh ran no command on the host:\n%s", out)
	}
	if fi, err := os.Stat(filepath.Join(home, ".ssh")); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("~/.ssh: %v, mode %v, want 0700", err, fi)
	}
	if _, err := os.Stat(filepath.Join(host.dir, "sshd_config.d", "sshca.conf")); err != nil {
		t.Errorf("the section wrote no drop-in: %v", err)
	}
	log := readFile(t, sshdLog)
	accepted := regexp.MustCompile(`Accepted publickey for ` + regexp.QuoteMeta(me.Username) + ` from 127\.0\.0\.1 .* ED25519-CERT .* ID alice@example\.com~`)
	if !accepted.MatchString(log) {
		t.Errorf("sshd did not accept alice's certificate for %s:\n%s", me.Username, log)
	}
	if !strings.Contains(log, "Received SIGHUP") {
		t.Errorf("the section's reload did not reach sshd")
	}
}

// startDevAt runs `sshca dev` in-process on a free loopback port with the given state
// directory (where `sshca dev token` finds the secret) and returns its base URL.
func startDevAt(t *testing.T, state string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	errc := make(chan error, 1)
	go func() {
		errc <- runDev(ctx, devOptions{listen: "127.0.0.1:0", state: state, out: io.Discard, log: testLog(t), ready: ready})
	}()
	select {
	case base := <-ready:
		t.Cleanup(func() { cancel(); <-errc })
		return base
	case err := <-errc:
		cancel()
		t.Fatalf("sshca dev: %v", err)
	case <-time.After(60 * time.Second):
		cancel()
		t.Fatal("sshca dev did not start within 60s")
	}
	return ""
}

func writeFileMode(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}
