package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/store"
)

// An archive file has one writer at a time. Two `sshca audit archive` runs appending to one
// file at once (two timers, a timer and an operator) interleave their lines, and the file no
// longer verifies. Each run takes flock(2) LOCK_EX on the file it writes, not on its path: two
// paths to one file (a symbolic or hard link, a relative and an absolute path) are one lock,
// and the kernel drops the lock with the last descriptor of the process that holds it, so a
// run killed (kill -9) leaves no lock behind. A run that finds the lock held exits at once and
// names the holder from /proc/locks. `sshca audit verify --archive` takes LOCK_SH: it does not
// read a file half written (a partial last line that is only a run in progress).
//
// The lock is on the file that was opened. A path swapped to another file meanwhile (the file
// deleted, renamed, or a symbolic link pointed elsewhere) would let a second run lock and write
// another file while the first writes one that no path names any more; so a run checks that
// the path still names its file after locking and again after syncing, before Redis records
// anything or trims a record (archiveFileOf's Synced), and stops untrimmed otherwise.

// archiveBusyError is the error for an archive file that another run holds.
type archiveBusyError struct {
	path, holder string
	shared       bool // what was asked: a shared lock (verify)
}

func (e *archiveBusyError) Error() string {
	if e.shared {
		return fmt.Sprintf("%s: an archive run (%s) is writing this file now: verify it once that run has ended", e.path, e.holder)
	}
	return fmt.Sprintf("%s: another archive run, or a verify, (%s) holds this archive file: nothing archived; two runs appending to one file at once would interleave their lines. Run again once it has ended (a run killed leaves no lock: the kernel drops it with the process)", e.path, e.holder)
}

// lockArchive takes flock(2) on f, the file opened at path: exclusive for a run that writes it,
// shared for one that reads it. It does not wait. It then checks that path still names f.
func lockArchive(f *os.File, path string, shared bool) error {
	how := unix.LOCK_EX
	if shared {
		how = unix.LOCK_SH
	}
	for {
		err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		if err == unix.EINTR {
			continue
		}
		if errors.Is(err, unix.EWOULDBLOCK) {
			return &archiveBusyError{path: path, holder: archiveLockHolder(f), shared: shared}
		}
		if err != nil {
			return fmt.Errorf("%s: lock: %w", path, err)
		}
		break
	}
	return stillNamed(f, path)
}

// stillNamed checks that path names f, the file a run opened there.
func stillNamed(f *os.File, path string) error {
	opened, err := f.Stat()
	if err != nil {
		return err
	}
	now, err := os.Stat(path)
	if err == nil && os.SameFile(opened, now) {
		return nil
	}
	what := "another file"
	if err != nil {
		what = "nothing (" + err.Error() + ")"
	}
	return fmt.Errorf("%s: the path now names %s, not the file this run opened there (deleted, renamed or a symbolic link pointed elsewhere while the run held it): nothing is trimmed from Redis, whose records stay there for the next run", path, what)
}

// archiveLockHolder names the process holding a flock on f, from /proc/locks (Linux: "N:
// FLOCK ADVISORY WRITE <pid> <major>:<minor>:<inode> 0 EOF"; the device in hex). Only its pid
// and command name: its command line may carry a Redis URL with a password.
func archiveLockHolder(f *os.File) string {
	const unknown = "a process this one cannot name"
	var st unix.Stat_t
	if unix.Fstat(int(f.Fd()), &st) != nil {
		return unknown
	}
	id := fmt.Sprintf("%02x:%02x:%d", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	lf, err := os.Open("/proc/locks")
	if err != nil {
		return unknown
	}
	defer lf.Close()
	sc := bufio.NewScanner(lf)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		// A waiter's line has "->" after the number; a holder's does not.
		if len(fs) < 6 || fs[1] != "FLOCK" || fs[5] != id {
			continue
		}
		pid, err := strconv.Atoi(fs[4])
		if err != nil || pid <= 0 {
			return unknown
		}
		if pid == os.Getpid() {
			return fmt.Sprintf("pid %d, this process", pid)
		}
		if p, err := procfs.NewProc(pid); err == nil {
			if name, err := p.Comm(); err == nil && name != "" {
				return fmt.Sprintf("pid %d, %s", pid, name)
			}
		}
		return fmt.Sprintf("pid %d", pid)
	}
	return unknown
}

