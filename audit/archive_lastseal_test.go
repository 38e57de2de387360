package audit_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/internal/testenv"
)

// lastSealRig is a striped log archived in two runs, on real redis-server: the first run
// holds stripes 0 and 1, the second stripes 0 (the striped mark that follows a trim, and a
// record) and 2, which no earlier run held.
type lastSealRig struct {
	rdb    *redis.Client
	reader *audit.Log
	logs   []*audit.Log
	run1   string // the file after the first run
	run2   string // what the second run appended
}

func newLastSealRig(t *testing.T, r *testenv.Redis, key []byte) *lastSealRig {
	t.Helper()
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	rdb.FlushAll(ctx)
	t.Cleanup(func() { rdb.FlushAll(ctx); rdb.Close() })
	g := &lastSealRig{rdb: rdb, reader: audit.New(rdb, audit.Options{Key: key})}
	for i := range 3 {
		g.logs = append(g.logs, audit.New(rdb, audit.Options{Key: key, Stripes: 3, Home: new(i)}))
	}
	g.appendTo(t, 0, 1, 0, 1)
	var file bytes.Buffer
	if _, err := g.reader.Archive(ctx, &file, nil); err != nil {
		t.Fatal(err)
	}
	g.run1 = file.String()
	g.appendTo(t, 2, 2, 0)
	prior := g.verify(t, g.run1)
	if _, err := g.reader.Archive(ctx, &file, &prior); err != nil {
		t.Fatal(err)
	}
	g.run2 = strings.TrimPrefix(file.String(), g.run1)
	return g
}

func (g *lastSealRig) appendTo(t *testing.T, homes ...int) {
	t.Helper()
	for n, h := range homes {
		if err := g.logs[h].Append(context.Background(), record(100*h+n)); err != nil {
			t.Fatal(err)
		}
	}
}

func (g *lastSealRig) verify(t *testing.T, text string) audit.ArchiveReport {
	t.Helper()
	ar, err := g.reader.VerifyArchive(strings.NewReader(text), nil)
	if err != nil {
		t.Fatal(err)
	}
	return ar
}

