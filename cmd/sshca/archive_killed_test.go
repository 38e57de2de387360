package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/revocation"
	"github.com/sshca/sshca/store"
)

// cliProcessEnv names the JSON list of arguments TestSSHCAProcess runs sshca with.
const cliProcessEnv = "SSHCA_TEST_CLI_ARGS"

// TestSSHCAProcess is sshca as a process of its own, for tests that kill it: it runs the
// command line in $SSHCA_TEST_CLI_ARGS and exits 1 when it fails.
func TestSSHCAProcess(t *testing.T) {
	v := os.Getenv(cliProcessEnv)
	if v == "" {
		t.Skip("sshca as a process of its own, for TestAuditArchiveKilled")
	}
	var args []string
	if err := json.Unmarshal([]byte(v), &args); err != nil {
		t.Fatal(err)
	}
	cmd := newRootCommand()
	cmd.SetArgs(args)
	if err := cmd.ExecuteContext(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// trimOf is what only the request that trims stripe i holds: its base mark's key followed by
// its stream's (RESP bulk strings, as go-redis sends a script's keys).
func trimOf(i int) string {
	tag := "{audit}"
	if i > 0 {
		tag = fmt.Sprintf("{audit:%d}", i)
	}
	base, log := "sshca:"+tag+":base", "sshca:"+tag+":log"
	return fmt.Sprintf("%s\r\n$%d\r\n%s\r\n", base, len(log), log)
}

// TestAuditArchiveKilled: a real `sshca audit archive` process of a striped log, killed with
// SIGKILL between writing its file and trimming Redis (real redis-server; a proxy holds the
// process's request at the step, so it is killed exactly there): after the file is synced and
// before the first trim (stripe 0's, which records the seal in Redis), between the trims of
// stripes 0 and 1, and, the file then cut inside its last line, a write interrupted mid-line.
// `sshca audit verify` with Redis says the run was interrupted (not that records were cut),
// the next `sshca audit archive` to the file completes it, and then it verifies, every record
// appended in the file exactly once.
func TestAuditArchiveKilled(t *testing.T) {
	r := testenv.StartRedis(t)
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	key, keyFile := auditKeyFile(t)
	steps := []struct {
		name, hold string
		midLine    bool // cut the file inside its last line after the kill
		want       string
	}{
		{"after the file is synced, before the first trim", trimOf(0), false, "interrupted after writing the file"},
		{"a write cut mid-line", trimOf(0), true, "interrupted while writing"},
		{"between the trims of stripes 0 and 1", trimOf(1), false, "interrupted after writing the file"},
	}
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			rdb.FlushAll(ctx)
			var identities []string
			add := func(n int) {
				for range n {
					for home := range 3 {
						id := fmt.Sprintf("user%d@example.com", len(identities))
						identities = append(identities, id)
						if err := audit.New(rdb, audit.Options{Key: key, Stripes: 3, Home: new(home)}).Append(ctx, ca.AuditRecord{Time: time.Now().UTC(), Action: ca.ActionUser, Outcome: "issued", Identity: id}); err != nil {
							t.Fatal(err)
						}
					}
				}
			}
			add(2)
			file := filepath.Join(t.TempDir(), "audit.jsonl")
			archive := []string{"audit", "archive", "--key-file", keyFile, "--out", file}
			direct := append(append([]string{}, archive...), "--redis", "redis://"+r.Addr)
			if out, err := runCLI(t, "", direct...); err != nil {
				t.Fatalf("the first archive: %v\n%s", err, out)
			}
			add(2)

			h := testenv.HoldRequest(t, r.Addr, "", step.hold)
			args, _ := json.Marshal(append(archive, "--redis", "redis://"+h.Addr))
			proc := exec.Command(os.Args[0], "-test.run=^TestSSHCAProcess$", "-test.count=1")
			proc.Env = append(os.Environ(), cliProcessEnv+"="+string(args))
			var out testenv.SyncBuffer
			proc.Stdout, proc.Stderr = &out, &out
			if err := proc.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- proc.Wait() }()
			select {
			case <-h.Held():
			case err := <-exited:
				t.Fatalf("the archive process ended before the step: %v\n%s", err, out.String())
			case <-time.After(60 * time.Second):
				proc.Process.Kill()
				<-exited
				t.Fatalf("the archive process never reached the step\n%s", out.String())
			}
			if err := proc.Process.Kill(); err != nil { // SIGKILL
				t.Fatal(err)
			}
			<-exited
			if step.midLine {
				b := readFile(t, file)
				writeFile(t, file, b[:len(b)-25])
			}

			verify := func() (string, error) {
				return runCLI(t, "", "audit", "verify", "--redis", "redis://"+r.Addr, "--key-file", keyFile, "--archive", file)
			}
			if vout, err := verify(); err == nil || !strings.Contains(err.Error(), step.want) {
				t.Fatalf("verify after the kill: %v; want %q\n%s", err, step.want, vout)
			} else {
				t.Logf("verify after the kill: %v", err)
			}
			add(1)
			if aout, err := runCLI(t, "", direct...); err != nil {
				t.Fatalf("the next archive: %v\n%s", err, aout)
			} else if step.midLine && !strings.Contains(aout, "dropped the last") {
				t.Errorf("the next archive did not say it dropped the cut line:\n%s", aout)
			}
			if vout, err := verify(); err != nil || strings.Contains(vout, "WARNING") {
				t.Fatalf("verify after the next archive: %v\n%s", err, vout)
			}
			f, err := os.Open(file)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			seen := map[string]int{}
			if _, err := audit.New(nil, audit.Options{Key: key}).VerifyArchive(f, func(e audit.Entry) { seen[e.Record.Identity]++ }); err != nil {
				t.Fatal(err)
			}
			for _, id := range identities {
				if seen[id] != 1 {
					t.Errorf("%s is in the archive %d times; want once", id, seen[id])
				}
			}
			if n := seen["sshca audit archive"]; n != 3 {
				t.Errorf("%d records of archive runs; want 3 (the killed run's too)", n)
			}
		})
	}
}

