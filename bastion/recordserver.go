package bastion

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"
)

// The recorder talks to the agent over a Unix stream socket in frames: one type byte, the
// payload's length as uint32 big-endian, the payload (at most maxFrame bytes). The first frame
// is frameHello (JSON RecordHello); the agent answers one JSON line (recordReply); then come
// data frames and, when the child has exited, frameExit (JSON RecordingEnd without Dropped).
const (
	frameHello  = 'h'
	frameOutput = 'o'
	frameStderr = 'e'
	frameInput  = 'i'
	frameResize = 'r'
	frameExit   = 'x'
	maxFrame    = 64 * 1024
)

// RecordHello is what the recorder says about its session. The agent records it as said; what
// it checks itself is the peer (RecordPeer).
type RecordHello struct {
	User         string `json:"user"`
	KeyID        string `json:"key_id,omitempty"`
	Serial       string `json:"serial,omitempty"`
	Command      string `json:"command,omitempty"`
	ForceCommand bool   `json:"force_command,omitempty"`
	Kind         string `json:"kind"`
	PTY          bool   `json:"pty"`
	Cols         int    `json:"cols,omitempty"`
	Rows         int    `json:"rows,omitempty"`
}

type recordReply struct {
	Session string `json:"session,omitempty"`
	Error   string `json:"error,omitempty"`
}

func writeFrame(w io.Writer, typ byte, p []byte) error {
	var h [5]byte
	h[0] = typ
	binary.BigEndian.PutUint32(h[1:], uint32(len(p)))
	if _, err := w.Write(append(h[:], p...)); err != nil {
		return err
	}
	return nil
}

func readFrame(r io.Reader, buf []byte) (byte, []byte, error) {
	var h [5]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(h[1:])
	if n > maxFrame {
		return 0, nil, fmt.Errorf("frame of %d bytes, at most %d", n, maxFrame)
	}
	p := buf[:n]
	if _, err := io.ReadFull(r, p); err != nil {
		return 0, nil, err
	}
	return h[0], p, nil
}

// RecordServer is the agent's side of session recording: it accepts one connection per session
// from the recorder on a Unix socket, names the session, and writes its recording (see
// recording.go) to Dir as <id>.rec, hash-chained as the chunks arrive.
//
// The socket is the trust boundary: it should be owned by the group the recorder is setgid to,
// mode 0660, so that no other process of the session user can connect (the kernel makes setgid
// processes non-dumpable, so the user cannot borrow the recorder's connection either). The
// server names the peer by SO_PEERCRED and, with RequireSSHD, accepts only a peer whose parent
// process is sshd, and only one connection per sshd session process.
//
// Caps are in bytes of recorded data: beyond SessionCap in one session, or HostCap over all
// recordings in Dir, chunks are dropped and a ChunkDrop marker says which cap stopped it.
type RecordServer struct {
	Dir        string
	Host       string
	SessionCap int64 // 0: 64 MiB
	HostCap    int64 // 0: 4 GiB
	// RequireSSHD refuses a peer whose parent process is not sshd (production); tests that run
	// the recorder by hand turn it off.
	RequireSSHD bool
	Now         func() time.Time // time.Now when nil
	Log         *slog.Logger

	mu       sync.Mutex
	hostUsed int64
	active   map[int]bool // sshd session pids with a connection open
}

// Serve accepts connections on l until ctx ends, then closes l and waits for the sessions'
// connections to end (the recorders end with their sessions).
func (s *RecordServer) Serve(ctx context.Context, l *net.UnixListener) error {
	if s.Now == nil {
		s.Now = time.Now
	}
	if s.Log == nil {
		s.Log = slog.New(slog.DiscardHandler)
	}
	if s.SessionCap == 0 {
		s.SessionCap = 64 << 20
	}
	if s.HostCap == 0 {
		s.HostCap = 4 << 30
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return fmt.Errorf("recordings directory: %w", err)
	}
	used, err := dirBytes(s.Dir)
	if err != nil {
		return fmt.Errorf("recordings directory: %w", err)
	}
	s.mu.Lock()
	s.hostUsed = used
	s.active = map[int]bool{}
	s.mu.Unlock()
	go func() { <-ctx.Done(); l.Close() }()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("record socket: accept: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			if err := s.session(c); err != nil {
				s.Log.Warn("recording", "err", err)
			}
		}()
	}
}

func dirBytes(dir string) (int64, error) {
	es, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, e := range es {
		if fi, err := e.Info(); err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
	}
	return n, nil
}

// peerOf names the process at the other end of c and its parent.
func peerOf(c *net.UnixConn) (RecordPeer, string, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return RecordPeer{}, "", err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return RecordPeer{}, "", err
	}
	if cerr != nil {
		return RecordPeer{}, "", fmt.Errorf("SO_PEERCRED: %w", cerr)
	}
	p := RecordPeer{PID: int(cred.Pid), UID: int(cred.Uid), GID: int(cred.Gid)}
	ppid, err := parentPID(p.PID)
	if err != nil {
		return p, "", err
	}
	p.SSHDPID = ppid
	exe, _ := os.Readlink("/proc/" + strconv.Itoa(ppid) + "/exe")
	return p, exe, nil
}

// parentPID is the parent of pid, from /proc.
func parentPID(pid int) (int, error) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return 0, fmt.Errorf("peer process: %w", err)
	}
	st, err := p.Stat()
	if err != nil {
		return 0, fmt.Errorf("peer process: %w", err)
	}
	return st.PPID, nil
}

