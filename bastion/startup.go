package bastion

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/jonboulle/clockwork"
	"golang.org/x/sys/unix"
)

// DefaultHomeStartupFiles are the files under a home directory that run, or change what runs,
// before or around sshca-record (issue 18 §1): sshd starts ForceCommand as "$SHELL -c" and
// Debian's bash then reads ~/.bashrc (SSH_SOURCE_BASHRC); a login shell reads the profile
// files; sshd runs ~/.ssh/rc unless PermitUserRC is off and reads ~/.ssh/environment when
// PermitUserEnvironment is on; zsh reads its own; with UsePAM yes, Debian's /etc/pam.d/sshd
// runs pam_env with user_readenv=1, which reads ~/.pam_environment into the session (BASH_ENV
// set there is sourced by "bash -c"). Each is checked whether it exists or not: a missing one
// that the account could create is as bad as one it could edit.
var DefaultHomeStartupFiles = []string{
	".bashrc", ".bash_profile", ".bash_login", ".profile", ".bash_logout",
	".ssh/rc", ".ssh/environment", ".pam_environment",
	".zshenv", ".zprofile", ".zshrc", ".zlogin",
}

// DefaultSystemStartupFiles are the system-wide files the same shells and sshd read; a
// directory (/etc/profile.d, whose *.sh /etc/profile sources) is checked with its entries;
// pam_env's configuration and Debian's envfile are read with UsePAM yes.
var DefaultSystemStartupFiles = []string{
	"/etc/bash.bashrc", "/etc/profile", "/etc/profile.d", "/etc/environment", "/etc/ssh/sshrc",
	"/etc/zsh", "/etc/security/pam_env.conf", "/etc/default/locale",
}

// StartupCheck checks that the start-up files of recorded accounts (DefaultHomeStartupFiles
// under each home, DefaultSystemStartupFiles) cannot be changed by those accounts, and
// alerts when any of them changes.
//
// A path is safe for an account when neither the file nor any directory on the way to it
// (every component from "/", and every component of a symbolic link's target, followed as
// the kernel would) is owned by the account, writable by a group it belongs to (primary or
// in the group database), writable by everyone (except a sticky directory whose next
// component exists and is not the account's), or writable by it through a POSIX ACL. A
// missing file is safe when the account cannot create it, which the same walk decides.
// Accounts with uid 0 are not judged (root can write any file: the stated trust boundary),
// but their files are watched for changes.
//
// Changes are seen through inotify (fsnotify) on every directory involved and by a re-check
// every Every regardless (inotify misses changes made on another NFS client, and a lost event
// queue): each pass takes a fingerprint of every path (each link and its target, owner, mode
// and a SHA-256 of the content), and a fingerprint that differs from the previous pass is a
// StartupChange: logged at warn, counted, kept among the last few in the status, and handed
// to OnChange.
type StartupCheck struct {
	// Groups and Users name the recorded accounts: the members of each group (as the group
	// database lists them, and the accounts whose primary group it is) and each user.
	Groups, Users []string
	Passwd, Group string // defaults /etc/passwd, /etc/group
	// HomeFiles are relative to each home, SystemFiles absolute; nil: the defaults.
	HomeFiles, SystemFiles []string
	Every                  time.Duration // re-check interval; default 1 min
	NoWatch                bool          // re-check every Every only (homes without inotify)
	Clock                  clockwork.Clock
	Log                    *slog.Logger
	OnChange               func(StartupChange)

	// mu guards status and prints, written by passes, read by Status.
	mu      sync.Mutex
	status  StartupStatus
	prints  map[string]string   // path -> fingerprint of the last pass
	readers map[string][]string // path -> the recorded accounts that read it, last pass
	// afterPass, for tests, runs between a pass and the watches it leads to.
	afterPass func()
}

// StartupProblem is one path an account could change.
type StartupProblem struct {
	Account string `json:"account"`
	Path    string `json:"path"` // the start-up file as the shell or sshd names it
	Why     string `json:"why"`  // which component, and how the account can write it
}

