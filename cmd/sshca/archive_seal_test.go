package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
)

// TestAuditVerifyUnsealedArchive: `sshca audit verify --archive` of a striped log's archive as
// `sshca audit archive` writes it says nothing of seals; with its seal line cut off it is
// refused alone (nothing vouches for its stripes' ends: before stop 17 it verified with a
// warning) unless --accept-unsealed-end, which warns, and refused against Redis, which
// recorded the seal; with one stripe's lines cut out it fails. Against a Redis that recorded
// no seal (sshca before stop 17) it verifies with a warning until the next archive. A log
// without stripes: an archive without its last base mark is refused alone.
func TestAuditVerifyUnsealedArchive(t *testing.T) {
	ctx := context.Background()
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	key, keyFile := auditKeyFile(t)
	dir := filepath.Dir(keyFile)
	for home := range 3 {
		if err := audit.New(rdb, audit.Options{Key: key, Stripes: 3, Home: new(home)}).Append(ctx, ca.AuditRecord{Time: time.Now().UTC(), Action: ca.ActionAdmin, Outcome: "allowed", Identity: "test"}); err != nil {
			t.Fatal(err)
		}
	}
	archive := filepath.Join(dir, "audit.jsonl")
	if out, err := runCLI(t, "", "audit", "archive", "--redis", "redis://"+r.Addr, "--key-file", keyFile, "--out", archive); err != nil {
		t.Fatalf("archive: %v\n%s", err, out)
	}
	text := readFile(t, archive)
	lines := strings.SplitAfter(strings.TrimSpace(text), "\n")
	if !strings.HasPrefix(lines[len(lines)-1], `{"seal":`) {
		t.Fatalf("the archive does not end with a seal:\n%s", text)
	}
	verify := func(s string, extra ...string) (string, error) {
		p := filepath.Join(t.TempDir(), "a.jsonl")
		writeFile(t, p, s)
		return runCLI(t, "", append([]string{"audit", "verify", "--archive", p, "--key-file", keyFile}, extra...)...)
	}
	if out, err := verify(text); err != nil || strings.Contains(out, "seal") {
		t.Errorf("the archive as written: %v\n%s", err, out)
	}
	if out, err := verify(text, "--redis", "redis://"+r.Addr); err != nil || strings.Contains(out, "WARNING") {
		t.Errorf("the archive as written, against Redis: %v\n%s", err, out)
	}
	unsealed := strings.Join(lines[:len(lines)-1], "")
	if out, err := verify(unsealed); err == nil || !strings.Contains(err.Error(), "does not end with a seal") || !strings.Contains(err.Error(), "--accept-unsealed-end") {
		t.Errorf("without its seal: %v; want it refused, naming --accept-unsealed-end\n%s", err, out)
	}
	if out, err := verify(unsealed, "--accept-unsealed-end"); err != nil || !strings.Contains(out, "does not end with a seal, accepted because of --accept-unsealed-end") {
		t.Errorf("without its seal, --accept-unsealed-end: %v; want it verified, with a warning\n%s", err, out)
	}
	if out, err := verify(unsealed, "--redis", "redis://"+r.Addr); err == nil || !strings.Contains(err.Error(), "does not hold that seal") {
		t.Errorf("without its seal, against Redis: %v; want it refused\n%s", err, out)
	}
	var cut bytes.Buffer
	for _, l := range lines {
		if !strings.HasPrefix(l, `{"stripe":2,`) {
			cut.WriteString(l)
		}
	}
	if out, err := verify(cut.String()); err == nil || !strings.Contains(err.Error()+out, "cut out") {
		t.Errorf("stripe 2's lines cut out: %v; want it refused\n%s", err, out)
	}

	// Redis without the record (archived by sshca before stop 17): verified against Redis,
	// with a warning; the next archive records its seal.
	rdb.Del(ctx, "sshca:{audit}:sealed")
	if out, err := verify(text, "--redis", "redis://"+r.Addr); err != nil || !strings.Contains(out, "Redis records no seal of the last archive run") {
		t.Errorf("no seal recorded: %v; want it verified, with a warning\n%s", err, out)
	}
	if out, err := runCLI(t, "", "audit", "archive", "--redis", "redis://"+r.Addr, "--key-file", keyFile, "--out", archive); err != nil {
		t.Fatalf("archive: %v\n%s", err, out)
	}
	if out, err := verify(readFile(t, archive), "--redis", "redis://"+r.Addr); err != nil || strings.Contains(out, "WARNING") {
		t.Errorf("after the next archive: %v\n%s", err, out)
	}

	// One stripe: the run's last line is its signed base mark.
	rdb.FlushAll(ctx)
	for range 2 {
		if err := audit.New(rdb, audit.Options{Key: key}).Append(ctx, ca.AuditRecord{Time: time.Now().UTC(), Action: ca.ActionAdmin, Outcome: "allowed", Identity: "test"}); err != nil {
			t.Fatal(err)
		}
	}
	single := filepath.Join(dir, "single.jsonl")
	if out, err := runCLI(t, "", "audit", "archive", "--redis", "redis://"+r.Addr, "--key-file", keyFile, "--out", single); err != nil {
		t.Fatalf("archive: %v\n%s", err, out)
	}
	text = readFile(t, single)
	if out, err := verify(text); err != nil || strings.Contains(out, "WARNING") {
		t.Errorf("one stripe, as written: %v\n%s", err, out)
	}
	lines = strings.SplitAfter(strings.TrimSpace(text), "\n")
	if out, err := verify(strings.Join(lines[:len(lines)-2], "")); err == nil || !strings.Contains(err.Error(), "does not end with a signed base mark") {
		t.Errorf("one stripe, its last record and base mark cut: %v; want it refused\n%s", err, out)
	}
}