func newSessionID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (s *RecordServer) session(c *net.UnixConn) error {
	refuse := func(msg string) error {
		_ = json.NewEncoder(c).Encode(recordReply{Error: msg})
		return errors.New(msg)
	}
	peer, exe, err := peerOf(c)
	if err != nil {
		return refuse("cannot name the peer: " + err.Error())
	}
	if s.RequireSSHD && filepath.Base(exe) != "sshd" {
		return refuse(fmt.Sprintf("peer %d is not run by sshd (parent %d is %q)", peer.PID, peer.SSHDPID, exe))
	}
	s.mu.Lock()
	if s.active[peer.SSHDPID] {
		s.mu.Unlock()
		return refuse(fmt.Sprintf("sshd session %d already has a recording", peer.SSHDPID))
	}
	s.active[peer.SSHDPID] = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.active, peer.SSHDPID)
		s.mu.Unlock()
	}()

	_ = c.SetReadDeadline(s.Now().Add(10 * time.Second))
	r := bufio.NewReaderSize(c, maxFrame+5)
	buf := make([]byte, maxFrame)
	typ, p, err := readFrame(r, buf)
	if err != nil || typ != frameHello {
		return refuse("expected a hello frame first")
	}
	var hello RecordHello
	if err := json.Unmarshal(p, &hello); err != nil {
		return refuse("hello: " + err.Error())
	}
	_ = c.SetReadDeadline(time.Time{})
	id := newSessionID()
	h := RecordingHeader{Version: 1, ID: id, Start: s.Now().UTC(), Host: s.Host, User: hello.User,
		KeyID: hello.KeyID, Serial: hello.Serial, Command: hello.Command, ForceCommand: hello.ForceCommand,
		Kind: hello.Kind, PTY: hello.PTY, Cols: hello.Cols, Rows: hello.Rows, Peer: &peer}
	f, err := os.OpenFile(filepath.Join(s.Dir, id+".rec"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return refuse("cannot store the recording")
	}
	defer f.Close()
	cw, err := newChainWriter(f, h, s.Now)
	if err != nil {
		return refuse("cannot store the recording")
	}
	if err := json.NewEncoder(c).Encode(recordReply{Session: id}); err != nil {
		return err
	}
	s.Log.Info("recording started", "session", id, "user", hello.User, "key_id", hello.KeyID,
		"serial", hello.Serial, "pid", peer.PID, "sshd_pid", peer.SSHDPID)

	var used, dropped int64
	var stopped bool
	for {
		typ, p, err := readFrame(r, buf)
		if err != nil {
			// The recorder went away before the session's end: leave the recording unterminated.
			s.Log.Warn("recording unterminated", "session", id, "err", err)
			return nil
		}
		var kind string
		switch typ {
		case frameOutput:
			kind = ChunkOutput
		case frameStderr:
			kind = ChunkStderr
		case frameInput:
			kind = ChunkInput
		case frameResize:
			if err := cw.write(ChunkResize, p); err != nil {
				return err
			}
			continue
		case frameExit:
			var e RecordingEnd
			if err := json.Unmarshal(p, &e); err != nil {
				return fmt.Errorf("session %s: exit frame: %w", id, err)
			}
			e.Dropped = dropped
			end, _ := json.Marshal(e)
			s.Log.Info("recording ended", "session", id, "exit", e.Exit, "dropped", dropped)
			return cw.write(ChunkEnd, end)
		default:
			return fmt.Errorf("session %s: unknown frame %q", id, typ)
		}
		if stopped {
			dropped += int64(len(p))
			continue
		}
		n := int64(len(p))
		s.mu.Lock()
		capHit := ""
		switch {
		case used+n > s.SessionCap:
			capHit = "session"
		case s.hostUsed+n > s.HostCap:
			capHit = "host"
		default:
			s.hostUsed += n
		}
		s.mu.Unlock()
		if capHit != "" {
			stopped = true
			dropped += n
			d, _ := json.Marshal(RecordingDrop{Cap: capHit})
			s.Log.Warn("recording cap reached", "session", id, "cap", capHit)
			if err := cw.write(ChunkDrop, d); err != nil {
				return err
			}
			continue
		}
		used += n
		if err := cw.write(kind, p); err != nil {
			return err
		}
	}
}

// ListenRecordSocket listens on the recording socket at path, mode 0660 and owned by group
// (the group the recorder is installed setgid to; empty: the agent's own), so that only the
// recorder can connect, not other processes of the session user. A socket left by an earlier
// agent is replaced; any other file at path is an error.
func ListenRecordSocket(path, group string) (*net.UnixListener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("record socket %s: exists and is not a socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("record socket: %w", err)
		}
	}
	gid := -1
	if group != "" {
		g, err := user.LookupGroup(group)
		if err != nil {
			return nil, fmt.Errorf("record socket group: %w", err)
		}
		if gid, err = strconv.Atoi(g.Gid); err != nil {
			return nil, fmt.Errorf("record socket group %s: gid %q", group, g.Gid)
		}
	}
	// Created under a umask that leaves nobody else a moment to connect before the chmod.
	old := unix.Umask(0o177)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("record socket: %w", err)
	}
	if err := os.Chown(path, -1, gid); err != nil {
		l.Close()
		return nil, fmt.Errorf("record socket: %w", err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		l.Close()
		return nil, fmt.Errorf("record socket: %w", err)
	}
	return l, nil
}
