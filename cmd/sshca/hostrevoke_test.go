package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sshca/sshca/client"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/krl"
)

// sshWithRevoked runs the real ssh against sshd with strict host key checking, knownHosts as
// its only known_hosts and revoked as its RevokedHostKeys.
func sshWithRevoked(t *testing.T, sshd *testenv.SSHD, key, knownHosts, revoked string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ssh", "-F", "none", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
		"-o", "UserKnownHostsFile="+knownHosts, "-o", "GlobalKnownHostsFile=/dev/null", "-o", "RevokedHostKeys="+revoked,
		"-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "ConnectTimeout=10",
		"-i", key, "-o", "CertificateFile="+key+"-cert.pub", "-p", strconv.Itoa(sshd.Port), sshd.User+"@127.0.0.1", "echo", "reached-host").CombinedOutput()
	return string(out), err
}

// TestHostRevocationReachesSSH: what is revoked under the host CA reaches a real ssh. `sshca
// login` installs the KRL of revoked hosts and prints the RevokedHostKeys line; ssh reaches
// two real sshds presenting host certificates. Host A's certificate is revoked by serial: after
// the next login ssh refuses A (revoked by the file) and still reaches B. Host B's key is
// banned: a fresh /v1/ca/known_hosts alone makes ssh refuse B (@revoked), and so does the KRL
// the next login installs, with the old known_hosts.
func TestHostRevocationReachesSSH(t *testing.T) {
	testenv.Need(t, "sshd", "/usr/sbin")
	testenv.Need(t, "ssh")
	keygenBin := testenv.Need(t, "ssh-keygen")
	base, _ := startDev(t)
	dir := t.TempDir()
	t.Setenv("HOME", t.TempDir())
	admin := devToken(t, base, map[string]any{"sub": "admin", "preferred_username": "admin1", "groups": []string{"sshca-admins"}})
	alice := map[string]any{"sub": "u-alice", "preferred_username": "alice", "email": "alice@example.com", "email_verified": true}

	_, userCA := call(t, http.MethodGet, base+"/v1/ca/user.pub", "", nil)
	writeFile(t, filepath.Join(dir, "user_ca.pub"), string(userCA))
	hosts := map[string]*testenv.SSHD{}
	serials := map[string]string{}
	for _, name := range []string{"a", "b"} {
		hostKey := keygen(t, dir, "host_"+name)
		ci := devToken(t, base, map[string]any{"sub": "ci-job-" + name, "preferred_username": "ci", "groups": []string{"ci"}})
		hc := issue(t, base, "host", ci, map[string]any{"public_key": readFile(t, hostKey+".pub"), "hostnames": []string{"127.0.0.1"}, "ttl": "1h"})
		writeFile(t, hostKey+"-cert.pub", hc.Certificate+"\n")
		serials[name] = hc.Serial
		hosts[name] = testenv.StartSSHD(t, testenv.SSHDConfig{HostKey: hostKey, HostCertificate: hostKey + "-cert.pub",
			TrustedUserCAKeys: filepath.Join(dir, "user_ca.pub"), Principals: []string{"alice"}})
	}
	_, kh := call(t, http.MethodGet, base+"/v1/ca/known_hosts", "", nil)
	knownHosts := filepath.Join(dir, "known_hosts")
	writeFile(t, knownHosts, string(kh))

	userKey := keygen(t, dir, "alice")
	revoked := filepath.Join(dir, "revoked_hosts.krl")
	signIn := func() {
		t.Helper()
		out, err := login(t, base, loginFlags{key: userKey, noAgent: true, revokedHosts: revoked}, approveAs(t, base, alice))
		if err != nil {
			t.Fatalf("sshca login: %v\n%s", err, out)
		}
		if !strings.Contains(out, "\n  RevokedHostKeys "+revoked+"\n") {
			t.Errorf("sshca login does not print the RevokedHostKeys line:\n%s", out)
		}
	}
	signIn()
	for name, sshd := range hosts {
		if out, err := sshWithRevoked(t, sshd, userKey, knownHosts, revoked); err != nil || !strings.Contains(out, "reached-host") {
			t.Fatalf("before any revocation, ssh to host %s: %v\n%s", name, err, out)
		}
	}

	// Host A's certificate, by serial.
	if code, out := call(t, http.MethodPost, base+"/v1/revocations", admin, map[string]any{"serial": serials["a"], "reason": "host a decommissioned"}); code != http.StatusOK {
		t.Fatalf("revoke host a's certificate: %d %s", code, out)
	}
	beforeBan := filepath.Join(dir, "revoked_before_ban.krl")
	signIn()
	writeFile(t, beforeBan, readFile(t, revoked))
	// ssh-keygen -Q exits 1 for a revoked key: the output says which.
	if out, _ := exec.Command(keygenBin, "-Q", "-f", revoked, filepath.Join(dir, "host_a-cert.pub")).CombinedOutput(); !strings.Contains(string(out), "REVOKED") {
		t.Errorf("ssh-keygen -Q: the installed KRL does not revoke host a's certificate: %s", out)
	}
	out, err := sshWithRevoked(t, hosts["a"], userKey, knownHosts, revoked)
	if err == nil || !strings.Contains(out, "revoked by file "+revoked) || !strings.Contains(out, "Host key verification failed") {
		t.Errorf("ssh to host a after its certificate was revoked: %v\n%s\nwant refused, revoked by file", err, out)
	}
	if out, err := sshWithRevoked(t, hosts["b"], userKey, knownHosts, revoked); err != nil || !strings.Contains(out, "reached-host") {
		t.Errorf("ssh to host b, revoked nothing: %v\n%s", err, out)
	}

	// Host B's key, banned.
	if code, out := call(t, http.MethodPost, base+"/v1/revocations", admin, map[string]any{"public_key": readFile(t, filepath.Join(dir, "host_b.pub")), "reason": "host b key leaked"}); code != http.StatusOK {
		t.Fatalf("ban host b's key: %d %s", code, out)
	}
	_, kh = call(t, http.MethodGet, base+"/v1/ca/known_hosts", "", nil)
	hostB := strings.Fields(readFile(t, filepath.Join(dir, "host_b.pub")))
	if !strings.Contains(string(kh), "@revoked * "+hostB[0]+" "+hostB[1]+" ") {
		t.Fatalf("/v1/ca/known_hosts has no @revoked line for the banned host key:\n%s", kh)
	}
	freshKnownHosts := filepath.Join(dir, "known_hosts_fresh")
	writeFile(t, freshKnownHosts, string(kh))
	out, err = sshWithRevoked(t, hosts["b"], userKey, freshKnownHosts, beforeBan)
	if err == nil || !strings.Contains(out, "REVOKED HOST KEY DETECTED") {
		t.Errorf("ssh to host b with the fresh known_hosts (and a KRL from before the ban): %v\n%s\nwant refused, @revoked", err, out)
	}
	signIn()
	out, err = sshWithRevoked(t, hosts["b"], userKey, knownHosts, revoked)
	if err == nil || !strings.Contains(out, "revoked by file "+revoked) {
		t.Errorf("ssh to host b with the old known_hosts and the KRL of the next login: %v\n%s\nwant refused, revoked by file", err, out)
	}
}

