// Package deploy_test runs the shipped Redis configuration (deploy/redis/redis.conf and
// users.acl) in a real redis-server and checks what it promises: nothing sshca was told is
// written (revocations, spent tokens, inventory and audit records) is lost when Redis is killed
// with -9, shut down, or killed after an AOF rewrite, and nobody can use the default user.
package deploy_test

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
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
	"github.com/sshca/sshca/store"
)

var (
	shippedConf = filepath.Join("redis", "redis.conf")
	shippedACL  = filepath.Join("redis", "users.acl")
)

// The sshca user as shipped; the test changes no password.
const svcUser, svcPass = "sshca", "CHANGE-ME-sshca"

// adminArgs add a user for the test alone, to send SHUTDOWN and BGREWRITEAOF (the shipped users
// cannot). AOF replay does not run as it, so it changes nothing of what is tested.
var adminArgs = []string{"--user", "test-admin", "on", ">test-admin-pw", "~*", "&*", "+@all"}

// defaultLine is the shipped default-user line (pinned here so that changing it is deliberate).
const defaultLine = "user default off ~* &* +@all"

func client(addr, user, pass string) *redis.Client {
	return redis.NewClient(&redis.Options{Addr: addr, Username: user, Password: pass, MaxRetries: -1,
		DialTimeout: time.Second, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second})
}

// acked is every write the store acknowledged.
type acked struct {
	mu      sync.Mutex
	serials []uint64 // revoked under the CA key (Lua script)
	tokens  []string // spent (SET NX)
	records []uint64 // inventory records (MULTI/EXEC)
	audits  []string // audit records (Lua script), by key ID
}

func (a *acked) counts() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return fmt.Sprintf("%d revocations, %d spent tokens, %d inventory records, %d audit records",
		len(a.serials), len(a.tokens), len(a.records), len(a.audits))
}

func (a *acked) min() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return min(len(a.serials), len(a.tokens), len(a.records), len(a.audits))
}

// workload writes through sshca's own store code, wired as cmd/sshca serve wires it: one
// go-redis client, one revocation store, one audit log per CA replica.
type workload struct {
	addr     string
	caKey    ssh.PublicKey
	auditKey []byte
	next     atomic.Uint64 // serials, unique over the whole test
	acked    acked
}

func newWorkload(t testing.TB, addr string) *workload {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caKey, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	key := make([]byte, audit.KeySize)
	rand.Read(key)
	return &workload{addr: addr, caKey: caKey, auditKey: key}
}

// run starts `replicas` CA replicas, each with `workers` goroutines that revoke a serial, spend
// a token, record a certificate and append an audit record, over and over, until stop is
// closed or a write fails (the server is gone). It returns a channel closed when all stopped.
func (w *workload) run(replicas, workers int, stop <-chan struct{}) <-chan struct{} {
	done := make(chan struct{})
	var wg sync.WaitGroup
	exp := time.Now().Add(time.Hour)
	for range replicas {
		rdb := client(w.addr, svcUser, svcPass)
		db := store.NewRedis(rdb, store.RedisOptions{})
		log := audit.New(rdb, audit.Options{Key: w.auditKey})
		var rwg sync.WaitGroup
		for range workers {
			rwg.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer rwg.Done()
				ctx := context.Background()
				for {
					select {
					case <-stop:
						return
					default:
					}
					serial := w.next.Add(1)
					id := "alice@example.com#" + strconv.FormatUint(serial, 10)
					if _, err := db.Revoke(ctx, w.caKey, []ca.RevocationEntry{{Kind: ca.RevokedSerial, Value: strconv.FormatUint(serial, 10), Expiry: exp}}); err != nil {
						return
					}
					w.acked.mu.Lock()
					w.acked.serials = append(w.acked.serials, serial)
					w.acked.mu.Unlock()
					if ok, err := db.UseToken(ctx, "token-"+id, time.Time{}, exp); err != nil || !ok {
						return
					}
					w.acked.mu.Lock()
					w.acked.tokens = append(w.acked.tokens, "token-"+id)
					w.acked.mu.Unlock()
					if err := db.Record(ctx, ca.Certificate{Serial: serial, KeyID: id, Kind: ca.UserCert, Identity: "alice@example.com", ValidBefore: exp}); err != nil {
						return
					}
					w.acked.mu.Lock()
					w.acked.records = append(w.acked.records, serial)
					w.acked.mu.Unlock()
					if err := log.Append(ctx, auditRecord(serial, id)); err != nil {
						return
					}
					w.acked.mu.Lock()
					w.acked.audits = append(w.acked.audits, id)
					w.acked.mu.Unlock()
				}
			}()
		}
		go func() { rwg.Wait(); rdb.Close() }()
	}
	go func() { wg.Wait(); close(done) }()
	return done
}

