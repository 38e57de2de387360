package bastion_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/bastion"
	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
)

// guardedHost is a bastion laid out as the systemd unit lays it out: sshd reads
// etc/sshca.krl and etc/sshca_user_ca.pub, links into the agent's directory etc/sshca.
type guardedHost struct {
	dir, keygen                  string
	krl, userCA, krlLink, caLink string
	mem                          *store.Memory
	caKey                        ssh.PublicKey
}

func newGuardedHost(t *testing.T) *guardedHost {
	t.Helper()
	h := &guardedHost{dir: t.TempDir(), keygen: testenv.Need(t, "ssh-keygen")}
	agentDir := filepath.Join(h.dir, "etc", "sshca")
	if err := os.MkdirAll(agentDir, 0o755); err != nil {
		t.Fatal(err)
	}
	h.krl, h.userCA = filepath.Join(agentDir, "sshca.krl"), filepath.Join(agentDir, "sshca_user_ca.pub")
	h.krlLink, h.caLink = filepath.Join(h.dir, "etc", "sshca.krl"), filepath.Join(h.dir, "etc", "sshca_user_ca.pub")
	for link, target := range map[string]string{h.krlLink: "sshca/sshca.krl", h.caLink: "sshca/sshca_user_ca.pub"} {
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Run(t, h.keygen, "-q", "-t", "ed25519", "-N", "", "-C", "user-ca", "-f", h.path("ca"))
	b, err := os.ReadFile(h.path("ca.pub"))
	if err != nil {
		t.Fatal(err)
	}
	if h.caKey, _, _, _, err = ssh.ParseAuthorizedKey(b); err != nil {
		t.Fatal(err)
	}
	h.mem = store.NewMemory(time.Now)
	ctx := context.Background()
	if err := h.mem.RegisterCA(ctx, h.caKey); err != nil {
		t.Fatal(err)
	}
	if _, err := h.mem.Revoke(ctx, h.caKey, []ca.RevocationEntry{{Kind: ca.RevokedSerial, Value: "43", Expiry: time.Now().Add(time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	return h
}

func (h *guardedHost) path(name string) string { return filepath.Join(h.dir, name) }

// start runs the agent on the layout until the test ends; Run's result arrives on the channel.
func (h *guardedHost) start(t *testing.T, guardEvery time.Duration, watch bool) (*bastion.Agent, <-chan error) {
	t.Helper()
	o := bastion.Options{KRLPath: h.krl, UserCAPath: h.userCA, KRLLink: h.krlLink, UserCALink: h.caLink,
		Feed: h.mem, CARefresh: time.Hour, GuardEvery: guardEvery}
	if !watch {
		o = bastion.WithoutWatch(o)
	}
	a, err := bastion.NewAgent(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done, finished := make(chan error, 1), make(chan struct{})
	go func() { done <- a.Run(ctx); close(finished) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-finished:
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after its context ended")
		}
	})
	waitUntil(t, "the KRL with serial 43 and the CA keys are installed", func() bool {
		k := installedKRL(t, h.krl)
		b, _ := os.ReadFile(h.userCA)
		return k != nil && k.Version == 1 && len(b) > 0
	})
	return a, done
}

// restored waits until path holds want again and returns how long that took.
func restored(t *testing.T, path string, want []byte, since time.Time) time.Duration {
	t.Helper()
	for {
		if b, err := os.ReadFile(path); err == nil && bytes.Equal(b, want) {
			return time.Since(since)
		}
		if time.Since(since) > 10*time.Second {
			t.Fatalf("%s was not put back within 10 s", path)
		}
		time.Sleep(time.Millisecond)
	}
}

func percentile(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// TestAgentRestoresSSHDFiles: with a real sshd reading the agent's files through links, the
// KRL deleted, the KRL truncated (which makes sshd refuse everyone) and the CA file replaced
// with another CA's key are each put back, and a certificate logs in again. The watch alone
// does it (GuardEvery an hour), and the periodic re-check alone puts back a change the watch
// cannot see (a write through a hard link in another directory). Figures: time from the
// change to the file holding the agent's bytes again, p50/p99 over 20 trials of each kind
// (go test -run TestAgentRestoresSSHDFiles -v ./bastion).
func TestAgentRestoresSSHDFiles(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("sshd runs sessions only as root; this test logs in as root")
	}
	h := newGuardedHost(t)
	a, _ := h.start(t, time.Hour, true)
	testenv.Run(t, h.keygen, "-q", "-t", "ed25519", "-N", "", "-f", h.path("host"))
	testenv.Run(t, h.keygen, "-q", "-t", "ed25519", "-N", "", "-C", "other-ca", "-f", h.path("other"))
	testenv.Run(t, h.keygen, "-q", "-t", "ed25519", "-N", "", "-f", h.path("user"))
	testenv.Run(t, h.keygen, "-q", "-s", h.path("ca"), "-I", "alice#42", "-n", "alice", "-z", "42", "-V", "+10m", h.path("user.pub"))
	hostPub, _ := os.ReadFile(h.path("host.pub"))
	knownHosts := h.path("known_hosts")
	if err := os.WriteFile(knownHosts, []byte("[127.0.0.1]:* "+string(hostPub)), 0o600); err != nil {
		t.Fatal(err)
	}
	sshd := testenv.StartSSHD(t, testenv.SSHDConfig{HostKey: h.path("host"), TrustedUserCAKeys: h.caLink,
		RevokedKeys: h.krlLink, Principals: []string{"alice"}})
	login := func(when string) {
		t.Helper()
		if out, err := sshd.SSH(h.path("user"), h.path("user-cert.pub"), knownHosts, "echo", "in"); err != nil || !strings.Contains(out, "in") {
			t.Fatalf("%s: the certificate was refused: %v\n%s", when, err, out)
		}
	}
	login("before")
	krlBytes, _ := os.ReadFile(h.krl)
	caBytes, _ := os.ReadFile(h.userCA)
	otherCA, _ := os.ReadFile(h.path("other.pub"))

	const trials = 20
	for _, c := range []struct {
		name   string
		path   string
		want   []byte
		break_ func() error
	}{
		{"KRL deleted", h.krl, krlBytes, func() error { return os.Remove(h.krl) }},
		{"KRL truncated", h.krl, krlBytes, func() error { return os.Truncate(h.krl, 0) }},
		{"CA file replaced with another key", h.userCA, caBytes, func() error { return os.WriteFile(h.userCA, otherCA, 0o644) }},
	} {
		var ds []time.Duration
		for range trials {
			start := time.Now()
			if err := c.break_(); err != nil {
				t.Fatal(err)
			}
			ds = append(ds, restored(t, c.path, c.want, start))
		}
		login("after " + c.name)
		t.Logf("%s, put back by the watch: p50 %v p99 %v over %d trials", c.name, percentile(ds, 0.5), percentile(ds, 0.99), trials)
	}
	// The count follows the repair it counts.
	waitUntil(t, "Status.FilesRestored counts every repair", func() bool { return a.Status().FilesRestored == 3*trials })
	if ps := a.Status().Problems(); len(ps) != 0 {
		t.Errorf("problems after repairs the agent could make: %q", ps)
	}
}

// TestAgentRecheckRestoresUnwatchedChange: with the watch off (as if its events were lost),
// the periodic re-check alone puts back a change of the same size (a write through a hard
// link elsewhere): it compares content with the agent's bytes, not sizes or times.
func TestAgentRecheckRestoresUnwatchedChange(t *testing.T) {
	h := newGuardedHost(t)
	const every = 200 * time.Millisecond
	a, _ := h.start(t, every, false)
	want, _ := os.ReadFile(h.krl)
	var ds []time.Duration
	for i := range 20 {
		hard := filepath.Join(t.TempDir(), "hard")
		if err := os.Link(h.krl, hard); err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(hard, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		// Same size, other bytes: only a content comparison finds it.
		if _, err := f.WriteAt(bytes.Repeat([]byte{byte(i + 1)}, 8), int64(len(want)-8)); err != nil {
			t.Fatal(err)
		}
		f.Close()
		ds = append(ds, restored(t, h.krl, want, start))
	}
	t.Logf("put back by the re-check alone, every %v: p50 %v p99 %v over %d trials", every, percentile(ds, 0.5), percentile(ds, 0.99), len(ds))
	waitUntil(t, "Status.FilesRestored counts every repair", func() bool { return a.Status().FilesRestored == 20 })
}

// TestAgentStopsOnBrokenLink: a link sshd reads through that is removed, re-pointed, or
// replaced by a copy cannot be repaired by the agent: Status says so (health turns red) and
// Run returns an ErrSSHDLink error (the unit's ExecStartPre makes the link again). A link
// re-made to the same file is fine.
func TestAgentStopsOnBrokenLink(t *testing.T) {
	for _, c := range []struct {
		name   string
		break_ func(h *guardedHost) error
	}{
		{"KRL link removed", func(h *guardedHost) error { return os.Remove(h.krlLink) }},
		{"KRL link re-pointed", func(h *guardedHost) error {
			if err := os.WriteFile(h.path("stale.krl"), nil, 0o644); err != nil {
				return err
			}
			return replaceLink(h.krlLink, h.path("stale.krl"))
		}},
		{"CA link re-pointed through another link", func(h *guardedHost) error {
			if err := os.WriteFile(h.path("other.pub"), []byte("ssh-ed25519 AAAA other\n"), 0o644); err != nil {
				return err
			}
			if err := os.Symlink(h.path("other.pub"), h.path("hop")); err != nil {
				return err
			}
			return replaceLink(h.caLink, h.path("hop"))
		}},
		{"the agent's directory moved away", func(h *guardedHost) error { return os.Rename(filepath.Dir(h.krl), filepath.Dir(h.krl)+".gone") }},
		{"CA link replaced by a copy", func(h *guardedHost) error {
			b, err := os.ReadFile(h.userCA)
			if err != nil {
				return err
			}
			if err := os.WriteFile(h.caLink+".new", b, 0o644); err != nil {
				return err
			}
			return os.Rename(h.caLink+".new", h.caLink)
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newGuardedHost(t)
			a, done := h.start(t, time.Hour, true)
			// Re-made, with an absolute target this time: still the agent's file.
			if err := replaceLink(h.krlLink, h.krl); err != nil {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond)
			if ps := a.Status().Problems(); len(ps) != 0 {
				t.Fatalf("a link re-made to the same file: %q", ps)
			}
			if err := c.break_(h); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-done:
				if !errors.Is(err, bastion.ErrSSHDLink) {
					t.Fatalf("Run returned %v, want an ErrSSHDLink error", err)
				}
				t.Logf("Run: %v", err)
			case <-time.After(10 * time.Second):
				t.Fatal("Run did not return")
			}
			if st := a.Status(); st.FilesAlert == "" || len(st.Problems()) == 0 {
				t.Errorf("status does not say so: %+v", st)
			}
		})
	}
	// Broken before the agent starts: it does not run at all.
	h := newGuardedHost(t)
	if err := os.Remove(h.caLink); err != nil {
		t.Fatal(err)
	}
	a, err := bastion.NewAgent(bastion.Options{KRLPath: h.krl, UserCAPath: h.userCA, KRLLink: h.krlLink, UserCALink: h.caLink, Feed: h.mem})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Run(ctx); !errors.Is(err, bastion.ErrSSHDLink) {
		t.Errorf("Run with a missing link: %v", err)
	}
}

// replaceLink points link at target atomically (as ln -sfn would, but without a window).
func replaceLink(link, target string) error {
	tmp := link + ".new"
	if err := os.Symlink(target, tmp); err != nil {
		return err
	}
	return os.Rename(tmp, link)
}