// lastLineHash is the hex SHA-256 of the line that ends at offset size of r (its newline
// included), and an error when the byte before size is not a newline.
func lastLineHash(r io.ReaderAt, size int64) (string, error) {
	if size <= 0 {
		return "", errors.New("the file is empty")
	}
	var nl [1]byte
	if _, err := r.ReadAt(nl[:], size-1); err != nil {
		return "", err
	}
	if nl[0] != '\n' {
		return "", fmt.Errorf("byte %d is not the end of a line", size)
	}
	start, err := afterLastNewline(r, size-1)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(r, start, size-start)); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// reaches says whether r (size bytes) still holds what the run rec describes wrote: at
// least rec.Size bytes, with rec's last line ending there. "" when it does, else what is wrong.
func reaches(r io.ReaderAt, size int64, rec audit.ArchiveFile) string {
	switch {
	case size == 0:
		return "it is empty"
	case size < rec.Size:
		return fmt.Sprintf("it is %d bytes, shorter than the %d the run left (cut back, or replaced by an older copy)", size, rec.Size)
	}
	if h, err := lastLineHash(r, rec.Size); err != nil || h != rec.Tail {
		return fmt.Sprintf("its line ending at byte %d is not the one the run wrote last (replaced by an older copy, or another store's archive, or rewritten)", rec.Size)
	}
	return ""
}

// archiveFileOf describes the archive f, opened at path on this host, once Archive synced
// it; first checking that path still names it.
func archiveFileOf(f *os.File, path string) func() (*audit.ArchiveFile, error) {
	return func() (*audit.ArchiveFile, error) {
		if err := stillNamed(f, path); err != nil {
			return nil, err
		}
		abs, host, err := archivePlace(path)
		if err != nil {
			return nil, err
		}
		st, err := f.Stat()
		if err != nil {
			return nil, err
		}
		tail, err := lastLineHash(f, st.Size())
		if err != nil {
			return nil, fmt.Errorf("%s: the end of what the run wrote: %w", path, err)
		}
		return &audit.ArchiveFile{Path: abs, Host: host, Size: st.Size(), Tail: tail, At: time.Now().UTC()}, nil
	}
}

// archivePlace is path made absolute (links not resolved: the name the runs use is what
// they record) and this host's name.
func archivePlace(path string) (abs, host string, err error) {
	if abs, err = filepath.Abs(path); err != nil {
		return "", "", err
	}
	if host, err = os.Hostname(); err != nil {
		return "", "", err
	}
	return abs, host, nil
}

// lostArchiveError is the error for an archive file that Redis says the last completed archive
// run wrote (audit.ArchiveFile) and that is gone, empty, or no longer reaches what the run
// left. The fix is the file back from a backup; accepting the loss is an explicit flag.
type lostArchiveError struct {
	file string // the file this command was given
	why  string // what is wrong, of rec.Path
	rec  audit.ArchiveFile
	// accept says how the loss can be accepted, "" when it cannot be from this command.
	accept string
}

func (e *lostArchiveError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s; ", e.rec.Path, e.why)
	if e.file != e.rec.Path {
		fmt.Fprintf(&b, "it is the archive file the last run wrote (this command was given %s), ", e.file)
	}
	fmt.Fprintf(&b, "Redis records that the last completed archive run (%s, on host %s) left it at %d bytes, holding stripe 0 up to record %d", e.rec.At.Format(time.RFC3339), e.rec.Host, e.rec.Size, e.rec.Seq)
	if e.rec.Seal != "" {
		fmt.Fprintf(&b, " and ending with the seal %.16s…", e.rec.Seal)
	}
	fmt.Fprintf(&b, " (%s): the records archived there are no longer in Redis. Restore %s on %s from a backup", store.Keys{}.AuditArchiveFile(), e.rec.Path, e.rec.Host)
	if e.accept != "" {
		fmt.Fprintf(&b, ", or %s", e.accept)
	}
	return b.String()
}

// acceptLostHint is how `sshca audit archive` accepts a lost archive file.
const acceptLostHint = "if it is lost for good, give --accept-lost-archive: the run then starts a new file, says so, and records the loss in the audit log"