// StartupChange is one start-up file that changed between two passes.
type StartupChange struct {
	At       time.Time `json:"at"`
	Accounts []string  `json:"accounts"` // the recorded accounts that read it
	Path     string    `json:"path"`
	// Was and Now are fingerprints: "missing", "link P -> T (uid N); ...", "file uid 0 gid 0
	// mode 0644 size N sha256 ...".
	Was string `json:"was"`
	Now string `json:"now"`
}

// StartupStatus is the check's state for /healthz and /metrics.
type StartupStatus struct {
	Checked  time.Time        `json:"checked,omitzero"`
	Accounts []string         `json:"accounts"` // recorded accounts checked
	Unsafe   []StartupProblem `json:"unsafe,omitempty"`
	Changes  uint64           `json:"changes"`          // since start
	Recent   []StartupChange  `json:"recent,omitempty"` // the last maxRecentChanges
	Error    string           `json:"error,omitempty"`  // why the last pass could not run
}

const maxRecentChanges = 20

// maxStartupFileSize bounds what is hashed of one start-up file; past it the fingerprint
// covers the first bytes, size and time.
const maxStartupFileSize = 1 << 20

// Status is the check's state after its last pass.
func (c *StartupCheck) Status() StartupStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.status
	s.Accounts = slices.Clone(s.Accounts)
	s.Unsafe = slices.Clone(s.Unsafe)
	s.Recent = slices.Clone(s.Recent)
	for i := range s.Recent {
		s.Recent[i].Accounts = slices.Clone(s.Recent[i].Accounts)
	}
	return s
}

// Problems are the /healthz problems: one line per account whose start-up files it can change.
func (s StartupStatus) Problems() []string {
	by := map[string][]string{}
	var names []string
	for _, p := range s.Unsafe {
		if by[p.Account] == nil {
			names = append(names, p.Account)
		}
		by[p.Account] = append(by[p.Account], p.Path+" ("+p.Why+")")
	}
	var out []string
	for _, n := range names {
		out = append(out, fmt.Sprintf("recorded account %s can change start-up files that run before the recorder: %s", n, strings.Join(by[n], "; ")))
	}
	if s.Error != "" {
		out = append(out, "start-up files of recorded accounts not checked: "+s.Error)
	}
	return out
}

// Check runs one pass: it judges every recorded account's start-up files, takes their
// fingerprints, and reports what changed since the previous pass (none on the first).
func (c *StartupCheck) Check() StartupStatus {
	// OnChange is called outside the lock, so that it may read Status.
	for _, ch := range c.check() {
		if c.OnChange != nil {
			c.OnChange(ch)
		}
	}
	return c.Status()
}

