package audit_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/internal/testenv"
)

// archiveLine is what a test needs to know of an archive line.
type archiveLine struct {
	text   string
	stripe int
	seq    uint64
	base   bool
	seal   bool
	cp     bool
}

func parseArchive(t *testing.T, file string) []archiveLine {
	t.Helper()
	var out []archiveLine
	for _, l := range strings.Split(strings.TrimSpace(file), "\n") {
		var a struct {
			Stripe int             `json:"stripe"`
			Seq    uint64          `json:"seq"`
			Base   string          `json:"base"`
			Seal   json.RawMessage `json:"seal"`
			Rec    json.RawMessage `json:"rec"`
		}
		if err := json.Unmarshal([]byte(l), &a); err != nil {
			t.Fatal(err)
		}
		out = append(out, archiveLine{text: l, stripe: a.Stripe, seq: a.Seq, base: a.Base != "", seal: a.Seal != nil,
			cp: bytes.HasPrefix(a.Rec, []byte(`{"checkpoint":`))})
	}
	return out
}

func joinLines(ls []archiveLine) string {
	var b strings.Builder
	for _, l := range ls {
		b.WriteString(l.text + "\n")
	}
	return b.String()
}

// without returns the lines for which drop is false.
func without(ls []archiveLine, drop func(archiveLine) bool) []archiveLine {
	var out []archiveLine
	for _, l := range ls {
		if !drop(l) {
			out = append(out, l)
		}
	}
	return out
}

