package bastion

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
)

// DisabledPrefix starts a line of authorized_keys that DisableKey commented out.
const DisabledPrefix = "# sshca-disabled "

// maxRewriteSize bounds a file DisableKey or RestoreKey rewrites, as discovery bounds reads.
const maxRewriteSize = 1 << 20

// DisabledKey is the marker DisableKey leaves in its state directory (one JSON line per key
// disabled, in disabled.jsonl) beside the backup of the file as it was.
type DisabledKey struct {
	File        string    `json:"file"`
	Fingerprint string    `json:"fingerprint"`
	Lines       []int     `json:"lines"`
	Backup      string    `json:"backup"`
	At          time.Time `json:"at"`
}

// DisableKey comments out every line of the authorized_keys file path whose key has the
// SHA256 fingerprint fp, so sshd no longer accepts it, and keeps a backup of the file and a
// marker in stateDir (the agent's own directory).
//
// The file is rewritten as its owner: on a thread of its own whose file-system uid and gid
// are the owner's (setfsuid(2), which drops the thread's file capabilities too), so the
// agent's privileges never write where the owner could not, opened without following a link
// at any component (openat2 RESOLVE_NO_SYMLINKS), and rewritten in place: same inode, owner
// and mode, so sshd's StrictModes still accepts the rest. The owner can add the key back, and
// the next discovery report shows it again. Restoring is RestoreKey, a local command.
func DisableKey(path, fp, stateDir string) (DisabledKey, error) {
	rec := DisabledKey{File: path, Fingerprint: fp, At: time.Now().UTC()}
	var before []byte
	err := rewriteAsOwner(path, func(b []byte) ([]byte, error) {
		before = b
		lines := strings.SplitAfter(string(b), "\n")
		for i, l := range lines {
			if keyFingerprint(l) == fp {
				lines[i] = DisabledPrefix + l
				rec.Lines = append(rec.Lines, i+1)
			}
		}
		if len(rec.Lines) == 0 {
			return nil, fmt.Errorf("bastion: %s has no enabled key %s", path, fp)
		}
		return []byte(strings.Join(lines, "")), nil
	})
	if err != nil {
		return rec, err
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return rec, fmt.Errorf("bastion: disable: %w", err)
	}
	rec.Backup = filepath.Join(stateDir, fmt.Sprintf("authorized_keys.%s.%d", strings.ReplaceAll(strings.Trim(path, "/"), "/", "_"), rec.At.UnixNano()))
	if err := os.WriteFile(rec.Backup, before, 0o600); err != nil {
		return rec, fmt.Errorf("bastion: disable: backup: %w", err)
	}
	line, _ := json.Marshal(rec)
	f, err := os.OpenFile(filepath.Join(stateDir, "disabled.jsonl"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return rec, fmt.Errorf("bastion: disable: marker: %w", err)
	}
	defer f.Close()
	if _, err := f.Write(append(line, '\n')); err != nil {
		return rec, fmt.Errorf("bastion: disable: marker: %w", err)
	}
	return rec, nil
}

// RestoreKey puts back the lines of key fp that DisableKey commented out in path, as the
// file's owner like DisableKey. It is run on the host, never on a remote request: the remote
// channel can only take access away.
func RestoreKey(path, fp string) (int, error) {
	n := 0
	err := rewriteAsOwner(path, func(b []byte) ([]byte, error) {
		lines := strings.SplitAfter(string(b), "\n")
		for i, l := range lines {
			if rest, ok := strings.CutPrefix(l, DisabledPrefix); ok && keyFingerprint(rest) == fp {
				lines[i] = rest
				n++
			}
		}
		if n == 0 {
			return nil, fmt.Errorf("bastion: %s has no key %s disabled by sshca", path, fp)
		}
		return []byte(strings.Join(lines, "")), nil
	})
	return n, err
}

// keyFingerprint is the fingerprint of an authorized_keys line's key ("" for anything else).
func keyFingerprint(line string) string {
	line = strings.TrimSpace(line)
	if line == "" || line[0] == '#' {
		return ""
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
	if err != nil {
		return ""
	}
	return ssh.FingerprintSHA256(pub)
}

// rewriteAsOwner reads path and writes back edit's result in place, with the file-system
// identity of the file's owner on a locked thread that is discarded afterwards.
func rewriteAsOwner(path string, edit func([]byte) ([]byte, error)) error {
	// The owner, from the file as found (no link followed).
	fd, err := openNoFollow(path)
	if err != nil {
		return fmt.Errorf("bastion: open %s: %w", path, err)
	}
	var st unix.Stat_t
	err = unix.Fstat(fd, &st)
	unix.Close(fd)
	if err != nil {
		return fmt.Errorf("bastion: stat %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("bastion: %s is not a regular file", path)
	}
	done := make(chan error, 1)
	go func() {
		// Never unlocked: the thread, with its changed identity, ends with the goroutine.
		runtime.LockOSThread()
		done <- rewriteAs(path, int(st.Uid), int(st.Gid), st.Dev, st.Ino, edit)
	}()
	return <-done
}

func rewriteAs(path string, uid, gid int, dev, ino uint64, edit func([]byte) ([]byte, error)) error {
	if err := unix.Setfsgid(gid); err != nil {
		return fmt.Errorf("bastion: setfsgid %d: %w", gid, err)
	}
	if err := unix.Setfsuid(uid); err != nil {
		return fmt.Errorf("bastion: setfsuid %d: %w", uid, err)
	}
	// setfsuid reports no failure: check the thread's identity took.
	if prev, _ := unix.SetfsuidRetUid(-1); prev != uid {
		return fmt.Errorf("bastion: could not take uid %d to rewrite %s (CAP_SETUID needed)", uid, path)
	}
	fd, err := unix.Openat2(unix.AT_FDCWD, path, &unix.OpenHow{
		Flags:   unix.O_RDWR | unix.O_NOFOLLOW | unix.O_NOCTTY | unix.O_CLOEXEC | unix.O_NONBLOCK,
		Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if errors.Is(err, unix.ENOSYS) {
		fd, err = walkNoFollowFlags(path, unix.O_RDWR|unix.O_NOFOLLOW|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK)
	}
	if err != nil {
		return fmt.Errorf("bastion: open %s as uid %d: %w", path, uid, err)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Dev != dev || st.Ino != ino || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("bastion: %s changed while it was being disabled; try again", path)
	}
	if st.Size > maxRewriteSize {
		return fmt.Errorf("bastion: %s: %d bytes, over the cap of %d", path, st.Size, maxRewriteSize)
	}
	b := make([]byte, st.Size)
	if _, err := f.ReadAt(b, 0); err != nil && st.Size > 0 {
		return fmt.Errorf("bastion: read %s: %w", path, err)
	}
	out, err := edit(b)
	if err != nil {
		return err
	}
	if bytes.Equal(out, b) {
		return nil
	}
	if _, err := f.WriteAt(out, 0); err != nil {
		return fmt.Errorf("bastion: write %s: %w", path, err)
	}
	if err := f.Truncate(int64(len(out))); err != nil {
		return fmt.Errorf("bastion: truncate %s: %w", path, err)
	}
	return f.Sync()
}
