package bastion

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/sshca/sshca/client"
)

// Discovery inventories the ways to log in to this host that bypass certificates (issue 18
// §2): every key of the authorized_keys files sshd's effective AuthorizedKeysFile names for
// each account of the local password database, sshd's AuthorizedKeysCommand (reported, never
// run), and whether password and keyboard-interactive authentication are on.
//
// Users control the files and every directory under their home, so a file is opened without
// following a symbolic link at any component (openat2 RESOLVE_NO_SYMLINKS; a walk with
// O_NOFOLLOW per component on kernels before 5.6), non-blocking (a FIFO does not hang it), and
// read only when it is a regular file no larger than MaxFileSize. What exists but is refused
// is reported as skipped: sshd itself may still read it. It reads; it never writes.
//
// The global effective configuration is used: a Match block that gives one account another
// AuthorizedKeysFile is not followed.
type Discovery struct {
	// SSHD reads the effective configuration, unless Config is given.
	SSHD   SSHDEffective
	Config EffectiveConfig
	// Passwd is the password database (default /etc/passwd), in passwd(5) format.
	Passwd string
	// SSHDLog is sshd's log (LogLevel VERBOSE), read for the last time each key was
	// accepted; "" reads none.
	SSHDLog string
	// MaxAccounts caps the accounts inspected (default 10000); MaxFileSize caps one
	// authorized_keys file in bytes (default 1 MiB).
	MaxAccounts int
	MaxFileSize int64
	Now         func() time.Time
}

// Account is one entry of the password database.
type Account struct {
	Name     string
	UID, GID int
	Home     string
}

// ReadPasswd parses a passwd(5) file: name:password:UID:GID:GECOS:home:shell. Blank lines,
// comments and NIS "+"/"-" lines are skipped; a line with the wrong number of fields or a
// non-numeric id is an error naming the line. At most max accounts are returned, and more
// says whether there were more.
func ReadPasswd(r io.Reader, max int) (accounts []Account, more bool, err error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		l := sc.Text()
		if l == "" || l[0] == '#' || l[0] == '+' || l[0] == '-' {
			continue
		}
		f := strings.Split(l, ":")
		if len(f) != 7 {
			return nil, false, fmt.Errorf("bastion: passwd line %d: %d fields, want 7", n, len(f))
		}
		uid, err1 := strconv.Atoi(f[2])
		gid, err2 := strconv.Atoi(f[3])
		if err1 != nil || err2 != nil || f[0] == "" {
			return nil, false, fmt.Errorf("bastion: passwd line %d: bad name, UID or GID", n)
		}
		if len(accounts) == max {
			return accounts, true, nil
		}
		accounts = append(accounts, Account{Name: f[0], UID: uid, GID: gid, Home: f[5]})
	}
	return accounts, false, sc.Err()
}

// ExpandAuthorizedKeysFile expands sshd's tokens in one AuthorizedKeysFile pattern for an
// account (%% %h %u %U, sshd_config(5) TOKENS) and makes a relative result relative to the
// home directory, as sshd does. An unknown token is an error.
func ExpandAuthorizedKeysFile(pattern string, a Account) (string, error) {
	var b strings.Builder
	for i := 0; i < len(pattern); i++ {
		if pattern[i] != '%' {
			b.WriteByte(pattern[i])
			continue
		}
		if i+1 == len(pattern) {
			return "", fmt.Errorf("bastion: AuthorizedKeysFile %q: ends with %%", pattern)
		}
		i++
		switch pattern[i] {
		case '%':
			b.WriteByte('%')
		case 'h':
			b.WriteString(a.Home)
		case 'u':
			b.WriteString(a.Name)
		case 'U':
			b.WriteString(strconv.Itoa(a.UID))
		default:
			return "", fmt.Errorf("bastion: AuthorizedKeysFile %q: token %%%c not supported", pattern, pattern[i])
		}
	}
	p := b.String()
	if !filepath.IsAbs(p) {
		p = filepath.Join(a.Home, p)
	}
	return filepath.Clean(p), nil
}

