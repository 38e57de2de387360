package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/bastion"
	"github.com/sshca/sshca/client"
	"github.com/sshca/sshca/internal/testenv"
)

// TestRecordedSessionsReachTheCA: end to end with the real sshd, ssh and sshca-record, a
// certificate from the CA (dev mode), the agent's recording socket and its shipper: an exec
// session and an interactive one (ssh -tt, input from a script) are recorded, shipped under
// the bastion's host certificate, and show up at the CA; `sshca sessions verify` from the CA
// checks each chain and finds its start and end records in the verified audit log, with the
// certificate's serial and key ID, the exact command of the exec session and the echoed
// command lines of the shell (best effort); export from the CA renders the shell's output.
func TestRecordedSessionsReachTheCA(t *testing.T) {
	testenv.Need(t, "ssh")
	base, state, banner := startDevBanner(t)
	m := regexp.MustCompile(`redis://(\S+)`).FindStringSubmatch(banner)
	if m == nil {
		t.Fatalf("no Redis address in the dev banner:\n%s", banner)
	}
	auditRedis := "redis://" + m[1]
	dir := t.TempDir()
	ctx := context.Background()

	recorder := filepath.Join(dir, "sshca-record")
	if out, err := exec.Command("go", "build", "-o", recorder, "github.com/sshca/sshca/cmd/sshca-record").CombinedOutput(); err != nil {
		t.Fatalf("build sshca-record: %v\n%s", err, out)
	}
	code, userCA := call(t, http.MethodGet, base+"/v1/ca/user.pub", "", nil)
	if code != http.StatusOK {
		t.Fatalf("GET /v1/ca/user.pub = %d", code)
	}
	writeFile(t, filepath.Join(dir, "user_ca.pub"), string(userCA))

	// The bastion: its host key and certificate (which sign what it ships), sshd whose
	// ForceCommand is the recorder, and the agent's recording socket and shipper.
	hostKey := keygen(t, dir, "host")
	ci := devToken(t, base, map[string]any{"sub": "ci-job", "groups": []string{"ci"}})
	hc := issue(t, base, "host", ci, map[string]any{"public_key": readFile(t, hostKey+".pub"), "hostnames": []string{"bastion.dev.internal"}, "ttl": "1h"})
	writeFile(t, hostKey+"-cert.pub", hc.Certificate+"\n")
	recs := filepath.Join(dir, "recordings")
	socket := filepath.Join(dir, "record.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: socket, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	agentCtx, stopAgent := context.WithCancel(ctx)
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		_ = (&bastion.RecordServer{Dir: recs, Host: "bastion", RequireSSHD: true}).Serve(agentCtx, l)
	}()
	defer func() { stopAgent(); <-stopped }()
	sshd := testenv.StartSSHD(t, testenv.SSHDConfig{
		HostKey: hostKey, TrustedUserCAKeys: filepath.Join(dir, "user_ca.pub"), Principals: []string{"alice"},
		Extra: []string{"ExposeAuthInfo yes", "PermitUserRC no", "DisableForwarding yes", "ForceCommand " + recorder + " --socket " + socket},
	})
	known := filepath.Join(dir, "known_hosts")
	signer := parseSigner(t, readFile(t, hostKey))
	writeFile(t, known, fmt.Sprintf("[127.0.0.1]:%d %s", sshd.Port, ssh.MarshalAuthorizedKey(signer.PublicKey())))

	// Alice's certificate from the CA.
	userKey := keygen(t, dir, "alice")
	alice := devToken(t, base, map[string]any{"sub": "alice", "preferred_username": "alice", "email": "alice@example.com", "email_verified": true})
	uc := issue(t, base, "user", alice, map[string]any{"public_key": readFile(t, userKey+".pub")})
	writeFile(t, userKey+"-cert.pub", uc.Certificate+"\n")
	sshRun := func(tty bool, stdin string, command ...string) (string, int) {
		t.Helper()
		args := []string{"-F", "none", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=" + known,
			"-o", "GlobalKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
			"-o", "CertificateFile=" + userKey + "-cert.pub", "-i", userKey, "-p", strconv.Itoa(sshd.Port)}
		if tty {
			args = append(args, "-tt")
		}
		args = append(append(args, sshd.User+"@127.0.0.1"), command...)
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(cctx, "ssh", args...)
		cmd.Stdin = strings.NewReader(stdin)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		if ee, ok := err.(*exec.ExitError); ok {
			return out.String(), ee.ExitCode()
		} else if err != nil {
			t.Fatalf("ssh: %v", err)
		}
		return out.String(), 0
	}
	const execCmd = `echo "exec-$((6*7))"; exit 3`
	if out, code := sshRun(false, "", execCmd); code != 3 || !strings.Contains(out, "exec-42") {
		t.Fatalf("exec session: exit %d, %q", code, out)
	}
	if out, code := sshRun(true, "echo typed-$((2+3))\nexit 0\n"); code != 0 || !strings.Contains(out, "typed-5") {
		t.Fatalf("interactive session: exit %d, %q", code, out)
	}

	// The agent ships both (once each has its end: the recorder sends it as the session ends).
	sh := &bastion.RecordShipper{Dir: recs, Client: client.New(base), Key: signer,
		Cert: func() (*ssh.Certificate, error) { return readCert(hostKey + "-cert.pub") }}
	waitFor(t, 10*time.Second, "both recordings shipped to their end", func() bool {
		if err := sh.ShipOnce(ctx); err != nil {
			t.Fatalf("ship: %v", err)
		}
		done, _ := filepath.Glob(filepath.Join(recs, "*.shipped"))
		n := 0
		for _, p := range done {
			if strings.HasSuffix(strings.TrimSpace(readFile(t, p)), "done") {
				n++
			}
		}
		return n == 2
	})

	auditor := devToken(t, base, map[string]any{"sub": "carol", "preferred_username": "carol", "groups": []string{"auditors"}})
	tokenFile := filepath.Join(dir, "token")
	writeFile(t, tokenFile, auditor)
	cli := func(args ...string) string {
		t.Helper()
		out, err := runCLI(t, "", append([]string{"sessions"}, append(args, "--server", base, "--token-file", tokenFile)...)...)
		if err != nil {
			t.Fatalf("sessions %v: %v\n%s", args, err, out)
		}
		return out
	}
	list := cli("list", "--principal", sshd.User, "--since", "1d")
	ids := map[string]string{} // kind → ID
	for _, line := range strings.Split(strings.TrimSpace(list), "\n")[1:] {
		f := strings.Fields(line)
		if !strings.Contains(line, "bastion.dev.internal") || !strings.Contains(line, uc.KeyID) {
			t.Errorf("listed without the host name or the key ID: %q", line)
		}
		for _, kind := range []string{"exec", "shell"} {
			if slices.Contains(f, kind) {
				ids[kind] = f[0]
			}
		}
	}
	if len(ids) != 2 {
		t.Fatalf("sessions list at the CA:\n%s", list)
	}
	if live := cli("list", "--live"); strings.Count(strings.TrimSpace(live), "\n") != 0 {
		t.Errorf("ended sessions listed as live:\n%s", live)
	}

	for kind, id := range ids {
		out := cli("verify", id, "--audit-redis", auditRedis, "--audit-key-file", filepath.Join(state, "audit.key"))
		for _, want := range []string{"chain: ok", "audit: start record", "serial " + uc.Serial, "key ID " + uc.KeyID, "final hash matches"} {
			if !strings.Contains(out, want) {
				t.Errorf("%s verify lacks %q:\n%s", kind, want, out)
			}
		}
		switch kind {
		case "exec":
			if !strings.Contains(out, "exit 3") || !strings.Contains(out, fmt.Sprintf("commands: %q", []string{execCmd})) {
				t.Errorf("exec verify: exit or exact command missing:\n%s", out)
			}
		case "shell":
			if !strings.Contains(out, "best effort") || !strings.Contains(out, "echo typed-$((2+3))") {
				t.Errorf("shell verify: echoed command missing:\n%s", out)
			}
			cast := cli("export", id)
			if !strings.Contains(cast, `"version": 2`) && !strings.Contains(cast, `"version":2`) || !strings.Contains(cast, "typed-5") {
				t.Errorf("export from the CA:\n%s", cast)
			}
		}
	}

	// The bastion's copy cut before its end (the session's last output hidden): its chain
	// still verifies, but the audit log's end record gives it away.
	cut := filepath.Join(dir, "cut")
	if err := os.MkdirAll(cut, 0o700); err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(readFile(t, filepath.Join(recs, ids["exec"]+".rec")), "\n")
	writeFile(t, filepath.Join(cut, ids["exec"]+".rec"), strings.Join(lines[:len(lines)-2], ""))
	out, err := runCLI(t, "", "sessions", "verify", ids["exec"], "--dir", cut, "--audit-redis", auditRedis, "--audit-key-file", filepath.Join(state, "audit.key"))
	if err == nil || !strings.Contains(out, "chain: ok") || !strings.Contains(err.Error(), "the audit log has an end record, the recording no end") {
		t.Errorf("verify of a recording cut before its end: %v\n%s", err, out)
	}
}
