package bastion

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// writeAtomic replaces path with data: a temporary file in the same directory, fsync, rename,
// fsync of the directory. Readers see the old file or the new one, never a part.
func writeAtomic(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("bastion: write %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // a no-op after the rename
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("bastion: write %s: %w", path, err)
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("bastion: write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("bastion: write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("bastion: write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("bastion: install %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// ownedFile is a file the agent owns in its directory, sshd reads, and anyone with write
// access to the directory could delete or change: it remembers the bytes the agent means the
// file to hold (the last ones it decided on, not a copy read back from disk) so that a guard
// can put them back. mu serialises writing the file with recording the bytes, so a guard never
// sees a new file next to old bytes and "restores" the old one.
type ownedFile struct {
	path string
	mode os.FileMode

	mu   sync.Mutex
	want []byte // nil until the agent has decided what the file holds
}

// set installs b as the file's content and as what it should hold. unlessSame skips the write
// when b is what the file should already hold (the guard repairs the file if it differs).
func (f *ownedFile) set(b []byte, unlessSame bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if unlessSame && f.want != nil && bytes.Equal(f.want, b) {
		return nil
	}
	if err := writeAtomic(f.path, b, f.mode); err != nil {
		return err
	}
	f.want = bytes.Clone(b)
	return nil
}

// adopt records b, read from the file, as what it should hold (at start, before any source
// answered).
func (f *ownedFile) adopt(b []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.want = bytes.Clone(b)
}

// restore rewrites the file when its content (or mode) is not what it should be: deleted,
// truncated, replaced or edited behind the agent's back. It reports whether it did, and why.
func (f *ownedFile) restore() (why string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.want == nil {
		return "", nil
	}
	st, err := os.Lstat(f.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		why = "deleted"
	case err != nil:
		return "", fmt.Errorf("bastion: check %s: %w", f.path, err)
	case !st.Mode().IsRegular():
		why = "not a regular file (" + st.Mode().Type().String() + ")"
	case st.Mode().Perm() != f.mode:
		why = fmt.Sprintf("mode %v, want %v", st.Mode().Perm(), f.mode)
	case st.Size() != int64(len(f.want)):
		why = fmt.Sprintf("%d bytes, want %d", st.Size(), len(f.want))
	default:
		b, err := os.ReadFile(f.path)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("bastion: check %s: %w", f.path, err)
		}
		if bytes.Equal(b, f.want) {
			return "", nil
		}
		why = "content changed"
	}
	if err := writeAtomic(f.path, f.want, f.mode); err != nil {
		return why, err
	}
	return why, nil
}
