package bastion

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// SSHDEffective reads sshd's effective configuration the way sshd itself computes it: by
// running `sshd -T` (globally) or `sshd -T -C spec` (for one connection, Match blocks applied),
// never by interpreting sshd_config here. It also lists the Match criteria of the files sshd
// reads (the file and what it Includes), to derive the connections worth asking about.
//
// sshd -T loads the host keys, so it needs read access to them (root, or CAP_DAC_READ_SEARCH
// as the agent's unit grants) and /run/sshd to exist.
type SSHDEffective struct {
	Bin    string // sshd; default: from PATH, else /usr/sbin/sshd
	Config string // sshd_config; default /etc/ssh/sshd_config
	// Timeout bounds one sshd -T run (default 10s).
	Timeout time.Duration
}

// Connection is a connection spec of sshd -T -C: who connects from where to which local
// address. Empty fields are left out of the spec (sshd then refuses a Match criterion that
// needs them).
type Connection struct {
	User, Host, Addr, LocalAddr string
	LocalPort                   int
}

// String is the spec as sshd -C takes it: "user=root,host=h,addr=192.0.2.1,laddr=...,lport=22".
func (c Connection) String() string {
	var f []string
	for _, kv := range [][2]string{{"user", c.User}, {"host", c.Host}, {"addr", c.Addr}, {"laddr", c.LocalAddr}} {
		if kv[1] != "" {
			f = append(f, kv[0]+"="+kv[1])
		}
	}
	if c.LocalPort != 0 {
		f = append(f, "lport="+strconv.Itoa(c.LocalPort))
	}
	return strings.Join(f, ",")
}

// EffectiveConfig is what sshd -T prints: each keyword (lower case) with its values in the
// order printed (a keyword such as hostkey or listenaddress has one per line).
type EffectiveConfig map[string][]string

// Get returns the keyword's values joined by newlines ("" when sshd did not print it).
func (c EffectiveConfig) Get(keyword string) string {
	return strings.Join(c[strings.ToLower(keyword)], "\n")
}

func (r SSHDEffective) bin() string {
	if r.Bin != "" {
		return r.Bin
	}
	if p, err := exec.LookPath("sshd"); err == nil {
		return p
	}
	return "/usr/sbin/sshd"
}

func (r SSHDEffective) config() string {
	if r.Config != "" {
		return r.Config
	}
	return "/etc/ssh/sshd_config"
}

// Read runs sshd -T -f Config, with -C conn when conn is not nil. An error carries sshd's own
// message (a syntax error in a drop-in, a missing host key, a Match criterion the spec lacks).
func (r SSHDEffective) Read(ctx context.Context, conn *Connection) (EffectiveConfig, error) {
	timeout := r.Timeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	args := []string{"-T", "-f", r.config()}
	if conn != nil {
		args = append(args, "-C", conn.String())
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, r.bin(), args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("bastion: sshd %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	c := EffectiveConfig{}
	sc := bufio.NewScanner(&stdout)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), " ")
		if k != "" {
			c[k] = append(c[k], v)
		}
	}
	if len(c) == 0 {
		return nil, fmt.Errorf("bastion: sshd %s printed no configuration: %s", strings.Join(args, " "), strings.TrimSpace(stderr.String()))
	}
	return c, nil
}

// MatchCriterion is one criterion of a Match line: Keyword is User, Group, Host, Address,
// LocalAddress, LocalPort, RDomain or All (as sshd spells them), Patterns its comma-separated
// list (with "!" negations as written).
type MatchCriterion struct {
	Keyword  string
	Patterns []string
}

// MatchLine is a Match line of a file sshd reads, with its criteria.
type MatchLine struct {
	File     string
	Line     int
	Criteria []MatchCriterion
}

