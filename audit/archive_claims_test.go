package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
)

// TestVerifyAfterChecksClaimsAcross: VerifyAfter checks the checkpoints of the archive and of
// Redis across the cut between them, as Verify checks them within Redis. A checkpoint the
// archive holds may name a record appended to an earlier-walked stripe while the archive ran,
// which only Redis holds: it must be there, as named (else the stripe was cut short in Redis,
// or rewritten). A checkpoint Redis holds may name a record the archive holds: it must be the
// one named. The checkpoints are put in place here (the interleavings that write them depend
// on the timing of a live archive run); each is signed with the key, so only the claim is
// at stake.
func TestVerifyAfterChecksClaimsAcross(t *testing.T) {
	r := testenv.StartRedis(t)
	ctx := context.Background()
	key := []byte("0123456789abcdef0123456789abcdef")
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { rdb.Close() })
	rec := func(i int) ca.AuditRecord {
		return ca.AuditRecord{Time: time.Unix(1_800_000_000+int64(i), 0).UTC(), Action: ca.ActionAdmin, Outcome: "allowed", Identity: "test"}
	}
	setup := func(t *testing.T) (*Log, ArchiveReport) {
		rdb.FlushAll(ctx)
		for home := range 2 {
			l := New(rdb, Options{Key: key, Stripes: 2, Home: new(home)})
			for i := range 3 {
				if err := l.Append(ctx, rec(i)); err != nil {
					t.Fatal(err)
				}
			}
		}
		reader := New(rdb, Options{Key: key})
		var file bytes.Buffer
		if _, err := reader.Archive(ctx, &file, nil); err != nil {
			t.Fatal(err)
		}
		clear(fullMACs)
		ar, err := reader.VerifyArchive(strings.NewReader(file.String()), func(e Entry) { fullMACs[[2]uint64{uint64(e.Stripe), e.Seq}] = e.MAC })
		if err != nil {
			t.Fatal(err)
		}
		return reader, ar
	}
	head := func(stripe int) (uint64, string) {
		seq, mac, err := parseHead(rdb.Get(ctx, newStripe("sshca", stripe).headKey).Val())
		if err != nil {
			t.Fatal(err)
		}
		return seq, mac
	}
	checkpoint := func(heads ...CheckpointHead) *Checkpoint {
		return &Checkpoint{Time: time.Unix(1_800_000_100, 0).UTC(), Stripes: 2, Heads: heads}
	}

	t.Run("archived checkpoint names a record in Redis", func(t *testing.T) {
		reader, ar := setup(t)
		// Stripe 0 goes on in Redis; the archive's stripe 1 checkpoint names its new head.
		l0 := New(rdb, Options{Key: key, Stripes: 2, Home: new(0)})
		if err := l0.Append(ctx, rec(10)); err != nil {
			t.Fatal(err)
		}
		seq, mac := head(0)
		good := ar
		good.cps = []walkedCheckpoint{{stripe: 1, seq: 4, c: checkpoint(CheckpointHead{Stripe: 0, Seq: seq, MAC: mac})}}
		if _, err := reader.VerifyAfter(ctx, good, nil); err != nil {
			t.Fatalf("the record named is in Redis, as named: %v", err)
		}
		other := good
		other.cps = []walkedCheckpoint{{stripe: 1, seq: 4, c: checkpoint(CheckpointHead{Stripe: 0, Seq: seq, MAC: strings.Repeat("c", 64)})}}
		if _, err := reader.VerifyAfter(ctx, other, nil); !isCut(err, 0, "rewritten") {
			t.Errorf("the record named is another in Redis: %v; want stripe 0 rewritten", err)
		}
		// Stripe 0 cut back in Redis together with its head: only the archive's checkpoint
		// knows.
		msgs := rdb.XRange(ctx, newStripe("sshca", 0).streamKey, "-", "+").Val()
		rdb.XDel(ctx, newStripe("sshca", 0).streamKey, msgs[len(msgs)-1].ID)
		var prev struct{ seq, mac string }
		prev.seq, _ = msgs[len(msgs)-2].Values["seq"].(string)
		prev.mac, _ = msgs[len(msgs)-2].Values["mac"].(string)
		rdb.Set(ctx, newStripe("sshca", 0).headKey, prev.seq+" "+prev.mac, 0)
		if _, err := reader.VerifyAfter(ctx, ar, nil); err != nil {
			t.Fatalf("control: without the checkpoint the cut shows nowhere: %v", err)
		}
		if _, err := reader.VerifyAfter(ctx, good, nil); !isCut(err, 0, "cut short") {
			t.Errorf("stripe 0 cut back in Redis: %v; want it cut short, by the archive's checkpoint", err)
		}
	})

	t.Run("checkpoint in Redis names an archived record", func(t *testing.T) {
		for _, asNamed := range []bool{true, false} {
			reader, ar := setup(t)
			mac := ar.archivedMAC(t, 1, 2)
			if !asNamed {
				mac = strings.Repeat("d", 64)
			}
			// A checkpoint in Redis (stripe 0) naming stripe 1's record 2, archived.
			body, _ := json.Marshal(checkpointRecord{checkpoint(CheckpointHead{Stripe: 1, Seq: 2, MAC: mac})})
			l0 := New(rdb, Options{Key: key, Stripes: 2, Home: new(0)})
			if err := l0.append(ctx, &pending{body: body}); err != nil {
				t.Fatal(err)
			}
			_, err := reader.VerifyAfter(ctx, ar, nil)
			switch {
			case asNamed && err != nil:
				t.Errorf("the archived record named, as named: %v", err)
			case !asNamed && !isCut(err, 1, "in the archive"):
				t.Errorf("the archived record named is another: %v; want stripe 1 rewritten, in the archive", err)
			}
			// Without the archive, nothing to compare it with.
			if _, err := reader.Verify(ctx, nil); err != nil {
				t.Errorf("control: Verify alone: %v", err)
			}
		}
	})
}

// archivedMAC is the MAC of stripe's record seq in setup's archive (the report keeps prefixes).
func (ar ArchiveReport) archivedMAC(t *testing.T, stripe int, seq uint64) string {
	t.Helper()
	mac, ok := fullMACs[[2]uint64{uint64(stripe), seq}]
	if !ok {
		t.Fatalf("no MAC of stripe %d record %d", stripe, seq)
	}
	return mac
}

// fullMACs are the MACs of the records setup's archive held, by (stripe, seq).
var fullMACs = map[[2]uint64]string{}

func isCut(err error, stripe int, says string) bool {
	var cut *StripeCutError
	return errors.As(err, &cut) && cut.Stripe == stripe && strings.Contains(err.Error(), says)
}
