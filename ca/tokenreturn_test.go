package ca_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/kms"
	"github.com/sshca/sshca/signer"
	"github.com/sshca/sshca/store"
)

// What the answer says of the token (ca.Authority.giveBack).
const (
	givenBack   = "the token was given back and may be used again"
	countsSpent = "counts as spent: use a new token"
)

// hookSigner runs before, when set, ahead of each signature; a before that returns an error
// fails the signature with it: a raw error is a KMS or HSM that was asked and failed
// (kmsAttempts counts those asks), a *ca.Error of KindUnavailable the signing key's own refusal
// before the KMS is asked (keyring's maySign: marked compromised or withdrawn meanwhile).
type hookSigner struct {
	ca.Signer
	before      func() error
	signatures  atomic.Int64
	kmsAttempts atomic.Int64
}

func (s *hookSigner) Sign(ctx context.Context, tmpl *ssh.Certificate, ttl time.Duration) (*ssh.Certificate, error) {
	if s.before != nil {
		if err := s.before(); err != nil {
			if ca.KindOf(err) != ca.KindUnavailable {
				s.kmsAttempts.Add(1)
			}
			return nil, err
		}
	}
	s.kmsAttempts.Add(1)
	s.signatures.Add(1)
	return s.Signer.Sign(ctx, tmpl, ttl)
}

// errHSM is what a failing HSM answers a signature.
var errHSM = errors.New("pkcs11: CKR_DEVICE_ERROR")

// refuseOnce makes s's signing key refuse its next signature before asking the KMS (as keyring's
// maySign does for a key marked compromised meanwhile), once then (nil: nothing) has run.
func (s *hookSigner) refuseOnce(then func()) {
	s.once(then, ca.Unavailable("the user CA key was withdrawn while this certificate was issued; nothing was signed: ask again", nil))
}

func (s *hookSigner) once(then func(), err error) {
	var failed atomic.Bool
	s.before = func() error {
		if failed.Swap(true) {
			return nil
		}
		if then != nil {
			then()
		}
		return err
	}
}

// softSigner is a signer of a new Ed25519 softkms CA key that reserves its serials in db.
func softSigner(t *testing.T, db *store.Redis) *hookSigner {
	t.Helper()
	key, err := kms.Create(context.Background(), kms.KeyRef{KMS: "softkms:", Key: "softkms:path=" + filepath.Join(t.TempDir(), "ca.pem")}, kms.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { key.Close() })
	return &hookSigner{Signer: signer.New(key.Signer(), db, signer.Options{})}
}

// replica is a CA replica on db: its own signer, alice's single-use tokens, the store as its
// Admission; obs (optional) learns of its token returns.
func replica(t *testing.T, db *store.Redis, s ca.Signer, obs ca.TokenReturns) *ca.Authority {
	t.Helper()
	alice := ca.Identity{Issuer: "https://idp", Subject: "u1", Email: "alice@example.com", Username: "alice"}
	a, err := ca.New(ca.Config{Authenticator: singleUseTokens{alice}, Policy: denyReason{}, UserSigner: s, HostSigner: s,
		Store: db, Revocations: db, Tokens: db, Admission: db, TokenReturns: obs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = a.DrainRetries(ctx)
	})
	return a
}

// returnCounts counts token returns by outcome (ca.TokenReturns).
type returnCounts struct {
	mu sync.Mutex
	n  map[ca.TokenReturnOutcome]int
}

func (c *returnCounts) TokenReturn(o ca.TokenReturnOutcome) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[ca.TokenReturnOutcome]int{}
	}
	c.n[o]++
}

// only fails unless o is the one outcome counted, once.
func (c *returnCounts) only(t *testing.T, o ca.TokenReturnOutcome) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.n) != 1 || c.n[o] != 1 {
		t.Errorf("token returns counted %v, want one %s", c.n, o)
	}
}

// tokenKey is the token ledger's record of the token singleUseTokens names by token.
func tokenKey(token string) string {
	sum := sha256.Sum256([]byte("test|" + token))
	return store.Keys{}.Token(hex.EncodeToString(sum[:]))
}

// wantUnavailable fails unless err is a 503 whose message says note of the token.
func wantUnavailable(t *testing.T, what string, err error, note string) {
	t.Helper()
	if ca.KindOf(err) != ca.KindUnavailable || !strings.Contains(err.Error(), note) {
		t.Fatalf("%s: %v (%v), want unavailable saying %q", what, err, ca.KindOf(err), note)
	}
}