// MatchLines lists the Match lines of Config and of the files it Includes (recursively, in
// the order sshd reads them; a relative Include is under /etc/ssh, as sshd resolves it).
func (r SSHDEffective) MatchLines() ([]MatchLine, error) {
	var out []MatchLine
	var walk func(file string, depth int) error
	walk = func(file string, depth int) error {
		if depth > 16 { // sshd's own READCONF_MAX_DEPTH
			return fmt.Errorf("bastion: %s: Include nested too deeply", file)
		}
		b, err := os.ReadFile(file)
		if err != nil {
			return fmt.Errorf("bastion: read %s: %w", file, err)
		}
		for n, l := range strings.Split(string(b), "\n") {
			f := configFields(l)
			if len(f) == 0 {
				continue
			}
			switch strings.ToLower(f[0]) {
			case "include":
				for _, pat := range f[1:] {
					if !filepath.IsAbs(pat) {
						pat = filepath.Join("/etc/ssh", pat)
					}
					files, err := filepath.Glob(pat)
					if err != nil {
						return fmt.Errorf("bastion: %s:%d: Include %s: %w", file, n+1, pat, err)
					}
					slices.Sort(files)
					for _, inc := range files {
						if err := walk(inc, depth+1); err != nil {
							return err
						}
					}
				}
			case "match":
				m := MatchLine{File: file, Line: n + 1}
				for i := 1; i < len(f); i++ {
					c := MatchCriterion{Keyword: f[i]}
					if !strings.EqualFold(f[i], "all") && i+1 < len(f) {
						i++
						c.Patterns = strings.Split(f[i], ",")
					}
					m.Criteria = append(m.Criteria, c)
				}
				out = append(out, m)
			}
		}
		return nil
	}
	return out, walk(r.config(), 0)
}

// configFields splits a line of sshd_config as sshd does for the lines read here: '#'
// starts a comment, a keyword may be followed by '=', double quotes group words.
func configFields(l string) []string {
	l = strings.TrimSpace(l)
	if l == "" || l[0] == '#' {
		return nil
	}
	var f []string
	var cur strings.Builder
	quoted, have := false, false
	for i := 0; i < len(l); i++ {
		ch := l[i]
		switch {
		case ch == '"':
			quoted, have = !quoted, true
		case !quoted && (ch == ' ' || ch == '\t' || (ch == '=' && len(f) == 0)):
			if have {
				f, have = append(f, cur.String()), false
				cur.Reset()
			}
		case !quoted && ch == '#' && !have:
			i = len(l)
		default:
			cur.WriteByte(ch)
			have = true
		}
	}
	if have {
		f = append(f, cur.String())
	}
	return f
}

// Candidates for a connection that matches no Match criterion of its kind: documentation
// addresses (RFC 5737, RFC 3849), a name under .invalid (RFC 6761), unusual ports.
var (
	outsideAddrs = []string{"203.0.113.7", "198.51.100.7", "192.0.2.7", "100.64.0.7", "2001:db8::7"}
	outsideHosts = []string{"sshca-drift-check.invalid", "other.invalid"}
	outsidePorts = []int{22, 2222, 47022, 61022}
)

// Connections derives the connections whose effective configuration covers every Match block
// of the files sshd reads: a base connection (root, from an address, name and to a local
// address and port outside every criterion of their kind); one per Match line, satisfying
// all of its criteria at once; one per criterion; and one per account (each user whose
// principals file exists, the accounts given). Criteria the spec cannot satisfy (a Group
// with no member, a pattern matching no address) are returned in unmet.
func (r SSHDEffective) Connections(accounts []string) (conns []Connection, unmet []string, err error) {
	lines, err := r.MatchLines()
	if err != nil {
		return nil, nil, err
	}
	var all []MatchCriterion
	for _, l := range lines {
		all = append(all, l.Criteria...)
	}
	base := Connection{User: "root"}
	base.Addr = firstOutside(outsideAddrs, all, "address")
	base.LocalAddr = firstOutside(outsideAddrs, all, "localaddress")
	base.Host = firstOutside(outsideHosts, all, "host")
	ports := make([]string, len(outsidePorts))
	for i, p := range outsidePorts {
		ports[i] = strconv.Itoa(p)
	}
	base.LocalPort, _ = strconv.Atoi(firstOutside(ports, all, "localport"))

	seen := map[Connection]bool{}
	add := func(c Connection) {
		if !seen[c] {
			seen[c] = true
			conns = append(conns, c)
		}
	}
	add(base)
	satisfy := func(c *Connection, m MatchCriterion, where string) bool {
		v, ok := example(m)
		if ok && strings.EqualFold(m.Keyword, "group") {
			v, ok = groupMember(v)
		}
		if !ok {
			unmet = append(unmet, fmt.Sprintf("%s: Match %s %s", where, m.Keyword, strings.Join(m.Patterns, ",")))
			return false
		}
		switch strings.ToLower(m.Keyword) {
		case "user", "group":
			c.User = v
		case "host":
			c.Host = v
		case "address":
			c.Addr = v
		case "localaddress":
			c.LocalAddr = v
		case "localport":
			c.LocalPort, _ = strconv.Atoi(v)
		}
		return true
	}
	for _, l := range lines {
		where := fmt.Sprintf("%s:%d", l.File, l.Line)
		whole, ok := base, true
		for _, m := range l.Criteria {
			one := base
			if satisfy(&one, m, where) {
				add(one)
				ok = satisfy(&whole, m, where) && ok
			} else {
				ok = false
			}
		}
		if ok {
			add(whole)
		}
	}
	for _, a := range accounts {
		c := base
		c.User = a
		add(c)
	}
	return conns, unmet, nil
}