// Run takes the inventory. Report.Host is left for the caller.
func (d Discovery) Run(ctx context.Context) (client.DiscoveryReport, error) {
	now := time.Now
	if d.Now != nil {
		now = d.Now
	}
	rep := client.DiscoveryReport{Taken: now().UTC(), Keys: []client.DiscoveredKey{}}
	cfg := d.Config
	if cfg == nil {
		var err error
		if cfg, err = d.SSHD.Read(ctx, nil); err != nil {
			return rep, fmt.Errorf("bastion: discovery: %w", err)
		}
	}
	if c := cfg.Get("authorizedkeyscommand"); c != "" && c != "none" {
		rep.AuthorizedKeysCommand = c
		rep.AuthorizedKeysCommandUser = cfg.Get("authorizedkeyscommanduser")
	}
	rep.PasswordAuthentication = cfg.Get("passwordauthentication") == "yes"
	rep.KbdInteractiveAuthentication = cfg.Get("kbdinteractiveauthentication") == "yes"

	passwd := d.Passwd
	if passwd == "" {
		passwd = "/etc/passwd"
	}
	maxAccounts := d.MaxAccounts
	if maxAccounts <= 0 {
		maxAccounts = 10000
	}
	f, err := os.Open(passwd)
	if err != nil {
		return rep, fmt.Errorf("bastion: discovery: %w", err)
	}
	accounts, more, err := ReadPasswd(f, maxAccounts)
	f.Close()
	if err != nil {
		return rep, fmt.Errorf("bastion: discovery: %s: %w", passwd, err)
	}
	rep.Accounts, rep.AccountsTruncated = len(accounts), more

	var used map[KeyUse]time.Time
	if d.SSHDLog != "" {
		if used, err = readAcceptedLog(d.SSHDLog, now()); err != nil {
			return rep, fmt.Errorf("bastion: discovery: %w", err)
		}
	}
	patterns := strings.Fields(cfg.Get("authorizedkeysfile"))
	for _, a := range accounts {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		seen := map[string]bool{}
		for _, pat := range patterns {
			if pat == "none" {
				continue
			}
			path, err := ExpandAuthorizedKeysFile(pat, a)
			if err != nil {
				return rep, err
			}
			if seen[path] {
				continue
			}
			seen[path] = true
			keys, reason := d.readKeys(a.Name, path)
			if reason != "" {
				rep.Skipped = append(rep.Skipped, client.SkippedFile{Account: a.Name, File: path, Reason: reason})
			}
			for _, k := range keys {
				if t, ok := used[KeyUse{a.Name, k.Fingerprint}]; ok {
					k.LastAccepted = &t
				}
				rep.Keys = append(rep.Keys, k)
			}
		}
	}
	return rep, nil
}

// readKeys parses one authorized_keys file; a file that does not exist has no keys and no
// reason. Lines that are not keys are ignored, as sshd ignores them.
func (d Discovery) readKeys(account, path string) ([]client.DiscoveredKey, string) {
	max := d.MaxFileSize
	if max <= 0 {
		max = 1 << 20
	}
	b, mtime, err := readNoFollow(openNoFollow, path, max)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return nil, ""
	}
	if err != nil {
		return nil, err.Error()
	}
	var keys []client.DiscoveredKey
	for n, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		pub, comment, opts, rest, err := ssh.ParseAuthorizedKey([]byte(line))
		if err != nil || len(strings.TrimSpace(string(rest))) != 0 {
			continue
		}
		keys = append(keys, client.DiscoveredKey{
			Account: account, File: path, Line: n + 1,
			Fingerprint: ssh.FingerprintSHA256(pub), Type: pub.Type(), Bits: keyBits(pub),
			Options: opts, Comment: comment, FileModTime: mtime.UTC(),
		})
	}
	return keys, ""
}

// keyBits is the key's size: the RSA modulus, the ECDSA curve, 256 for Ed25519 and the
// security-key types.
func keyBits(k ssh.PublicKey) int {
	if c, ok := k.(ssh.CryptoPublicKey); ok {
		switch p := c.CryptoPublicKey().(type) {
		case *rsa.PublicKey:
			return p.N.BitLen()
		case *ecdsa.PublicKey:
			return p.Curve.Params().BitSize
		}
	}
	switch k.Type() {
	case ssh.KeyAlgoED25519, ssh.KeyAlgoSKED25519:
		return 256
	case ssh.KeyAlgoSKECDSA256:
		return 256
	}
	return 0
}

// errSkip is a refusal to read a file, its text the reason reported.
type errSkip string

func (e errSkip) Error() string { return string(e) }

// readNoFollow reads path, at most max bytes, refusing a symbolic link at any component and
// anything but a regular file. A missing file is unix.ENOENT (or ENOTDIR).
func readNoFollow(open func(string) (int, error), path string, max int64) ([]byte, time.Time, error) {
	fd, err := open(path)
	if err != nil {
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV) {
			return nil, time.Time{}, errSkip("a symbolic link at some component of the path (not followed)")
		}
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
			return nil, time.Time{}, err
		}
		return nil, time.Time{}, errSkip("open: " + err.Error())
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, time.Time{}, errSkip("stat: " + err.Error())
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, time.Time{}, errSkip(fmt.Sprintf("not a regular file (mode %#o)", st.Mode&unix.S_IFMT))
	}
	if st.Size > max {
		return nil, time.Time{}, errSkip(fmt.Sprintf("%d bytes, over the cap of %d", st.Size, max))
	}
	mtime := time.Unix(st.Mtim.Unix())
	// The file may grow between fstat and read: read one byte past the cap to see it.
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, time.Time{}, errSkip("read: " + err.Error())
	}
	if int64(len(b)) > max {
		return nil, time.Time{}, errSkip(fmt.Sprintf("over the cap of %d bytes", max))
	}
	return b, mtime, nil
}