func (c *StartupCheck) check() (fire []StartupChange) {
	now := c.clock().Now()
	accounts, err := c.recordedAccounts()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.status.Checked = now
	c.status.Error = ""
	if err != nil {
		// A recorded group or user that is not there: say so, and check the others.
		c.status.Error = err.Error()
	}
	c.status.Accounts = c.status.Accounts[:0]
	c.status.Unsafe = nil
	prints := map[string]string{}
	readers := map[string][]string{}
	system := c.systemPaths()
	pc := newPassCache()
	for _, a := range accounts {
		c.status.Accounts = append(c.status.Accounts, a.Name)
		for _, p := range c.paths(a, system) {
			readers[p] = append(readers[p], a.Name)
			if _, ok := prints[p]; !ok {
				prints[p] = fingerprint(p, pc)
			}
			if a.UID == 0 {
				continue
			}
			for _, why := range writableBy(p, a, pc) {
				c.status.Unsafe = append(c.status.Unsafe, StartupProblem{Account: a.Name, Path: p, Why: why})
			}
		}
	}
	if c.prints != nil {
		// A path that appeared or went away (a file in /etc/profile.d) is a change for the
		// accounts that were recorded before; a new account's files are its baseline.
		was := map[string]bool{}
		for _, rs := range c.readers {
			for _, r := range rs {
				was[r] = true
			}
		}
		known := func(rs []string) bool { return slices.ContainsFunc(rs, func(r string) bool { return was[r] }) }
		type change struct {
			path, was, now string
			accounts       []string
		}
		var changed []change
		for p, fp := range prints {
			if old, ok := c.prints[p]; ok && old != fp || !ok && known(readers[p]) {
				if !ok {
					old = "missing"
				}
				changed = append(changed, change{p, old, fp, readers[p]})
			}
		}
		for p, old := range c.prints {
			if _, ok := prints[p]; !ok && slices.ContainsFunc(c.readers[p], func(r string) bool { return slices.Contains(c.status.Accounts, r) }) {
				// Gone from the list of an account still recorded (and forgotten after this report).
				changed = append(changed, change{p, old, "missing", c.readers[p]})
			}
		}
		slices.SortFunc(changed, func(a, b change) int { return strings.Compare(a.path, b.path) })
		for _, d := range changed {
			p := d.path
			ch := StartupChange{At: now, Accounts: d.accounts, Path: p, Was: d.was, Now: d.now}
			c.status.Changes++
			c.status.Recent = append(c.status.Recent, ch)
			if len(c.status.Recent) > maxRecentChanges {
				c.status.Recent = c.status.Recent[len(c.status.Recent)-maxRecentChanges:]
			}
			c.log().Warn("a start-up file of a recorded account changed", "path", p, "accounts", ch.Accounts, "was", ch.Was, "now", ch.Now)
			ch.Accounts = slices.Clone(ch.Accounts) // the callback's own copy
			fire = append(fire, ch)
		}
	}
	c.readers = readers
	c.prints = prints
	return fire
}

// Run checks once, then again on every inotify event on a directory involved and every
// Every, until ctx ends (nil).
func (c *StartupCheck) Run(ctx context.Context) error {
	every := c.Every
	if every <= 0 {
		every = time.Minute
	}
	var w *fsnotify.Watcher
	if !c.NoWatch {
		var err error
		if w, err = fsnotify.NewWatcher(); err != nil {
			c.log().Warn("cannot watch start-up files; re-checking them every interval only", "every", every, "err", err)
		} else {
			defer w.Close()
		}
	}
	watched := map[string]bool{}
	var events <-chan fsnotify.Event
	var errs <-chan error
	if w != nil {
		events, errs = w.Events, w.Errors
	}
	for {
		c.Check()
		if c.afterPass != nil {
			c.afterPass()
		}
		var relevant func(string) bool
		if w != nil {
			var added bool
			if relevant, added = c.syncWatches(w, watched); added {
				// A change between the pass and the new watch sent no event: a pass now,
				// with the watch in place, compares with the one before and sees it.
				continue
			}
		}
		timer := c.clock().After(every)
	wait:
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-timer:
				break wait
			case ev, ok := <-events:
				if !ok {
					events = nil
					continue
				}
				// Homes see other writes (.bash_history, editors' files): only a component of
				// a start-up file's path, or an entry of a listed directory, is worth a pass.
				if relevant(filepath.Clean(ev.Name)) {
					break wait
				}
			case err, ok := <-errs:
				if !ok {
					errs = nil
					continue
				}
				// An overflowed queue loses events: check now.
				c.log().Warn("watching start-up files", "err", err)
				break wait
			}
		}
	}
}

// syncWatches watches every existing directory the last pass walked through, and returns
// which event names matter: a component walked (a link, a directory, the file), or an entry
// of a directory whose entries are start-up files (/etc/profile.d); added says a directory
// is watched now that was not during the pass.
func (c *StartupCheck) syncWatches(w *fsnotify.Watcher, watched map[string]bool) (relevant func(string) bool, added bool) {
	c.mu.Lock()
	dirs, names := map[string]bool{}, map[string]bool{}
	for p := range c.prints {
		ds, ns := walked(p)
		for _, d := range ds {
			dirs[d] = true
		}
		for _, n := range ns {
			names[n] = true
		}
	}
	c.mu.Unlock()
	listed := map[string]bool{}
	sys := c.SystemFiles
	if sys == nil {
		sys = DefaultSystemStartupFiles
	}
	for _, p := range sys {
		if fi, err := os.Stat(p); err == nil && fi.IsDir() {
			listed[filepath.Clean(p)] = true
		}
	}
	for d := range watched {
		if !dirs[d] {
			_ = w.Remove(d)
			delete(watched, d)
		}
	}
	for d := range dirs {
		if !watched[d] {
			if err := w.Add(d); err == nil {
				watched[d] = true
				added = true
			}
		}
	}
	return func(name string) bool { return names[name] || listed[filepath.Dir(name)] }, added
}

