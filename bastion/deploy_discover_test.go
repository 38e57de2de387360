package bastion_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/bastion"
	"github.com/sshca/sshca/internal/testenv"
)

// shippedUnit reads deploy/systemd/name: each directive's values in order, continuation lines
// joined.
func shippedUnit(t *testing.T, name string) map[string][]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "deploy", "systemd", name))
	if err != nil {
		t.Fatal(err)
	}
	d := map[string][]string{}
	for _, l := range strings.Split(strings.ReplaceAll(string(b), "\\\n", " "), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok && !strings.HasPrefix(l, "#") {
			d[k] = append(d[k], strings.Join(strings.Fields(v), " "))
		}
	}
	return d
}

// unitFlag is the value of --name in the unit's ExecStart.
func unitFlag(t *testing.T, unit map[string][]string, name string) string {
	t.Helper()
	m := regexp.MustCompile(`--` + name + ` (\S+)`).FindStringSubmatch(strings.Join(unit["ExecStart"], " "))
	if m == nil {
		t.Fatalf("ExecStart %q has no --%s", unit["ExecStart"], name)
	}
	return m[1]
}

func one(unit map[string][]string, name string) string {
	if len(unit[name]) != 1 {
		return strings.Join(unit[name], " | ")
	}
	return unit[name][0]
}

// TestShippedDiscoverDisableUnits: the agent's unit reports on a schedule and writes the
// CA's disable orders to the file that the path unit watches and the disable unit reads; the
// agent keeps homes read-only and no CAP_SETUID/CAP_SETGID, and the disable unit has exactly
// those rights (and reading homes), writable homes and its state directory, no network, the
// agent's user, and a system call filter that lets setfsuid through; systemd-analyze verify
// finds nothing wrong in either unit.
func TestShippedDiscoverDisableUnits(t *testing.T) {
	agent, disable, path := shippedUnit(t, "sshca-bastion-agent.service"), shippedUnit(t, "sshca-discover-disable.service"), shippedUnit(t, "sshca-discover-disable.path")
	if !strings.Contains(strings.Join(agent["ExecStart"], " "), " --discover ") {
		t.Error("the agent's unit does not run discovery (--discover)")
	}
	orders := unitFlag(t, agent, "discover-orders")
	if got := unitFlag(t, disable, "orders"); got != orders {
		t.Errorf("the disable unit reads --orders %s, the agent writes %s", got, orders)
	}
	if got := one(path, "PathChanged"); got != orders {
		t.Errorf("the path unit watches %s, the agent writes %s", got, orders)
	}
	if got := one(path, "Unit"); got != "sshca-discover-disable.service" {
		t.Errorf("the path unit starts %s", got)
	}
	under := func(p string, dirs []string) bool {
		for _, field := range dirs {
			for _, d := range strings.Fields(field) {
				if d = strings.TrimPrefix(d, "-"); p == d || strings.HasPrefix(p, d+"/") {
					return true
				}
			}
		}
		return false
	}
	if !under(orders, agent["ReadWritePaths"]) {
		t.Errorf("the agent cannot write %s: ReadWritePaths %v", orders, agent["ReadWritePaths"])
	}
	for _, p := range []string{unitFlag(t, disable, "state-dir"), "/home/alice/.ssh/authorized_keys", "/root/.ssh/authorized_keys"} {
		if !under(p, disable["ReadWritePaths"]) {
			t.Errorf("the disable unit cannot write %s: ReadWritePaths %v", p, disable["ReadWritePaths"])
		}
	}
	for _, name := range []string{"AmbientCapabilities", "CapabilityBoundingSet"} {
		caps := strings.Fields(one(disable, name))
		slices.Sort(caps)
		if want := []string{"CAP_DAC_READ_SEARCH", "CAP_SETGID", "CAP_SETUID"}; !slices.Equal(caps, want) {
			t.Errorf("disable unit %s=%v, want exactly %v", name, caps, want)
		}
		if a := one(agent, name); strings.Contains(a, "CAP_SETUID") || strings.Contains(a, "CAP_SETGID") {
			t.Errorf("agent unit %s=%s: the networked agent must not take other uids", name, a)
		}
	}
	for _, c := range []struct {
		name string
		unit map[string][]string
		want map[string]string
	}{
		{"disable unit", disable, map[string]string{"User": one(agent, "User"), "Type": "oneshot", "NoNewPrivileges": "yes",
			"ProtectSystem": "strict", "PrivateNetwork": "yes", "RestrictAddressFamilies": "AF_UNIX"}},
		{"agent unit", agent, map[string]string{"ProtectHome": "read-only"}},
	} {
		for name, v := range c.want {
			if got := one(c.unit, name); got != v {
				t.Errorf("%s: %s=%s, want %s", c.name, name, got, v)
			}
		}
	}
	// setfsuid is in @privileged and @setuid: the agent's filter denies it, the disable unit's
	// must not.
	for _, f := range disable["SystemCallFilter"] {
		if strings.HasPrefix(f, "~") && (strings.Contains(f, "@privileged") || strings.Contains(f, "@setuid")) {
			t.Errorf("the disable unit denies setfsuid: SystemCallFilter=%s", f)
		}
	}

	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze not installed: units not verified")
		return
	}
	for _, name := range []string{"sshca-bastion-agent.service", "sshca-discover-disable.service", "sshca-discover-disable.path"} {
		out, _ := exec.Command(analyze, "verify", "--man=no", filepath.Join("..", "deploy", "systemd", name)).CombinedOutput()
		for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			// Not installed here, and no systemd running: the only complaints allowed.
			if l == "" || strings.Contains(l, "/usr/local/bin/sshca is not executable") || strings.Contains(l, "not found") && strings.Contains(l, ".target") {
				continue
			}
			t.Errorf("systemd-analyze verify %s: %s", name, l)
		}
	}
}

