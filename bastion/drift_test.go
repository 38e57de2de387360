package bastion_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sshca/sshca/bastion"
	"github.com/sshca/sshca/internal/testenv"
)

// driftCheck checks the configuration at path against the baseline of h's options.
func (h *bastionHost) driftCheck(t *testing.T, sshd, path string) bastion.DriftReport {
	t.Helper()
	base, err := bastion.Baseline(h.opts)
	if err != nil {
		t.Fatal(err)
	}
	r, err := bastion.DriftCheck{SSHD: bastion.SSHDEffective{Bin: sshd, Config: path}, Baseline: base}.Check(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// loosening is what an appended block or a drop-in might try: passwords, authorized_keys,
// keys from a program, root, forwarding, tunnels.
var loosening = []string{
	"\tPasswordAuthentication yes", "\tKbdInteractiveAuthentication yes", "\tAuthorizedKeysFile .ssh/authorized_keys",
	"\tAuthorizedKeysCommand /bin/cat", "\tAuthorizedKeysCommandUser nobody", "\tPermitRootLogin yes",
	"\tAuthenticationMethods password", "\tAllowTcpForwarding yes", "\tAllowStreamLocalForwarding yes", "\tX11Forwarding yes",
	"\tPermitTunnel yes", "\tGatewayPorts yes", "\tRevokedKeys none", "\tMaxAuthTries 100",
}

// TestSSHDConfigAppendedMatchCannotLoosen: Match blocks appended below the rendering (for
// every connection, for root, for an address, for a user) do not change a single effective
// value for any connection sshd -T -C is asked about, with forwarding left to certificates
// and with forwarding off; the drift check agrees (no drift, every block reached).
func TestSSHDConfigAppendedMatchCannotLoosen(t *testing.T) {
	for _, disable := range []bool{false, true} {
		t.Run(fmt.Sprintf("DisableForwarding=%v", disable), func(t *testing.T) {
			h := newBastionHost(t)
			h.opts.DisableForwarding = disable
			var appended []string
			for _, m := range []string{"Match all", "Match User root", "Match Address 10.0.0.0/8,192.0.2.0/24", "Match User alice,bob Host *.example.com"} {
				appended = append(append(appended, m), loosening...)
			}
			sshd, path := h.write(t, nil, appended...)
			r := h.driftCheck(t, sshd, path)
			if len(r.Drift) != 0 {
				t.Errorf("an appended Match block changed effective values:\n%s", strings.Join(r.Drift, "\n"))
			}
			if len(r.Unchecked) != 0 {
				t.Errorf("blocks not reached: %q", r.Unchecked)
			}
			// root (the base), 10.0.0.1, alice, x.example.com, alice at x.example.com.
			if r.Connections != 5 {
				t.Errorf("checked %d connections, want 5", r.Connections)
			}

			// The same blocks appended to the rendering without its Match all block loosen
			// it, and the check says where: the block, not luck, holds the values.
			rendered, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			head, _, _ := strings.Cut(string(rendered), "\n## Every connection")
			bare := h.path("sshd_config.bare")
			if err := os.WriteFile(bare, []byte(head+"\n"+strings.Join(appended, "\n")+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			drift := strings.Join(h.driftCheck(t, sshd, bare).Drift, "\n")
			for _, want := range []string{
				"global: passwordauthentication yes, want no",
				"user=alice,host=x.example.com,addr=203.0.113.7,laddr=203.0.113.7,lport=22: authorizedkeyscommand /bin/cat, want none",
				"user=root,host=sshca-drift-check.invalid,addr=10.0.0.1,laddr=203.0.113.7,lport=22: permittunnel yes, want no",
			} {
				if !strings.Contains(drift, want) {
					t.Errorf("without the Match all block, drift lacks %q; got:\n%s", want, drift)
				}
			}
		})
	}
}

// TestSSHDDriftReported: what the rendering cannot prevent is reported. A drop-in under
// sshd_config.d/ is not read by the rendering at all (no Include). A configuration that
// Includes drop-ins before the rendering (as Debian's stock sshd_config does) lets a drop-in's
// Match block come first and a global-only directive be read first: the drift check names
// the connection and the value. Without them, no drift.
func TestSSHDDriftReported(t *testing.T) {
	h := newBastionHost(t)
	sshd, path := h.write(t, nil)
	dropins := h.path("sshd_config.d")
	if err := os.Mkdir(dropins, 0o755); err != nil {
		t.Fatal(err)
	}
	writeDropIn := func(lines ...string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dropins, "50-cloud-init.conf"), []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeDropIn(append([]string{"PasswordAuthentication yes", "Match all"}, loosening...)...)
	if r := h.driftCheck(t, sshd, path); len(r.Drift) != 0 {
		t.Errorf("the rendering read a drop-in:\n%s", strings.Join(r.Drift, "\n"))
	}

	// Debian's layout: Include first, then the rendering.
	rendered, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	debian := h.path("sshd_config.debian")
	if err := os.WriteFile(debian, append([]byte("Include "+dropins+"/*.conf\n"), rendered...), 0o600); err != nil {
		t.Fatal(err)
	}
	// A global line alone is overridden by the rendering's Match all: no drift.
	writeDropIn("PasswordAuthentication yes", "X11Forwarding yes")
	if r := h.driftCheck(t, sshd, debian); len(r.Drift) != 0 {
		t.Errorf("a global drop-in line changed effective values:\n%s", strings.Join(r.Drift, "\n"))
	}
	// A Match block in the drop-in comes before the rendering's, and global-only directives
	// are read first.
	writeDropIn("KexAlgorithms diffie-hellman-group14-sha1", "Match Address 10.1.0.0/16", "\tPasswordAuthentication yes", "\tAuthorizedKeysFile .ssh/authorized_keys")
	r := h.driftCheck(t, sshd, debian)
	got := strings.Join(r.Drift, "\n")
	for _, want := range []string{
		"addr=10.1.0.1,laddr=203.0.113.7,lport=22: passwordauthentication yes, want no",
		"addr=10.1.0.1,laddr=203.0.113.7,lport=22: authorizedkeysfile .ssh/authorized_keys, want none",
		"global: kexalgorithms diffie-hellman-group14-sha1, want sntrup761x25519-sha512@openssh.com",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("drift does not report %q; got:\n%s", want, got)
		}
	}
	for _, l := range r.Drift {
		if strings.Contains(l, "passwordauthentication") && !strings.Contains(l, "addr=10.1.") {
			t.Errorf("a connection the drop-in's Match does not cover drifts: %s", l)
		}
	}
}

// TestSSHDEffectiveConnectionsReachEveryBlock: for each Match block of a configuration, some
// derived connection is one sshd applies the block to (each block sets its own MaxSessions,
// and sshd -T -C is the judge); a block no connection can reach is reported as unchecked.
func TestSSHDEffectiveConnectionsReachEveryBlock(t *testing.T) {
	h := newBastionHost(t)
	if err := os.WriteFile(h.path("principals-deploy"), []byte("ci\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	blocks := []string{
		"User alice", "User svc-*,!svc-admin", "Host *.corp.example", "Address 10.20.0.0/16",
		"Address 172.16.*", "LocalPort 2200", "LocalAddress 192.168.7.0/24", "User root Address 192.0.2.0/24",
		"User deploy", "Address 2001:db8:1::/48",
	}
	var appended []string
	for i, b := range blocks {
		appended = append(appended, "Match "+b, fmt.Sprintf("\tMaxSessions %d", 100+i))
	}
	appended = append(appended, "Match Group sshca-no-such-group", "\tMaxSessions 99")
	sshd, path := h.write(t, nil, appended...)
	r := bastion.SSHDEffective{Bin: sshd, Config: path}
	conns, unmet, err := r.Connections(bastion.Accounts(h.path("principals-%u")))
	if err != nil {
		t.Fatal(err)
	}
	reached := map[string]bool{}
	for _, c := range conns {
		eff, err := r.Read(context.Background(), &c)
		if err != nil {
			t.Fatal(err)
		}
		reached[eff.Get("maxsessions")] = true
	}
	for i, b := range blocks {
		if !reached[fmt.Sprint(100+i)] {
			t.Errorf("no derived connection reaches Match %s (connections %v)", b, conns)
		}
	}
	if !reached["10"] {
		t.Error("no derived connection is outside every block")
	}
	if len(unmet) != 1 || !strings.Contains(unmet[0], "sshca-no-such-group") {
		t.Errorf("unmet = %q, want the group without members", unmet)
	}
}

// TestAgentReportsSSHDDrift: the agent's Status (and so /healthz) reports drift while a
// loosening drop-in is read before the rendering, and clears when it is gone.
func TestAgentReportsSSHDDrift(t *testing.T) {
	h := newBastionHost(t)
	sshd, path := h.write(t, nil)
	dropins := h.path("sshd_config.d")
	if err := os.Mkdir(dropins, 0o755); err != nil {
		t.Fatal(err)
	}
	rendered, _ := os.ReadFile(path)
	if err := os.WriteFile(path, append([]byte("Include "+dropins+"/*.conf\n"), rendered...), 0o600); err != nil {
		t.Fatal(err)
	}
	dropin := filepath.Join(dropins, "10-loose.conf")
	if err := os.WriteFile(dropin, []byte("Match User root\n\tPermitRootLogin yes\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	base, err := bastion.Baseline(h.opts)
	if err != nil {
		t.Fatal(err)
	}
	g := newGuardedHost(t)
	a, err := bastion.NewAgent(bastion.Options{KRLPath: g.krl, Feed: g.mem, Drift: &bastion.DriftCheck{
		SSHD: bastion.SSHDEffective{Bin: sshd, Config: path}, Baseline: base, Every: 100 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitUntil(t, "drift is reported", func() bool { return len(a.Status().SSHDDrift) > 0 })
	st := a.Status()
	if !strings.Contains(strings.Join(st.SSHDDrift, "\n"), "user=root,") || len(st.Problems()) == 0 || st.ConfigDrift != len(st.SSHDDrift) {
		t.Errorf("status: drift %q, problems %q", st.SSHDDrift, st.Problems())
	}
	if err := os.Remove(dropin); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "drift clears", func() bool { st := a.Status(); return len(st.SSHDDrift) == 0 && st.SSHDCheckError == "" })
	if st := a.Status(); len(st.Problems()) != 0 || st.ConfigDrift != 0 {
		t.Errorf("without drift: problems %q, ConfigDrift %d", st.Problems(), st.ConfigDrift)
	}
	// A configuration sshd cannot read is a problem too.
	if err := os.WriteFile(dropin, []byte("NoSuchDirective yes\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "an unreadable configuration is reported", func() bool { return a.Status().SSHDCheckError != "" })
}

// BenchmarkDriftCheck: one check of the rendering with the four appended Match blocks of
// TestSSHDConfigAppendedMatchCannotLoosen (sshd -T globally and for 5 connections).
func BenchmarkDriftCheck(b *testing.B) {
	h := newBastionHost(b)
	var appended []string
	for _, m := range []string{"Match all", "Match User root", "Match Address 10.0.0.0/8,192.0.2.0/24", "Match User alice,bob Host *.example.com"} {
		appended = append(append(appended, m), loosening...)
	}
	sshd, path := h.write(b, nil, appended...)
	base, err := bastion.Baseline(h.opts)
	if err != nil {
		b.Fatal(err)
	}
	d := bastion.DriftCheck{SSHD: bastion.SSHDEffective{Bin: sshd, Config: path}, Baseline: base}
	for b.Loop() {
		if r, err := d.Check(context.Background()); err != nil || len(r.Drift) != 0 {
			b.Fatal(err, r.Drift)
		}
	}
}

// TestSSHDEffectiveAsAgentUser: the agent runs as its own user, and sshd -T loads root's
// host keys: with CAP_DAC_READ_SEARCH as an ambient capability (what the unit grants) the
// reader works; without it, the error says which key sshd could not load.
func TestSSHDEffectiveAsAgentUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("changing user needs root")
	}
	setpriv := testenv.Need(t, "setpriv")
	h := newBastionHost(t)
	sshd, path := h.write(t, nil)
	// As installed: sshd_config world-readable, the host key root's alone.
	for p, mode := range map[string]os.FileMode{h.path("host"): 0o600, path: 0o644, h.dir: 0o755, filepath.Dir(h.dir): 0o755} {
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}
	as := func(name string, caps ...string) string {
		script := h.path(name)
		args := "--reuid=nobody --regid=nogroup --clear-groups " + strings.Join(caps, " ")
		if err := os.WriteFile(script, []byte("#!/bin/sh\nexec "+setpriv+" "+args+" "+sshd+" \"$@\"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return script
	}
	withCap := bastion.SSHDEffective{Bin: as("sshd-agent", "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"), Config: path}
	eff, err := withCap.Read(context.Background(), &bastion.Connection{User: "root", Host: "h.invalid", Addr: "203.0.113.7"})
	if err != nil {
		t.Fatalf("as the agent's user with CAP_DAC_READ_SEARCH: %v", err)
	}
	if eff.Get("passwordauthentication") != "no" {
		t.Errorf("passwordauthentication %q", eff.Get("passwordauthentication"))
	}
	without := bastion.SSHDEffective{Bin: as("sshd-nocap"), Config: path}
	if _, err := without.Read(context.Background(), nil); err == nil || !strings.Contains(err.Error(), h.path("host")) {
		t.Errorf("without the capability: %v, want an error naming the host key", err)
	}
}
