package bastion

import (
	"cmp"
	"context"
	"encoding/base64"
	"log/slog"
	"net"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/prometheus/procfs"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/krl"
)

// Sessions tracks live sshd sessions authenticated by certificates and ends those whose
// certificate gets revoked. sshd checks the KRL only at authentication; without this, a
// session opened before the revocation would live on.
//
// What a session's certificate is comes from sshd's log at LogLevel VERBOSE (its Accepted
// line), but a log line alone proves nothing: any local user can write one into a syslog file
// (logger -t sshd). So a line counts only when procfs confirms it: an Accepted line adds a
// session only while an sshd process of the agent's uid holds the TCP connection from that
// client address (and, when the line names its pid, that process is one of them); a
// Connection closed line drops a session only once no such process holds it any more. A
// forged Accepted line for a live connection adds a certificate to the session's list, never
// replaces the one sshd logged: the session ends when any of them is revoked, so a forger can
// end another's session but cannot keep it alive.
type Sessions struct {
	log *slog.Logger
	// scan lists the established TCP connections and their holders (scanConns on /proc).
	scan func() (map[string]*tcpConn, error)
	// kill signals a process (syscall.Kill).
	kill func(pid int, sig syscall.Signal) error
	// clock stamps closes and look-ups and drives Follow's sweeps and restarts (the real
	// clock; tests set a clockwork.FakeClock).
	clock clockwork.Clock

	mu sync.Mutex
	// live is every confirmed session, by client address (connAddr).
	live map[string]*session
	// closing holds the addresses whose close was logged while sshd still held the connection,
	// with when it was first logged: checked again until closeGrace has passed.
	closing map[string]time.Time
	// newest is the newest KRL installed, checked against each session learned after it: a
	// session whose Accepted line is read after its certificate's revocation was applied.
	newest *krl.KRL
	// searched is when each connection (socket inode) with no session was last looked up in
	// the log files.
	searched map[uint64]time.Time
	// unconfirmed holds, by client address, the Accepted lines that no sshd connection
	// confirmed when they were read, for unconfirmedFor: a read of /proc can miss an entry of
	// a busy TCP table, so the next sweep adds them if sshd holds that connection then.
	unconfirmed map[string]unconfirmedLine
	// missing counts, by client address, the sweeps in a row that did not find a session's
	// connection: dropped at the second, for the same reason.
	missing map[string]int

	// ended counts the sessions ended since start (at least one of their processes was sent
	// SIGTERM): sshca_bastion_sessions_ended_total.
	ended atomic.Uint64
}

// Ended is how many sessions of revoked certificates were ended since start.
func (s *Sessions) Ended() uint64 { return s.ended.Load() }

type unconfirmedLine struct {
	at    time.Time
	certs []certInfo
}

const (
	// unconfirmedFor is how long an unconfirmed Accepted line waits for a sweep: about two.
	unconfirmedFor = 2*sweepEvery + time.Second
	// maxUnconfirmed bounds the lines kept (forged ones cost the forger nothing to write).
	maxUnconfirmed = 1024
)

type session struct {
	inode uint64 // of the connection's socket: a reused client port is another connection
	certs []certInfo
	// revoked marks a session found revoked whose connection the read of /proc did not show
	// (or that read failed): each sweep that sees the connection ends it, and two sweeps in a
	// row that do not drop it, as for any session.
	revoked bool
}

// certInfo is what an Accepted line says of a session's certificate.
type certInfo struct {
	serial uint64
	keyID  string
	keyFP  string // SHA256:... of the certificate's key
	caFP   string // SHA256:... of the CA key that signed it
	user   string
}

// closeGrace is how long a logged close waits for sshd to release the connection before it
// is taken for forged: sshd logs "Received disconnect" before it closes the socket.
const closeGrace = 5 * time.Second

// NewSessions returns an empty tracker that confirms log lines against /proc, trusting sshd
// processes of the agent's own uid (root on a bastion), and signals with SIGTERM.
func NewSessions(log *slog.Logger) *Sessions {
	self, uid := os.Getpid(), os.Geteuid()
	return newSessions(log, func() (map[string]*tcpConn, error) {
		return scanConns(procfs.DefaultMountPoint, hostTCP(procfs.DefaultMountPoint), self, uid)
	})
}