// TestArchiveSeal: an archive of a striped log ends with a seal naming every stripe's first
// and last entry in the file, and its checkpoints are checked against the stripes it holds.
// One stripe's lines cut out, one stripe cut back (its base mark with it) and stripes cut back
// to different moments verified before seals (every stripe's own chain and base mark stay
// intact, or the stripe is gone whole), and so did a checkpoint (MACed with the key) naming a
// record the archive holds otherwise; two stripes' lines swapped (a record's MAC names its
// stripe), a checkpoint line dropped (its stripe's chain breaks) and a seal changed without
// the key fail too. Without its seal an archive still verifies, and says
// it is not sealed; Archive to such a file seals it; VerifyAfter against Redis still finds a
// stripe cut back, by the base marks.
func TestArchiveSeal(t *testing.T) {
	r := testenv.StartRedis(t)
	ctx := context.Background()
	key := []byte("0123456789abcdef0123456789abcdef")
	rdb, logs := stripedRig(t, r, key, true)
	reader := audit.New(rdb, audit.Options{Key: key})
	var file bytes.Buffer
	if _, err := reader.Archive(ctx, &file, nil); err != nil {
		t.Fatal(err)
	}
	lines := parseArchive(t, file.String())
	if !lines[len(lines)-1].seal {
		t.Fatalf("the archive does not end with a seal:\n%s", file.String())
	}
	verify := func(s string) (audit.ArchiveReport, error) {
		return reader.VerifyArchive(strings.NewReader(s), nil)
	}
	if ar, err := verify(file.String()); err != nil || !ar.Sealed || ar.Seals != 1 || ar.Records != 9 {
		t.Fatalf("the archive as written: %+v %v", ar, err)
	}

	// lastEntry is the last entry line of stripe j (not its base mark).
	lastEntry := func(ls []archiveLine, j int) archiveLine {
		var last archiveLine
		for _, l := range ls {
			if l.stripe == j && !l.base && !l.seal {
				last = l
			}
		}
		return last
	}
	attacks := map[string]string{}
	for j := range 3 {
		attacks["stripe "+strconv.Itoa(j)+" cut out"] = joinLines(without(lines, func(l archiveLine) bool { return !l.seal && l.stripe == j }))
		end := lastEntry(lines, j)
		attacks["stripe "+strconv.Itoa(j)+" cut back by one"] = joinLines(without(lines, func(l archiveLine) bool {
			return !l.seal && l.stripe == j && (l.base || l.seq == end.seq)
		}))
	}
	attacks["stripes cut back to different moments"] = joinLines(without(lines, func(l archiveLine) bool {
		return !l.seal && (l.stripe == 1 && (l.base || l.seq >= 4) || l.stripe == 2 && (l.base || l.seq >= 3))
	}))
	swapped := strings.NewReplacer(`{"stripe":1,`, `{"stripe":2,`, `{"stripe":2,`, `{"stripe":1,`).Replace(file.String())
	attacks["stripes 1 and 2 swapped"] = swapped
	attacks["a checkpoint line dropped"] = joinLines(without(lines, func(l archiveLine) bool { return l.cp && l.stripe == 1 }))
	seal := lines[len(lines)-1].text
	attacks["the seal changed"] = strings.Replace(file.String(), seal, strings.Replace(seal, `"seq":4`, `"seq":3`, 1), 1)
	for name, text := range attacks {
		if text == file.String() {
			t.Fatalf("%s: the attack changed nothing", name)
		}
		ar, err := verify(text)
		if err == nil {
			t.Errorf("%s: verifies (%+v)", name, ar)
		}
		t.Logf("%s: %v", name, err)
	}

	// A checkpoint written with the key that names, in stripe 1, a record other than the one
	// the archive holds (the seal dropped, so that only the checkpoint can tell).
	unsealed := without(lines, func(l archiveLine) bool { return l.seal })
	s0 := lastEntry(unsealed, 0)
	var last struct {
		MAC string `json:"mac"`
	}
	json.Unmarshal([]byte(s0.text), &last)
	cp := `{"checkpoint":{"time":"2026-11-30T00:00:00Z","stripes":3,"heads":[{"stripe":1,"seq":2,"mac":"` + strings.Repeat("b", 64) + `"}]}}`
	seq := s0.seq + 1
	forged, _ := json.Marshal(map[string]any{"seq": seq, "prev": last.MAC, "mac": docStripeMAC(key, last.MAC, seq, 0, cp), "rec": json.RawMessage(cp)})
	var withForged []archiveLine
	for _, l := range unsealed {
		withForged = append(withForged, l)
		if l.text == s0.text {
			withForged = append(withForged, archiveLine{text: string(forged)})
		}
	}
	withForged = without(withForged, func(l archiveLine) bool { return l.base && l.stripe == 0 })
	_, err := verify(joinLines(withForged))
	var cut *audit.StripeCutError
	if !errors.As(err, &cut) || cut.Stripe != 1 || !strings.Contains(err.Error(), "rewritten") {
		t.Errorf("a checkpoint naming another record than the archive's: %v; want stripe 1 rewritten", err)
	}

	// Without its seal: it verifies, not sealed.
	ar, err := verify(joinLines(unsealed))
	if err != nil || ar.Sealed || ar.Seals != 0 {
		t.Fatalf("the archive without its seal: %+v %v; want it verified and not sealed", ar, err)
	}
	// Cut back and unsealed: VerifyAfter finds it by the base marks in Redis.
	cutBack := without(unsealed, func(l archiveLine) bool { return l.stripe == 1 && (l.base || l.seq == lastEntry(lines, 1).seq) })
	ar2, err := verify(joinLines(cutBack))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reader.VerifyAfter(ctx, ar2, nil); err == nil {
		t.Error("VerifyAfter takes an archive whose stripe 1 was cut back")
	}
	// Redis recorded the seal that was cut: VerifyAfter and Archive refuse the file.
	if _, err := reader.VerifyAfter(ctx, ar, nil); err == nil || !strings.Contains(err.Error(), "does not hold that seal") {
		t.Errorf("VerifyAfter of the archive without the seal Redis recorded: %v", err)
	}
	if _, err := reader.Archive(ctx, new(bytes.Buffer), &ar); err == nil || !strings.Contains(err.Error(), "does not hold that seal") {
		t.Errorf("Archive to the file without the seal Redis recorded: %v", err)
	}
	// A file of sshca before stop 17, which recorded no seal in Redis: Archive to the
	// unsealed file seals it, though nothing is left to trim.
	rdb.Del(ctx, "sshca:{audit}:sealed")
	var more bytes.Buffer
	if _, err := reader.Archive(ctx, &more, &ar); err != nil {
		t.Fatal(err)
	}
	if rdb.Get(ctx, "sshca:{audit}:sealed").Val() == "" {
		t.Error("sealing the file recorded no seal in Redis")
	}
	if ar, err := verify(joinLines(unsealed) + more.String()); err != nil || !ar.Sealed {
		t.Errorf("after archiving to the unsealed file: %+v %v; want it sealed", ar, err)
	} else if rep, err := reader.VerifyAfter(ctx, ar, nil); err != nil || !rep.SealRecorded {
		t.Errorf("VerifyAfter the sealed file: %+v %v; want its seal recorded", rep, err)
	}

	// The next archive, to a new file, of records kept in stripes 0 and 1 only: stripe 0's
	// checkpoint names stripe 2's head, which the first file holds. It verifies.
	for _, l := range logs[:2] {
		if err := l.Append(ctx, record(700)); err != nil {
			t.Fatal(err)
		}
	}
	if err := logs[0].Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	var next bytes.Buffer
	if _, err := reader.Archive(ctx, &next, nil); err != nil {
		t.Fatal(err)
	}
	if ar, err := verify(next.String()); err != nil || !ar.Sealed || ar.Records != 2 {
		t.Errorf("the next archive, in a file of its own: %+v %v", ar, err)
	}
}
