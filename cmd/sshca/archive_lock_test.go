package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sshca/sshca/internal/testenv"
)

// archiveProcess is `sshca audit archive` (the test binary run as sshca, TestSSHCAProcess)
// as a process of its own, started.
type archiveProcess struct {
	cmd    *exec.Cmd
	out    *testenv.SyncBuffer
	exited chan struct{} // closed once it ended, err set
	err    error
}

func startArchiveProcess(t *testing.T, args ...string) *archiveProcess {
	t.Helper()
	b, _ := json.Marshal(args)
	p := &archiveProcess{cmd: exec.Command(os.Args[0], "-test.run=^TestSSHCAProcess$", "-test.count=1"), out: &testenv.SyncBuffer{}, exited: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), cliProcessEnv+"="+string(b))
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		p.cmd.Process.Kill() // an error once it ended
		<-p.exited
	})
	return p
}

// wait waits for the process to end (at most a minute) and returns its error.
func (p *archiveProcess) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-p.exited:
		return p.err
	case <-time.After(time.Minute):
		t.Fatalf("the process did not end\n%s", p.out.String())
		return nil
	}
}

// heldAt waits until h holds the process's request, failing if the process ends first.
func (p *archiveProcess) heldAt(t *testing.T, h *testenv.RequestHolder) {
	t.Helper()
	select {
	case <-h.Held():
	case <-p.exited:
		t.Fatalf("the archive process ended before the step: %v\n%s", p.err, p.out.String())
	case <-time.After(time.Minute):
		t.Fatalf("the archive process never reached the step\n%s", p.out.String())
	}
}

// TestArchiveRunsLocked: two `sshca audit archive` processes on one file (real redis-server):
// while the first holds the file (its lines written and synced, its trim of stripe 0 held by
// a proxy), a second process exits non-zero at once naming the first's pid, writing nothing;
// so does one given the file through a symbolic link (the lock is the file's, not the
// path's), and `sshca audit verify --archive` says a run is writing it. The first killed
// with SIGKILL leaves no lock: the next run completes its interrupted run, and every record
// is in the file once. Before, the second run appended its own lines after the first's
// (both walked the same records), and the file held records twice or did not verify.
func TestArchiveRunsLocked(t *testing.T) {
	r := testenv.StartRedis(t)
	e := newArchiveLostEnv(t, r, 3)
	dir := t.TempDir()
	p := filepath.Join(dir, "audit.jsonl")
	e.add(2)
	e.mustArchive(p)
	e.add(2)

	h := testenv.HoldRequest(t, r.Addr, "", trimOf(0))
	first := startArchiveProcess(t, "audit", "archive", "--redis", "redis://"+h.Addr, "--key-file", e.keyFile, "--out", p)
	first.heldAt(t, h)
	size := len(readFile(t, p))
	pid := fmt.Sprintf("pid %d", first.cmd.Process.Pid)

	link := filepath.Join(t.TempDir(), "link.jsonl")
	if err := os.Symlink(p, link); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{p, link} {
		second := startArchiveProcess(t, "audit", "archive", "--redis", "redis://"+r.Addr, "--key-file", e.keyFile, "--out", path)
		err := second.wait(t)
		out := second.out.String()
		if err == nil || !strings.Contains(out, "("+pid+", ") || !strings.Contains(out, "holds this archive file") || !strings.Contains(out, "nothing archived") {
			t.Fatalf("a second run to %s while the first holds the file: %v; want a refusal naming %s\n%s", path, err, pid, out)
		}
		t.Logf("the second run to %s: %s", path, strings.TrimSpace(out))
		if n := len(readFile(t, p)); n != size {
			t.Fatalf("the refused run to %s changed the file: %d bytes, was %d", path, n, size)
		}
	}
	if out, err := e.verify(p); err == nil || !strings.Contains(err.Error(), "is writing this file now") || !strings.Contains(err.Error(), pid) {
		t.Fatalf("verify while a run writes the file: %v\n%s", err, out)
	}

	if err := first.cmd.Process.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	first.wait(t)
	e.add(1)
	if out, err := e.archive(p); err != nil {
		t.Fatalf("the run after the holder was killed: %v\n%s", err, out)
	}
	if out, err := e.verify(p); err != nil || strings.Contains(out, "WARNING") {
		t.Fatalf("verify: %v\n%s", err, out)
	}
	e.eachOnce(p)
}

// TestArchivePathSwappedMidRun: the file an `sshca audit archive` process holds is renamed
// away while the process waits on Redis (a proxy holds its first read after the lock), so
// that the path names no file, then another. A second run to the path meanwhile is refused
// (the file the last run wrote is gone), and the first, released, writes its file but trims
// nothing (the path no longer names it): Redis keeps every record. With the file put back,
// the next run completes, and every record is in it once. Without the check after syncing,
// the first run trimmed records into a file no path named.
func TestArchivePathSwappedMidRun(t *testing.T) {
	r := testenv.StartRedis(t)
	for _, stripes := range []int{1, 3} {
		t.Run(fmt.Sprintf("%d stripes", stripes), func(t *testing.T) {
			e := newArchiveLostEnv(t, r, stripes)
			dir := t.TempDir()
			p, moved := filepath.Join(dir, "audit.jsonl"), filepath.Join(dir, "moved.jsonl")
			e.add(2)
			e.mustArchive(p)
			e.add(2)
			before := e.bases()

			h := testenv.HoldRequest(t, r.Addr, "", "sshca:{audit}:archive-file")
			first := startArchiveProcess(t, "audit", "archive", "--redis", "redis://"+h.Addr, "--key-file", e.keyFile, "--out", p)
			first.heldAt(t, h)
			if err := os.Rename(p, moved); err != nil {
				t.Fatal(err)
			}
			if out, err := e.archive(p); err == nil || !strings.Contains(err.Error(), "it is gone") {
				t.Fatalf("a run to the path while the file is away: %v\n%s", err, out)
			}
			writeFile(t, p, "") // the path names another file now
			h.Release()
			err := first.wait(t)
			t.Logf("the first run: %s", strings.TrimSpace(first.out.String()))
			if out := first.out.String(); err == nil || !strings.Contains(out, "the path now names another file") || !strings.Contains(out, "nothing trimmed") {
				t.Fatalf("the first run, its path swapped: %v\n%s", err, out)
			}
			if after := e.bases(); after != before {
				t.Fatalf("Redis trimmed: %s, was %s", after, before)
			}
			if err := os.Rename(moved, p); err != nil {
				t.Fatal(err)
			}
			e.mustArchive(p)
			if out, err := e.verify(p); err != nil || strings.Contains(out, "WARNING") {
				t.Fatalf("verify: %v\n%s", err, out)
			}
			e.eachOnce(p)
		})
	}
}
