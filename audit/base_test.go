package audit_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
)

const (
	streamKey = "sshca:{audit}:log"
	headKey   = "sshca:{audit}:head"
	baseKey   = "sshca:{audit}:base"
)

// docBaseMAC is the base MAC exactly as the package doc states it, computed here on its own:
// HMAC-SHA256(key, "sshca-audit-base-v1\x00" ‖ seq as 8 bytes big-endian ‖ the MAC's hex),
// SHA-256 of the same bytes without a key.
func docBaseMAC(key []byte, seq uint64, mac string) string {
	var b bytes.Buffer
	b.WriteString("sshca-audit-base-v1\x00")
	binary.Write(&b, binary.BigEndian, seq)
	b.WriteString(mac)
	if key == nil {
		sum := sha256.Sum256(b.Bytes())
		return hex.EncodeToString(sum[:])
	}
	h := hmac.New(sha256.New, key)
	h.Write(b.Bytes())
	return hex.EncodeToString(h.Sum(nil))
}

// docRecordMAC is a record's MAC as the package doc states it.
func docRecordMAC(key []byte, prev string, seq uint64, rec string) string {
	h := hmac.New(sha256.New, key)
	fmt.Fprintf(h, "%s\n%d\n%s", prev, seq, rec)
	return hex.EncodeToString(h.Sum(nil))
}

type chainRig struct {
	t   *testing.T
	rdb *redis.Client
	key []byte
	l   *audit.Log
}

// newRig starts with an empty database on a real redis-server.
func newRig(t *testing.T, r *testenv.Redis, key []byte) *chainRig {
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	rdb.FlushAll(context.Background())
	t.Cleanup(func() { rdb.FlushAll(context.Background()); rdb.Close() })
	return &chainRig{t: t, rdb: rdb, key: key, l: audit.New(rdb, audit.Options{Key: key})}
}

func (c *chainRig) append(from, to int) {
	c.t.Helper()
	for i := from; i < to; i++ {
		if err := c.l.Append(context.Background(), record(i)); err != nil {
			c.t.Fatal(err)
		}
	}
}

// entries is the chain in Redis as it stands, unchecked.
func (c *chainRig) entries() []redis.XMessage {
	c.t.Helper()
	msgs, err := c.rdb.XRange(context.Background(), streamKey, "-", "+").Result()
	if err != nil {
		c.t.Fatal(err)
	}
	return msgs
}

func (c *chainRig) get(k string) string {
	v, _ := c.rdb.Get(context.Background(), k).Result()
	return v
}

func (c *chainRig) set(k, v string) {
	c.t.Helper()
	if err := c.rdb.Set(context.Background(), k, v, 0).Err(); err != nil {
		c.t.Fatal(err)
	}
}

func (c *chainRig) archive(w *bytes.Buffer, prior *audit.ArchiveReport) audit.Report {
	c.t.Helper()
	rep, err := c.l.Archive(context.Background(), w, prior)
	if err != nil {
		c.t.Fatalf("archive: %v", err)
	}
	return rep
}

func (c *chainRig) verifyArchive(s string) audit.ArchiveReport {
	c.t.Helper()
	ar, err := c.l.VerifyArchive(strings.NewReader(s), nil)
	if err != nil {
		c.t.Fatalf("verify archive: %v", err)
	}
	return ar
}

func field(m redis.XMessage, k string) string { s, _ := m.Values[k].(string); return s }