// auditRecord is the record of a revocation. It is decoded from JSON so that it carries a
// format version ("v") whether or not this tree's ca.AuditRecord declares one yet.
func auditRecord(serial uint64, keyID string) ca.AuditRecord {
	var rec ca.AuditRecord
	b := fmt.Sprintf(`{"v":2,"action":"revoke","outcome":"allowed","identity":"admin@example.com","target":"serial:%d"}`, serial)
	if err := json.Unmarshal([]byte(b), &rec); err != nil {
		panic(err)
	}
	rec.Time, rec.Serial, rec.KeyID = time.Now().UTC(), serial, keyID
	return rec
}

// waitAcked waits until every kind has at least n acknowledged writes.
func (w *workload) waitAcked(t *testing.T, n int) {
	t.Helper()
	testenv.Eventually(t, 20*time.Second, fmt.Sprintf("%d writes of each kind are acknowledged", n), func() bool { return w.acked.min() >= n })
}

// missing reads everything back through the same store code and counts what is gone.
func (w *workload) missing(t *testing.T) (serials, tokens, records, audits int) {
	t.Helper()
	ctx := context.Background()
	rdb := client(w.addr, svcUser, svcPass)
	defer rdb.Close()
	db := store.NewRedis(rdb, store.RedisOptions{})
	w.acked.mu.Lock()
	defer w.acked.mu.Unlock()

	st, err := db.State(ctx, w.caKey)
	if err != nil {
		t.Fatalf("read revocations: %v", err)
	}
	revoked := map[string]bool{}
	for _, e := range st.Entries {
		revoked[e.Value] = true
	}
	for _, s := range w.acked.serials {
		if !revoked[strconv.FormatUint(s, 10)] {
			serials++
		}
	}
	for _, tok := range w.acked.tokens {
		// The spent token's key itself: the ledger would also refuse every token of a store
		// whose generation marks were lost, which is not what is counted here.
		sum := sha256.Sum256([]byte(tok))
		n, err := rdb.Exists(ctx, store.Keys{}.Token(hex.EncodeToString(sum[:]))).Result()
		if err != nil {
			t.Fatalf("token ledger: %v", err)
		}
		if n == 0 { // the token could be spent again
			tokens++
		}
	}
	for _, s := range w.acked.records {
		if _, ok, err := db.Get(ctx, s); err != nil {
			t.Fatalf("inventory: %v", err)
		} else if !ok {
			records++
		}
	}
	kept := map[string]bool{}
	if _, err := audit.New(rdb, audit.Options{Key: w.auditKey}).Verify(ctx, func(e audit.Entry) { kept[e.Record.KeyID] = true }); err != nil {
		t.Errorf("audit verify after restart: %v", err)
	}
	for _, id := range w.acked.audits {
		if !kept[id] {
			audits++
		}
	}
	return serials, tokens, records, audits
}

func (w *workload) expectNothingMissing(t *testing.T, label string) {
	t.Helper()
	s, tk, r, a := w.missing(t)
	t.Logf("%s: acknowledged %s; missing after restart: %d revocations, %d tokens, %d inventory records, %d audit records",
		label, w.acked.counts(), s, tk, r, a)
	if s+tk+r+a != 0 {
		t.Errorf("%s: acknowledged writes lost: %d revocations, %d tokens, %d inventory records, %d audit records", label, s, tk, r, a)
	}
}

// killUnderLoad runs the workload, kills the server with -9 while it writes, and restarts it.
func killUnderLoad(t *testing.T, r *testenv.ConfiguredRedis, w *workload, n int) {
	t.Helper()
	stop := make(chan struct{})
	done := w.run(2, 4, stop)
	w.waitAcked(t, n)
	r.Kill()
	close(stop)
	<-done
	r.Start()
}