func newSessions(log *slog.Logger, scan func() (map[string]*tcpConn, error)) *Sessions {
	return &Sessions{log: log, scan: scan, kill: syscall.Kill, clock: clockwork.NewRealClock(),
		live: map[string]*session{}, closing: map[string]time.Time{}, searched: map[uint64]time.Time{},
		unconfirmed: map[string]unconfirmedLine{}, missing: map[string]int{}}
}

var (
	acceptedRE     = regexp.MustCompile(`Accepted publickey for (\S+) from (\S+) port (\d+) ssh2: \S+-CERT (SHA256:\S+) ID (.*) \(serial (\d+)\) CA \S+ (SHA256:\S+)`)
	disconnectedRE = regexp.MustCompile(`(?:Disconnected from user \S+|Connection closed by|Received disconnect from) (\S+) port (\d+)`)
	// syslogPIDRE is the pid a syslog line names (sshd[PID]: or sshd-session[PID]:).
	syslogPIDRE = regexp.MustCompile(`\bsshd(?:-session)?\[(\d+)\]: `)
)

// accepted parses an Accepted line: the client address (connAddr form), the pid the line
// names (0 if none) and the certificate.
func accepted(line string) (addr string, pid int, c certInfo, ok bool) {
	m := acceptedRE.FindStringSubmatch(line)
	if m == nil {
		return "", 0, c, false
	}
	addr, err := normalAddr(net.JoinHostPort(m[2], m[3])) // sshd logs IPv6 clients unbracketed
	if err != nil {
		return "", 0, c, false
	}
	serial, err := strconv.ParseUint(m[6], 10, 64)
	if err != nil {
		return "", 0, c, false
	}
	if p := syslogPIDRE.FindStringSubmatch(line); p != nil {
		pid, _ = strconv.Atoi(p[1])
	}
	return addr, pid, certInfo{serial: serial, keyID: m[5], keyFP: m[4], caFP: m[7], user: m[1]}, true
}

func closed(line string) (addr string, ok bool) {
	m := disconnectedRE.FindStringSubmatch(line)
	if m == nil {
		return "", false
	}
	addr, err := normalAddr(net.JoinHostPort(m[1], m[2]))
	return addr, err == nil
}

// Observe reads one sshd log line: an Accepted line adds its session and a close drops it,
// each once procfs confirms it (see Sessions).
func (s *Sessions) Observe(line string) {
	if addr, pid, c, ok := accepted(line); ok {
		conns, err := s.scan()
		if err != nil {
			s.log.Warn("cannot confirm an Accepted line against /proc; the next sweep tries again", "client", addr, "err", err)
			s.keepUnconfirmed(addr, c)
			return
		}
		conn := conns[addr]
		switch {
		case conn == nil || len(conn.sshd) == 0:
			// Forged, or the session ended before we read its line, or /proc missed it.
			s.log.Debug("Accepted line not confirmed: no sshd process holds the connection", "client", addr)
			s.keepUnconfirmed(addr, c)
			return
		case pid != 0 && !slices.Contains(conn.sshd, pid):
			s.log.Warn("ignored an Accepted line naming a pid that does not hold the connection (forged?)", "client", addr, "pid", pid)
			return
		}
		s.add(addr, conn.inode, c)
		return
	}
	if addr, ok := closed(line); ok {
		s.mu.Lock()
		_, known := s.live[addr]
		if known {
			if _, ok := s.closing[addr]; !ok {
				s.closing[addr] = s.clock.Now()
			}
		}
		s.mu.Unlock()
		if known {
			s.log.Debug("close line read", "client", addr)
			s.confirmClosed()
		}
	}
}

func (s *Sessions) keepUnconfirmed(addr string, c certInfo) {
	s.mu.Lock()
	defer s.mu.Unlock()
	u, ok := s.unconfirmed[addr]
	if !ok && len(s.unconfirmed) >= maxUnconfirmed {
		return
	}
	u.at = s.clock.Now()
	if !slices.Contains(u.certs, c) {
		u.certs = append(u.certs, c)
	}
	s.unconfirmed[addr] = u
}