// TestArchiveLastSealCut: what someone with write access to an archive (not to Redis, not
// to the key) does to the end of it, on real redis-server. Each attack, before stop 17, read
// as a run cut short or as the file before the run and passed VerifyAfter (the archive
// against Redis) with a warning at most, unless noted: the last seal deleted; the last seal
// with the lines (or the records alone) of the stripe that run archived first; the same cut
// of a run archived to a new file. Now VerifyAfter refuses each, naming the seal Redis
// recorded, and Archive refuses to seal over it. Already refused before (the whole last run
// cut, by the base marks; a line cut short, a parse error, now PartialLineError; the last run
// duplicated; an earlier seal replayed at the end), and still.
func TestArchiveLastSealCut(t *testing.T) {
	r := testenv.StartRedis(t)
	ctx := context.Background()
	key := []byte("0123456789abcdef0123456789abcdef")
	g := newLastSealRig(t, r, key)
	whole := g.run1 + g.run2
	lines := parseArchive(t, whole)
	if !lines[len(lines)-1].seal || !strings.Contains(g.run2, `{"stripe":2,`) || strings.Contains(g.run1, `{"stripe":2,`) {
		t.Fatalf("the rig: want stripe 2 in the second run only, each run sealed:\n%s", whole)
	}
	if rep, err := g.reader.VerifyAfter(ctx, g.verify(t, whole), nil); err != nil || !rep.SealRecorded {
		t.Fatalf("the archive as written: %+v %v", rep, err)
	}
	run1Lines := len(parseArchive(t, g.run1))
	inRun2 := func(i int) bool { return i >= run1Lines }
	cut := func(drop func(i int, l archiveLine) bool) string {
		var b strings.Builder
		for i, l := range lines {
			if !drop(i, l) {
				b.WriteString(l.text + "\n")
			}
		}
		return b.String()
	}
	lastSeal := len(lines) - 1
	attacks := []struct {
		name, text string
		want       string // in the error
	}{
		{"the last seal deleted", cut(func(i int, _ archiveLine) bool { return i == lastSeal }), "does not hold that seal"},
		{"the last seal and the run's stripe 2 deleted", cut(func(i int, l archiveLine) bool { return i == lastSeal || inRun2(i) && l.stripe == 2 }), "does not hold that seal"},
		{"the last seal and the run's stripe 2 records deleted, its base mark kept", cut(func(i int, l archiveLine) bool {
			return i == lastSeal || inRun2(i) && l.stripe == 2 && !l.base
		}), "does not hold that seal"},
		{"the last run deleted", g.run1, "does not hold that seal"},
		{"truncated inside the last seal", whole[:len(whole)-20], "cut short"},
		{"truncated inside a record of the last run", whole[:strings.Index(whole, `{"stripe":2,`)+30], "cut short"},
		{"the last run duplicated", whole + g.run2, "does not follow"},
		{"the first run's seal replayed at the end", whole + lines[run1Lines-1].text + "\n", "seal"},
	}
	for _, a := range attacks {
		if a.text == whole {
			t.Fatalf("%s: the attack changed nothing", a.name)
		}
		ar, err := g.reader.VerifyArchive(strings.NewReader(a.text), nil)
		if err == nil {
			_, err = g.reader.VerifyAfter(ctx, ar, nil)
			if _, aerr := g.reader.Archive(ctx, new(bytes.Buffer), &ar); aerr == nil {
				t.Errorf("%s: Archive appends to it", a.name)
			}
		}
		if err == nil || !strings.Contains(err.Error(), a.want) {
			t.Errorf("%s: %v; want it refused (%q)", a.name, err, a.want)
			continue
		}
		t.Logf("%s: %v", a.name, err)
	}
	var partial *audit.PartialLineError
	if _, err := g.reader.VerifyArchive(strings.NewReader(whole[:len(whole)-20]), nil); !errors.As(err, &partial) || partial.Line != len(lines) {
		t.Errorf("a file ending inside its last line: %v; want PartialLineError at line %d", err, len(lines))
	}
	// A bad line before the end is not a partial one.
	mid := strings.Replace(whole, lines[2].text, lines[2].text[:20], 1)
	if _, err := g.reader.VerifyArchive(strings.NewReader(mid), nil); err == nil || errors.As(err, &partial) {
		t.Errorf("a line cut short in the middle of the file: %v; want a plain error", err)
	}

	// The second run to a file of its own (archives kept one file a month): the same cut of
	// that file.
	g2 := newLastSealRig(t, r, key)
	_ = g2 // the rig's second run went to the first file; archive a third run to a new one
	g2.appendTo(t, 1, 0)
	var fresh bytes.Buffer
	if _, err := g2.reader.Archive(ctx, &fresh, nil); err != nil {
		t.Fatal(err)
	}
	if rep, err := g2.reader.VerifyAfter(ctx, g2.verify(t, fresh.String()), nil); err != nil || !rep.SealRecorded {
		t.Fatalf("the new file as written: %+v %v", rep, err)
	}
	fl := parseArchive(t, fresh.String())
	cutFresh := joinLines(without(fl, func(l archiveLine) bool { return l.seal || l.stripe == 1 }))
	ar := g2.verify(t, cutFresh)
	if _, err := g2.reader.VerifyAfter(ctx, ar, nil); err == nil || !strings.Contains(err.Error(), "does not hold that seal") {
		t.Errorf("a new file without its seal and stripe 1: %v; want it refused", err)
	}
	// The file before it is not the latest archive either.
	if _, err := g2.reader.VerifyAfter(ctx, g2.verify(t, g2.run1+g2.run2), nil); err == nil {
		t.Error("the previous file verifies against Redis as the latest")
	}
}

// failingSync is a file whose Sync fails: Archive stops after writing its lines, as a process
// killed there would, and before Redis records the seal or trims.
type failingSync struct{ bytes.Buffer }

func (*failingSync) Sync() error { return errors.New("the process died") }