// TestBaseMark: against a real redis-server, the chain cannot be shortened at its start
// without the audit key: the base mark is signed, Archive alone writes it and records it in
// the archive, and with the archive a log emptied or cut short is found.
func TestBaseMark(t *testing.T) {
	r := testenv.StartRedis(t)
	ctx := context.Background()
	key := []byte("0123456789abcdef0123456789abcdef")

	// The attack of issue 12: delete the oldest records, then point the base past them.
	for _, tt := range []struct {
		name string
		base func(c *chainRig, n redis.XMessage, signed string) string
		want error
	}{
		{"the record's <seq> <mac> copied", func(c *chainRig, n redis.XMessage, _ string) string {
			return field(n, "seq") + " " + field(n, "mac")
		}, audit.ErrLegacyBase},
		{"<seq> <mac> <garbage>", func(c *chainRig, n redis.XMessage, _ string) string {
			return field(n, "seq") + " " + field(n, "mac") + " garbage"
		}, audit.ErrBaseNotSigned},
		{"the next record's MAC as the base MAC", func(c *chainRig, n redis.XMessage, _ string) string {
			seq, _ := strconv.Atoi(field(n, "seq"))
			next := c.entries()[0] // the first left after the deletion
			if field(next, "seq") != strconv.Itoa(seq+1) {
				c.t.Fatalf("the record after %d is %s", seq, field(next, "seq"))
			}
			return field(n, "seq") + " " + field(n, "mac") + " " + field(next, "mac")
		}, audit.ErrBaseNotSigned},
		{"the base MAC of another record (a real one, from the archive)", func(c *chainRig, n redis.XMessage, signed string) string {
			f := strings.Fields(signed)
			return field(n, "seq") + " " + field(n, "mac") + " " + f[2]
		}, audit.ErrBaseNotSigned},
		{"the base MAC of another seq for this MAC", func(c *chainRig, n redis.XMessage, _ string) string {
			seq, _ := strconv.ParseUint(field(n, "seq"), 10, 64)
			return field(n, "seq") + " " + field(n, "mac") + " " + docBaseMAC(c.key, seq-1, field(n, "mac"))
		}, audit.ErrBaseNotSigned},
		{"a SHA-256 base MAC (computed without the key)", func(c *chainRig, n redis.XMessage, _ string) string {
			seq, _ := strconv.ParseUint(field(n, "seq"), 10, 64)
			return field(n, "seq") + " " + field(n, "mac") + " " + docBaseMAC(nil, seq, field(n, "mac"))
		}, audit.ErrBaseNotSigned},
		{"an upper-case base MAC", func(c *chainRig, n redis.XMessage, _ string) string {
			seq, _ := strconv.ParseUint(field(n, "seq"), 10, 64)
			return field(n, "seq") + " " + field(n, "mac") + " " + strings.ToUpper(docBaseMAC(c.key, seq, field(n, "mac")))
		}, audit.ErrBaseNotSigned},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := newRig(t, r, key)
			c.append(0, 10)
			var arch bytes.Buffer
			c.archive(&arch, nil) // base: record 10, signed
			signed := c.get(baseKey)
			c.append(10, 20)
			msgs := c.entries()
			const n = 4 // delete records 11 to 14
			for _, m := range msgs[:n] {
				c.rdb.XDel(ctx, streamKey, m.ID)
			}
			// Without the change to the base, the deletion is seen.
			if _, err := c.l.Verify(ctx, nil); err == nil || !strings.Contains(err.Error(), "record 15 where 11 should be") {
				t.Fatalf("records deleted: %v", err)
			}
			c.set(baseKey, tt.base(c, msgs[n-1], signed))
			_, err := c.l.Verify(ctx, nil)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Verify = %v, want %v", err, tt.want)
			}
			if tt.want == audit.ErrBaseNotSigned && err.Error() != "audit: the base mark of the chain is not signed with the audit key: records before it may have been removed" {
				t.Errorf("message: %v", err)
			}
			// And Archive, which verifies first, neither archives nor trims.
			var out bytes.Buffer
			if _, err := c.l.Archive(ctx, &out, nil); err == nil || out.Len() != 0 {
				t.Fatalf("Archive = %v, wrote %q", err, out.String())
			}
			// With the archive the base does not match its end either.
			ar := c.verifyArchive(arch.String())
			if _, err := c.l.VerifyAfter(ctx, ar, nil); err == nil {
				t.Fatal("VerifyAfter passed")
			}
		})
	}

	// Pins the documented bytes: a base signed as the package doc says verifies (this is the
	// attacker who holds the key, whom the chain cannot stop).
	t.Run("a base MAC made as documented, with the key, verifies", func(t *testing.T) {
		c := newRig(t, r, key)
		c.append(0, 10)
		msgs := c.entries()
		for _, m := range msgs[:4] {
			c.rdb.XDel(ctx, streamKey, m.ID)
		}
		c.set(baseKey, "4 "+field(msgs[3], "mac")+" "+docBaseMAC(key, 4, field(msgs[3], "mac")))
		if rep, err := c.l.Verify(ctx, nil); err != nil || rep.Records != 6 || rep.BaseSeq != 4 || rep.LegacyBase {
			t.Fatalf("%+v %v", rep, err)
		}
	})

	// Without a key, anyone can sign a base: the chain verifies (the CLI warns).
	t.Run("unkeyed, a base MAC is forgeable", func(t *testing.T) {
		c := newRig(t, r, nil)
		c.append(0, 10)
		msgs := c.entries()
		for _, m := range msgs[:4] {
			c.rdb.XDel(ctx, streamKey, m.ID)
		}
		c.set(baseKey, "4 "+field(msgs[3], "mac")+" "+docBaseMAC(nil, 4, field(msgs[3], "mac")))
		if _, err := c.l.Verify(ctx, nil); err != nil {
			t.Fatalf("unkeyed: %v", err)
		}
	})

	t.Run("archive writes the signed base, verify with and without the archive", func(t *testing.T) {
		c := newRig(t, r, key)
		c.append(0, 10)
		var first bytes.Buffer
		if rep := c.archive(&first, nil); rep.Records != 10 || rep.BaseSeq != 10 {
			t.Fatalf("archive: %+v", rep)
		}
		msgs := strings.Split(strings.TrimSpace(first.String()), "\n")
		var lastLine struct{ Base string }
		if err := json.Unmarshal([]byte(msgs[len(msgs)-1]), &lastLine); err != nil || len(msgs) != 11 {
			t.Fatalf("%d lines, last %q: %v", len(msgs), msgs[len(msgs)-1], err)
		}
		if lastLine.Base == "" || lastLine.Base != c.get(baseKey) {
			t.Fatalf("archive's base line %q, Redis's base %q", lastLine.Base, c.get(baseKey))
		}
		f := strings.Fields(lastLine.Base)
		if len(f) != 3 || f[0] != "10" || f[2] != docBaseMAC(key, 10, f[1]) {
			t.Fatalf("base mark %q is not as documented", lastLine.Base)
		}
		ar := c.verifyArchive(first.String())
		if ar.Records != 10 || ar.Bases != 1 || !ar.EndsSigned || ar.LastSeq != 10 {
			t.Fatalf("archive: %+v", ar)
		}
		c.append(10, 15)
		if rep, err := c.l.Verify(ctx, nil); err != nil || rep.Records != 5 || rep.BaseSeq != 10 {
			t.Fatalf("verify: %+v %v", rep, err)
		}
		if rep, err := c.l.VerifyAfter(ctx, ar, nil); err != nil || rep.Records != 5 {
			t.Fatalf("verify after the archive: %+v %v", rep, err)
		}
		// A second archive, appended to the first file: concatenated they are one chain.
		second := bytes.NewBufferString(first.String())
		if rep := c.archive(second, &ar); rep.Records != 5 || rep.BaseSeq != 15 {
			t.Fatalf("second archive: %+v", rep)
		}
		both := c.verifyArchive(second.String())
		if both.Records != 15 || both.Bases != 2 || !both.EndsSigned || both.FirstSeq != 1 || both.LastSeq != 15 {
			t.Fatalf("both archives: %+v", both)
		}
		if _, err := c.l.VerifyAfter(ctx, both, nil); err != nil {
			t.Fatalf("verify after both: %v", err)
		}
		// The first archive alone is no longer the latest: the base is past its end.
		if _, err := c.l.VerifyAfter(ctx, ar, nil); err == nil || !strings.Contains(err.Error(), "goes on from record 15") {
			t.Fatalf("the base after the archive's end: %v", err)
		}
		// Archiving again into the first archive alone would leave a gap in it.
		if _, err := c.l.Archive(ctx, new(bytes.Buffer), &ar); err == nil || !strings.Contains(err.Error(), "ends at record 10") {
			t.Fatalf("archive after an old file: %v", err)
		}
		// An archive cut off before its base line verifies, but does not end signed.
		cut := strings.Join(strings.Split(second.String(), "\n")[:16], "\n") + "\n"
		if cr := c.verifyArchive(cut); cr.EndsSigned || cr.LastSeq != 15 {
			t.Fatalf("cut archive: %+v", cr)
		}
		// Base lines that lie about where they stand, or are not signed, do not verify.
		lines := strings.Split(strings.TrimSpace(second.String()), "\n")
		for name, bad := range map[string]string{
			"a base line moved earlier": strings.Join(append(append(append([]string{}, lines[:5]...), lines[10]), lines[5:10]...), "\n"),
			"a base line unsigned":      strings.Replace(second.String(), lines[10], `{"base":"10 `+f[1]+`"}`, 1),
			"a base line forged":        strings.Replace(second.String(), lines[10], `{"base":"10 `+f[1]+` `+docBaseMAC([]byte("other"), 10, f[1])+`"}`, 1),
			"a base line with a record": strings.Replace(second.String(), lines[10], `{"seq":10,"base":"`+lastLine.Base+`"}`, 1),
		} {
			if _, err := c.l.VerifyArchive(strings.NewReader(bad), nil); err == nil {
				t.Errorf("%s: verified", name)
			}
		}
	})

	t.Run("the whole log truncated", func(t *testing.T) {
		c := newRig(t, r, key)
		c.append(0, 10)
		var arch bytes.Buffer
		c.archive(&arch, nil)
		c.append(10, 13)
		ar := c.verifyArchive(arch.String())
		c.rdb.Del(ctx, streamKey, headKey, baseKey)
		// Alone, an empty log is indistinguishable from a new one (documented).
		if rep, err := c.l.Verify(ctx, nil); err != nil || rep.Records != 0 {
			t.Fatalf("pinned: an emptied log verifies alone: %+v %v", rep, err)
		}
		if _, err := c.l.VerifyAfter(ctx, ar, nil); err == nil || !strings.Contains(err.Error(), "no base mark, but the archive ends at record 10") {
			t.Fatalf("an emptied log after an archive: %v", err)
		}
		if _, err := c.l.Archive(ctx, new(bytes.Buffer), &ar); err == nil {
			t.Fatal("archived an emptied log after the archive")
		}
		// Only the stream and the head: the base says more was there.
		c2 := newRig(t, r, key)
		c2.append(0, 10)
		c2.archive(new(bytes.Buffer), nil)
		c2.append(10, 13)
		c2.rdb.Del(ctx, streamKey, headKey)
		if _, err := c2.l.Verify(ctx, nil); err == nil || !strings.Contains(err.Error(), "removed from the end") {
			t.Fatalf("stream and head deleted, base kept: %v", err)
		}
		// An archive that holds more than the log in Redis: shortened.
		c3 := newRig(t, r, key)
		c3.append(0, 10)
		var a3 bytes.Buffer
		c3.archive(&a3, nil)
		c3.append(10, 12)
		ar3 := c3.verifyArchive(a3.String())
		// The records since the archive and the head removed, the head set to the base: this
		// goes unseen, with or without the archive (documented).
		c3.rdb.Del(ctx, streamKey)
		c3.set(headKey, c3.get(baseKey)[:strings.LastIndex(c3.get(baseKey), " ")])
		if _, err := c3.l.Verify(ctx, nil); err != nil {
			t.Fatalf("pinned: the tail and head cut off since the archive go unseen: %v", err)
		}
		if _, err := c3.l.VerifyAfter(ctx, ar3, nil); err != nil {
			t.Fatalf("pinned: %v", err)
		}
	})

	t.Run("an archive run cut short before trimming", func(t *testing.T) {
		c := newRig(t, r, key)
		c.append(0, 10)
		var arch bytes.Buffer
		c.archive(&arch, nil)
		c.append(10, 15)
		// What a run that wrote records 11 to 15 and died before trimming leaves: the file
		// ends past the base mark.
		var more bytes.Buffer
		more.WriteString(arch.String())
		if _, err := c.l.Verify(ctx, func(e audit.Entry) {
			b, _ := json.Marshal(map[string]any{"seq": e.Seq, "prev": e.Prev, "mac": e.MAC, "rec": e.Raw})
			more.Write(append(b, '\n'))
		}); err != nil {
			t.Fatal(err)
		}
		ar := c.verifyArchive(more.String())
		if ar.LastSeq != 15 || ar.EndsSigned {
			t.Fatalf("%+v", ar)
		}
		// The base (record 10) is before the archive's end, and Redis still holds records 11
		// to 15 as the file does: refused, as an interrupted run, not as records removed.
		var unfinished *audit.UnfinishedArchiveError
		if _, err := c.l.VerifyAfter(ctx, ar, nil); !errors.As(err, &unfinished) || unfinished.Base != 10 || unfinished.Last != 15 {
			t.Fatalf("the base before the archive's end: %v; want an interrupted run (10, 15)", err)
		}
		// Archiving again does not write records 11 to 15 twice, and then all is well.
		c.append(15, 17)
		if rep := c.archive(&more, &ar); rep.Records != 2 || rep.BaseSeq != 17 {
			t.Fatalf("archive again: %+v", rep)
		}
		ar = c.verifyArchive(more.String())
		if ar.Records != 17 || ar.LastSeq != 17 || !ar.EndsSigned {
			t.Fatalf("%+v", ar)
		}
		if _, err := c.l.VerifyAfter(ctx, ar, nil); err != nil {
			t.Fatal(err)
		}
		// A file whose record does not match the chain's is refused.
		c.append(17, 19)
		wrong := ar
		wrong.LastSeq, wrong.LastMAC, wrong.EndsSigned = 18, strings.Repeat("0", 64), false
		if _, err := c.l.Archive(ctx, new(bytes.Buffer), &wrong); err == nil || !strings.Contains(err.Error(), "is not the chain's") {
			t.Fatalf("archive after a file that disagrees: %v", err)
		}
	})

	// A base mark of the old unsigned form, as Archive wrote it before base marks were signed.
	t.Run("legacy base mark", func(t *testing.T) {
		c := newRig(t, r, key)
		c.append(0, 10)
		var arch bytes.Buffer
		c.archive(&arch, nil)
		f := strings.Fields(c.get(baseKey))
		c.set(baseKey, f[0]+" "+f[1])
		// The old archive had no base line either.
		old := strings.Join(strings.Split(strings.TrimSpace(arch.String()), "\n")[:10], "\n") + "\n"
		ar := c.verifyArchive(old)
		if ar.Bases != 0 || ar.EndsSigned || ar.LastSeq != 10 {
			t.Fatalf("old archive: %+v", ar)
		}
		c.append(10, 13)

		// Refused alone.
		if _, err := c.l.Verify(ctx, nil); !errors.Is(err, audit.ErrLegacyBase) {
			t.Fatalf("Verify = %v", err)
		}
		if _, err := c.l.Archive(ctx, new(bytes.Buffer), nil); !errors.Is(err, audit.ErrLegacyBase) {
			t.Fatalf("Archive = %v", err)
		}
		// Accepted when the caller says so, and reported.
		lax := audit.New(c.rdb, audit.Options{Key: key, AcceptLegacyBase: true})
		if rep, err := lax.Verify(ctx, nil); err != nil || !rep.LegacyBase || rep.BaseSeq != 10 || rep.Records != 3 {
			t.Fatalf("accepted legacy base: %+v %v", rep, err)
		}
		// Vouched for by the archive that ends at it, without the option.
		if rep, err := c.l.VerifyAfter(ctx, ar, nil); err != nil || rep.LegacyBase {
			t.Fatalf("VerifyAfter the archive ending at it: %+v %v", rep, err)
		}
		// ... but not by an archive ending elsewhere.
		short := c.verifyArchive(strings.Join(strings.Split(old, "\n")[:9], "\n") + "\n")
		if _, err := c.l.VerifyAfter(ctx, short, nil); err == nil {
			t.Fatal("a legacy base after the archive's end verified")
		}
		// Archive into that file signs it.
		file := bytes.NewBufferString(old)
		if rep := c.archive(file, &ar); rep.Records != 3 || rep.LegacyBase {
			t.Fatalf("archive: %+v", rep)
		}
		if got := strings.Fields(c.get(baseKey)); len(got) != 3 || got[0] != "13" {
			t.Fatalf("base after archiving: %q", got)
		}
		if _, err := c.l.Verify(ctx, nil); err != nil {
			t.Fatal(err)
		}
		if a := c.verifyArchive(file.String()); a.Records != 13 || !a.EndsSigned {
			t.Fatalf("%+v", a)
		}

		// With nothing to trim, a vouched legacy base is re-signed in place and recorded.
		c2 := newRig(t, r, key)
		c2.append(0, 5)
		var a2 bytes.Buffer
		c2.archive(&a2, nil)
		f2 := strings.Fields(c2.get(baseKey))
		c2.set(baseKey, f2[0]+" "+f2[1])
		old2 := strings.Join(strings.Split(strings.TrimSpace(a2.String()), "\n")[:5], "\n") + "\n"
		ar2 := c2.verifyArchive(old2)
		file2 := bytes.NewBufferString(old2)
		if rep := c2.archive(file2, &ar2); rep.Records != 0 || rep.BaseSeq != 5 {
			t.Fatalf("%+v", rep)
		}
		if got := c2.get(baseKey); got != strings.Join(f2, " ") {
			t.Fatalf("re-signed base %q, want %q", got, strings.Join(f2, " "))
		}
		if a := c2.verifyArchive(file2.String()); !a.EndsSigned || a.Bases != 1 {
			t.Fatalf("%+v", a)
		}
		// And into a new file with the option: the file starts with the base line.
		c2.set(baseKey, f2[0]+" "+f2[1])
		fresh := new(bytes.Buffer)
		lax2 := audit.New(c2.rdb, audit.Options{Key: key, AcceptLegacyBase: true})
		if _, err := lax2.Archive(ctx, fresh, nil); err != nil {
			t.Fatal(err)
		}
		c2.append(5, 7)
		c2.archive(fresh, nil)
		if a := c2.verifyArchive(fresh.String()); a.Records != 2 || a.FirstSeq != 6 || a.Bases != 2 {
			t.Fatalf("%+v\n%s", a, fresh.String())
		}
		if a := c2.verifyArchive(old2 + fresh.String()); a.Records != 7 || a.LastSeq != 7 {
			t.Fatalf("%+v", a)
		}
	})

	t.Run("records of every version in one chain", func(t *testing.T) {
		c := newRig(t, r, key)
		c.append(0, 2)
		// A version 1 record (no "v"), as written before the field existed.
		head := strings.Fields(c.get(headKey))
		v1 := `{"time":"2025-11-25T10:00:00Z","action":"user","outcome":"issued","identity":"old@example.com","serial":"77"}`
		mac := docRecordMAC(key, head[1], 3, v1)
		c.rdb.XAdd(ctx, &redis.XAddArgs{Stream: streamKey, Values: []any{"seq", "3", "prev", head[1], "mac", mac, "rec", v1}})
		c.set(headKey, "3 "+mac)
		c.append(2, 4)
		var versions []int
		var ids []string
		if _, err := c.l.Verify(ctx, func(e audit.Entry) {
			versions = append(versions, e.Version)
			ids = append(ids, e.Record.Identity)
		}); err != nil {
			t.Fatal(err)
		}
		v := ca.AuditRecordVersion
		if want := fmt.Sprint([]int{v, v, 1, v, v}); fmt.Sprint(versions) != want || ids[2] != "old@example.com" {
			t.Fatalf("versions %v, identities %v", versions, ids)
		}
		var arch bytes.Buffer
		c.archive(&arch, nil)
		versions = nil
		if _, err := c.l.VerifyArchive(strings.NewReader(arch.String()), func(e audit.Entry) { versions = append(versions, e.Version) }); err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprint([]int{v, v, 1, v, v}); fmt.Sprint(versions) != want {
			t.Fatalf("archived versions %v", versions)
		}
		if vs := fmt.Sprint(v); !strings.Contains(arch.String(), `\"v\":`+vs) && !strings.Contains(arch.String(), `"v":`+vs) {
			t.Fatalf("no version in the archived records:\n%s", arch.String())
		}
	})
}
