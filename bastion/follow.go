package bastion

import (
	"bufio"
	"context"
	"errors"
	"io"
	"os"
	"time"

	"github.com/nxadm/tail"
)

const (
	// sweepEvery is how often the table is reconciled with /proc: sessions whose connection
	// is gone are dropped, and connections sshd holds with no session are looked up in the
	// log files (their Accepted line lost to a rotation, or read before sshd held them).
	sweepEvery = 5 * time.Second
	// searchAgain is how long a connection looked up in vain is left alone (a connection
	// still authenticating, or one that logged in another way), unless the log rotates.
	searchAgain = 30 * time.Second
	// maxLine bounds one log line; a longer one is cut (sshd's are well under 1 KiB).
	maxLine = 64 << 10
)

// Follow keeps the table current from sshd's log file at path (LogLevel VERBOSE) until ctx
// ends. It first rebuilds the table: the connections sshd processes hold now (procfs) are
// looked up in the previous and current log files (path.1, then path), so sessions that began
// before the agent started, or before the last rotation, are tracked too. Then it follows path
// with github.com/nxadm/tail through rename-and-create and copytruncate rotations alike, and
// every sweepEvery reconciles the table with /proc (lines written to the old file after its
// rename, or lost to copytruncate's window, are looked up again). It returns only when ctx
// ends: a follower that fails is restarted after a second.
func (s *Sessions) Follow(ctx context.Context, path string) error {
	off := s.rebuild(path)
	for ctx.Err() == nil {
		err := s.follow(ctx, path, off)
		if ctx.Err() != nil {
			break
		}
		s.log.Error("following the sshd log failed; restarting it", "path", path, "err", err)
		select {
		case <-ctx.Done():
		case <-s.clock.After(time.Second):
		}
		off = -1 // from the end: the sweep looks up what was missed
		s.sync(path, true)
	}
	return nil
}

// rebuild looks up every connection sshd holds in the log files and returns the offset just
// past the current file's last complete line (where following starts).
func (s *Sessions) rebuild(path string) int64 {
	off := s.sync(path, true)
	s.log.Info("session table rebuilt from /proc and the sshd log", "path", path, "sessions", s.Live())
	return off
}

func (s *Sessions) follow(ctx context.Context, path string, off int64) error {
	loc := &tail.SeekInfo{Offset: off, Whence: io.SeekStart}
	if off < 0 {
		loc = &tail.SeekInfo{Offset: 0, Whence: io.SeekEnd}
	}
	t, err := tail.TailFile(path, tail.Config{Follow: true, ReOpen: true, Location: loc, CompleteLines: true,
		MaxLineSize: maxLine, Logger: tail.DiscardingLogger})
	if err != nil {
		return err
	}
	defer t.Cleanup()
	defer func() { _ = t.Stop() }()
	closes := s.clock.NewTicker(250 * time.Millisecond)
	defer closes.Stop()
	sweep := s.clock.NewTicker(sweepEvery)
	defer sweep.Stop()
	read := 0
	for {
		select {
		case <-ctx.Done():
			return nil
		case l, ok := <-t.Lines:
			if !ok {
				if err := t.Err(); err != nil {
					return err
				}
				return errors.New("bastion: the log follower stopped")
			}
			if l.Err != nil {
				continue
			}
			if l.Num == 1 && read > 0 {
				// The file was reopened (renamed and recreated, or truncated): what was
				// written to the old one after we last read it is only in path.1 now.
				s.sync(path, true)
			}
			read++
			s.Observe(l.Text)
		case <-closes.Chan():
			s.confirmClosed()
		case <-sweep.Chan():
			s.sync(path, false)
		}
	}
}