const openFlags = unix.O_RDONLY | unix.O_NONBLOCK | unix.O_NOCTTY | unix.O_CLOEXEC | unix.O_NOFOLLOW

// openNoFollow opens path read-only and non-blocking with no symbolic link followed at any
// component: openat2(2) with RESOLVE_NO_SYMLINKS, else (ENOSYS) walkNoFollow.
func openNoFollow(path string) (int, error) {
	for {
		fd, err := unix.Openat2(unix.AT_FDCWD, path, &unix.OpenHow{
			Flags:   openFlags,
			Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
		})
		switch {
		case err == unix.EINTR || err == unix.EAGAIN: // openat2 may ask to retry a racing rename
			continue
		case err == unix.ENOSYS || err == unix.EPERM: // an old kernel, or a seccomp filter that refuses it
			return walkNoFollow(path)
		}
		return fd, err
	}
}

// walkNoFollow opens path one component at a time from "/", each directory with O_PATH |
// O_DIRECTORY | O_NOFOLLOW and the last with openFlags, so a symbolic link anywhere fails
// with ELOOP (or ENOTDIR for a directory component).
func walkNoFollow(path string) (int, error) { return walkNoFollowFlags(path, openFlags) }

// walkNoFollowFlags is walkNoFollow opening the last component with flags.
func walkNoFollowFlags(path string, flags int) (int, error) {
	if !filepath.IsAbs(path) {
		return -1, unix.EINVAL
	}
	parts := slices.DeleteFunc(strings.Split(filepath.Clean(path), "/"), func(s string) bool { return s == "" })
	if len(parts) == 0 {
		return -1, unix.EISDIR
	}
	dir, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	for i, p := range parts {
		var next int
		if i == len(parts)-1 {
			next, err = unix.Openat(dir, p, flags, 0)
		} else {
			next, err = unix.Openat(dir, p, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err == unix.ENOTDIR {
				// A symbolic link opened with O_NOFOLLOW|O_DIRECTORY fails ENOTDIR; tell it apart.
				var st unix.Stat_t
				if unix.Fstatat(dir, p, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
					err = unix.ELOOP
				}
			}
		}
		unix.Close(dir)
		if err != nil {
			return -1, err
		}
		dir = next
	}
	return dir, nil
}

// KeyUse names a key accepted for an account: the account and the key's SHA256 fingerprint.
type KeyUse struct{ Account, Fingerprint string }

// plainAcceptedRE matches sshd's line for a login with a plain key (LogLevel INFO and up):
// "Accepted publickey for U from A port P ssh2: ED25519 SHA256:...". A certificate's line has
// a "-CERT" type and is excluded by the caller.
var plainAcceptedRE = regexp.MustCompile(`Accepted publickey for (\S+) from \S+ port \d+ ssh2: (\S+) (SHA256:[A-Za-z0-9+/]+)`)

// readAcceptedLog reads sshd's log file for the newest accepted time of each plain key.
// Lines without a timestamp (sshd -E writes none) are dated by the file's modification time,
// an upper bound.
func readAcceptedLog(path string, now time.Time) (map[KeyUse]time.Time, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("sshd log: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("sshd log: %w", err)
	}
	return AcceptedKeys(f, st.ModTime(), now)
}

// AcceptedKeys scans sshd log lines for plain (non-certificate) public keys sshd accepted and
// returns the newest time per account and fingerprint. A line's time is its syslog prefix
// (RFC 3339, as rsyslog's high-precision format and journalctl -o short-iso write it, or RFC
// 3164's "Jan _2 15:04:05", taken in now's year, or the year before when that would be more
// than a day ahead of now); a line without one is dated undated.
func AcceptedKeys(r io.Reader, undated, now time.Time) (map[KeyUse]time.Time, error) {
	out := map[KeyUse]time.Time{}
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		m := plainAcceptedRE.FindStringSubmatch(line)
		if m == nil || strings.HasSuffix(strings.ToUpper(m[2]), "-CERT") {
			continue
		}
		at, ok := logTime(line, now)
		if !ok {
			at = undated
		}
		k := KeyUse{m[1], m[3]}
		if at.After(out[k]) {
			out[k] = at.UTC()
		}
	}
	return out, sc.Err()
}

// logTime parses a syslog line's leading timestamp.
func logTime(line string, now time.Time) (time.Time, bool) {
	if first, _, ok := strings.Cut(line, " "); ok {
		if t, err := time.Parse(time.RFC3339Nano, first); err == nil {
			return t, true
		}
	}
	if len(line) < len(time.Stamp) {
		return time.Time{}, false
	}
	t, err := time.ParseInLocation(time.Stamp, line[:len(time.Stamp)], now.Location())
	if err != nil {
		return time.Time{}, false
	}
	t = t.AddDate(now.Year(), 0, 0)
	if t.After(now.Add(24 * time.Hour)) {
		t = t.AddDate(-1, 0, 0)
	}
	return t, true
}
