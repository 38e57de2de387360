package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
)

// archiveLostEnv is a store (real redis-server) with an audit log and the commands that
// archive and verify it.
type archiveLostEnv struct {
	t       *testing.T
	r       *testenv.Redis
	rdb     *redis.Client
	key     []byte
	keyFile string
	stripes int
	n       int
}

func newArchiveLostEnv(t *testing.T, r *testenv.Redis, stripes int) *archiveLostEnv {
	key, keyFile := auditKeyFile(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { rdb.Close() })
	rdb.FlushAll(context.Background())
	return &archiveLostEnv{t: t, r: r, rdb: rdb, key: key, keyFile: keyFile, stripes: stripes}
}

// add appends n records to every stripe.
func (e *archiveLostEnv) add(n int) {
	e.t.Helper()
	for range n {
		for home := range e.stripes {
			e.n++
			if err := audit.New(e.rdb, audit.Options{Key: e.key, Stripes: e.stripes, Home: new(home)}).Append(context.Background(),
				ca.AuditRecord{Time: time.Now().UTC(), Action: ca.ActionUser, Outcome: "issued", Identity: fmt.Sprintf("user%d@example.com", e.n)}); err != nil {
				e.t.Fatal(err)
			}
		}
	}
}

func (e *archiveLostEnv) archive(out string, extra ...string) (string, error) {
	return runCLI(e.t, "", append([]string{"audit", "archive", "--redis", "redis://" + e.r.Addr, "--key-file", e.keyFile, "--out", out}, extra...)...)
}

func (e *archiveLostEnv) verify(file string) (string, error) {
	return runCLI(e.t, "", "audit", "verify", "--redis", "redis://"+e.r.Addr, "--key-file", e.keyFile, "--archive", file)
}

// mustArchive archives to out and fails the test if it does not.
func (e *archiveLostEnv) mustArchive(out string, extra ...string) string {
	e.t.Helper()
	o, err := e.archive(out, extra...)
	if err != nil {
		e.t.Fatalf("archive %s: %v\n%s", out, err, o)
	}
	return o
}

// redisState is what an archive run changes in Redis: every stripe's base mark and length.
func (e *archiveLostEnv) redisState() string {
	ctx := context.Background()
	var parts []string
	for i := range e.stripes {
		tag := store.TagAuditStripe(i)
		base, _ := e.rdb.Get(ctx, "sshca:"+tag+":base").Result()
		n, _ := e.rdb.XLen(ctx, "sshca:"+tag+":log").Result()
		parts = append(parts, fmt.Sprintf("%s %d", base, n))
	}
	return strings.Join(parts, "; ")
}

// months starts a store's archive in a November file (a run of two records a stripe) and
// returns it and the December file after it, in one directory.
func (e *archiveLostEnv) months() (nov, dec string) {
	e.t.Helper()
	dir := e.t.TempDir()
	nov, dec = filepath.Join(dir, "audit-2026-11.jsonl"), filepath.Join(dir, "audit-2026-12.jsonl")
	e.add(2)
	e.mustArchive(nov)
	return nov, dec
}

// eachOnce checks that the archive file holds every record appended, once.
func (e *archiveLostEnv) eachOnce(file string) {
	e.t.Helper()
	f, err := os.Open(file)
	if err != nil {
		e.t.Fatal(err)
	}
	defer f.Close()
	seen := map[string]int{}
	if _, err := audit.New(nil, audit.Options{Key: e.key}).VerifyArchive(f, func(en audit.Entry) { seen[en.Record.Identity]++ }); err != nil {
		e.t.Fatal(err)
	}
	for i := 1; i <= e.n; i++ {
		if id := fmt.Sprintf("user%d@example.com", i); seen[id] != 1 {
			e.t.Errorf("%s is in the archive %d times; want once", id, seen[id])
		}
	}
}