// TestShippedRedisKeepsAcknowledgedWrites: with the shipped redis.conf (only port, bind and dir
// overridden), no write sshca saw acknowledged is missing after a restart.
func TestShippedRedisKeepsAcknowledgedWrites(t *testing.T) {
	t.Run("kill -9 under load", func(t *testing.T) {
		r := testenv.StartRedisConfig(t, shippedConf)
		w := newWorkload(t, r.Addr)
		killUnderLoad(t, r, w, 300)
		w.expectNothingMissing(t, "kill -9")
	})

	t.Run("SHUTDOWN", func(t *testing.T) {
		r := testenv.StartRedisConfig(t, shippedConf, adminArgs...)
		w := newWorkload(t, r.Addr)
		stop := make(chan struct{})
		done := w.run(2, 4, stop)
		w.waitAcked(t, 300)
		close(stop)
		<-done
		admin := client(r.Addr, "test-admin", "test-admin-pw")
		defer admin.Close()
		_ = admin.Shutdown(context.Background()).Err() // answers by closing the connection
		if !r.Exited(10 * time.Second) {
			t.Fatal("redis-server did not exit after SHUTDOWN")
		}
		r.Start()
		w.expectNothingMissing(t, "SHUTDOWN")
	})

	t.Run("BGREWRITEAOF, more writes, kill -9", func(t *testing.T) {
		r := testenv.StartRedisConfig(t, shippedConf, adminArgs...)
		w := newWorkload(t, r.Addr)
		ctx := context.Background()
		admin := client(r.Addr, "test-admin", "test-admin-pw")
		defer admin.Close()
		stop := make(chan struct{})
		done := w.run(2, 4, stop)
		w.waitAcked(t, 150)
		if err := admin.BgRewriteAOF(ctx).Err(); err != nil {
			t.Fatalf("BGREWRITEAOF: %v", err)
		}
		testenv.Eventually(t, 20*time.Second, "the AOF rewrite is done", func() bool {
			info, err := admin.Info(ctx, "persistence").Result()
			return err == nil && strings.Contains(info, "aof_rewrite_in_progress:0") &&
				!strings.Contains(info, "aof_rewrite_scheduled:1") && strings.Contains(info, "aof_last_bgrewrite_status:ok") &&
				regexp.MustCompile(`aof_rewrites:[1-9]`).MatchString(info)
		})
		afterRewrite := w.acked.min()
		w.waitAcked(t, afterRewrite+150) // written to the new increment, after the base
		r.Kill()
		close(stop)
		<-done
		manifest, err := os.ReadFile(filepath.Join(r.Dir, "appendonlydir", "appendonly.aof.manifest"))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(manifest), "appendonly.aof.2.base.rdb") {
			t.Fatalf("the rewrite did not make a new RDB base:\n%s", manifest)
		}
		r.Start()
		w.expectNothingMissing(t, "BGREWRITEAOF then kill -9")
	})

	t.Run("users.acl as aclfile, kill -9 under load", func(t *testing.T) {
		// The same settings with the users in the shipped ACL file instead: Redis refuses user
		// lines in the config together with an aclfile, so the config's user lines are left out.
		b, err := os.ReadFile(shippedConf)
		if err != nil {
			t.Fatal(err)
		}
		var conf []string
		for _, line := range strings.Split(string(b), "\n") {
			if !strings.HasPrefix(line, "user ") {
				conf = append(conf, line)
			}
		}
		acl, err := filepath.Abs(shippedACL)
		if err != nil {
			t.Fatal(err)
		}
		r := testenv.StartRedisConfig(t, testenv.WriteFile(t, "redis.conf", strings.Join(conf, "\n")), "--aclfile", acl)
		w := newWorkload(t, r.Addr)
		killUnderLoad(t, r, w, 300)
		w.expectNothingMissing(t, "aclfile, kill -9")
	})

	t.Run("appendfsync everysec, kill -9 under load (measured, not shipped)", func(t *testing.T) {
		// everysec writes the AOF before answering unless a background fsync is still running,
		// when it may hold the write back (up to 2 s) and answer anyway. Without a disk stall the
		// window is short and usually missed, so this measures; it does not prove a bound.
		r := testenv.StartRedisConfig(t, shippedConf, "--appendfsync", "everysec")
		w := newWorkload(t, r.Addr)
		killUnderLoad(t, r, w, 300)
		s, tk, rec, a := w.missing(t)
		t.Logf("everysec, kill -9: acknowledged %s; missing after restart: %d revocations, %d tokens, %d inventory records, %d audit records",
			w.acked.counts(), s, tk, rec, a)
	})
}