// auditKeyFile writes a fixed audit key (hex, as `sshca audit genkey` does) to a 0600 file in
// a directory of the test's own, and returns the key and the file.
func auditKeyFile(t *testing.T) ([]byte, string) {
	t.Helper()
	key := []byte("0123456789abcdef0123456789abcdef")
	keyFile := filepath.Join(t.TempDir(), "audit.key")
	writeFileMode(t, keyFile, hex.EncodeToString(key)+"\n", 0o600)
	return key, keyFile
}

// failedSync is an archive file whose Sync fails: Archive stops after writing it, as a run
// killed there would, before anything in Redis changes.
type failedSync struct{ *os.File }

func (failedSync) Sync() error { return errors.New("the process died") }

// TestStoreRebuildAfterInterruptedArchive: `sshca store rebuild` given an archive whose last
// run was interrupted before it trimmed (its records in the file and in Redis, real
// redis-server) restores each record once and says the chain overlaps the archive; before, it
// warned that the records after the archive were gone, which they were not. The ban in the
// overlap is in force after the rebuild.
func TestStoreRebuildAfterInterruptedArchive(t *testing.T) {
	e := newRebuildEnv(t)
	ctx := context.Background()
	e.rdb.FlushAll(ctx)
	banned := testenv.PublicKey(t)
	fp := ssh.FingerprintSHA256(banned)
	for home, rec := range []ca.AuditRecord{
		{Time: time.Now().Add(-time.Hour).UTC(), Action: ca.ActionUser, Outcome: "issued", Identity: "alice@example.com"},
		{Time: time.Now().Add(-time.Minute).UTC(), Action: ca.ActionRevoke, Outcome: "allowed", Identity: "admin", Reason: "r",
			Target: "public_key:" + fp, PublicKey: revocation.KeyEntry(banned)},
	} {
		if err := audit.New(e.rdb, audit.Options{Key: e.key, Stripes: 2, Home: new(home)}).Append(ctx, rec); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := audit.New(e.rdb, audit.Options{Key: e.key}).Archive(ctx, failedSync{f}, &audit.ArchiveReport{}); err == nil {
		t.Fatal("Archive went on after its sync failed")
	}
	f.Close()
	var out bytes.Buffer
	err = runRebuild(ctx, rebuildFlags{redis: redisTarget{url: "redis://" + e.srv.Addr}, auditKey: e.keyFile, userCA: e.userCA, hostCA: e.hostCA,
		identityBlock: time.Hour, tokenLifetime: 10 * time.Minute, archives: []string{path}}, nil, &out, time.Now)
	if err != nil {
		t.Fatalf("rebuild: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "overlaps the last archive") || strings.Contains(out.String(), "are gone") {
		t.Errorf("rebuild after an interrupted archive run: want the overlap said, no loss:\n%s", out.String())
	}
	if why, err := store.NewRedis(e.rdb, store.RedisOptions{}).Refused(ctx, e.userKey, nil, banned); err != nil || why == "" {
		t.Errorf("the banned key after the rebuild: %q %v; want it refused", why, err)
	}
}