// bases is every stripe's base mark: what a trim moves.
func (e *archiveLostEnv) bases() string {
	var parts []string
	for i := range e.stripes {
		base, _ := e.rdb.Get(context.Background(), "sshca:"+store.TagAuditStripe(i)+":base").Result()
		parts = append(parts, base)
	}
	return strings.Join(parts, "; ")
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestArchiveFileLost: an archive file that the last completed `sshca audit archive` run
// wrote, then deleted, emptied, cut back, replaced by an older copy or by another store's
// archive, or swapped for another file behind a symbolic link, is refused by the next archive
// run and by `sshca audit verify --redis --archive`, with an error naming the file, what the
// run left there (the seal on a striped log) and the fixes; Redis is left as it was (nothing
// trimmed). Before, each of these read as a new file: the next run started it afresh and
// verify passed (a log without stripes), the archived records gone with nobody told.
// Real redis-server, on a log of one stripe and of three.
func TestArchiveFileLost(t *testing.T) {
	r := testenv.StartRedis(t)
	other := testenv.StartRedis(t) // another store, same audit key
	for _, stripes := range []int{1, 3} {
		cases := []struct {
			name string
			// harm changes the file (p) after two runs; older is a copy taken after the first.
			harm func(t *testing.T, e *archiveLostEnv, p, older string)
			want string
		}{
			{"deleted", func(t *testing.T, e *archiveLostEnv, p, _ string) { os.Remove(p) }, "it is gone"},
			{"emptied", func(t *testing.T, e *archiveLostEnv, p, _ string) { os.Truncate(p, 0) }, "it is empty"},
			{"cut back to the first run", func(t *testing.T, e *archiveLostEnv, p, older string) {
				os.Truncate(p, int64(len(readFile(t, older))))
			}, "shorter than"},
			{"replaced by an older copy", func(t *testing.T, e *archiveLostEnv, p, older string) { copyFile(t, older, p) }, "shorter than"},
			{"replaced by another store's archive", func(t *testing.T, e *archiveLostEnv, p, _ string) {
				o := newArchiveLostEnv(t, other, stripes)
				o.key, o.keyFile = e.key, e.keyFile
				o.add(20)
				op := filepath.Join(t.TempDir(), "other.jsonl")
				o.mustArchive(op)
				copyFile(t, op, p)
			}, "is not the one the run wrote last"},
			{"symbolic link pointed at an empty file", func(t *testing.T, e *archiveLostEnv, p, _ string) {
				empty := filepath.Join(t.TempDir(), "empty.jsonl")
				writeFile(t, empty, "")
				os.Remove(p)
				if err := os.Symlink(empty, p); err != nil {
					t.Fatal(err)
				}
			}, "it is empty"},
			{"symbolic link pointed at an older copy", func(t *testing.T, e *archiveLostEnv, p, older string) {
				os.Remove(p)
				if err := os.Symlink(older, p); err != nil {
					t.Fatal(err)
				}
			}, "shorter than"},
		}
		for _, c := range cases {
			t.Run(fmt.Sprintf("%d stripes/%s", stripes, c.name), func(t *testing.T) {
				e := newArchiveLostEnv(t, r, stripes)
				dir := t.TempDir()
				p := filepath.Join(dir, "audit-2026-11.jsonl")
				older := filepath.Join(t.TempDir(), "older.jsonl")
				e.add(2)
				e.mustArchive(p)
				copyFile(t, p, older)
				e.add(2)
				e.mustArchive(p)
				if out, err := e.verify(p); err != nil {
					t.Fatalf("verify before the harm: %v\n%s", err, out)
				}
				c.harm(t, e, p, older)
				e.add(1)
				before := e.redisState()
				out, err := e.archive(p)
				if err == nil || !strings.Contains(err.Error(), c.want) {
					t.Fatalf("archive after the harm: %v; want %q\n%s", err, c.want, out)
				}
				abs, _ := filepath.Abs(p)
				for _, want := range []string{abs, "Restore", "nothing archived", "sshca:{audit}:archive-file"} {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("archive's error does not say %q: %v", want, err)
					}
				}
				if stripes > 1 && !strings.Contains(err.Error(), "seal") {
					t.Errorf("archive's error does not name the seal: %v", err)
				}
				if after := e.redisState(); after != before {
					t.Errorf("Redis changed: %s, was %s", after, before)
				}
				if out, err := e.verify(p); err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), abs) {
					t.Errorf("verify after the harm: %v; want %q naming %s\n%s", err, c.want, abs, out)
				}
				// The other readers of an archive with Redis: the report and a rebuild.
				if out, err := runCLI(t, "", "audit", "report", "--redis", "redis://"+r.Addr, "--key-file", e.keyFile, "--archive", p); err == nil || !strings.Contains(err.Error(), c.want) {
					t.Errorf("audit report after the harm: %v; want %q\n%s", err, c.want, out)
				}
				caFile := filepath.Join(t.TempDir(), "ca.pub")
				writeFile(t, caFile, string(ssh.MarshalAuthorizedKey(testenv.PublicKey(t))))
				if out, err := runCLI(t, "", "store", "rebuild", "--redis", "redis://"+r.Addr, "--audit-key", e.keyFile, "--archive", older, "--archive", p,
					"--user-ca", caFile, "--host-ca", caFile); err == nil || !strings.Contains(err.Error(), c.want) {
					t.Errorf("store rebuild after the harm: %v; want %q\n%s", err, c.want, out)
				}
			})
		}

		// What must get past the checks: runs that go on from the file, a run interrupted
		// after its file was synced, a new month's file while the last one is whole.
		t.Run(fmt.Sprintf("%d stripes/what is not lost", stripes), func(t *testing.T) {
			e := newArchiveLostEnv(t, r, stripes)
			nov, dec := e.months()
			for range 2 {
				e.add(2)
				e.mustArchive(nov)
			}
			// An interrupted run: its lines written and synced, nothing recorded or trimmed.
			e.add(1)
			f, err := os.OpenFile(nov, os.O_RDWR|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			st, _ := f.Stat()
			prior, err := audit.New(nil, audit.Options{Key: e.key}).VerifyArchive(f, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := audit.New(e.rdb, audit.Options{Key: e.key}).Archive(context.Background(), failedSync{f}, &prior); err == nil {
				t.Fatal("the interrupted run did not fail")
			}
			f.Close()
			if st2, _ := os.Stat(nov); st2.Size() <= st.Size() {
				t.Fatal("the interrupted run wrote nothing")
			}
			e.mustArchive(nov)
			if out, err := e.verify(nov); err != nil || strings.Contains(out, "WARNING") {
				t.Fatalf("verify the November file: %v\n%s", err, out)
			}
			e.add(2)
			e.mustArchive(dec)
			e.add(1)
			e.mustArchive(dec)
			if out, err := e.verify(dec); err != nil || strings.Contains(out, "WARNING") {
				t.Fatalf("verify the December file: %v\n%s", err, out)
			}
		})

		t.Run(fmt.Sprintf("%d stripes/a new file while the last one is gone", stripes), func(t *testing.T) {
			e := newArchiveLostEnv(t, r, stripes)
			nov, dec := e.months()
			moved := filepath.Join(t.TempDir(), "cold-storage.jsonl")
			copyFile(t, nov, moved)
			// The copy cut back by one line passes for nothing.
			b := readFile(t, nov)
			cut := filepath.Join(t.TempDir(), "cut.jsonl")
			writeFile(t, cut, b[:strings.LastIndexByte(b[:len(b)-1], '\n')+1])
			os.Remove(nov)
			e.add(1)
			before := e.redisState()
			absNov, _ := filepath.Abs(nov)
			if out, err := e.archive(dec); err == nil || !strings.Contains(err.Error(), absNov) || !strings.Contains(err.Error(), "--previous-archive") {
				t.Fatalf("a new file while the last one is gone: %v\n%s", err, out)
			}
			if out, err := e.archive(dec, "--previous-archive", cut); err == nil || !strings.Contains(err.Error(), "shorter than") {
				t.Fatalf("a new file, the last one given cut back: %v\n%s", err, out)
			}
			if after := e.redisState(); after != before {
				t.Errorf("Redis changed: %s, was %s", after, before)
			}
			if n, _ := os.ReadFile(dec); len(n) != 0 {
				t.Errorf("the refused runs wrote %d bytes to the new file", len(n))
			}
			e.mustArchive(dec, "--previous-archive", moved)
			if out, err := e.verify(dec); err != nil {
				t.Fatalf("verify the new file: %v\n%s", err, out)
			}
		})

		t.Run(fmt.Sprintf("%d stripes/the file of the last run on another host", stripes), func(t *testing.T) {
			e := newArchiveLostEnv(t, r, stripes)
			_, dec := e.months()
			// elsewhere makes the record say the last run ran on another host.
			elsewhere := func() {
				ctx, k := context.Background(), store.Keys{}.AuditArchiveFile()
				v, _ := e.rdb.Get(ctx, k).Result()
				host, _ := os.Hostname()
				e.rdb.Set(ctx, k, strings.Replace(v, `"host":"`+host+`"`, `"host":"archiver-2.example"`, 1), 0)
			}
			elsewhere()
			e.add(1)
			// The path names the file wherever the run runs (a container's host name changes
			// with every run): found here, whole, it is the one.
			e.mustArchive(dec)
			elsewhere()
			moved := filepath.Join(t.TempDir(), "copy.jsonl")
			copyFile(t, dec, moved)
			os.Remove(dec)
			jan := filepath.Join(filepath.Dir(dec), "audit-2027-01.jsonl")
			e.add(1)
			if out, err := e.archive(jan); err == nil || !strings.Contains(err.Error(), "run the archive on archiver-2.example") || !strings.Contains(err.Error(), "--previous-archive") {
				t.Fatalf("a new file, the last run's on another host and not here: %v\n%s", err, out)
			}
			e.mustArchive(jan, "--previous-archive", moved)
		})

		t.Run(fmt.Sprintf("%d stripes/the loss accepted", stripes), func(t *testing.T) {
			e := newArchiveLostEnv(t, r, stripes)
			p := filepath.Join(t.TempDir(), "audit.jsonl")
			e.add(2)
			e.mustArchive(p)
			e.add(2)
			e.mustArchive(p)
			os.Remove(p)
			e.add(1)
			out := e.mustArchive(p, "--accept-lost-archive")
			abs, _ := filepath.Abs(p)
			if !strings.Contains(out, "WARNING: ARCHIVE LOST") || !strings.Contains(out, abs) {
				t.Errorf("the accepted loss is not loud:\n%s", out)
			}
			if vout, err := e.verify(p); err != nil {
				t.Fatalf("verify the new file: %v\n%s", err, vout)
			}
			f, err := os.Open(p)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			var lost []ca.AuditRecord
			if _, err := audit.New(nil, audit.Options{Key: e.key}).VerifyArchive(f, func(en audit.Entry) {
				if en.Record.Target == archiveLostTarget {
					lost = append(lost, en.Record)
				}
			}); err != nil {
				t.Fatal(err)
			}
			if len(lost) != 1 || !strings.Contains(lost[0].Reason, abs) || !strings.Contains(lost[0].Reason, "--accept-lost-archive") {
				t.Fatalf("the audit records of the loss: %+v; want one naming %s", lost, abs)
			}
			// Accepted once: the next run goes on from the new file without the flag.
			e.add(1)
			e.mustArchive(p)
			// A file cut back is not accepted by the flag: it must be moved aside first.
			os.Truncate(p, 10)
			if out, err := e.archive(p, "--accept-lost-archive"); err == nil || !strings.Contains(err.Error(), "move it aside") {
				t.Fatalf("a file cut back, with --accept-lost-archive: %v\n%s", err, out)
			}
		})
	}
}