// TestShippedRedisDefaultUserCannotLogIn: the default user, enabled with every permission so
// that AOF replay works, is off: no AUTH as it succeeds and an unauthenticated connection can
// do nothing but authenticate.
func TestShippedRedisDefaultUserCannotLogIn(t *testing.T) {
	for _, tc := range []struct {
		name string
		conf func(t *testing.T) (string, []string)
	}{
		{"redis.conf", func(t *testing.T) (string, []string) { return shippedConf, nil }},
		{"users.acl", func(t *testing.T) (string, []string) {
			acl, _ := filepath.Abs(shippedACL)
			return testenv.WriteFile(t, "empty.conf", ""), []string{"--aclfile", acl}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conf, args := tc.conf(t)
			r := testenv.StartRedisConfig(t, conf, args...)
			c, err := net.Dial("tcp", r.Addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			rd := bufio.NewReader(c)
			send := func(args ...string) string {
				fmt.Fprintf(c, "*%d\r\n", len(args))
				for _, a := range args {
					fmt.Fprintf(c, "$%d\r\n%s\r\n", len(a), a)
				}
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				line, err := rd.ReadString('\n')
				if err != nil {
					t.Fatalf("%v: %v", args, err)
				}
				return strings.TrimSpace(line)
			}
			for _, cmd := range [][]string{{"PING"}, {"GET", "sshca:x"}, {"SET", "sshca:x", "1"}, {"CONFIG", "GET", "*"}, {"ACL", "WHOAMI"}} {
				if got := send(cmd...); !strings.HasPrefix(got, "-NOAUTH") {
					t.Errorf("unauthenticated %v: %q, want NOAUTH", cmd, got)
				}
			}
			for _, cmd := range [][]string{
				{"AUTH", "default", ""}, {"AUTH", "default", "x"}, {"AUTH", "x"}, {"AUTH", "default", "CHANGE-ME-sshca"},
				{"HELLO", "2", "AUTH", "default", ""}, {"HELLO", "2", "AUTH", "default", "nopass"},
			} {
				if got := send(cmd...); !strings.HasPrefix(got, "-WRONGPASS") {
					t.Errorf("%v: %q, want WRONGPASS", cmd, got)
				}
			}
			// And the shipped users still log in.
			if got := send("AUTH", svcUser, svcPass); got != "+OK" {
				t.Errorf("AUTH sshca: %q", got)
			}
			if got := send("AUTH", "bastion", "CHANGE-ME-bastion"); got != "+OK" {
				t.Errorf("AUTH bastion: %q", got)
			}
		})
	}
}

// TestOldDefaultUserLineLosesTransactions pins why the default user keeps its permissions:
// with `user default off` alone, Redis 7.0 replays the AOF as that user, re-checks its ACL on
// EXEC, and drops every MULTI/EXEC and script write (redis/redis#14541,
// valkey-io/valkey#3983). Plain commands survive.
func TestOldDefaultUserLineLosesTransactions(t *testing.T) {
	b, err := os.ReadFile(shippedConf)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "\n"+defaultLine+"\n") {
		t.Fatalf("the shipped redis.conf no longer has %q; update this test with the reason", defaultLine)
	}
	old := strings.Replace(string(b), "\n"+defaultLine+"\n", "\nuser default off\n", 1)
	r := testenv.StartRedisConfig(t, testenv.WriteFile(t, "redis.conf", old))
	w := newWorkload(t, r.Addr)
	stop := make(chan struct{})
	done := w.run(1, 2, stop)
	w.waitAcked(t, 50)
	close(stop)
	<-done
	r.Kill()
	r.Start()
	s, tk, rec, a := w.missing(t)
	t.Logf("`user default off`, kill -9 after the writes: acknowledged %s; missing after restart: %d revocations (Lua), %d tokens (SET), %d inventory records (MULTI), %d audit records (Lua)",
		w.acked.counts(), s, tk, rec, a)
	if s == 0 && rec == 0 && a == 0 {
		t.Skipf("this redis-server replays MULTI/EXEC as an off default user without loss; the fault is fixed here:\n%s", tail(r.Log()))
	}
	if s != len(w.acked.serials) || rec != len(w.acked.records) || a != len(w.acked.audits) || tk != 0 {
		t.Errorf("expected every transaction and script write lost and every plain write kept")
	}
	if !strings.Contains(r.Log(), "ACLs rules changed between the moment the transaction was accumulated and the EXEC call") {
		t.Errorf("redis-server did not log the ACL refusal on replay:\n%s", tail(r.Log()))
	}
}

func tail(s string) string {
	if len(s) > 3000 {
		return s[len(s)-3000:]
	}
	return s
}
