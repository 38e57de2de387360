package bastion_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/bastion"
	"github.com/sshca/sshca/client"
)

func newPub(t *testing.T, curve elliptic.Curve) ssh.PublicKey {
	t.Helper()
	var k any
	if curve == nil {
		pub, _, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		k = pub
	} else {
		priv, err := ecdsa.GenerateKey(curve, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		k = &priv.PublicKey
	}
	p, err := ssh.NewPublicKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func authLine(k ssh.PublicKey) string { return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))) }

// trapHomes plants, under a temporary directory, the home directories of accounts whose
// authorized_keys are what users can make of them, and returns the passwd file and homes.
func trapHomes(t *testing.T, capBytes int64) (passwd string, home func(string) string, good, p384, atCap ssh.PublicKey) {
	t.Helper()
	dir := t.TempDir()
	home = func(a string) string { return filepath.Join(dir, "home", a) }
	mk := func(a string) string {
		d := filepath.Join(home(a), ".ssh")
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		return filepath.Join(d, "authorized_keys")
	}
	write := func(p, s string) {
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	good, p384, atCap = newPub(t, nil), newPub(t, elliptic.P384()), newPub(t, nil)
	write(mk("good"), "# a comment\n"+
		`from="10.0.0.0/8",no-pty `+authLine(good)+" alice@laptop\n"+
		"not a key at all\n\n"+
		authLine(p384)+"\n")
	// A link to /dev/zero: reading it would never end.
	if err := os.Symlink("/dev/zero", mk("zero")); err != nil {
		t.Fatal(err)
	}
	// A FIFO: a blocking open would wait for a writer forever.
	if err := syscall.Mkfifo(mk("fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A huge (sparse) file.
	f, err := os.Create(mk("huge"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(capBytes + 1); err != nil {
		t.Fatal(err)
	}
	f.Close()
	// A file exactly at the cap is read.
	line := authLine(atCap) + "\n"
	write(mk("atcap"), line+"#"+strings.Repeat("x", int(capBytes)-len(line)-2)+"\n")
	// A symbolic link in the middle: .ssh points at another user's directory.
	if err := os.MkdirAll(home("linkdir"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(home("good"), ".ssh"), filepath.Join(home("linkdir"), ".ssh")); err != nil {
		t.Fatal(err)
	}
	// The home directory itself a link.
	if err := os.Symlink(home("good"), home("linkhome")); err != nil {
		t.Fatal(err)
	}
	var pw strings.Builder
	pw.WriteString("# comment\n+@netgroup::::::\n")
	for i, a := range []string{"good", "zero", "fifo", "huge", "atcap", "linkdir", "linkhome", "nohome"} {
		fmt.Fprintf(&pw, "%s:x:%d:%d:Full Name,room,phone:%s:/bin/sh\n", a, 2000+i, 2000+i, home(a))
	}
	passwd = filepath.Join(dir, "passwd")
	write(passwd, pw.String())
	return passwd, home, good, p384, atCap
}

// TestDiscoveryInventory: keys of regular files are listed with their options, comments,
// sizes and file times; links at the last or a middle component, a FIFO and a file over the
// cap are reported as skipped without being read (and without hanging); a file at the cap
// is read; a missing home is no finding.
func TestDiscoveryInventory(t *testing.T) {
	const capBytes = 4096
	passwd, home, good, p384, atCap := trapHomes(t, capBytes)
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	d := bastion.Discovery{
		Config: bastion.EffectiveConfig{
			"authorizedkeysfile":           {".ssh/authorized_keys %h/.ssh/authorized_keys"},
			"authorizedkeyscommand":        {"/usr/local/bin/keys %u"},
			"authorizedkeyscommanduser":    {"nobody"},
			"passwordauthentication":       {"no"},
			"kbdinteractiveauthentication": {"yes"},
		},
		Passwd: passwd, MaxFileSize: capBytes, Now: func() time.Time { return now },
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rep, err := d.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(home("good"), ".ssh", "authorized_keys"))
	if err != nil {
		t.Fatal(err)
	}
	goodFile := filepath.Join(home("good"), ".ssh", "authorized_keys")
	atCapFile := filepath.Join(home("atcap"), ".ssh", "authorized_keys")
	atCapSt, _ := os.Stat(atCapFile)
	want := []client.DiscoveredKey{
		{Account: "good", File: goodFile, Line: 2, Fingerprint: ssh.FingerprintSHA256(good), Type: "ssh-ed25519", Bits: 256,
			Options: []string{`from="10.0.0.0/8"`, "no-pty"}, Comment: "alice@laptop", FileModTime: st.ModTime().UTC()},
		{Account: "good", File: goodFile, Line: 5, Fingerprint: ssh.FingerprintSHA256(p384), Type: "ecdsa-sha2-nistp384", Bits: 384,
			FileModTime: st.ModTime().UTC()},
		{Account: "atcap", File: atCapFile, Line: 1, Fingerprint: ssh.FingerprintSHA256(atCap), Type: "ssh-ed25519", Bits: 256,
			FileModTime: atCapSt.ModTime().UTC()},
	}
	if diff := cmp.Diff(want, rep.Keys); diff != "" {
		t.Errorf("keys (-want +got):\n%s", diff)
	}
	skipped := map[string]string{}
	for _, s := range rep.Skipped {
		skipped[s.Account] = s.Reason
	}
	for a, reason := range map[string]string{"zero": "symbolic link", "fifo": "not a regular file", "huge": "over the cap",
		"linkdir": "symbolic link", "linkhome": "symbolic link"} {
		if !strings.Contains(skipped[a], reason) {
			t.Errorf("%s: skipped for %q, want a reason with %q", a, skipped[a], reason)
		}
		delete(skipped, a)
	}
	if len(skipped) != 0 {
		t.Errorf("also skipped: %v", skipped)
	}
	if rep.Accounts != 8 || rep.AccountsTruncated || rep.AuthorizedKeysCommand != "/usr/local/bin/keys %u" ||
		rep.AuthorizedKeysCommandUser != "nobody" || rep.PasswordAuthentication || !rep.KbdInteractiveAuthentication {
		t.Errorf("report: %+v", rep)
	}
	if !rep.Taken.Equal(now) {
		t.Errorf("taken %v, want %v", rep.Taken, now)
	}

	d.MaxAccounts = 3
	if rep, err = d.Run(ctx); err != nil || rep.Accounts != 3 || !rep.AccountsTruncated {
		t.Errorf("capped at 3 accounts: %d, truncated %v, %v", rep.Accounts, rep.AccountsTruncated, err)
	}
}

// TestReadNoFollowWalk: the per-component walk used without openat2 refuses what openat2
// refuses and reads what it reads.
func TestReadNoFollowWalk(t *testing.T) {
	const capBytes = 4096
	_, home, _, _, _ := trapHomes(t, capBytes)
	for _, walk := range []bool{false, true} {
		for a, wantErr := range map[string]string{"good": "", "atcap": "", "zero": "symbolic link", "fifo": "not a regular file",
			"huge": "over the cap", "linkdir": "symbolic link", "linkhome": "symbolic link", "nohome": "no such file"} {
			b, _, err := bastion.ReadNoFollow(filepath.Join(home(a), ".ssh", "authorized_keys"), capBytes, walk)
			switch {
			case wantErr == "" && (err != nil || len(b) == 0):
				t.Errorf("walk=%v %s: %v, %d bytes", walk, a, err, len(b))
			case wantErr != "" && (err == nil || !strings.Contains(err.Error(), wantErr)):
				t.Errorf("walk=%v %s: %v, want %q", walk, a, err, wantErr)
			}
		}
	}
	if _, _, err := bastion.ReadNoFollow("relative/path", capBytes, true); !errors.Is(err, syscall.EINVAL) && err == nil {
		t.Errorf("relative path: %v", err)
	}
}

func TestReadPasswd(t *testing.T) {
	in := "root:x:0:0:root:/root:/bin/bash\n#c\n\nalice:x:1000:1000:Alice A.:/home/alice:/bin/sh\nbob:x:1001:1001::/home/bob:/bin/sh\n"
	got, more, err := bastion.ReadPasswd(strings.NewReader(in), 10)
	want := []bastion.Account{{"root", 0, 0, "/root"}, {"alice", 1000, 1000, "/home/alice"}, {"bob", 1001, 1001, "/home/bob"}}
	if diff := cmp.Diff(want, got); diff != "" || more || err != nil {
		t.Errorf("(-want +got):\n%s more %v err %v", diff, more, err)
	}
	if got, more, _ := bastion.ReadPasswd(strings.NewReader(in), 2); len(got) != 2 || !more {
		t.Errorf("cap 2: %d, more %v", len(got), more)
	}
	for _, bad := range []string{"a:x:0:0:/root:/bin/sh\n", "a:x:zero:0::/root:/bin/sh\n", ":x:0:0::/root:/bin/sh\n"} {
		if _, _, err := bastion.ReadPasswd(strings.NewReader("root:x:0:0:root:/root:/bin/bash\n"+bad), 10); err == nil || !strings.Contains(err.Error(), "line 2") {
			t.Errorf("%q: %v, want an error naming line 2", bad, err)
		}
	}
}

func TestExpandAuthorizedKeysFile(t *testing.T) {
	a := bastion.Account{Name: "alice", UID: 1000, Home: "/home/alice"}
	for pat, want := range map[string]string{
		".ssh/authorized_keys":       "/home/alice/.ssh/authorized_keys",
		"%h/.ssh/authorized_keys2":   "/home/alice/.ssh/authorized_keys2",
		"/etc/ssh/keys/%u":           "/etc/ssh/keys/alice",
		"/etc/ssh/keys/%U/%%u":       "/etc/ssh/keys/1000/%u",
		"/etc/ssh/keys/%u/../../etc": "/etc/ssh/etc",
	} {
		if got, err := bastion.ExpandAuthorizedKeysFile(pat, a); got != want || err != nil {
			t.Errorf("%s: %q, %v; want %q", pat, got, err, want)
		}
	}
	for _, bad := range []string{"/keys/%d", "/keys/%"} {
		if _, err := bastion.ExpandAuthorizedKeysFile(bad, a); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}

// TestAcceptedKeys: the newest accepted time per account and plain key; certificate logins
// of the same key do not count; syslog and RFC 3339 stamps, the year's turn, undated lines.
func TestAcceptedKeys(t *testing.T) {
	now := time.Date(2027, 1, 1, 0, 10, 0, 0, time.UTC)
	undated := time.Date(2027, 1, 1, 0, 5, 0, 0, time.UTC)
	log := strings.Join([]string{
		"2026-11-29T10:00:00.5+00:00 h sshd[1]: Accepted publickey for alice from 192.0.2.1 port 5000 ssh2: ED25519 SHA256:aaa",
		"Nov 28 09:00:00 h sshd[1]: Accepted publickey for alice from 192.0.2.1 port 5001 ssh2: ED25519 SHA256:aaa",
		"Dec 31 23:59:00 h sshd[2]: Accepted publickey for bob from 192.0.2.2 port 5002 ssh2: RSA SHA256:bbb",
		"2026-12-01T00:00:00Z h sshd[3]: Accepted publickey for carol from 192.0.2.3 port 5003 ssh2: ED25519-CERT SHA256:ccc ID x (serial 7) CA ED25519 SHA256:ddd",
		"Accepted publickey for dave from 192.0.2.4 port 5004 ssh2: ECDSA SHA256:eee",
		"2026-12-02T00:00:00Z h sshd[4]: Failed publickey for erin from 192.0.2.5 port 5005 ssh2: ED25519 SHA256:fff",
	}, "\n")
	got, err := bastion.AcceptedKeys(strings.NewReader(log), undated, now)
	if err != nil {
		t.Fatal(err)
	}
	want := map[bastion.KeyUse]time.Time{
		{Account: "alice", Fingerprint: "SHA256:aaa"}: time.Date(2026, 11, 29, 10, 0, 0, 5e8, time.UTC),
		{Account: "bob", Fingerprint: "SHA256:bbb"}:   time.Date(2026, 12, 31, 23, 59, 0, 0, time.UTC),
		{Account: "dave", Fingerprint: "SHA256:eee"}:  undated,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}