// TestAuditVerifyWarnsUnmarkedStripe0: `sshca audit verify` of a striped log whose stripe 0
// holds no striped mark (stripes written by sshca of stop 14, which wrote none; here stripe 0
// emptied) warns that older sshca would read stripe 0 alone; `sshca audit archive` appends a
// mark, after which verify says nothing of it.
func TestAuditVerifyWarnsUnmarkedStripe0(t *testing.T) {
	ctx := context.Background()
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	key, keyFile := auditKeyFile(t)
	dir := filepath.Dir(keyFile)
	for home := 1; home < 3; home++ {
		if err := audit.New(rdb, audit.Options{Key: key, Stripes: 3, Home: new(home)}).Append(ctx, ca.AuditRecord{Time: time.Now().UTC(), Action: ca.ActionAdmin, Outcome: "allowed", Identity: "test"}); err != nil {
			t.Fatal(err)
		}
	}
	redisURL := "redis://" + r.Addr
	out, err := runCLI(t, "", "audit", "verify", "--redis", redisURL, "--key-file", keyFile)
	if err != nil || strings.Contains(out, "no striped mark") {
		t.Fatalf("stripe 0 with its mark: %v\n%s", err, out)
	}
	rdb.Del(ctx, "sshca:{audit}:log", "sshca:{audit}:head")
	out, err = runCLI(t, "", "audit", "verify", "--redis", redisURL, "--key-file", keyFile)
	if err != nil || !strings.Contains(out, "stripe 0 holds no striped mark") {
		t.Errorf("stripe 0 without a mark: %v; want a warning\n%s", err, out)
	}
	if out, err := runCLI(t, "", "audit", "archive", "--redis", redisURL, "--key-file", keyFile, "--out", filepath.Join(dir, "a.jsonl")); err != nil {
		t.Fatalf("archive: %v\n%s", err, out)
	}
	out, err = runCLI(t, "", "audit", "verify", "--redis", redisURL, "--key-file", keyFile)
	if err != nil || strings.Contains(out, "no striped mark") {
		t.Errorf("after the archive: %v; want the mark back\n%s", err, out)
	}
}
