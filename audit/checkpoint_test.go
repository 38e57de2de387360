package audit_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/internal/testenv"
)

func stripeHead(i int) string {
	if i == 0 {
		return "sshca:{audit}:head"
	}
	return fmt.Sprintf("sshca:{audit:%d}:head", i)
}

// docStripeMAC is a record's MAC in stripe i as the package doc states it: the sequence
// number followed by "@i" beyond stripe 0.
func docStripeMAC(key []byte, prev string, seq uint64, stripe int, rec string) string {
	h := hmac.New(sha256.New, key)
	if stripe == 0 {
		fmt.Fprintf(h, "%s\n%d\n%s", prev, seq, rec)
	} else {
		fmt.Fprintf(h, "%s\n%d@%d\n%s", prev, seq, stripe, rec)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// stripedRig: three replicas, each on its own stripe, three records each, then a checkpoint
// by each (so every stripe's head is named in the two others).
func stripedRig(t *testing.T, r *testenv.Redis, key []byte, checkpoints bool) (*redis.Client, []*audit.Log) {
	t.Helper()
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	rdb.FlushAll(ctx)
	t.Cleanup(func() { rdb.FlushAll(ctx); rdb.Close() })
	var logs []*audit.Log
	for i := range 3 {
		logs = append(logs, audit.New(rdb, audit.Options{Key: key, Stripes: 3, Home: new(i)}))
	}
	for round := range 3 {
		for i, l := range logs {
			if err := l.Append(ctx, record(i*100+round)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if checkpoints {
		for _, l := range logs {
			if err := l.Checkpoint(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	return rdb, logs
}

func entriesOf(t *testing.T, rdb *redis.Client, stripe int) []redis.XMessage {
	t.Helper()
	msgs, err := rdb.XRange(context.Background(), stripeStream(stripe), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	return msgs
}

// truncate deletes the last n entries of a stripe and moves its head back to the entry
// before them: what someone with write access to Redis (no key needed) does to hide records.
func truncate(t *testing.T, rdb *redis.Client, stripe, n int) {
	t.Helper()
	ctx := context.Background()
	msgs := entriesOf(t, rdb, stripe)
	keep := msgs[:len(msgs)-n]
	for _, m := range msgs[len(keep):] {
		rdb.XDel(ctx, stripeStream(stripe), m.ID)
	}
	last := keep[len(keep)-1]
	rdb.Set(ctx, stripeHead(stripe), field(last, "seq")+" "+field(last, "mac"), 0)
}

// TestCheckpoints: against a real redis-server, the checkpoints that link the stripes find
// what each stripe's own chain cannot: a stripe's tail deleted together with its head, a
// stripe rewritten by someone who holds the key, a stripe dropped, and a lowered stripe
// count; stripes swapped are found by each stripe's own MACs (they name the stripe). Each
// attack is first shown to pass without the checkpoints, where it does.
func TestCheckpoints(t *testing.T) {
	r := testenv.StartRedis(t)
	ctx := context.Background()
	key := []byte("0123456789abcdef0123456789abcdef")
	verify := func(rdb *redis.Client) (audit.Report, error) {
		return audit.New(rdb, audit.Options{Key: key}).Verify(ctx, nil)
	}

	t.Run("intact", func(t *testing.T) {
		rdb, logs := stripedRig(t, r, key, true)
		var seen []audit.Entry
		rep, err := audit.New(rdb, audit.Options{Key: key}).Verify(ctx, func(e audit.Entry) { seen = append(seen, e) })
		if err != nil || rep.Records != 9 || rep.Checkpoints != 3 || len(seen) != 9 {
			t.Fatalf("verify: %+v (%d seen) %v; want 9 records and 3 checkpoints, records only handed out", rep, len(seen), err)
		}
		for _, e := range seen {
			if e.Checkpoint != nil || e.Record.Action == "" {
				t.Errorf("Verify handed out a checkpoint: %+v", e)
			}
		}
		// No records since: no checkpoint.
		if err := logs[0].Checkpoint(ctx); err != nil {
			t.Fatal(err)
		}
		if rep, _ := verify(rdb); rep.Checkpoints != 3 {
			t.Errorf("%d checkpoints after one without records in between, want 3", rep.Checkpoints)
		}
		// Stripe 0's checkpoint names the heads of the other two as they stood.
		msgs := entriesOf(t, rdb, 0)
		rec := field(msgs[len(msgs)-1], "rec")
		one := entriesOf(t, rdb, 1)[2]
		if !strings.HasPrefix(rec, `{"checkpoint":`) || !strings.Contains(rec, `{"stripe":1,"seq":3,"mac":"`+field(one, "mac")+`"}`) {
			t.Errorf("stripe 0's checkpoint %s does not name stripe 1's record 3 (%s)", rec, field(one, "mac"))
		}
	})

	t.Run("a stripe's tail and head deleted", func(t *testing.T) {
		rdb, _ := stripedRig(t, r, key, false)
		truncate(t, rdb, 1, 2)
		if rep, err := verify(rdb); err != nil || rep.Records != 7 {
			t.Fatalf("without checkpoints: %+v %v; the truncation should pass unseen (what checkpoints are for)", rep, err)
		}
		rdb, _ = stripedRig(t, r, key, true)
		truncate(t, rdb, 1, 2) // stripe 1's checkpoint and its record 3
		_, err := verify(rdb)
		if err == nil || !strings.Contains(err.Error(), "stripe 1 was cut short") || !strings.Contains(err.Error(), "ends at record 2") {
			t.Errorf("with checkpoints: %v; want stripe 1 cut short at record 2", err)
		}
	})

	t.Run("a stripe rewritten with the key", func(t *testing.T) {
		rdb, _ := stripedRig(t, r, key, true)
		// Stripe 2's records 2 on relinked, record 2 changed, as only a key holder can.
		msgs := entriesOf(t, rdb, 2)
		prev := field(msgs[0], "mac")
		rdb.Del(ctx, stripeStream(2))
		rdb.XAdd(ctx, &redis.XAddArgs{Stream: stripeStream(2), ID: msgs[0].ID, Values: msgs[0].Values})
		for i, m := range msgs[1:] {
			rec := field(m, "rec")
			if i == 0 {
				rec = strings.Replace(rec, "issued", "denied", 1)
			}
			seq := uint64(i + 2)
			mac := docStripeMAC(key, prev, seq, 2, rec)
			rdb.XAdd(ctx, &redis.XAddArgs{Stream: stripeStream(2), ID: m.ID, Values: map[string]any{"seq": seq, "prev": prev, "mac": mac, "rec": rec}})
			prev = mac
		}
		rdb.Set(ctx, stripeHead(2), fmt.Sprintf("%d %s", len(msgs), prev), 0)
		// Stripe 2 alone verifies: the attacker held the key.
		_, err := verify(rdb)
		if err == nil || !strings.Contains(err.Error(), "stripe 2 was rewritten") {
			t.Errorf("verify: %v; want stripe 2 rewritten (a checkpoint of another stripe names its old record)", err)
		}
	})

	t.Run("a stripe dropped", func(t *testing.T) {
		rdb, _ := stripedRig(t, r, key, true)
		rdb.Del(ctx, stripeStream(2), stripeHead(2))
		_, err := verify(rdb)
		if err == nil || !strings.Contains(err.Error(), "stripe 2 was cut short") {
			t.Errorf("verify: %v; want stripe 2 cut short", err)
		}
	})

	t.Run("two stripes swapped", func(t *testing.T) {
		rdb, _ := stripedRig(t, r, key, false)
		rdb.Rename(ctx, stripeStream(1), "tmp")
		rdb.Rename(ctx, stripeStream(2), stripeStream(1))
		rdb.Rename(ctx, "tmp", stripeStream(2))
		h1, h2 := rdb.Get(ctx, stripeHead(1)).Val(), rdb.Get(ctx, stripeHead(2)).Val()
		rdb.Set(ctx, stripeHead(1), h2, 0)
		rdb.Set(ctx, stripeHead(2), h1, 0)
		_, err := verify(rdb)
		if err == nil || !strings.Contains(err.Error(), "stripe 1") || !strings.Contains(err.Error(), "MAC does not match") {
			t.Errorf("verify: %v; want stripe 1's MACs not matching (they name stripe 2)", err)
		}
	})

	t.Run("the stripe count lowered", func(t *testing.T) {
		rdb, _ := stripedRig(t, r, key, true)
		rdb.Set(ctx, "sshca:{audit}:stripes", "2", 0)
		if _, err := verify(rdb); err == nil || !strings.Contains(err.Error(), "stripe 2 holds records") {
			t.Errorf("count 2 of 3: %v; want stripe 2 found beyond the count", err)
		}
		// Deleted, and stripes 1 and 2 dropped too (nothing beyond the count left to find):
		// stripe 0 alone is walked; its checkpoint says 3.
		rdb.Del(ctx, "sshca:{audit}:stripes", stripeStream(1), stripeHead(1))
		rdb.Del(ctx, stripeStream(2), stripeHead(2))
		if _, err := verify(rdb); err == nil || !strings.Contains(err.Error(), "taken with 3 stripes") {
			t.Errorf("count gone: %v; want a checkpoint taken with 3 stripes", err)
		}
	})
}

// TestCheckpointsWhileAppending: Verify runs while three replicas append and checkpoint (each
// tick of RunCheckpoints driven by the test) and finds nothing wrong: a checkpoint walked
// never names a record beyond the heads Verify reads, however the walks of the stripes and the
// appends interleave.
func TestCheckpointsWhileAppending(t *testing.T) {
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { rdb.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	key := []byte("0123456789abcdef0123456789abcdef")
	var wg, appenders sync.WaitGroup
	ticks := make(chan time.Time)
	for i := range 3 {
		l := audit.New(rdb, audit.Options{Key: key, Stripes: 3, Home: new(i)})
		wg.Go(func() { l.RunCheckpoints(ctx, ticks) })
		for c := range 4 {
			appenders.Go(func() {
				for n := range 150 {
					if err := l.Append(ctx, record(i*1000000+c*10000+n)); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
	}
	wg.Go(func() {
		for ctx.Err() == nil {
			select {
			case ticks <- time.Now():
			case <-ctx.Done():
			}
		}
	})
	done := make(chan struct{})
	go func() { appenders.Wait(); close(done) }()
	var last audit.Report
	walks := 0
	for running := true; running; walks++ {
		select {
		case <-done:
			running = false
		default:
		}
		rep, err := audit.New(rdb, audit.Options{Key: key}).Verify(context.Background(), nil)
		if err != nil {
			t.Fatalf("verify while appending: %v", err)
		}
		last = rep
	}
	cancel()
	wg.Wait()
	if last.Checkpoints == 0 || last.Records != 3*4*150 || walks < 3 {
		t.Fatalf("%d walks, the last saw %d records and %d checkpoints: nothing to check", walks, last.Records, last.Checkpoints)
	}
	t.Logf("%d walks; the last: %d records, %d checkpoints", walks, last.Records, last.Checkpoints)
}

// TestMalformedCheckpoint: a checkpoint entry whose MAC checks out (written with the key) but
// whose content is not one Checkpoint writes is refused by Verify, not taken at its word: heads
// out of order or beyond its stripe count, a sequence number 0, a MAC that is not one, a
// field it does not have. The well-formed one beside them verifies.
func TestMalformedCheckpoint(t *testing.T) {
	r := testenv.StartRedis(t)
	ctx := context.Background()
	key := []byte("0123456789abcdef0123456789abcdef")
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { rdb.Close() })
	mac := strings.Repeat("a", 64)
	cases := map[string]string{
		"well formed":       `{"checkpoint":{"time":"2026-11-30T00:00:00Z","stripes":2,"heads":[{"stripe":1,"seq":1,"mac":"` + mac + `"}]}}`,
		"out of order":      `{"checkpoint":{"time":"2026-11-30T00:00:00Z","stripes":3,"heads":[{"stripe":2,"seq":1,"mac":"` + mac + `"},{"stripe":1,"seq":1,"mac":"` + mac + `"}]}}`,
		"beyond its count":  `{"checkpoint":{"time":"2026-11-30T00:00:00Z","stripes":2,"heads":[{"stripe":2,"seq":1,"mac":"` + mac + `"}]}}`,
		"seq 0":             `{"checkpoint":{"time":"2026-11-30T00:00:00Z","stripes":2,"heads":[{"stripe":1,"seq":0,"mac":"` + mac + `"}]}}`,
		"not a MAC":         `{"checkpoint":{"time":"2026-11-30T00:00:00Z","stripes":2,"heads":[{"stripe":1,"seq":1,"mac":"xyz"}]}}`,
		"an unknown field":  `{"checkpoint":{"time":"2026-11-30T00:00:00Z","stripes":2,"heads":[],"extra":1}}`,
		"no stripes at all": `{"checkpoint":{"time":"2026-11-30T00:00:00Z","stripes":0,"heads":[]}}`,
	}
	for name, rec := range cases {
		rdb.FlushAll(ctx)
		// Stripe 1 holds one record, so the well-formed checkpoint's claim is true.
		if err := audit.New(rdb, audit.Options{Key: key, Stripes: 2, Home: new(1)}).Append(ctx, record(1)); err != nil {
			t.Fatal(err)
		}
		one := entriesOf(t, rdb, 1)[0]
		rdb.Del(ctx, stripeStream(0), stripeHead(0)) // the striped mark: the checkpoint is stripe 0's first
		rec = strings.Replace(rec, mac, field(one, "mac"), -1)
		m := docStripeMAC(key, "", 1, 0, rec)
		rdb.XAdd(ctx, &redis.XAddArgs{Stream: stripeStream(0), Values: map[string]any{"seq": 1, "prev": "", "mac": m, "rec": rec}})
		rdb.Set(ctx, stripeHead(0), "1 "+m, 0)
		rep, err := audit.New(rdb, audit.Options{Key: key}).Verify(ctx, nil)
		switch {
		case name == "well formed" && (err != nil || rep.Checkpoints != 1):
			t.Errorf("%s: %+v %v", name, rep, err)
		case name != "well formed" && (err == nil || !strings.Contains(err.Error(), "malformed checkpoint")):
			t.Errorf("%s: %v; want a malformed checkpoint", name, err)
		}
	}
}