// checkArchiveRun checks the file a run is about to append to (f at path, size bytes; gone:
// it did not exist before the run created it) against the file the last completed run wrote,
// rec (nil: Redis records none, nothing to check). previous, when given, is where that file
// is now (another place or host's copy). A run to the file the last run wrote finds it gone,
// empty, cut back or replaced; a run that starts a new file (a new month's) finds the last
// run's file there and still reaching what that run left, else the records the last run
// archived would be gone with nobody told. The error is a *lostArchiveError when the file is
// lost (which --accept-lost-archive accepts).
func checkArchiveRun(rec *audit.ArchiveFile, f io.ReaderAt, path string, size int64, gone bool, previous string) error {
	if rec == nil {
		return nil
	}
	abs, host, err := archivePlace(path)
	if err != nil {
		return err
	}
	// The path is the file's name wherever the run runs (a timer's host, a container's
	// volume: a container's host name changes with every run); the host is told, not matched.
	if rec.Path == abs {
		if size == 0 {
			why := "it is empty"
			if gone {
				why = "it is gone"
			}
			return &lostArchiveError{file: path, why: why, rec: *rec, accept: acceptLostHint}
		}
		if why := reaches(f, size, *rec); why != "" {
			return &lostArchiveError{file: path, why: why, rec: *rec, accept: "move it aside and, if the file the run left is lost for good, give --accept-lost-archive to start a new one (the run says so and records the loss in the audit log)"}
		}
		return nil
	}
	if size > 0 {
		// Another file than the last run's, already holding records: the chain decides
		// (the seal Redis records, the base marks).
		return nil
	}
	// A new file: the last run's must still be where it wrote it.
	where := rec.Path
	if previous != "" {
		where = previous
	}
	pf, err := os.Open(where)
	if err != nil {
		elsewhere := ""
		if rec.Host != host {
			elsewhere = ", or run the archive on " + rec.Host + ", where the last run ran"
		}
		return &lostArchiveError{file: path, why: "it cannot be read here: " + err.Error() + " (this run starts a new file, " + path + ", and the last run's must be whole first)", rec: *rec,
			accept: "give where it is now (or a copy) with --previous-archive FILE" + elsewhere + "; " + acceptLostHint}
	}
	defer pf.Close()
	st, err := pf.Stat()
	if err != nil {
		return err
	}
	if why := reaches(pf, st.Size(), *rec); why != "" {
		if where != rec.Path {
			why = fmt.Sprintf("its copy %s given with --previous-archive: %s", where, why)
		}
		return &lostArchiveError{file: path, why: why + " (this run starts a new file, " + path + ", and the last run's must be whole first)", rec: *rec, accept: acceptLostHint}
	}
	return nil
}

// openArchiveToVerify opens the archive at path for `sshca audit verify --archive`, with a
// shared lock (no run writes it meanwhile). withRedis: the file is checked against the file
// the last completed archive run wrote, as Redis records it (al.RecordedArchiveFile): that
// file gone, empty, cut back or replaced, or an empty or missing file given while Redis
// records one, is refused, naming the file, what the run left there and the fix.
func openArchiveToVerify(ctx context.Context, al *audit.Log, path string, withRedis bool) (*os.File, error) {
	var rec *audit.ArchiveFile
	if withRedis {
		var err error
		if rec, err = al.RecordedArchiveFile(ctx); err != nil {
			return nil, err
		}
	}
	f, err := os.Open(path)
	if err != nil {
		if rec != nil && errors.Is(err, fs.ErrNotExist) {
			return nil, verifyLost(rec, path, nil, 0, true)
		}
		return nil, err
	}
	if err := lockArchive(f, path, true); err != nil {
		f.Close()
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if rec != nil {
		if err := verifyLost(rec, path, f, st.Size(), false); err != nil {
			f.Close()
			return nil, err
		}
	}
	return f, nil
}

// verifyLost is checkArchiveRun for a verification: the archive given (f at path, size
// bytes; gone: it does not exist) must be the file the last run wrote, whole, or another one
// that holds records (the chain then decides: an older archive does not hold the seal Redis
// records, or does not reach the base marks).
func verifyLost(rec *audit.ArchiveFile, path string, f io.ReaderAt, size int64, gone bool) error {
	abs, _, err := archivePlace(path)
	if err != nil {
		return err
	}
	accept := "if it is lost for good, `sshca audit archive --accept-lost-archive` starts a new file and records the loss in the audit log"
	if rec.Path == abs {
		why := "it is gone"
		if !gone {
			why = reaches(f, size, *rec)
		}
		if why == "" {
			return nil
		}
		return &lostArchiveError{file: path, why: why, rec: *rec, accept: accept}
	}
	if !gone && size > 0 {
		return nil
	}
	what := "is empty"
	if gone {
		what = "is gone"
	}
	return fmt.Errorf("%s %s, and Redis records that the last completed archive run (%s, on host %s) wrote %s, %d bytes holding stripe 0 up to record %d (%s): verify that file (the latest archive), or restore it from a backup; %s",
		path, what, rec.At.Format(time.RFC3339), rec.Host, rec.Path, rec.Size, rec.Seq, store.Keys{}.AuditArchiveFile(), accept)
}