// TestServerRefusalGivesTokenBack: a refusal that is the server's own fault, after the
// admission spent the token and before anything was signed, gives the token back: the answer
// is a 503 that says so, and the same token then gets a certificate, once (a replay after it is
// refused). Against a real redis-server: the user CA key banned through another replica before
// this one's key ring moved; the signing key refusing before the KMS was asked (marked
// compromised or withdrawn since the admission); the
// request's deadline passing between the admission and the signature; a read of the admission
// answered with an error (an ACL's NOPERM) beside the spend. A refusal of the
// caller's (a revoked key) keeps the token spent, and so does a server refusal of a token that
// an earlier request had already spent (nothing of this request's to give back).
func TestServerRefusalGivesTokenBack(t *testing.T) {
	ctx := context.Background()
	srv := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	db := store.NewRedis(rdb, store.RedisOptions{})
	_, userKey := newSSHKey(t)
	req := ca.Request{Kind: ca.UserCert, PublicKey: userKey, TTL: 5 * time.Minute}

	t.Run("CA key banned", func(t *testing.T) {
		stale, moved := softSigner(t, db), softSigner(t, db)
		a, b := replica(t, db, stale, nil), replica(t, db, moved, nil)
		if _, err := a.Issue(ctx, "before-ban", req); err != nil {
			t.Fatal(err)
		}
		// An administrator bans the stale key's public key (every KRL carries it).
		if _, err := db.Revoke(ctx, moved.PublicKey(), []ca.RevocationEntry{{Kind: ca.RevokedKey, Value: keyEntryOf(stale.PublicKey())}}); err != nil {
			t.Fatal(err)
		}
		_, err := a.Issue(ctx, "ci-1", req)
		wantUnavailable(t, "issue by the replica whose key is banned", err, givenBack)
		if !strings.Contains(err.Error(), "banned") || strings.Contains(err.Error(), "new token") {
			t.Fatalf("banned CA key: %q; want the ban named and no new token asked for", err)
		}
		if n := stale.signatures.Load(); n != 1 {
			t.Fatalf("the banned key signed %d times, want once (before the ban)", n)
		}
		// The same token at a replica that moved: one certificate, then a replay refused.
		if _, err := b.Issue(ctx, "ci-1", req); err != nil {
			t.Fatalf("the token given back, at a replica that moved: %v", err)
		}
		if _, err := b.Issue(ctx, "ci-1", req); ca.KindOf(err) != ca.KindUnauthenticated {
			t.Fatalf("the token again after its certificate: %v, want already used", err)
		}
		// A token spent by a certificate already, sent to the replica that refuses for the
		// server's reason: not given back, and still refused where it would be signed.
		_, err = a.Issue(ctx, "ci-1", req)
		if err == nil || strings.Contains(err.Error(), givenBack) {
			t.Fatalf("a spent token at the replica whose key is banned: %v; want a refusal that does not give it back", err)
		}
		if _, err := b.Issue(ctx, "ci-1", req); ca.KindOf(err) != ca.KindUnauthenticated {
			t.Fatalf("the spent token after the banned replica's refusal: %v, want already used", err)
		}
	})

	t.Run("signing key refuses before the KMS", func(t *testing.T) {
		sgn := softSigner(t, db)
		sgn.refuseOnce(nil)
		a := replica(t, db, sgn, nil)
		_, err := a.Issue(ctx, "ci-2", req)
		wantUnavailable(t, "a signing key that refused", err, givenBack)
		if _, err := a.Issue(ctx, "ci-2", req); err != nil {
			t.Fatalf("the token given back: %v", err)
		}
		if _, err := a.Issue(ctx, "ci-2", req); ca.KindOf(err) != ca.KindUnauthenticated {
			t.Fatalf("replay: %v, want already used", err)
		}
		if n := sgn.signatures.Load(); n != 1 {
			t.Fatalf("%d certificates for one token", n)
		}
	})

	t.Run("deadline passes after the admission", func(t *testing.T) {
		sgn := softSigner(t, db)
		alice := ca.Identity{Issuer: "https://idp", Subject: "u1", Email: "alice@example.com", Username: "alice"}
		var cancelReq context.CancelFunc
		a, err := ca.New(ca.Config{Authenticator: singleUseTokens{alice}, Policy: denyReason{}, UserSigner: sgn, HostSigner: sgn,
			Store: db, Revocations: db, Tokens: db, Admission: afterAdmit{db, func() { cancelReq() }}})
		if err != nil {
			t.Fatal(err)
		}
		rctx, cancel := context.WithCancel(ctx)
		cancelReq = cancel
		_, err = a.Issue(rctx, "ci-3", req)
		wantUnavailable(t, "the deadline passed after the admission", err, givenBack)
		cancelReq = func() {}
		if _, err := a.Issue(ctx, "ci-3", req); err != nil {
			t.Fatalf("the token given back: %v", err)
		}
		if n := sgn.signatures.Load(); n != 1 {
			t.Fatalf("%d certificates for one token", n)
		}
		dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
		defer dcancel()
		if err := a.DrainRetries(dctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("an error reply beside the spend", func(t *testing.T) {
		// An ACL that refuses the admission's reads (NOPERM: credentials that no longer let
		// sshca in, a 503) and lets the token's commands run, in the same pipeline.
		if err := rdb.Do(ctx, "ACL", "SETUSER", "partial", "on", ">pw", "~*", "&*", "+@all", "-zmscore").Err(); err != nil {
			t.Fatal(err)
		}
		prdb := redis.NewClient(&redis.Options{Addr: srv.Addr, Username: "partial", Password: "pw", MaxRetries: -1})
		t.Cleanup(func() { prdb.Close() })
		pdb := store.NewRedis(prdb, store.RedisOptions{Witness: &store.Witness{}})
		sgn := softSigner(t, pdb)
		a := replica(t, pdb, sgn, nil)
		_, err := a.Issue(ctx, "ci-5", req)
		wantUnavailable(t, "a read of the admission refused", err, givenBack)
		if err := rdb.Do(ctx, "ACL", "SETUSER", "partial", "+zmscore").Err(); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Issue(ctx, "ci-5", req); err != nil {
			t.Fatalf("the token given back: %v", err)
		}
		if _, err := a.Issue(ctx, "ci-5", req); ca.KindOf(err) != ca.KindUnauthenticated {
			t.Fatalf("replay: %v, want already used", err)
		}
	})

	t.Run("the caller's refusal keeps it", func(t *testing.T) {
		sgn := softSigner(t, db)
		a := replica(t, db, sgn, nil)
		_, revoked := newSSHKey(t)
		if _, err := db.Revoke(ctx, sgn.PublicKey(), []ca.RevocationEntry{{Kind: ca.RevokedKey, Value: keyEntryOf(revoked), Expiry: time.Now().Add(time.Hour)}}); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Issue(ctx, "ci-4", ca.Request{Kind: ca.UserCert, PublicKey: revoked, TTL: 5 * time.Minute}); ca.KindOf(err) != ca.KindDenied {
			t.Fatalf("revoked key: %v, want denied", err)
		}
		if _, err := a.Issue(ctx, "ci-4", req); ca.KindOf(err) != ca.KindUnauthenticated {
			t.Fatalf("the token of a request refused for a revoked key, with another key: %v; want already used", err)
		}
	})
}

// TestFailedSignatureKeepsTokenSpent: a signature that the KMS or HSM was asked for and failed
// keeps the token spent, so that a captured token replayed while the HSM fails (an outage, an
// HSM shedding load) makes it attempt one signature, not one per replay: the issue's cheap
// refusals before any KMS signature. Against a real redis-server, the HSM failing every time:
// the first request is a 503 that says the token counts as spent (never "given back") and
// names no HSM error; five replays are 401 already used with no KMS attempt; once the HSM is
// back the token is still refused, and a new token is signed. (Given back, the six requests
// made six HSM attempts: this test failed before.) The key's own refusal before the KMS is
// asked gives the token back (TestServerRefusalGivesTokenBack).
func TestFailedSignatureKeepsTokenSpent(t *testing.T) {
	ctx := context.Background()
	srv := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1})
	t.Cleanup(func() { rdb.Close() })
	db := store.NewRedis(rdb, store.RedisOptions{})
	_, userKey := newSSHKey(t)
	req := ca.Request{Kind: ca.UserCert, PublicKey: userKey, TTL: 5 * time.Minute}
	sgn := softSigner(t, db)
	var down atomic.Bool
	down.Store(true)
	sgn.before = func() error {
		if down.Load() {
			return errHSM
		}
		return nil
	}
	a := replica(t, db, sgn, nil)

	_, err := a.Issue(ctx, "captured", req)
	wantUnavailable(t, "a signature the HSM failed", err, countsSpent)
	if strings.Contains(err.Error(), "given back") {
		t.Fatalf("%q: the token was not given back", err)
	}
	if e := (*ca.Error)(nil); !errors.As(err, &e) || strings.Contains(e.Msg, "CKR_DEVICE_ERROR") {
		t.Errorf("the HSM's error in the message for the caller: %q", err)
	}
	for i := range 5 {
		if _, err := a.Issue(ctx, "captured", req); ca.KindOf(err) != ca.KindUnauthenticated {
			t.Fatalf("replay %d while the HSM fails: %v (%v), want already used", i, err, ca.KindOf(err))
		}
	}
	if n := sgn.kmsAttempts.Load(); n != 1 {
		t.Fatalf("one token made the HSM attempt %d signatures, want 1", n)
	}
	down.Store(false)
	if _, err := a.Issue(ctx, "captured", req); ca.KindOf(err) != ca.KindUnauthenticated {
		t.Fatalf("the token once the HSM is back: %v, want already used", err)
	}
	if _, err := a.Issue(ctx, "fresh", req); err != nil {
		t.Fatalf("a new token once the HSM is back: %v", err)
	}
	if n := sgn.kmsAttempts.Load(); n != 2 {
		t.Fatalf("%d HSM attempts, want 2 (the failed one, the new token's)", n)
	}
}

// afterAdmit is an Admission that runs step once Admit answered.
type afterAdmit struct {
	*store.Redis
	step func()
}

func (s afterAdmit) Admit(ctx context.Context, q ca.AdmissionRequest) (ca.Admitted, error) {
	res, err := s.Redis.Admit(ctx, q)
	s.step()
	return res, err
}

// TestTokenReturnFailsClosed: when giving the token back does not certainly succeed, the answer
// says the token counts as spent and asks for a new one, and the token gives at most one
// certificate whatever follows. Against a real redis-server, the signing key refusing after the
// admission each time: the token's ledger entry gone (expired with the token) before the
// return; the return's answer lost (it ran: the caller cannot know, and is told the safe
// answer); the return never reaching Redis (the token stays spent: the same token is refused).
// serve's clients retry nothing (MaxRetries -1), as here.
func TestTokenReturnFailsClosed(t *testing.T) {
	ctx := context.Background()
	srv := testenv.StartRedis(t)
	direct := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { direct.Close() })
	_, userKey := newSSHKey(t)
	req := ca.Request{Kind: ca.UserCert, PublicKey: userKey, TTL: 5 * time.Minute}
	rig := func(t *testing.T, addr string) (*ca.Authority, *hookSigner, *returnCounts) {
		rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, ContextTimeoutEnabled: true})
		t.Cleanup(func() { rdb.Close() })
		db := store.NewRedis(rdb, store.RedisOptions{})
		sgn, counts := softSigner(t, db), &returnCounts{}
		return replica(t, db, sgn, counts), sgn, counts
	}
	// certificates sends the token n times more, after its refusal, and counts the certificates.
	certificates := func(t *testing.T, a *ca.Authority, token string, n int) int {
		got := 0
		for range n {
			if _, err := a.Issue(ctx, token, req); err == nil {
				got++
			} else if k := ca.KindOf(err); k != ca.KindUnauthenticated {
				t.Fatalf("the token again: %v (%v), want a certificate or already used", err, k)
			}
		}
		return got
	}

	t.Run("ledger entry expired", func(t *testing.T) {
		a, sgn, counts := rig(t, srv.Addr)
		sgn.refuseOnce(func() {
			// What the entry's expiry (the token's) does once it passes.
			if err := direct.Del(ctx, tokenKey("exp-1")).Err(); err != nil {
				t.Error(err)
			}
		})
		_, err := a.Issue(ctx, "exp-1", req)
		wantUnavailable(t, "return after the entry expired", err, countsSpent)
		counts.only(t, ca.TokenKeptSpent)
		if strings.Contains(err.Error(), givenBack) {
			t.Fatalf("%q claims a token given back that had no entry left", err)
		}
	})

	t.Run("return answer lost", func(t *testing.T) {
		proxy := testenv.DropReply(t, srv.Addr)
		a, sgn, counts := rig(t, proxy.Addr)
		// A first return loads the script on the server, so that the one whose answer is lost
		// runs it (EVALSHA) rather than failing NOSCRIPT.
		sgn.refuseOnce(nil)
		if _, err := a.Issue(ctx, "lost-warm", req); !strings.Contains(fmt.Sprint(err), givenBack) {
			t.Fatalf("warm-up: %v, want the token given back", err)
		}
		counts.only(t, ca.TokenGivenBack)
		counts.n = nil
		// The next request naming the token's entry: the return.
		sgn.refuseOnce(func() { proxy.Arm(tokenKey("lost-1")) })
		_, err := a.Issue(ctx, "lost-1", req)
		if proxy.Armed() {
			t.Fatal("no answer was dropped: the test shows nothing")
		}
		wantUnavailable(t, "return whose answer was lost", err, "could not be given back and "+countsSpent)
		counts.only(t, ca.TokenReturnUnknown)
		if n := direct.Exists(ctx, tokenKey("lost-1")).Val(); n != 0 {
			t.Fatal("the token's record is still there: the return did not run, and the test shows nothing of a lost answer")
		}
		// The delete ran, so the token may serve once more; never twice.
		certificates(t, a, "lost-1", 3)
		if n := sgn.signatures.Load(); n > 1 {
			t.Fatalf("%d certificates for one token", n)
		}
	})

	t.Run("return never reaches Redis", func(t *testing.T) {
		// The admission's pipeline names the token's entry first; the next request that does is
		// the return, held until the test ends.
		hold := testenv.HoldRequest(t, srv.Addr, tokenKey("held-1"), tokenKey("held-1"))
		a, sgn, counts := rig(t, hold.Addr)
		sgn.refuseOnce(nil)
		_, err := a.Issue(ctx, "held-1", req)
		select {
		case <-hold.Held():
		default:
			t.Fatal("the return was not held: the test shows nothing")
		}
		wantUnavailable(t, "return that never reached Redis", err, "could not be given back and "+countsSpent)
		counts.only(t, ca.TokenReturnUnknown)
		if n := certificates(t, a, "held-1", 3); n != 0 {
			t.Fatalf("%d certificates for a token whose return never ran, want none: it stays spent", n)
		}
	})
}

