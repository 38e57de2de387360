package bastion

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/fsnotify/fsnotify"
)

// ErrSSHDLink is returned by Run when a path sshd reads (Options.KRLLink, UserCALink) no longer
// leads to the agent's file: the agent cannot repair it (under ProtectSystem=strict /etc/ssh is
// read-only to it), so it stops, and the service manager's root ExecStartPre makes the link
// again before starting it anew.
var ErrSSHDLink = errors.New("bastion: sshd does not read the agent's file")

// guard keeps the files the agent owns true until ctx ends: it watches their directories
// (fsnotify: a deletion, a truncation or a rename is seen within milliseconds) and re-checks
// every GuardEvery regardless (what inotify does not report: a write through a hard link in
// another directory, a lost event queue, a directory that was replaced). A file that differs
// from what the agent means it to hold is put back. It returns an ErrSSHDLink error when a link
// sshd reads through is removed or re-pointed, or the error of a file it could not put back.
func (a *Agent) guard(ctx context.Context) error {
	watched := map[string]bool{} // paths whose events trigger a check
	dirs := map[string]bool{}
	for _, p := range []string{a.o.KRLPath, a.o.UserCAPath, a.o.KRLLink, a.o.UserCALink} {
		if p != "" {
			watched[filepath.Clean(p)] = true
			dirs[filepath.Dir(filepath.Clean(p))] = true
		}
	}
	var events <-chan fsnotify.Event
	var errs <-chan error
	if a.o.noWatch {
		// Tests of the periodic re-check alone.
	} else if w, err := fsnotify.NewWatcher(); err != nil {
		a.o.Log.Warn("cannot watch sshd's files; re-checking them every interval only", "every", a.o.GuardEvery, "err", err)
	} else {
		defer w.Close()
		for d := range dirs {
			if err := w.Add(d); err != nil {
				a.o.Log.Warn("cannot watch a directory of sshd's files; re-checking it every interval only", "dir", d, "every", a.o.GuardEvery, "err", err)
			}
		}
		events, errs = w.Events, w.Errors
	}
	tick := a.o.Clock.NewTicker(a.o.GuardEvery)
	defer tick.Stop()
	for {
		if err := a.checkFiles(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.Chan():
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if !watched[filepath.Clean(ev.Name)] {
				continue // the agent's own temporary files, other files in /etc/ssh
			}
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			// An overflowed queue loses events: check now rather than at the next tick.
			a.o.Log.Warn("watching sshd's files", "err", err)
		}
	}
}

// checkFiles puts back what changed and checks the links; an error is what the agent cannot
// repair, and is also set as Status.FilesAlert.
func (a *Agent) checkFiles() error {
	var errs []error
	for _, f := range []*ownedFile{a.krlFile, a.userCAFile} {
		if f == nil {
			continue
		}
		why, err := f.restore()
		if why != "" && err == nil {
			a.o.Log.Warn("a file sshd reads was changed behind the agent's back; put back", "path", f.path, "found", why)
			a.mu.Lock()
			a.status.FilesRestored++
			a.mu.Unlock()
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s was %s and could not be put back: %w", f.path, why, err))
		}
	}
	for _, l := range []struct{ link, target string }{{a.o.KRLLink, a.o.KRLPath}, {a.o.UserCALink, a.o.UserCAPath}} {
		if l.link == "" || l.target == "" {
			continue
		}
		if err := checkLink(l.link, l.target); err != nil {
			errs = append(errs, err)
		}
	}
	err := errors.Join(errs...)
	if err != nil {
		a.o.Log.Error("sshd does not read what the agent writes; stopping so that the service manager repairs it", "err", err)
		a.mu.Lock()
		a.status.FilesAlert = err.Error()
		a.mu.Unlock()
	}
	return err
}

// checkLink tells whether link leads, through symbolic links, to the path target (which may
// be missing at this instant: the guard puts it back). A link that is missing, is a regular
// file, or leads elsewhere is an ErrSSHDLink error naming where it leads.
func checkLink(link, target string) error {
	want, err := resolveDir(target)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrSSHDLink, target, err)
	}
	p := link
	for range 40 { // the kernel's own bound on nested links
		if p, err = resolveDir(p); err != nil {
			return fmt.Errorf("%w: %s: %v", ErrSSHDLink, link, err)
		}
		if p == want {
			return nil
		}
		st, err := os.Lstat(p)
		if err != nil {
			return fmt.Errorf("%w: %s leads to %s, which does not exist; want a symbolic link to %s", ErrSSHDLink, link, p, target)
		}
		if st.Mode().Type() != os.ModeSymlink {
			return fmt.Errorf("%w: %s leads to %s, a %s, not %s; want a symbolic link to %s (sshd reads a copy the agent does not update)", ErrSSHDLink, link, p, describeMode(st.Mode()), target, target)
		}
		t, err := os.Readlink(p)
		if err != nil {
			return fmt.Errorf("%w: %s: %v", ErrSSHDLink, link, err)
		}
		if !filepath.IsAbs(t) {
			t = filepath.Join(filepath.Dir(p), t)
		}
		p = t
	}
	return fmt.Errorf("%w: %s: too many levels of symbolic links", ErrSSHDLink, link)
}

// resolveDir resolves the links in p's directory, not in its last element.
func resolveDir(p string) (string, error) {
	d, err := filepath.EvalSymlinks(filepath.Dir(p))
	if err != nil {
		return "", err
	}
	return filepath.Join(d, filepath.Base(p)), nil
}

func describeMode(m os.FileMode) string {
	if m.IsRegular() {
		return "regular file"
	}
	return m.Type().String()
}

// guardFailed is the cause with which guarded ends its context.
type guardFailed struct{ err error }

func (g guardFailed) Error() string { return g.err.Error() }

// guarded runs the guard beside the caller: the returned context ends when the guard finds
// what it cannot repair (guardErr then returns it); stop ends the guard and waits for it.
func (a *Agent) guarded(parent context.Context) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancelCause(parent)
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := a.guard(ctx); err != nil {
			cancel(guardFailed{err})
		}
	})
	if a.o.Drift != nil {
		wg.Go(func() { a.followDrift(ctx, a.o.Drift) })
	}
	return ctx, func() { cancel(nil); wg.Wait() }
}

// guardErr is the guard's error if it ended ctx, else nil.
func guardErr(ctx context.Context) error {
	var g guardFailed
	if errors.As(context.Cause(ctx), &g) {
		return g.err
	}
	return nil
}

// Problems lists what makes the agent unhealthy besides a lost source, one sentence each: an
// older KRL refused (Alert), sshd not reading the agent's files (FilesAlert), sshd's effective
// configuration drifting from the baseline or unreadable. Empty when none.
func (s Status) Problems() []string {
	var ps []string
	drift := ""
	if len(s.SSHDDrift) > 0 {
		drift = fmt.Sprintf("sshd's effective configuration differs from the baseline in %d values (sshd_drift), e.g. %s", len(s.SSHDDrift), s.SSHDDrift[0])
	}
	for _, p := range []string{s.Alert, s.FilesAlert, drift, s.SSHDCheckError} {
		if p != "" {
			ps = append(ps, p)
		}
	}
	return ps
}