func (c *StartupCheck) clock() clockwork.Clock {
	if c.Clock == nil {
		return clockwork.NewRealClock()
	}
	return c.Clock
}

func (c *StartupCheck) log() *slog.Logger {
	if c.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Log
}

// systemPaths are the system-wide start-up files; a directory among SystemFiles adds its
// entries. Listed once a pass, so that every account of the pass reads the same list.
func (c *StartupCheck) systemPaths() []string {
	sys := c.SystemFiles
	if sys == nil {
		sys = DefaultSystemStartupFiles
	}
	var ps []string
	for _, p := range sys {
		ps = append(ps, p)
		if ents, err := os.ReadDir(p); err == nil {
			for _, e := range ents {
				ps = append(ps, filepath.Join(p, e.Name()))
			}
		}
	}
	return ps
}

// paths are the start-up files of a: the system-wide ones, then those of its home.
func (c *StartupCheck) paths(a startupAccount, system []string) []string {
	home := c.HomeFiles
	if home == nil {
		home = DefaultHomeStartupFiles
	}
	ps := slices.Clone(system)
	if a.Home != "" && filepath.IsAbs(a.Home) {
		for _, f := range home {
			ps = append(ps, filepath.Join(a.Home, f))
		}
	}
	return ps
}

// startupAccount is a recorded account with every group it is in.
type startupAccount struct {
	Account
	GIDs []int
}

// recordedAccounts are the accounts of Users and of the members of Groups, by name.
func (c *StartupCheck) recordedAccounts() ([]startupAccount, error) {
	passwd, group := c.Passwd, c.Group
	if passwd == "" {
		passwd = "/etc/passwd"
	}
	if group == "" {
		group = "/etc/group"
	}
	f, err := os.Open(passwd)
	if err != nil {
		return nil, fmt.Errorf("bastion: start-up files: %w", err)
	}
	all, _, err := ReadPasswd(f, 1<<20)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("bastion: start-up files: %s: %w", passwd, err)
	}
	groups, err := readGroupFile(group)
	if err != nil {
		return nil, err
	}
	want := map[string]bool{}
	for _, u := range c.Users {
		want[u] = true
	}
	recordedGID := map[int]bool{}
	for _, g := range groups {
		if slices.Contains(c.Groups, g.name) {
			recordedGID[g.gid] = true
			for _, m := range g.members {
				want[m] = true
			}
		}
	}
	var missing []string
	for _, name := range c.Groups {
		if !slices.ContainsFunc(groups, func(g groupEntry) bool { return g.name == name }) {
			missing = append(missing, "group "+name)
		}
	}
	var out []startupAccount
	seen := map[string]bool{}
	for _, a := range all {
		if (!want[a.Name] && !recordedGID[a.GID]) || seen[a.Name] {
			continue
		}
		seen[a.Name] = true
		sa := startupAccount{Account: a, GIDs: []int{a.GID}}
		for _, g := range groups {
			if slices.Contains(g.members, a.Name) && !slices.Contains(sa.GIDs, g.gid) {
				sa.GIDs = append(sa.GIDs, g.gid)
			}
		}
		out = append(out, sa)
	}
	for _, u := range c.Users {
		if !seen[u] {
			missing = append(missing, "user "+u)
		}
	}
	if len(missing) > 0 {
		return out, fmt.Errorf("bastion: start-up files: no %s in %s and %s", strings.Join(missing, ", "), passwd, group)
	}
	return out, nil
}

