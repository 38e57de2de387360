package main

import (
	"context"
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

// TestStoreRebuildLostStripe: two replicas keep records in stripes 0 and 1 and checkpoint
// each other's heads; then every key of stripe 1's tag is lost (a Redis Cluster master that
// came back empty: its mark too, so the CA replicas refuse to sign until a rebuild). The
// checkpoints in stripe 0 name stripe 1's records, so the chain no longer verifies, and
// `sshca store rebuild` refuses, naming the stripe and --lost-stripe. With --lost-stripe 1
// it restores what stripe 0 holds (a ban) and says that stripe 1's records are gone. What
// must not get past: --lost-stripe 1 while stripe 1 still holds a record a checkpoint names,
// cut short (its tail and head deleted by someone with write access) rather than lost, is
// refused.
func TestStoreRebuildLostStripe(t *testing.T) {
	e := newRebuildEnv(t)
	rdb, key, userKey := e.rdb, e.key, e.userKey
	ctx := context.Background()
	rebuild := e.rebuild
	banned := testenv.PublicKey(t)
	ban := ca.AuditRecord{Time: time.Now().UTC(), Action: ca.ActionRevoke, Outcome: "allowed", Identity: "admin", Reason: "r",
		Target: "public_key:" + ssh.FingerprintSHA256(banned), PublicKey: revocation.KeyEntry(banned)}

	for _, cutShort := range []bool{false, true} {
		rdb.FlushAll(ctx)
		st := store.NewRedis(rdb, store.RedisOptions{AuditStripes: 2})
		logs := []*audit.Log{audit.New(rdb, audit.Options{Key: key, Stripes: 2, Home: new(0), Marks: st}), audit.New(rdb, audit.Options{Key: key, Stripes: 2, Home: new(1), Marks: st})}
		for i := range 3 {
			for r, l := range logs {
				rec := ban
				if r == 1 || i > 0 {
					rec = ca.AuditRecord{Time: time.Now().UTC(), Action: ca.ActionUser, Outcome: "denied", Identity: "u"}
				}
				if err := l.Append(ctx, rec); err != nil {
					t.Fatal(err)
				}
			}
			for _, l := range logs {
				if err := l.Checkpoint(ctx); err != nil {
					t.Fatal(err)
				}
			}
		}
		if cutShort {
			msgs := rdb.XRange(ctx, "sshca:{audit:1}:log", "-", "+").Val()
			for _, m := range msgs[1:] {
				rdb.XDel(ctx, "sshca:{audit:1}:log", m.ID)
			}
			rdb.Set(ctx, "sshca:{audit:1}:head", "1 "+m0(msgs[0]), 0)
		} else {
			keys := rdb.Keys(ctx, "*{audit:1}*").Val()
			if len(keys) < 3 {
				t.Fatalf("stripe 1's keys: %q", keys)
			}
			rdb.Del(ctx, keys...)
		}
		out, err := rebuild()
		if err == nil || !strings.Contains(err.Error(), "stripe 1 was cut short") {
			t.Fatalf("cut short %v: rebuild without --lost-stripe: %v\n%s; want refused, stripe 1 cut short", cutShort, err, out)
		}
		if !strings.Contains(err.Error(), "--lost-stripe 1") && !cutShort {
			t.Errorf("the refusal does not name --lost-stripe 1: %v", err)
		}
		out, err = rebuild(1)
		if cutShort {
			if err == nil || !strings.Contains(err.Error(), "cut short, not lost") {
				t.Errorf("--lost-stripe 1 of a stripe cut short, not lost: %v\n%s; want refused", err, out)
			}
			continue
		}
		if err != nil {
			t.Fatalf("rebuild --lost-stripe 1: %v\n%s", err, out)
		}
		if !strings.Contains(out, "WARNING: stripe 1 of the audit chain was taken as lost") {
			t.Errorf("rebuild output does not warn of the lost stripe:\n%s", out)
		}
		if why, err := store.NewRedis(rdb, store.RedisOptions{}).Refused(ctx, userKey, nil, banned); err != nil || why == "" {
			t.Errorf("the ban kept in stripe 0 is not restored: %q %v", why, err)
		}
	}
}

func m0(m redis.XMessage) string { s, _ := m.Values["mac"].(string); return s }
