package audit_test

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/internal/testenv"
)

// TestArchiveStripes: against a real redis-server, Archive writes every stripe of a striped
// log to one file (lines of stripes beyond 0 name their stripe, so archives of a log without
// stripes read as before), with a signed base mark per stripe, and trims each stripe; a second
// run appends to the same file; VerifyArchive checks each stripe's chain in the file, and
// VerifyAfter each stripe in Redis against it. A stripe lost after the archive, a lowered
// stripe count and a line moved to another stripe are found.
func TestArchiveStripes(t *testing.T) {
	r := testenv.StartRedis(t)
	ctx := context.Background()
	key := []byte("0123456789abcdef0123456789abcdef")
	rdb, logs := stripedRig(t, r, key, true)
	reader := audit.New(rdb, audit.Options{Key: key})
	var file bytes.Buffer
	rep, err := reader.Archive(ctx, &file, nil)
	if err != nil || rep.Records != 9 || len(rep.Stripes) != 3 {
		t.Fatalf("archive: %+v %v; want the 9 records of 3 stripes", rep, err)
	}
	for i := 1; i < 3; i++ {
		if n, _ := rdb.XLen(ctx, stripeStream(i)).Result(); n != 0 {
			t.Errorf("stripe %d holds %d entries after the archive, want none (trimmed)", i, n)
		}
	}
	// Stripe 0 keeps a striped mark in Redis (the trim took the first Log's): sshca that
	// reads stripe 0 alone still finds one to refuse.
	if n, _ := rdb.XLen(ctx, stripeStream(0)).Result(); n != 1 {
		t.Errorf("stripe 0 holds %d entries after the archive, want the striped mark appended again", n)
	}
	if v, err := reader.Verify(ctx, nil); err != nil || v.StripedMarks != 1 || v.Records != 0 {
		t.Errorf("after the archive: %+v %v; want one striped mark and no record", v, err)
	}
	for _, line := range strings.Split(strings.TrimSpace(file.String()), "\n") {
		if strings.HasPrefix(line, `{"stripe":0`) {
			t.Errorf("a line names stripe 0, which archives leave out: %s", line)
		}
	}
	seen := map[string]bool{}
	ar, err := reader.VerifyArchive(strings.NewReader(file.String()), func(e audit.Entry) { seen[e.Record.Identity] = true })
	if err != nil || ar.Records != 9 || len(seen) != 9 || len(ar.Stripes) != 3 || ar.Bases != 3 {
		t.Fatalf("verify archive: %+v (%d records seen) %v", ar, len(seen), err)
	}
	for i, s := range ar.Stripes {
		entries := 4
		if i == 0 {
			entries = 5 // and the striped mark that the first Log appended before striping
		}
		if s.Records != 3 || s.Entries != entries || !s.EndsSigned || s.LastSeq != uint64(entries) {
			t.Errorf("stripe %d in the archive: %+v; want 3 records and a checkpoint, signed", i, s)
		}
	}
	if _, err := reader.VerifyAfter(ctx, ar, nil); err != nil {
		t.Fatalf("verify after the archive: %v", err)
	}

	// More records and checkpoints, archived to the same file.
	for i, l := range logs {
		if err := l.Append(ctx, record(900+i)); err != nil {
			t.Fatal(err)
		}
		if err := l.Checkpoint(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := reader.VerifyAfter(ctx, ar, nil); err != nil {
		t.Fatalf("verify after the archive, new records: %v", err)
	}
	if rep, err = reader.Archive(ctx, &file, &ar); err != nil || rep.Records != 3 {
		t.Fatalf("archive again: %+v %v", rep, err)
	}
	if ar, err = reader.VerifyArchive(strings.NewReader(file.String()), nil); err != nil || ar.Records != 12 || ar.Stripes[2].LastSeq != 6 {
		t.Fatalf("the archive of two runs: %+v %v", ar, err)
	}
	if _, err := reader.VerifyAfter(ctx, ar, nil); err != nil {
		t.Fatalf("verify after two runs: %v", err)
	}

	t.Run("a line moved to another stripe", func(t *testing.T) {
		lines := strings.Split(file.String(), "\n")
		for i, line := range lines {
			if strings.HasPrefix(line, `{"stripe":1,"seq":2,`) {
				lines[i] = strings.Replace(line, `"stripe":1`, `"stripe":2`, 1)
			}
		}
		_, err := reader.VerifyArchive(strings.NewReader(strings.Join(lines, "\n")), nil)
		if err == nil || !strings.Contains(err.Error(), "stripe 2") {
			t.Errorf("verify archive: %v; want stripe 2's chain broken", err)
		}
	})
	t.Run("a stripe lost after the archive", func(t *testing.T) {
		// Trimmed, stripe 2 holds only its base and head: both deleted, it is an empty stripe.
		base, head := rdb.Get(ctx, "sshca:{audit:2}:base").Val(), rdb.Get(ctx, "sshca:{audit:2}:head").Val()
		rdb.Del(ctx, "sshca:{audit:2}:base", "sshca:{audit:2}:head")
		defer rdb.Set(ctx, "sshca:{audit:2}:base", base, 0)
		defer rdb.Set(ctx, "sshca:{audit:2}:head", head, 0)
		if _, err := reader.Verify(ctx, nil); err != nil {
			t.Fatalf("without the archive the loss passes: %v", err)
		}
		_, err := reader.VerifyAfter(ctx, ar, nil)
		if err == nil || !strings.Contains(err.Error(), "stripe 2: the chain in Redis has no base mark") {
			t.Errorf("verify after: %v; want stripe 2 emptied", err)
		}
	})
	t.Run("the stripe count lowered", func(t *testing.T) {
		rdb.Set(ctx, "sshca:{audit}:stripes", "2", 0)
		defer rdb.Set(ctx, "sshca:{audit}:stripes", "3", 0)
		// Stripe 2's head, base mark and (trimmed) stream moved away too (else the walk finds
		// them beyond the count): only the archive still says it was used.
		rdb.Rename(ctx, "sshca:{audit:2}:log", "movedlog")
		defer rdb.Rename(ctx, "movedlog", "sshca:{audit:2}:log")
		rdb.Rename(ctx, "sshca:{audit:2}:head", "moved")
		defer rdb.Rename(ctx, "moved", "sshca:{audit:2}:head")
		rdb.Rename(ctx, "sshca:{audit:2}:base", "movedbase")
		defer rdb.Rename(ctx, "movedbase", "sshca:{audit:2}:base")
		_, err := reader.VerifyAfter(ctx, ar, nil)
		if err == nil || !strings.Contains(err.Error(), "the archive holds stripe 2") {
			t.Errorf("verify after: %v; want the archive's stripe 2 missing in Redis", err)
		}
	})
	if _, err := reader.VerifyAfter(ctx, ar, nil); err != nil {
		t.Fatalf("restored: %v", err)
	}
}
