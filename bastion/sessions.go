package bastion

import (
	"bufio"
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/procfs"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/krl"
)

// Sessions tracks live sshd sessions authenticated by certificates, from sshd's log at
// LogLevel VERBOSE, and ends those whose certificate gets revoked. sshd checks the KRL only at
// authentication; without this, a session opened before the revocation would live on.
type Sessions struct {
	log  *slog.Logger
	proc string // where procfs is mounted (procfs.DefaultMountPoint, /proc)

	mu   sync.Mutex
	live map[string]session // by "ip:port" of the client

	// ended counts the sessions ended since start (at least one of their processes was sent
	// SIGTERM): sshca_bastion_sessions_ended_total.
	ended atomic.Uint64
}

// Ended is how many sessions of revoked certificates were ended since start.
func (s *Sessions) Ended() uint64 { return s.ended.Load() }

type session struct {
	serial uint64
	keyID  string
	keyFP  string
	caFP   string
	user   string
}

// NewSessions returns an empty tracker.
func NewSessions(log *slog.Logger) *Sessions {
	return &Sessions{log: log, proc: procfs.DefaultMountPoint, live: map[string]session{}}
}

var (
	acceptedRE     = regexp.MustCompile(`Accepted publickey for (\S+) from (\S+) port (\d+) ssh2: \S+-CERT (SHA256:\S+) ID (.*) \(serial (\d+)\) CA \S+ (SHA256:\S+)`)
	disconnectedRE = regexp.MustCompile(`(?:Disconnected from user \S+|Connection closed by|Received disconnect from) (\S+) port (\d+)`)
)

// Observe reads one sshd log line.
func (s *Sessions) Observe(line string) {
	if m := acceptedRE.FindStringSubmatch(line); m != nil {
		serial, _ := strconv.ParseUint(m[6], 10, 64)
		s.mu.Lock()
		s.live[net.JoinHostPort(m[2], m[3])] = session{serial: serial, keyID: m[5], keyFP: m[4], caFP: m[7], user: m[1]}
		s.mu.Unlock()
		return
	}
	if m := disconnectedRE.FindStringSubmatch(line); m != nil {
		s.mu.Lock()
		delete(s.live, net.JoinHostPort(m[1], m[2]))
		s.mu.Unlock()
	}
}

// Follow reads the log file from its start and then as it grows, until ctx ends.
func (s *Sessions) Follow(ctx context.Context, path string) error {
	var f *os.File
	for {
		var err error
		if f, err = os.Open(path); err == nil {
			break
		}
		if !errors.Is(err, os.ErrNotExist) {
			return err
		}
		select { // sshd may not have written it yet
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
	defer f.Close()
	r := bufio.NewReader(f)
	var partial string
	for {
		line, err := r.ReadString('\n')
		partial += line
		if err == nil {
			s.Observe(strings.TrimRight(partial, "\n"))
			partial = ""
			continue
		}
		if !errors.Is(err, io.EOF) {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// EndRevoked ends the live sessions whose certificate the entries revoke.
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
	s.end(func(ss session) bool { return serials[ss.serial] || ids[ss.keyID] || fps[ss.keyFP] })
}

// EndRevokedBy ends the live sessions whose certificate k revokes: by serial or key ID under
// the session's CA (or any CA), or by the certificate's key. The HTTPS source has no change
// stream, so each newer KRL it installs is checked against every live session.
func (s *Sessions) EndRevokedBy(k *krl.KRL) {
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
	s.end(func(ss session) bool {
		if fps[ss.keyFP] {
			return true
		}
		for _, sec := range secs {
			if sec.caFP != "" && ss.caFP != "" && sec.caFP != ss.caFP {
				continue
			}
			if sec.ids[ss.keyID] {
				return true
			}
			// The last range starting at or below the serial is the only one that can hold it.
			i := sort.Search(len(sec.serials), func(i int) bool { return sec.serials[i].Lo > ss.serial })
			if i > 0 && sec.serials[i-1].Hi >= ss.serial {
				return true
			}
		}
		return false
	})
}

// end forgets the live sessions for which revoked holds and ends their connections.
func (s *Sessions) end(revoked func(session) bool) {
	s.mu.Lock()
	var victims []string
	for addr, ss := range s.live {
		if revoked(ss) {
			victims = append(victims, addr)
			delete(s.live, addr)
		}
	}
	s.mu.Unlock()
	for _, addr := range victims {
		pids, err := socketOwners(s.proc, addr, os.Getpid())
		if err != nil || len(pids) == 0 {
			// Usually the session ended before its log line was read.
			s.log.Debug("revoked session: no live connection", "client", addr, "err", err)
			continue
		}
		killed := false
		for _, pid := range pids {
			if err := syscall.Kill(pid, syscall.SIGTERM); err == nil {
				s.log.Info("ended a session of a revoked certificate", "client", addr, "pid", pid)
				killed = true
			}
		}
		if killed {
			s.ended.Add(1)
		}
	}
}