// TestHostKRLKeptSafe: the client-side KRL of revoked hosts is a valid (empty) KRL that ssh
// accepts even when the server cannot be reached at the first login; it is replaced by a newer
// version only, never by an older one or by one that does not decode; every write is whole.
func TestHostKRLKeptSafe(t *testing.T) {
	var answer atomic.Value // []byte, or nil for 503
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := answer.Load().([]byte)
		if r.URL.Path != "/v1/krl/host" || b == nil {
			http.Error(w, `{"error":"revocation store unavailable"}`, http.StatusServiceUnavailable)
			return
		}
		w.Write(b)
	}))
	defer srv.Close()
	c := client.New(srv.URL)
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "sub", "revoked_hosts.krl")
	encode := func(version uint64) []byte {
		b, err := (&krl.KRL{Version: version, Comment: "v" + strconv.FormatUint(version, 10)}).MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	installedVersion := func() uint64 {
		t.Helper()
		k, err := readKRL(path)
		if err != nil {
			t.Fatalf("the installed KRL does not decode: %v", err)
		}
		return k.Version
	}

	answer.Store([]byte(nil))
	if _, _, err := refreshHostKRL(ctx, c, path); err == nil || !strings.Contains(err.Error(), "503") {
		t.Errorf("refresh with the server down: %v, want the 503 reported", err)
	}
	if installedVersion() != 0 {
		t.Error("the first KRL is not the empty one")
	}
	if out, err := exec.Command("ssh-keygen", "-Q", "-l", "-f", path).CombinedOutput(); err != nil {
		t.Errorf("ssh-keygen cannot read the empty KRL: %v\n%s", err, out)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o644 {
		t.Errorf("KRL file: %v %v, want mode 0644", st, err)
	}

	for _, step := range []struct {
		name    string
		serve   []byte
		want    uint64
		changed bool
		err     string
	}{
		{"newer", encode(7), 7, true, ""},
		{"same", encode(7), 7, false, ""},
		{"older", encode(5), 7, false, "older than the one installed (version 7)"},
		{"garbage", []byte("SSHKRL\n\x00not really"), 7, false, "does not decode"},
		{"newer again", encode(9), 9, true, ""},
	} {
		answer.Store(step.serve)
		before, _ := os.ReadFile(path)
		v, changed, err := refreshHostKRL(ctx, c, path)
		if (err == nil) != (step.err == "") || (err != nil && !strings.Contains(err.Error(), step.err)) {
			t.Errorf("%s: err %v, want %q", step.name, err, step.err)
		}
		if got := installedVersion(); got != step.want || changed != step.changed || (err == nil && v != step.want) {
			t.Errorf("%s: installed version %d (answered %d, changed %v), want %d, changed %v", step.name, got, v, changed, step.want, step.changed)
		}
		if after, _ := os.ReadFile(path); !step.changed && !bytes.Equal(before, after) {
			t.Errorf("%s: the file changed", step.name)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".*")); len(left) != 0 {
		t.Errorf("temporary files left behind: %v", left)
	}
}

// TestHostKRLDefaultPath: without --revoked-hosts the KRL goes to
// ~/.ssh/sshca/revoked_hosts.krl, and the RevokedHostKeys line names it; a server that cannot
// answer is a warning that leaves a valid empty KRL there, never a failed login.
func TestHostKRLDefaultPath(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	var serve atomic.Pointer[[]byte] // nil: 404
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if b := serve.Load(); b != nil {
			w.Write(*b)
			return
		}
		http.NotFound(w, r)
	}))
	defer srv.Close()
	var msg bytes.Buffer
	keepHostKRL(context.Background(), &msg, &msg, client.New(srv.URL), "")
	want := filepath.Join(home, ".ssh", "sshca", "revoked_hosts.krl")
	if k, err := readKRL(want); err != nil || k.Version != 0 {
		t.Fatalf("KRL at %s: %v %+v, want the valid empty one", want, err, k)
	}
	if !strings.Contains(msg.String(), "warning: revoked hosts not refreshed: GET /v1/krl/host") {
		t.Errorf("message:\n%s\nwant a warning naming the request", msg.String())
	}

	b, _ := (&krl.KRL{Version: 3}).MarshalBinary()
	serve.Store(&b)
	msg.Reset()
	keepHostKRL(context.Background(), &msg, &msg, client.New(srv.URL), "")
	if !strings.Contains(msg.String(), "(version 3, updated)") || !strings.HasSuffix(msg.String(), "\n  RevokedHostKeys "+want+"\n") {
		t.Errorf("message:\n%s\nwant version 3 updated and the RevokedHostKeys line for %s", msg.String(), want)
	}
}