// TestTokenReturnRaceAcrossReplicas: the same single-use token sent 20 times at once to two CA
// replicas on one redis-server, one of which refuses every request for a reason of the server's
// (configured with another number of inventory shards than the store's, a drifted
// configuration) after its admission spent the token, and gives the token back; the other
// issues. Per token: at most one certificate while they race, and exactly one once the race
// is over (a token given back by the last refusal serves the next request), however the
// returns and the other replica's spends interleave.
func TestTokenReturnRaceAcrossReplicas(t *testing.T) {
	ctx := context.Background()
	srv := testenv.StartRedis(t)
	newDB := func(shards int) *store.Redis {
		rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: 32, MaxRetries: -1})
		t.Cleanup(func() { rdb.Close() })
		return store.NewRedis(rdb, store.RedisOptions{InventoryShards: shards, Witness: &store.Witness{}})
	}
	goodDB, driftDB := newDB(1), newDB(2)
	if err := goodDB.CheckShards(ctx); err != nil { // the store's number: 1
		t.Fatal(err)
	}
	goodSgn, driftSgn := softSigner(t, goodDB), softSigner(t, driftDB)
	counts := &returnCounts{}
	good, drift := replica(t, goodDB, goodSgn, nil), replica(t, driftDB, driftSgn, counts)
	_, userKey := newSSHKey(t)
	req := ca.Request{Kind: ca.UserCert, PublicKey: userKey, TTL: 5 * time.Minute}
	returned := 0
	for round := range 10 {
		token := fmt.Sprintf("race-%d", round)
		before := goodSgn.signatures.Load()
		var mu sync.Mutex
		issued, back := 0, 0
		var wg sync.WaitGroup
		for i := range 20 {
			a := good
			if i%2 == 1 {
				a = drift
			}
			wg.Go(func() {
				_, err := a.Issue(ctx, token, req)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					issued++
				case strings.Contains(err.Error(), givenBack):
					back++
				case ca.KindOf(err) == ca.KindUnauthenticated, ca.KindOf(err) == ca.KindUnavailable:
				default:
					t.Errorf("round %d: %v (%v)", round, err, ca.KindOf(err))
				}
			})
		}
		wg.Wait()
		if issued > 1 {
			t.Fatalf("round %d: %d certificates for one token", round, issued)
		}
		returned += back
		// Whoever came last, the token either gave its certificate or is free again.
		if issued == 0 {
			if _, err := good.Issue(ctx, token, req); err != nil {
				t.Fatalf("round %d: no certificate in the race, and the token is not free after it: %v", round, err)
			}
		}
		if _, err := good.Issue(ctx, token, req); ca.KindOf(err) != ca.KindUnauthenticated {
			t.Fatalf("round %d: the token once more: %v, want already used", round, err)
		}
		if n := goodSgn.signatures.Load() - before; n != 1 {
			t.Fatalf("round %d: %d signatures for one token, want 1", round, n)
		}
	}
	if driftSgn.signatures.Load() != 0 {
		t.Fatalf("the drifted replica signed %d certificates", driftSgn.signatures.Load())
	}
	if returned == 0 {
		t.Fatal("the drifted replica gave no token back: the test shows nothing")
	}
	if got := counts.n[ca.TokenGivenBack]; got != returned || counts.n[ca.TokenReturnUnknown] != 0 {
		t.Errorf("token returns counted %v, want %d given back (the answers that said so)", counts.n, returned)
	}
}
