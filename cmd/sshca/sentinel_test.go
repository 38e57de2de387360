package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/revocation"
	"github.com/sshca/sshca/store"
)

// sentinelFailoverPromise is how soon after its master dies sshca issues again on a Sentinel
// deployment: the sentinels' down-after-milliseconds, then their vote and the promotion, then
// go-redis's switch to the new master (docs/scaling.md states it the same way).
func sentinelFailoverPromise(downAfter time.Duration) time.Duration { return downAfter + 5*time.Second }

// TestSentinelFailoverUnderLoad: `sshca serve` on a real Sentinel deployment (one master, one
// replica, three sentinels, redis.wait_replicas 1) under issuance and revocation load; the
// master is killed with SIGKILL. Issuance resumes within the promised time, every answer in
// between is a 200 or a 503 (never a 500), and every revocation that was acknowledged (a 200:
// bans of fresh public keys) is held by the promoted master, although the replica fell behind
// (paused) for the last 0.9 s before the crash. Once the killed node is back (as
// a replica of the new master), revocations are acknowledged again.
func TestSentinelFailoverUnderLoad(t *testing.T) {
	s := testenv.StartRedisSentinel(t)
	idp := startIssuer(t, "sshca")
	cfg := serveConfig(t, "127.0.0.1:1", identity.IssuerConfig{IssuerURL: idp.URL(), Audiences: []string{"sshca"}})
	cfg.Redis = RedisConfig{Addrs: s.Sentinels, MasterName: testenv.SentinelMaster, WaitReplicas: 1, WaitTimeout: 200 * time.Millisecond,
		DialTimeout: time.Second, ReadTimeout: time.Second}
	base := startServe(t, cfg)
	userKey := readFile(t, keygen(t, t.TempDir(), "user")+".pub")
	mint := func(claims map[string]any) string {
		tok, err := idp.Mint(claims)
		if err != nil {
			panic(err) // the in-process issuer signs with a key it holds: never fails
		}
		return tok
	}
	client := &http.Client{Timeout: 10 * time.Second}
	post := func(path, token string, body any) (int, string) {
		b, _ := json.Marshal(body)
		req, _ := http.NewRequest(http.MethodPost, base+path, bytes.NewReader(b))
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(out)
	}

	type outcome struct {
		start, end time.Time
		code       int
		body       string
		banned     string // revocations: the key's entry
	}
	var mu sync.Mutex
	var issued, revoked []outcome
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }() // on a t.Fatal too: the load must stop before the server does
	for range 3 {
		wg.Go(func() {
			for n := 0; ctx.Err() == nil; n++ {
				tok := mint(map[string]any{"sub": "u-load", "preferred_username": "alice"})
				o := outcome{start: time.Now()}
				o.code, o.body = post("/v1/certs/user", tok, map[string]any{"public_key": userKey})
				o.end = time.Now()
				mu.Lock()
				issued = append(issued, o)
				mu.Unlock()
			}
		})
	}
	wg.Go(func() {
		for ctx.Err() == nil {
			pub, _, _ := ed25519.GenerateKey(rand.Reader)
			k, _ := ssh.NewPublicKey(pub)
			tok := mint(map[string]any{"sub": "sre", "preferred_username": "sre", "groups": []string{"sshca-admins"}})
			o := outcome{start: time.Now(), banned: "key:" + revocation.KeyEntry(k)}
			o.code, o.body = post("/v1/revocations", tok, map[string]any{"public_key": strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))), "reason": "failover test"})
			o.end = time.Now()
			mu.Lock()
			revoked = append(revoked, o)
			mu.Unlock()
		}
	})
	snapshot := func() (is, rs []outcome) {
		mu.Lock()
		defer mu.Unlock()
		return append([]outcome{}, issued...), append([]outcome{}, revoked...)
	}

	time.Sleep(1500 * time.Millisecond)
	old := s.MasterAddr(t)
	var replica *testenv.RedisNode
	for _, n := range s.Nodes {
		if n.Addr != old {
			replica = n
		}
	}
	// The replica falls behind before the crash (paused, still connected): revocations
	// written meanwhile are on the master alone, and must not be acknowledged, since the
	// replica about to be promoted will never have them.
	replica.Pause()
	time.Sleep(900 * time.Millisecond)
	killed := time.Now()
	s.Node(old).Kill()
	replica.Resume()
	promise := sentinelFailoverPromise(testenv.SentinelDownAfter)
	var resumed time.Duration
	for deadline := killed.Add(promise + 10*time.Second); resumed == 0 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		is, _ := snapshot()
		for _, o := range is {
			if o.code == http.StatusOK && o.start.After(killed) {
				resumed = o.end.Sub(killed)
				break
			}
		}
	}
	// Every sentinel names the new master once the others told it (hello messages, every 2 s).
	var newMaster string
	waitFor(t, 10*time.Second, "the sentinels agree on a new master", func() bool {
		newMaster = s.MasterAddr(t)
		return newMaster != "" && newMaster != old
	})
	// The killed node comes back (empty: no persistence) as a replica of the new master:
	// revocations can be confirmed again.
	s.Node(old).StartReplicaOf(newMaster)
	var revAgain time.Duration
	for deadline := time.Now().Add(20 * time.Second); revAgain == 0 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		_, rs := snapshot()
		for _, o := range rs {
			if o.code == http.StatusOK && o.start.After(killed.Add(resumed)) {
				revAgain = o.end.Sub(killed)
				break
			}
		}
	}
	cancel()
	wg.Wait()

	is, rs := snapshot()
	t.Logf("master %s killed; new master %s; issuance resumed after %s (promised within %s); revocations acknowledged again %s after the kill",
		old, newMaster, resumed, promise, revAgain)
	if resumed == 0 || resumed > promise {
		t.Errorf("issuance resumed after %s (0: never), promised within %s", resumed, promise)
	}
	if newMaster == "" || newMaster == old {
		t.Errorf("the sentinels name %q as the master, killed %s", newMaster, old)
	}
	if revAgain == 0 {
		t.Error("no revocation was acknowledged after the killed node came back as a replica")
	}
	codes := map[int]int{}
	var acked []string
	for _, o := range append(is, rs...) {
		codes[o.code]++
		if o.code != http.StatusOK && o.code != http.StatusServiceUnavailable {
			t.Errorf("an answer %d during the failover (want 200 or 503): %s", o.code, o.body)
		}
		if o.banned != "" && o.code == http.StatusOK {
			acked = append(acked, o.banned)
		}
	}
	t.Logf("answers: %v; issued %d, revocations acknowledged %d", codes, len(is), len(acked))

	// Every acknowledged ban is in the promoted master's scope of the user CA key.
	rdb := redis.NewClient(&redis.Options{Addr: newMaster})
	defer rdb.Close()
	_, caLine := call(t, http.MethodGet, base+"/v1/ca/user.pub", "", nil)
	caKey, _, _, _, err := ssh.ParseAuthorizedKey(caLine)
	if err != nil {
		t.Fatal(err)
	}
	held, err := rdb.ZRange(context.Background(), store.Keys{}.ScopeEntries(ssh.FingerprintSHA256(caKey)), 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, m := range held {
		have[m] = true
	}
	var lost []string
	for _, m := range acked {
		if !have[m] {
			lost = append(lost, m)
		}
	}
	sort.Strings(lost)
	if len(acked) == 0 || len(lost) > 0 {
		t.Errorf("%d of %d acknowledged revocations are not on the promoted master: %v", len(lost), len(acked), lost)
	}
}