// sync reconciles the table with /proc: it drops sessions whose connection no sshd process
// held at two sweeps in a row, adds the Accepted lines read earlier that sshd now confirms
// (unconfirmed), and looks up the connections sshd holds with no session in path.1 and path (all of
// them when rotated, else those not looked up within searchAgain). It returns the offset just
// past the last complete line of path (0 when it cannot be read), reading path only when
// something is looked up or rotated is set.
func (s *Sessions) sync(path string, rotated bool) int64 {
	conns, err := s.scan()
	if err != nil {
		s.log.Warn("cannot read /proc to reconcile the session table", "err", err)
		return -1
	}
	now := s.clock.Now()
	want := map[string]uint64{}
	type confirmedLine struct {
		inode uint64
		certs []certInfo
	}
	confirmed := map[string]confirmedLine{}
	revoked := map[string]*session{} // marked revoked, and seen now: ended below
	s.mu.Lock()
	for addr, ss := range s.live {
		if heldBySSHD(conns[addr], ss.inode) {
			delete(s.missing, addr)
			if ss.revoked {
				revoked[addr] = ss
			}
			continue
		}
		if s.missing[addr]++; s.missing[addr] >= 2 {
			delete(s.live, addr)
			delete(s.closing, addr)
			delete(s.missing, addr)
			s.log.Debug("session closed", "client", addr, "by", "sweep")
		}
	}
	for addr, u := range s.unconfirmed {
		if c := conns[addr]; c != nil && len(c.sshd) > 0 && now.Sub(u.at) < unconfirmedFor {
			confirmed[addr] = confirmedLine{inode: c.inode, certs: u.certs}
		}
		if c := conns[addr]; now.Sub(u.at) >= unconfirmedFor || (c != nil && len(c.sshd) > 0) {
			delete(s.unconfirmed, addr)
		}
	}
	held := map[uint64]bool{}
	for addr, c := range conns {
		if len(c.sshd) == 0 {
			continue
		}
		held[c.inode] = true
		if ss := s.live[addr]; ss != nil && ss.inode == c.inode {
			continue
		}
		if _, ok := confirmed[addr]; ok {
			continue
		}
		if at, ok := s.searched[c.inode]; ok && !rotated && now.Sub(at) < searchAgain {
			continue
		}
		want[addr] = c.inode
		s.searched[c.inode] = now
	}
	for inode := range s.searched {
		if !held[inode] {
			delete(s.searched, inode)
		}
	}
	for addr := range revoked {
		delete(s.live, addr)
		delete(s.closing, addr)
	}
	s.mu.Unlock()
	s.signal(revoked, conns)
	for addr, u := range confirmed {
		for _, c := range u.certs {
			s.add(addr, u.inode, c)
		}
	}
	if len(want) == 0 && !rotated {
		return -1
	}
	found := map[string][]certInfo{}
	if len(want) > 0 {
		_ = readClaims(path+".1", want, found) // there may be no previous file
	}
	off := readClaims(path, want, found)
	for addr, certs := range found {
		for _, c := range certs {
			s.add(addr, want[addr], c)
		}
	}
	if len(found) > 0 {
		s.log.Info("sessions found in the sshd log files", "sessions", len(found))
	}
	return off
}

// readClaims adds to found the certificates of the Accepted lines of file for the wanted
// client addresses (every one of them: a line forged before or after sshd's own cannot hide
// it), and returns the offset just past its last complete line (0 when it cannot be read).
// A file read here was written before these connections' sockets were checked, so a line for
// one of them is taken on the word of procfs: sshd holds that connection now.
func readClaims(file string, want map[string]uint64, found map[string][]certInfo) int64 {
	f, err := os.Open(file)
	if err != nil {
		return 0
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, maxLine)
	var off int64
	for {
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			off += int64(len(line)) // an overlong line: skip it whole
			for errors.Is(err, bufio.ErrBufferFull) {
				line, err = r.ReadSlice('\n')
				off += int64(len(line))
			}
			continue
		}
		if err != nil {
			return off // a partial last line is read again by the follower
		}
		off += int64(len(line))
		if len(want) == 0 {
			continue
		}
		if addr, _, c, ok := accepted(string(line[:len(line)-1])); ok {
			if _, ok := want[addr]; ok {
				found[addr] = append(found[addr], c)
			}
		}
	}
}