type groupEntry struct {
	name    string
	gid     int
	members []string
}

// readGroupFile parses group(5): name:password:GID:member,member.
func readGroupFile(path string) ([]groupEntry, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("bastion: start-up files: %w", err)
	}
	defer f.Close()
	var gs []groupEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		l := sc.Text()
		if l == "" || l[0] == '#' || l[0] == '+' || l[0] == '-' {
			continue
		}
		fs := strings.Split(l, ":")
		if len(fs) != 4 {
			return nil, fmt.Errorf("bastion: %s line %d: %d fields, want 4", path, n, len(fs))
		}
		gid, err := strconv.Atoi(fs[2])
		if err != nil {
			return nil, fmt.Errorf("bastion: %s line %d: GID %q is not a number", path, n, fs[2])
		}
		g := groupEntry{name: fs[0], gid: gid}
		if fs[3] != "" {
			g.members = strings.Split(fs[3], ",")
		}
		gs = append(gs, g)
	}
	return gs, sc.Err()
}

// passCache keeps what one pass learned of the file system: a path resolved once, and an
// ACL read once, however many recorded accounts read it (every account reads the system
// files; a pass over 100 accounts resolves each of those once, not 100 times). nil: no cache.
type passCache struct {
	steps map[string]resolved
	acls  map[string]aclRead
}

type resolved struct {
	steps []resolveStep
	err   error
}

type aclRead struct {
	acl posixACL
	err error
}

func newPassCache() *passCache {
	return &passCache{steps: map[string]resolved{}, acls: map[string]aclRead{}}
}

func (pc *passCache) resolve(path string) ([]resolveStep, error) {
	if pc == nil {
		return resolve(path)
	}
	r, ok := pc.steps[path]
	if !ok {
		r.steps, r.err = resolve(path)
		pc.steps[path] = r
	}
	return r.steps, r.err
}

func (pc *passCache) readACL(path string) (posixACL, error) {
	if pc == nil {
		return readACL(path)
	}
	r, ok := pc.acls[path]
	if !ok {
		r.acl, r.err = readACL(path)
		pc.acls[path] = r
	}
	return r.acl, r.err
}

// maxStartupLinks bounds the symbolic links followed resolving one path, as the kernel's 40.
const maxStartupLinks = 40

// resolveStep is one component met resolving a path: its path, what lstat said (nil: it does
// not exist), and the link's target when it is one.
type resolveStep struct {
	path   string
	st     *unix.Stat_t
	target string
}

// resolve walks path from "/" as the kernel would, following symbolic links, and returns
// every component it met, in order, ending at the path's last component (or the first that
// does not exist). A loop or too many links ends the walk with an error step.
func resolve(path string) ([]resolveStep, error) {
	var steps []resolveStep
	links := 0
	todo := splitPath(filepath.Clean(path))
	cur := "/"
	for len(todo) > 0 {
		name := todo[0]
		todo = todo[1:]
		if name == ".." {
			cur = filepath.Dir(cur)
			continue
		}
		p := filepath.Join(cur, name)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			steps = append(steps, resolveStep{path: p})
			return steps, nil // missing (or unreadable): its parent decides who may create it
		}
		step := resolveStep{path: p, st: &st}
		if st.Mode&unix.S_IFMT == unix.S_IFLNK {
			t, err := os.Readlink(p)
			if err != nil {
				return steps, fmt.Errorf("readlink %s: %w", p, err)
			}
			step.target = t
			steps = append(steps, step)
			if links++; links > maxStartupLinks {
				return steps, fmt.Errorf("%s: more than %d symbolic links", path, maxStartupLinks)
			}
			if filepath.IsAbs(t) {
				cur = "/"
			}
			todo = append(splitPath(t), todo...)
			continue
		}
		steps = append(steps, step)
		cur = p
	}
	return steps, nil
}

func splitPath(p string) []string {
	return slices.DeleteFunc(strings.Split(p, "/"), func(s string) bool { return s == "" || s == "." })
}