// add records c for the connection from addr (socket inode), and ends the session at once
// when the newest KRL already revokes c.
func (s *Sessions) add(addr string, inode uint64, c certInfo) {
	s.mu.Lock()
	ss := s.live[addr]
	if ss == nil || ss.inode != inode {
		ss = &session{inode: inode}
		s.live[addr] = ss
	}
	if !slices.Contains(ss.certs, c) {
		ss.certs = append(ss.certs, c)
	}
	if len(ss.certs) > 1 {
		s.log.Warn("a connection has more than one Accepted line: one is forged; the session ends when any of their certificates is revoked",
			"client", addr, "key_ids", len(ss.certs))
	}
	newest := s.newest
	s.mu.Unlock()
	s.log.Debug("session tracked", "client", addr, "key_id", c.keyID)
	if newest != nil {
		revoked := revokedBy(newest)
		s.end(func(c certInfo) bool { return revoked(c) })
	}
}

// confirmClosed drops the closing sessions that no sshd process holds any more, and forgets
// the close of those still held after closeGrace.
func (s *Sessions) confirmClosed() {
	s.mu.Lock()
	n := len(s.closing)
	s.mu.Unlock()
	if n == 0 {
		return
	}
	conns, err := s.scan()
	if err != nil {
		return // checked again on the next tick
	}
	now := s.clock.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for addr, since := range s.closing {
		ss := s.live[addr]
		if ss == nil || !heldBySSHD(conns[addr], ss.inode) {
			delete(s.live, addr)
			delete(s.closing, addr)
			s.log.Debug("session closed", "client", addr, "by", "close line")
			continue
		}
		if now.Sub(since) > closeGrace {
			delete(s.closing, addr)
			s.log.Warn("ignored a close line for a connection sshd still holds (forged?)", "client", addr)
		}
	}
}

func heldBySSHD(c *tcpConn, inode uint64) bool {
	return c != nil && c.inode == inode && len(c.sshd) > 0
}

// EndRevoked ends the live sessions whose certificate the entries revoke: by serial, key ID,
// the certificate's key, or the key of the CA that signed it (a compromised CA key).
func (s *Sessions) EndRevoked(_ context.Context, entries []ca.RevocationEntry) {
	serials, ids, fps := map[uint64]bool{}, map[string]bool{}, map[string]bool{}
	for _, e := range entries {
		switch e.Kind {
		case ca.RevokedSerial:
			n, _ := strconv.ParseUint(e.Value, 10, 64)
			serials[n] = true
		case ca.RevokedKeyID:
			ids[e.Value] = true
		case ca.RevokedKey:
			if b, err := base64.StdEncoding.DecodeString(e.Value); err == nil {
				if k, err := ssh.ParsePublicKey(b); err == nil {
					fps[ssh.FingerprintSHA256(k)] = true
				}
			}
		}
	}
	s.end(func(c certInfo) bool { return serials[c.serial] || ids[c.keyID] || fps[c.keyFP] || fps[c.caFP] })
}

// EndRevokedBy ends the live sessions whose certificate k revokes (as sshd would refuse it):
// by serial or key ID under the session's CA (or any CA), by the certificate's key, or by the
// CA key that signed it. k is kept to check the sessions learned after it. The agent calls it
// with every KRL it installs, from either source.
func (s *Sessions) EndRevokedBy(k *krl.KRL) {
	s.mu.Lock()
	if s.newest == nil || k.Version >= s.newest.Version {
		s.newest = k
	}
	live := len(s.live)
	s.mu.Unlock()
	s.log.Debug("live sessions checked against a KRL", "version", k.Version, "live", live)
	s.end(revokedBy(k))
}