// TestArchiveInterrupted: an archive run interrupted between writing the file and trimming
// Redis, at each step, on real redis-server: VerifyAfter calls it an interrupted run
// (*UnfinishedArchiveError: the file's extra records are still in Redis), not records removed,
// and the next Archive to the file completes it without writing a record twice, after which
// it verifies with its seal recorded. (cmd/sshca's TestAuditArchiveKilled kills a real
// `sshca audit archive` process at the same steps.)
func TestArchiveInterrupted(t *testing.T) {
	r := testenv.StartRedis(t)
	ctx := context.Background()
	key := []byte("0123456789abcdef0123456789abcdef")
	steps := map[string]func(t *testing.T, g *lastSealRig, file *bytes.Buffer){
		"after the file is written, before the seal is recorded": func(t *testing.T, g *lastSealRig, file *bytes.Buffer) {
			prior := g.verify(t, file.String())
			f := &failingSync{}
			f.WriteString(file.String())
			if _, err := g.reader.Archive(ctx, f, &prior); err == nil {
				t.Fatal("Archive went on after its sync failed")
			}
			file.Reset()
			file.WriteString(f.String())
		},
		"after stripe 0's trim, which records the seal, before stripe 1's": func(t *testing.T, g *lastSealRig, file *bytes.Buffer) {
			// An archiver that may write stripe 0's keys alone: the trim of stripe 1 fails
			// after stripe 0's, which recorded the seal.
			if err := g.rdb.Do(ctx, "ACL", "SETUSER", "stripe0", "on", ">pw", "%R~*", "~sshca:{audit}:*", "&*", "+@all").Err(); err != nil {
				t.Fatal(err)
			}
			rdb := redis.NewClient(&redis.Options{Addr: r.Addr, Username: "stripe0", Password: "pw"})
			defer rdb.Close()
			prior := g.verify(t, file.String())
			before := g.rdb.Get(ctx, "sshca:{audit}:sealed").Val()
			if _, err := audit.New(rdb, audit.Options{Key: key}).Archive(ctx, file, &prior); err == nil || !strings.Contains(err.Error(), "trim: stripe 1") {
				t.Fatalf("Archive that may not write stripe 1: %v", err)
			}
			if g.rdb.Get(ctx, "sshca:{audit}:sealed").Val() == before {
				t.Fatal("stripe 0's trim did not record the seal")
			}
		},
	}
	for name, interrupt := range steps {
		t.Run(name, func(t *testing.T) {
			g := newLastSealRig(t, r, key)
			g.appendTo(t, 0, 2, 1)
			var file bytes.Buffer
			file.WriteString(g.run1 + g.run2)
			interrupt(t, g, &file)
			ar := g.verify(t, file.String())
			var unfinished *audit.UnfinishedArchiveError
			if _, err := g.reader.VerifyAfter(ctx, ar, nil); !errors.As(err, &unfinished) {
				t.Fatalf("VerifyAfter the interrupted run: %v; want UnfinishedArchiveError", err)
			}
			g.appendTo(t, 2)
			rep, err := g.reader.Archive(ctx, &file, &ar)
			if err != nil {
				t.Fatalf("the next run: %v", err)
			}
			if rep.Records != 1 {
				t.Errorf("the next run wrote %d records; want the one appended since (none twice)", rep.Records)
			}
			ar = g.verify(t, file.String())
			if rep, err := g.reader.VerifyAfter(ctx, ar, nil); err != nil || !rep.SealRecorded {
				t.Errorf("after the next run: %+v %v", rep, err)
			}
			// Records appended before the interruption are in the file once each.
			if ar.Records != 4+3+3+1 {
				t.Errorf("the file holds %d records; want 11", ar.Records)
			}
		})
	}
}

// TestArchiveRunsOvertaken: two archive runs of the same log, one appending to its file and
// one starting a new file, on real redis-server, each held (testenv.HoldRequest) just before its first trim, with its file
// written: the first released trims and records its seal; the second, released after, finds
// the base moved and trims nothing, and records nothing either, so the first file verifies
// against Redis. (Recording the seal by a SET of its own before the trims, as first written,
// left the second run's seal recorded, and the first file refused as cut.)
func TestArchiveRunsOvertaken(t *testing.T) {
	r := testenv.StartRedis(t)
	ctx := context.Background()
	key := []byte("0123456789abcdef0123456789abcdef")
	g := newLastSealRig(t, r, key)
	g.appendTo(t, 0, 1, 2)
	trim0 := "sshca:{audit}:base\r\n$17\r\nsshca:{audit}:log\r\n"
	type run struct {
		file bytes.Buffer
		hold *testenv.RequestHolder
		done chan error
	}
	runs := make([]*run, 2)
	for i := range runs {
		x := &run{hold: testenv.HoldRequest(t, r.Addr, "", trim0), done: make(chan error, 1)}
		runs[i] = x
		rdb := redis.NewClient(&redis.Options{Addr: x.hold.Addr})
		defer rdb.Close()
		// The first appends to the file, the second starts a new one: their seals differ.
		var prior *audit.ArchiveReport
		if i == 0 {
			ar := g.verify(t, g.run1+g.run2)
			prior = &ar
		}
		go func() {
			_, err := audit.New(rdb, audit.Options{Key: key}).Archive(ctx, &x.file, prior)
			x.done <- err
		}()
		select {
		case <-x.hold.Held():
		case err := <-x.done:
			t.Fatalf("run %d ended before its trim: %v", i, err)
		}
	}
	runs[0].hold.Release()
	if err := <-runs[0].done; err != nil {
		t.Fatalf("the first run released: %v", err)
	}
	runs[1].hold.Release()
	if err := <-runs[1].done; err == nil || !strings.Contains(err.Error(), "another archive ran") {
		t.Fatalf("the run overtaken: %v; want it to trim nothing", err)
	}
	for i, file := range []string{g.run1 + g.run2 + runs[0].file.String(), runs[1].file.String()} {
		want := i == 0
		ar := g.verify(t, file)
		rep, err := g.reader.VerifyAfter(ctx, ar, nil)
		if (err == nil && rep.SealRecorded) != want {
			t.Errorf("run %d's file against Redis: %+v %v; want verified: %v", i, rep, err, want)
		}
	}
}