// walked are the existing directories resolving p passes through (to watch them) and the
// path of every component it met (whose events matter).
func walked(p string) (dirs, names []string) {
	steps, _ := resolve(p)
	dirs = []string{"/"}
	names = []string{filepath.Clean(p)}
	for _, s := range steps {
		names = append(names, s.path)
		if s.st != nil && s.st.Mode&unix.S_IFMT == unix.S_IFDIR {
			dirs = append(dirs, s.path)
		} else {
			dirs = append(dirs, filepath.Dir(s.path))
		}
	}
	slices.Sort(dirs)
	return slices.Compact(dirs), names
}

// writableBy says how a could change what path resolves to: one line per component it can
// write (or replace), none when it cannot.
func writableBy(path string, a startupAccount, pc *passCache) []string {
	steps, err := pc.resolve(path)
	if err != nil {
		return []string{err.Error()}
	}
	var whys []string
	// The root directory and every directory a step sits in decide whether the step's entry
	// can be replaced; the entry itself decides whether its content can be changed.
	var root unix.Stat_t
	if err := unix.Stat("/", &root); err == nil {
		if why := canWrite("/", &root, a, pc); why != "" {
			whys = append(whys, why)
		}
	}
	for i, s := range steps {
		if s.st == nil {
			continue // missing: the directory it would be created in was judged just before
		}
		if why := canWrite(s.path, s.st, a, pc); why != "" {
			// A sticky directory lets the account create entries, and replace only its own: it
			// matters only when the next component is missing or is the account's (judged there).
			if s.st.Mode&unix.S_ISVTX != 0 && s.st.Mode&unix.S_IFMT == unix.S_IFDIR && s.st.Uid != uint32(a.UID) &&
				i+1 < len(steps) && steps[i+1].st != nil && filepath.Dir(steps[i+1].path) == s.path && steps[i+1].st.Uid != uint32(a.UID) {
				continue
			}
			whys = append(whys, why)
		}
	}
	return whys
}

// canWrite says how a can write the inode st of path ("" when it cannot): as its owner (who
// can chmod it anyway), through its group, through "other", or through a POSIX ACL entry.
func canWrite(path string, st *unix.Stat_t, a startupAccount, pc *passCache) string {
	kind := "file"
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		kind = "directory"
	case unix.S_IFLNK:
		kind = "symbolic link"
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		// A link cannot be changed, only replaced, which its directory decides (a sticky one
		// lets the link's owner replace it: judged with the directory).
		return ""
	}
	if st.Uid == uint32(a.UID) {
		return fmt.Sprintf("%s %s is owned by %s", kind, path, a.Name)
	}
	if st.Mode&0o002 != 0 {
		return fmt.Sprintf("%s %s is writable by everyone (mode %#o)", kind, path, st.Mode&0o7777)
	}
	if acl, err := pc.readACL(path); err != nil {
		return fmt.Sprintf("%s %s: its ACL could not be read (%v), so it may be writable", kind, path, err)
	} else if acl != nil {
		if why := acl.writable(a, st); why != "" {
			return fmt.Sprintf("%s %s is writable %s through its POSIX ACL", kind, path, why)
		}
		return ""
	}
	if st.Mode&0o020 != 0 && slices.Contains(a.GIDs, int(st.Gid)) {
		return fmt.Sprintf("%s %s is writable by its group %d, which %s is in (mode %#o)", kind, path, st.Gid, a.Name, st.Mode&0o7777)
	}
	return ""
}

// posixACL is an access ACL as Linux stores it in the system.posix_acl_access attribute
// (version 2, then 8-byte entries: tag, permissions, id; little-endian).
type posixACL []aclEntry

type aclEntry struct {
	tag, perm uint16
	id        uint32
}

const (
	aclUserObj  = 0x01
	aclUser     = 0x02
	aclGroupObj = 0x04
	aclGroup    = 0x08
	aclMask     = 0x10
	aclOther    = 0x20
	aclWrite    = 0x02
)