// revokedBy is whether k revokes a certificate: sshd checks the certificate's key and its
// CA's key against the KRL's keys (PROTOCOL.krl, KRL_SECTION_EXPLICIT_KEY and
// KRL_SECTION_FINGERPRINT_SHA256), and its serial and key ID against the sections of its CA
// or of any CA (KRL_SECTION_CERTIFICATES with an empty CA key).
func revokedBy(k *krl.KRL) func(certInfo) bool {
	fps := map[string]bool{}
	for _, key := range k.RevokedKeys {
		fps[ssh.FingerprintSHA256(key)] = true
	}
	for _, h := range k.RevokedSHA256 {
		fps["SHA256:"+base64.RawStdEncoding.EncodeToString(h[:])] = true
	}
	type section struct {
		caFP    string // "" for any CA
		serials []krl.SerialRange
		ids     map[string]bool
	}
	secs := make([]section, 0, len(k.Certificates))
	for _, c := range k.Certificates {
		sec := section{serials: c.Serials, ids: map[string]bool{}}
		if c.CA != nil {
			sec.caFP = ssh.FingerprintSHA256(c.CA)
		}
		if !slices.IsSortedFunc(sec.serials, func(a, b krl.SerialRange) int { return cmp.Compare(a.Lo, b.Lo) }) {
			sec.serials = slices.SortedFunc(slices.Values(sec.serials), func(a, b krl.SerialRange) int { return cmp.Compare(a.Lo, b.Lo) })
		}
		for _, id := range c.KeyIDs {
			sec.ids[id] = true
		}
		secs = append(secs, sec)
	}
	return func(c certInfo) bool {
		if fps[c.keyFP] || fps[c.caFP] {
			return true
		}
		for _, sec := range secs {
			if sec.caFP != "" && c.caFP != "" && sec.caFP != c.caFP {
				continue
			}
			if sec.ids[c.keyID] {
				return true
			}
			// The last range starting at or below the serial is the only one that can hold it.
			i := sort.Search(len(sec.serials), func(i int) bool { return sec.serials[i].Lo > c.serial })
			if i > 0 && sec.serials[i-1].Hi >= c.serial {
				return true
			}
		}
		return false
	}
}

// end ends the live sessions one of whose certificates is revoked, and those marked revoked
// already, through signal.
func (s *Sessions) end(revoked func(certInfo) bool) {
	s.mu.Lock()
	victims := map[string]*session{}
	for addr, ss := range s.live {
		if ss.revoked || slices.ContainsFunc(ss.certs, revoked) {
			victims[addr] = ss
			delete(s.live, addr)
			delete(s.closing, addr)
		}
	}
	s.mu.Unlock()
	if len(victims) == 0 {
		return
	}
	conns, err := s.scan()
	if err != nil {
		s.log.Error("cannot read /proc to end the sessions of revoked certificates; trying again at the next sweep", "sessions", len(victims), "err", err)
	}
	s.signal(victims, conns)
}

// signal ends the connections of victims (revoked sessions taken out of the table) as conns
// shows them: SIGTERM to the sshd processes that hold the same socket as when the session was
// confirmed (never to another process, nor to a later connection from the same port). A victim
// whose connection conns does not show goes back into the table marked revoked rather than
// being forgotten: a read of a busy host's TCP table can miss a connection (TestSessionsSurviveAMissedProcRead),
// and a session forgotten then would live on. The sweeps end it or drop it.
func (s *Sessions) signal(victims map[string]*session, conns map[string]*tcpConn) {
	for addr, ss := range victims {
		c := conns[addr]
		if !heldBySSHD(c, ss.inode) {
			s.mu.Lock()
			if s.live[addr] == nil {
				ss.revoked = true
				s.live[addr] = ss
			}
			s.mu.Unlock()
			s.log.Debug("revoked session: its connection was not seen; checked again at the next sweep", "client", addr)
			continue
		}
		killed := false
		for _, pid := range c.sshd {
			if err := s.kill(pid, syscall.SIGTERM); err == nil {
				s.log.Info("ended a session of a revoked certificate", "client", addr, "pid", pid)
				killed = true
			}
		}
		if killed {
			s.ended.Add(1)
		}
	}
}

// Live is the number of sessions tracked.
func (s *Sessions) Live() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.live)
}
