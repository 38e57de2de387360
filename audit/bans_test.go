package audit_test

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
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

// TestAppendIssuedReadsBans: against redis-server, AppendIssued keeps its record and answers
// whether its CA key is banned, each caller its own key's answer, also when concurrent
// callers' records share a group commit: a CA key banned for
// good (a compromise) is banned; a clean key, and one whose timed ban has expired by the
// store's clock, are not. After SCRIPT FLUSH (a Redis that restarted) the pipeline falls back
// to EVAL and still reads the ban, keeping the record once. A client whose ACL refuses the ban
// read (ZMSCORE) gets an error for the record that asked, which is kept all the same, while a
// plain Append through it succeeds.
func TestAppendIssuedReadsBans(t *testing.T) {
	srv := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	var clock atomic.Int64
	clock.Store(time.Now().UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	db := store.NewRedis(rdb, store.RedisOptions{Now: now})
	banned, clean, lapsed := testenv.PublicKey(t), testenv.PublicKey(t), testenv.PublicKey(t)
	if _, err := db.Revoke(ctx, banned, []ca.RevocationEntry{{Kind: ca.RevokedKey, Value: revocation.KeyEntry(banned)}}); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Revoke(ctx, clean, []ca.RevocationEntry{{Kind: ca.RevokedKey, Value: revocation.KeyEntry(lapsed), Expiry: now().Add(time.Minute)}}); err != nil {
		t.Fatal(err)
	}
	clock.Add(int64(2 * time.Minute))
	key := []byte("0123456789abcdef0123456789abcdef")
	l := audit.New(rdb, audit.Options{Key: key, Marks: db, Bans: db})
	want := map[string]bool{ssh.FingerprintSHA256(banned): true, ssh.FingerprintSHA256(clean): false, ssh.FingerprintSHA256(lapsed): false}
	cas := []ssh.PublicKey{banned, clean, lapsed}
	issued := func(i int, k ssh.PublicKey) ca.AuditRecord {
		rec := record(i)
		rec.CAFingerprint = ssh.FingerprintSHA256(k)
		return rec
	}

	const callers, each = 24, 4
	var wg sync.WaitGroup
	for c := range callers {
		wg.Go(func() {
			for i := range each {
				n := c*100 + i
				k := cas[n%len(cas)]
				got, err := l.AppendIssued(ctx, issued(n, k), k)
				if err != nil {
					t.Errorf("AppendIssued: %v", err)
					return
				}
				if fp := ssh.FingerprintSHA256(k); got != want[fp] {
					t.Errorf("record %d: CA key %s banned %v, want %v", n, fp, got, want[fp])
				}
			}
		})
	}
	wg.Wait()
	if err := rdb.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if got, err := l.AppendIssued(ctx, issued(9001, banned), banned); err != nil || !got {
		t.Errorf("after SCRIPT FLUSH: banned %v, %v; want true", got, err)
	}

	if err := rdb.Do(ctx, "ACL", "SETUSER", "noread", "on", ">s3cret", "~*", "+@all", "-zmscore").Err(); err != nil {
		t.Fatal(err)
	}
	limited := redis.NewClient(&redis.Options{Addr: srv.Addr, Username: "noread", Password: "s3cret"})
	t.Cleanup(func() { limited.Close() })
	ll := audit.New(limited, audit.Options{Key: key, Marks: store.NewRedis(limited, store.RedisOptions{}), Bans: store.NewRedis(limited, store.RedisOptions{})})
	if got, err := ll.AppendIssued(ctx, issued(9002, clean), clean); err == nil || !strings.Contains(err.Error(), "kept") {
		t.Errorf("ban read refused by the ACL: banned %v, %v; want an error saying the record is kept", got, err)
	}
	if err := ll.Append(ctx, record(9003)); err != nil {
		t.Errorf("plain Append through the same client: %v", err)
	}

	seen := map[string]int{}
	rep, err := audit.New(rdb, audit.Options{Key: key}).Verify(ctx, func(e audit.Entry) { seen[e.Record.Identity]++ })
	if err != nil || rep.Records != callers*each+3 {
		t.Fatalf("verify: %+v %v; want %d records", rep, err, callers*each+3)
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("%s kept %d times", id, n)
		}
	}
}

// TestAppendIssuedOnCluster: on a Redis Cluster of three masters, the append's script (in its
// stripe's slot) and the ban read (in {keys}'s) travel in one pipeline that go-redis splits by
// slot, some of them on other masters than {keys}: each log still answers its own CA key's ban,
// also after SCRIPT FLUSH on every master.
func TestAppendIssuedOnCluster(t *testing.T) {
	ctx := context.Background()
	c := testenv.StartRedisCluster(t, 3)
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs})
	t.Cleanup(func() { cc.Close() })
	key := []byte("0123456789abcdef0123456789abcdef")
	st := store.NewRedis(cc, store.RedisOptions{AuditStripes: 3})
	banned, clean := testenv.PublicKey(t), testenv.PublicKey(t)
	if _, err := st.Revoke(ctx, banned, []ca.RevocationEntry{{Kind: ca.RevokedKey, Value: revocation.KeyEntry(banned)}}); err != nil {
		t.Fatal(err)
	}
	keysMaster, err := cc.MasterForKey(ctx, store.Keys{}.RevokedKeys())
	if err != nil {
		t.Fatal(err)
	}
	elsewhere := 0
	for i := range 3 {
		m, err := cc.MasterForKey(ctx, store.Keys{}.AuditStripeHead(i))
		if err != nil {
			t.Fatal(err)
		}
		if m.Options().Addr != keysMaster.Options().Addr {
			elsewhere++
		}
	}
	if elsewhere == 0 {
		t.Fatal("every stripe hashes to {keys}'s master: the test shows nothing")
	}
	for round := range 2 {
		if round == 1 {
			if err := cc.ScriptFlush(ctx).Err(); err != nil {
				t.Fatal(err)
			}
		}
		for i := range 3 {
			l := audit.New(cc, audit.Options{Key: key, Stripes: 3, Home: new(i), Marks: st, Bans: st})
			for j, k := range []ssh.PublicKey{banned, clean} {
				rec := record(round*100 + i*10 + j)
				rec.CAFingerprint = ssh.FingerprintSHA256(k)
				got, err := l.AppendIssued(ctx, rec, k)
				if want := j == 0; err != nil || got != want {
					t.Errorf("round %d, stripe %d, CA key %s: banned %v, %v; want %v", round, i, rec.CAFingerprint, got, err, want)
				}
			}
		}
	}
}