// readACL reads path's access ACL without following a link; nil when it has none (the mode
// bits say everything).
func readACL(path string) (posixACL, error) {
	buf := make([]byte, 4+8*64)
	n, err := unix.Lgetxattr(path, "system.posix_acl_access", buf)
	if errors.Is(err, unix.ENODATA) || errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP) {
		return nil, nil
	}
	if errors.Is(err, unix.ERANGE) {
		return nil, errors.New("more than 64 entries")
	}
	if err != nil {
		return nil, err
	}
	return parseACL(buf[:n])
}

func parseACL(b []byte) (posixACL, error) {
	if len(b) < 4 || binary.LittleEndian.Uint32(b) != 2 || (len(b)-4)%8 != 0 {
		return nil, errors.New("not a version 2 POSIX ACL")
	}
	var acl posixACL
	for b = b[4:]; len(b) > 0; b = b[8:] {
		acl = append(acl, aclEntry{tag: binary.LittleEndian.Uint16(b), perm: binary.LittleEndian.Uint16(b[2:]), id: binary.LittleEndian.Uint32(b[4:])})
	}
	return acl, nil
}

// writable says which entry lets a write (acl(5) access check: owner, named user, then the
// groups, each but the owner limited by the mask), "" when none does. The owner was judged
// by the caller.
func (acl posixACL) writable(a startupAccount, st *unix.Stat_t) string {
	mask := uint16(0o7)
	for _, e := range acl {
		if e.tag == aclMask {
			mask = e.perm
		}
	}
	for _, e := range acl {
		if e.tag == aclUser && e.id == uint32(a.UID) {
			if e.perm&mask&aclWrite != 0 {
				return fmt.Sprintf("by %s (user entry)", a.Name)
			}
			return "" // a matching user entry decides alone
		}
	}
	inGroup := false
	for _, e := range acl {
		var gid int
		switch e.tag {
		case aclGroupObj:
			gid = int(st.Gid)
		case aclGroup:
			gid = int(e.id)
		default:
			continue
		}
		if !slices.Contains(a.GIDs, gid) {
			continue
		}
		inGroup = true
		if e.perm&mask&aclWrite != 0 {
			return fmt.Sprintf("by group %d, which %s is in", gid, a.Name)
		}
	}
	if inGroup {
		return "" // a matching group entry that does not grant write denies it: "other" is not consulted
	}
	for _, e := range acl {
		if e.tag == aclOther && e.perm&aclWrite != 0 {
			return "by everyone"
		}
	}
	return ""
}

// fingerprint describes what path resolves to: each link met and its target, then the last
// component's type, owner, mode and (for a regular file) SHA-256 of its content; "missing"
// when it does not exist. Two passes with the same fingerprint saw the same start-up file.
func fingerprint(path string, pc *passCache) string {
	steps, err := pc.resolve(path)
	if err != nil {
		return "unresolvable: " + err.Error()
	}
	var parts []string
	for _, s := range steps {
		if s.target != "" {
			parts = append(parts, fmt.Sprintf("link %s -> %s (uid %d)", s.path, s.target, s.st.Uid))
		}
	}
	last := steps[len(steps)-1]
	if last.st == nil {
		return strings.Join(append(parts, "missing"), "; ")
	}
	st := last.st
	desc := fmt.Sprintf("uid %d gid %d mode %#o", st.Uid, st.Gid, st.Mode&0o7777)
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		desc = "directory " + desc
	case unix.S_IFREG:
		desc = fmt.Sprintf("file %s size %d %s", desc, st.Size, contentHash(last.path))
	default:
		desc = fmt.Sprintf("type %#o %s", st.Mode&unix.S_IFMT, desc)
	}
	if acl, _ := pc.readACL(last.path); acl != nil {
		desc += fmt.Sprintf(" acl %v", acl)
	}
	return strings.Join(append(parts, desc), "; ")
}

func contentHash(path string) string {
	fd, err := openNoFollow(path)
	if err != nil {
		return "unreadable: " + err.Error()
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(f, maxStartupFileSize)); err != nil {
		return "unreadable: " + err.Error()
	}
	return "sha256 " + hex.EncodeToString(h.Sum(nil))
}