// TestAuditVerifyEmptyArchive: `sshca audit verify --archive` alone refuses an empty file (it
// was emptied, or never written), unless --accept-unsealed-end; with --redis it is refused
// when Redis records the file an archive run wrote, whatever its path.
func TestAuditVerifyEmptyArchive(t *testing.T) {
	r := testenv.StartRedis(t)
	e := newArchiveLostEnv(t, r, 1)
	empty := filepath.Join(t.TempDir(), "empty.jsonl")
	writeFile(t, empty, "")
	if out, err := runCLI(t, "", "audit", "verify", "--key-file", e.keyFile, "--archive", empty); err == nil || !strings.Contains(err.Error(), "holds nothing") {
		t.Fatalf("verify an empty archive alone: %v\n%s", err, out)
	}
	if out, err := runCLI(t, "", "audit", "verify", "--key-file", e.keyFile, "--archive", empty, "--accept-unsealed-end"); err != nil {
		t.Fatalf("verify an empty archive alone with --accept-unsealed-end: %v\n%s", err, out)
	}
	// Before any archive run Redis records no file: an empty archive constrains nothing.
	e.add(1)
	if out, err := e.verify(empty); err != nil {
		t.Fatalf("verify an empty archive before any run: %v\n%s", err, out)
	}
	p := filepath.Join(t.TempDir(), "audit.jsonl")
	e.mustArchive(p)
	abs, _ := filepath.Abs(p)
	if out, err := e.verify(empty); err == nil || !strings.Contains(err.Error(), abs) || !strings.Contains(err.Error(), "is empty") {
		t.Fatalf("verify another, empty, archive: %v\n%s", err, out)
	}
	if out, err := e.verify(filepath.Join(t.TempDir(), "missing.jsonl")); err == nil || !strings.Contains(err.Error(), abs) || !strings.Contains(err.Error(), "is gone") {
		t.Fatalf("verify a missing archive: %v\n%s", err, out)
	}
}