// disableHelperEnv names the file, fingerprint and state directory for TestDisableHelper.
const disableHelperEnv = "SSHCA_TEST_DISABLE_KEY"

// TestDisableHelper is not a test: TestDisableUnderShippedUnitRights runs this test binary
// with it, under a unit's user and capabilities, to call DisableKey there.
func TestDisableHelper(t *testing.T) {
	arg := os.Getenv(disableHelperEnv)
	if arg == "" {
		t.Skip("run by TestDisableUnderShippedUnitRights")
	}
	var a [3]string
	if err := json.Unmarshal([]byte(arg), &a); err != nil {
		t.Fatal(err)
	}
	if _, err := bastion.DisableKey(a[0], a[1], a[2]); err != nil {
		t.Fatalf("DisableKey: %v", err)
	}
}

// TestDisableUnderShippedUnitRights runs DisableKey with the rights the shipped units give
// (user, capabilities, home directories read-only or writable, no new privileges; a mount
// namespace stands in for ProtectHome=read-only) on an authorized_keys file of an account the
// test creates: under the agent's unit it cannot (the reason the disable unit exists), under
// the disable unit's it does, as the owner (same inode, owner, mode), and it cannot without
// CAP_SETUID, nor where that unit's homes are read-only (a home outside its ReadWritePaths).
func TestDisableUnderShippedUnitRights(t *testing.T) {
	setpriv := testenv.Need(t, "setpriv", "/usr/bin")
	unshare := testenv.Need(t, "unshare", "/usr/bin")
	if os.Geteuid() != 0 {
		t.Skip("needs root (accounts, mount namespaces)")
	}
	if out, err := exec.Command(unshare, "-m", "true").CombinedOutput(); err != nil {
		t.Skipf("no mount namespaces here: %v %s", err, out)
	}
	root := t.TempDir()
	for _, d := range []string{filepath.Dir(root), root} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	homes := filepath.Join(root, "home")
	home := filepath.Join(homes, "owner")
	owner := testAccount(t, home)
	svc := testAccount(t, filepath.Join(root, "svc-home")) // stands in for sshca-bastion
	ids := func(name string) (int, int) {
		u, err := user.Lookup(name)
		if err != nil {
			t.Fatal(err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		return uid, gid
	}
	ouid, ogid := ids(owner)
	suid, sgid := ids(svc)
	file := filepath.Join(home, ".ssh", "authorized_keys")
	state := filepath.Join(root, "state")
	for _, d := range []struct {
		path     string
		uid, gid int
		mode     os.FileMode
	}{{homes, 0, 0, 0o755}, {home, ouid, ogid, 0o750}, {filepath.Dir(file), ouid, ogid, 0o700}, {state, suid, sgid, 0o700}} {
		if err := os.MkdirAll(d.path, d.mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(d.path, d.uid, d.gid); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d.path, d.mode); err != nil {
			t.Fatal(err)
		}
	}
	var lines []string
	var fp string
	for i := range 2 {
		pub, _, _ := ed25519.GenerateKey(rand.Reader)
		k, _ := ssh.NewPublicKey(pub)
		lines = append(lines, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))+" key"+strconv.Itoa(i))
		fp = ssh.FingerprintSHA256(k)
	}
	original := strings.Join(lines, "\n") + "\n"
	if err := os.WriteFile(file, []byte(original), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(file, ouid, ogid); err != nil {
		t.Fatal(err)
	}
	var before syscall.Stat_t
	if err := syscall.Stat(file, &before); err != nil {
		t.Fatal(err)
	}
	// The test binary, where the service user can run it.
	bin := filepath.Join(root, "bastion.test")
	src, err := os.Open(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	if err == nil {
		_, err = io.Copy(dst, src)
		dst.Close()
	}
	src.Close()
	if err != nil {
		t.Fatal(err)
	}

	// run calls DisableKey as the unit would: its user, its capabilities (ambient and
	// bounding), no new privileges, homes read-only unless the unit makes them writable.
	run := func(unit map[string][]string, drop string) (string, error) {
		var caps []string
		for _, c := range strings.Fields(one(unit, "AmbientCapabilities")) {
			if c != drop {
				caps = append(caps, "+"+strings.ToLower(strings.TrimPrefix(c, "CAP_")))
			}
		}
		set := strings.Join(append([]string{"-all"}, caps...), ",")
		arg, _ := json.Marshal([3]string{file, fp, state})
		priv := []string{setpriv, "--reuid=" + strconv.Itoa(suid), "--regid=" + strconv.Itoa(sgid), "--clear-groups",
			"--inh-caps=" + set, "--ambient-caps=" + set, "--bounding-set=" + set}
		if one(unit, "NoNewPrivileges") == "yes" {
			priv = append(priv, "--no-new-privs")
		}
		priv = append(priv, "--", bin, "-test.run=^TestDisableHelper$", "-test.count=1")
		script := `exec "$@"`
		if one(unit, "ProtectHome") != "no" || !strings.Contains(strings.Join(unit["ReadWritePaths"], " "), "/home") {
			// ProtectHome=read-only (or homes outside ReadWritePaths under ProtectSystem=strict).
			script = `mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"`
		}
		cmd := exec.Command(unshare, append([]string{"-m", "--propagation", "private", "sh", "-c", script, homes}, priv...)...)
		cmd.Env = append(os.Environ(), disableHelperEnv+"="+string(arg))
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	unchanged := func(what string) {
		t.Helper()
		if b, _ := os.ReadFile(file); string(b) != original {
			t.Errorf("%s: the file changed:\n%s", what, b)
		}
	}
	agent, disable := shippedUnit(t, "sshca-bastion-agent.service"), shippedUnit(t, "sshca-discover-disable.service")

	if out, err := run(agent, ""); err == nil {
		t.Errorf("DisableKey succeeded with the agent unit's rights:\n%s", out)
	} else {
		t.Logf("agent unit: %s", lastLine(out))
	}
	unchanged("agent unit")
	if out, err := run(disable, "CAP_SETUID"); err == nil || !strings.Contains(out, "CAP_SETUID") {
		t.Errorf("disable unit without CAP_SETUID: %v\n%s", err, out)
	}
	unchanged("without CAP_SETUID")
	roHomes := map[string][]string{}
	for k, v := range disable {
		roHomes[k] = v
	}
	roHomes["ReadWritePaths"] = []string{unitFlag(t, disable, "state-dir")}
	if out, err := run(roHomes, ""); err == nil || !strings.Contains(out, "read-only file system") {
		t.Errorf("DisableKey with a home outside the unit's ReadWritePaths: %v\n%s", err, out)
	}
	unchanged("home read-only")

	if out, err := run(disable, ""); err != nil {
		t.Fatalf("DisableKey with the disable unit's rights: %v\n%s", err, out)
	}
	b, _ := os.ReadFile(file)
	want := lines[0] + "\n" + bastion.DisabledPrefix + lines[1] + "\n"
	if string(b) != want {
		t.Errorf("after disable:\n%s\nwant:\n%s", b, want)
	}
	var after syscall.Stat_t
	if err := syscall.Stat(file, &after); err != nil {
		t.Fatal(err)
	}
	if after.Ino != before.Ino || after.Uid != before.Uid || after.Gid != before.Gid || after.Mode != before.Mode {
		t.Errorf("inode, owner or mode changed: %+v, was %+v", after, before)
	}
	marker, err := os.ReadFile(filepath.Join(state, "disabled.jsonl"))
	if err != nil || !strings.Contains(string(marker), fp) {
		t.Errorf("marker in the state directory: %v %s", err, marker)
	}
}

// lastLine is the helper's error line.
func lastLine(out string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "DisableKey") {
			return strings.TrimSpace(l)
		}
	}
	return out
}