// Accounts lists the local users with a file under an AuthorizedPrincipalsFile pattern that
// uses %u (e.g. /etc/ssh/auth_principals/%u): the accounts certificates log in as.
func Accounts(principalsFile string) []string {
	if !strings.Contains(principalsFile, "%u") || strings.Count(principalsFile, "%") != 1 {
		return nil
	}
	matches, _ := filepath.Glob(strings.ReplaceAll(principalsFile, "%u", "*"))
	prefix, suffix, _ := strings.Cut(principalsFile, "%u")
	var out []string
	for _, m := range matches {
		if u := strings.TrimSuffix(strings.TrimPrefix(m, prefix), suffix); u != "" && !strings.Contains(u, "/") {
			out = append(out, u)
		}
	}
	return out
}

// example returns a value that the criterion's first positive pattern matches and none of
// its negations does.
func example(m MatchCriterion) (string, bool) {
	if strings.EqualFold(m.Keyword, "all") {
		return "", true
	}
	for _, p := range m.Patterns {
		if strings.HasPrefix(p, "!") {
			continue
		}
		var v string
		switch strings.ToLower(m.Keyword) {
		case "address", "localaddress":
			if pfx, err := netip.ParsePrefix(p); err == nil {
				v = pfx.Masked().Addr().Next().String()
			} else if a, err := netip.ParseAddr(p); err == nil {
				v = a.String()
			} else {
				v = fillIPv4(p)
			}
		default:
			v = strings.NewReplacer("*", "x", "?", "x").Replace(p)
		}
		if v != "" && matchList(m.Keyword, m.Patterns, v) {
			return v, true
		}
	}
	return "", false
}

// fillIPv4 turns a wildcard IPv4 pattern ("10.1.*") into an address it matches.
func fillIPv4(p string) string {
	parts := strings.Split(strings.NewReplacer("*", "1", "?", "1").Replace(p), ".")
	for len(parts) < 4 {
		parts = append(parts, "1")
	}
	a, err := netip.ParseAddr(strings.Join(parts[:4], "."))
	if err != nil || !a.Is4() {
		return ""
	}
	return a.String()
}

// firstOutside returns the first candidate that no criterion of kind matches.
func firstOutside(candidates []string, all []MatchCriterion, kind string) string {
next:
	for _, c := range candidates {
		for _, m := range all {
			if strings.EqualFold(m.Keyword, kind) && matchList(kind, m.Patterns, c) {
				continue next
			}
		}
		return c
	}
	return candidates[len(candidates)-1]
}

// matchList is sshd's pattern-list match: some positive pattern matches and no negated one
// does; for addresses a pattern may be a CIDR prefix.
func matchList(kind string, patterns []string, v string) bool {
	pos := false
	for _, p := range patterns {
		neg := strings.HasPrefix(p, "!")
		p = strings.TrimPrefix(p, "!")
		var ok bool
		if k := strings.ToLower(kind); (k == "address" || k == "localaddress") && strings.Contains(p, "/") {
			pfx, err1 := netip.ParsePrefix(p)
			a, err2 := netip.ParseAddr(v)
			ok = err1 == nil && err2 == nil && pfx.Contains(a)
		} else {
			ok, _ = path.Match(strings.ToLower(p), strings.ToLower(v))
		}
		if ok && neg {
			return false
		}
		pos = pos || ok
	}
	return pos
}

// groupMember returns a member of the local group named name (from /etc/group, else a user
// whose primary group it is, from /etc/passwd).
func groupMember(name string) (string, bool) {
	gid := ""
	if b, err := os.ReadFile("/etc/group"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			f := strings.Split(l, ":")
			if len(f) == 4 && f[0] == name {
				if m := strings.Split(f[3], ","); m[0] != "" {
					return m[0], true
				}
				gid = f[2]
			}
		}
	}
	if gid == "" {
		return "", false
	}
	b, err := os.ReadFile("/etc/passwd")
	if err != nil {
		return "", false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Split(l, ":"); len(f) >= 4 && f[3] == gid {
			return f[0], true
		}
	}
	return "", false
}
