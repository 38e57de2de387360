package ca_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/revocation"
	"github.com/sshca/sshca/signer"
	"github.com/sshca/sshca/store"
)

// grantAll is a policy that allows every request with one decision, safe for concurrent use
// (fakePolicy keeps the last input, which concurrent requests would race on).
type grantAll struct{ dec ca.Decision }

func (g grantAll) Decide(context.Context, ca.PolicyInput) (ca.Decision, error) { return g.dec, nil }

// issuance is one request of a racing client: what it got and when it ended.
type issuance struct {
	cert     *ssh.Certificate
	err      error
	started  time.Time
	returned time.Time
}

// raceOutcome is what one trial of raceTrial.run saw.
type raceOutcome struct {
	admin         *ca.Authority
	issued        []issuance       // every certificate returned to a client
	refused       int              // requests refused (each must be a denial)
	refusedSigned int              // of those, refused when recording a signed certificate
	revokeStarted time.Time        // when Revoke was called
	revokedAt     time.Time        // when Revoke answered
	revoked       map[uint64]bool  // serials in the scope after everything ended
	recorded      []ca.Certificate // the identity's live records after everything ended
	afterAnswer   int              // certificates returned after Revoke answered
	escaped       []uint64         // returned but not revoked
}

// raceTrial is one trial: clients concurrent issuers for one identity, and its revocation.
type raceTrial struct {
	rdb       redis.UniversalClient
	caKey     ssh.Signer    // the user (and host) CA key
	userKey   ssh.PublicKey // the key every client asks a certificate for
	trial     int
	clients   int
	minBefore int // certificates issued before the revocation
	// layout1 starts the store as replicas of layout 1 left it (a block of theirs, no layout
	// record): the rolling upgrade's state, in which replicas of layout 2 write both sets.
	layout1 bool
	// byEmail gives each client an identity of its own (issuer, subject) with one verified
	// e-mail, and revokes the e-mail with all_matches: the alias path, where identities
	// that first appear while the revocation runs must be caught too.
	byEmail bool
}

// raceGrant allows every request, for the principal "victim".
var raceGrant = grantAll{ca.Decision{Allow: true, Principals: []string{"victim"}, TTL: time.Hour, Extensions: map[string]string{"permit-pty": ""}}}

// run empties the store, starts the clients (one authority, as one replica; the admin's is
// another), revokes the identity once minBefore certificates were issued, lets every client
// finish at least two more requests after the answer, and reports what escaped.
func (rt raceTrial) run(t *testing.T) raceOutcome {
	t.Helper()
	ctx := context.Background()
	if err := rt.rdb.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	keys := store.Keys{}
	if rt.layout1 {
		rt.rdb.ZAdd(ctx, keys.LegacyBlocked(), redis.Z{Score: float64(time.Now().Add(time.Hour).UnixMilli()), Member: "https://idp|someone-else"})
	}
	db := store.NewRedis(rt.rdb, store.RedisOptions{})
	sgn := signer.New(rt.caKey, db, signer.Options{})
	email := "victim-" + strconv.Itoa(rt.trial) + "@example.com"
	victims := []ca.Identity{{Issuer: "https://idp", Subject: "victim-" + strconv.Itoa(rt.trial), Email: email, Username: "victim"}}
	if rt.byEmail {
		for c := 1; c < rt.clients; c++ {
			victims = append(victims, ca.Identity{Issuer: "https://idp", Subject: "victim-" + strconv.Itoa(rt.trial) + "-" + strconv.Itoa(c), Email: email})
		}
	}
	target := ca.RevokeRequest{Identity: victims[0].Name(), Reason: "race trial " + strconv.Itoa(rt.trial)}
	if rt.byEmail {
		target.Identity, target.AllMatches = email, true
	}
	audit := &fakeAudit{}
	newAuthority := func(id ca.Identity, audit ca.AuditLog) *ca.Authority {
		a, err := ca.New(ca.Config{Authenticator: fakeAuth{id}, Policy: raceGrant, UserSigner: sgn, HostSigner: sgn, Store: db, Revocations: db, Audit: audit})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	var replicas []*ca.Authority
	for _, v := range victims {
		replicas = append(replicas, newAuthority(v, audit))
	}
	out := raceOutcome{admin: newAuthority(ca.Identity{Issuer: "https://idp", Subject: "admin"}, nil)}

	var (
		mu        sync.Mutex
		issued    atomic.Int64
		revokedAt atomic.Pointer[time.Time]
		stop      = make(chan struct{})
		wg        sync.WaitGroup
	)
	afterRevoke := make([]atomic.Int64, rt.clients) // requests started after the answer, per client
	for c := range rt.clients {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				is := issuance{started: time.Now()}
				got, err := replicas[c%len(replicas)].Issue(ctx, "good", ca.Request{Kind: ca.UserCert, PublicKey: rt.userKey})
				is.returned, is.cert, is.err = time.Now(), got.Cert, err
				if at := revokedAt.Load(); at != nil && is.started.After(*at) {
					afterRevoke[c].Add(1)
				}
				mu.Lock()
				if err == nil {
					out.issued = append(out.issued, is)
					issued.Add(1)
				} else {
					out.refused++
					if ca.KindOf(err) != ca.KindDenied || !strings.Contains(err.Error(), "were revoked") {
						t.Errorf("trial %d: a request failed with %v (kind %s), want a certificate or a denial saying the identity was revoked", rt.trial, err, ca.KindOf(err))
					}
				}
				mu.Unlock()
			}
		})
	}
	for deadline := time.Now().Add(30 * time.Second); issued.Load() < int64(rt.minBefore); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			close(stop)
			wg.Wait()
			t.Fatalf("trial %d: only %d certificates issued in 30s", rt.trial, issued.Load())
		}
	}
	out.revokeStarted = time.Now()
	_, err := out.admin.Revoke(ctx, "good", target)
	at := time.Now()
	revokedAt.Store(&at)
	if err != nil {
		close(stop)
		wg.Wait()
		t.Fatalf("trial %d: revoke: %v", rt.trial, err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		done := true
		for c := range afterRevoke {
			done = done && afterRevoke[c].Load() >= 2
		}
		if done || time.Now().After(deadline) {
			break
		}
	}
	close(stop)
	wg.Wait()

	out.revokedAt = at
	if rt.layout1 {
		if n, _ := rt.rdb.Exists(ctx, keys.StoreLayout()).Result(); n != 0 {
			t.Fatalf("trial %d: the store left layout 1", rt.trial)
		}
		if s, err := rt.rdb.ZScore(ctx, keys.LegacyBlocked(), victims[0].Name()).Result(); err != nil || s < float64(at.UnixMilli()) {
			t.Fatalf("trial %d: the block was not written for replicas of layout 1: %v %v", rt.trial, s, err)
		}
	}
	st, err := db.State(ctx, rt.caKey.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	out.revoked = map[uint64]bool{}
	for _, e := range st.Entries {
		if e.Kind == ca.RevokedSerial {
			n, _ := strconv.ParseUint(e.Value, 10, 64)
			out.revoked[n] = true
		}
	}
	for _, v := range victims {
		live, err := db.Live(ctx, v.Name(), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		out.recorded = append(out.recorded, live...)
	}
	for _, is := range out.issued {
		if is.returned.After(at) {
			out.afterAnswer++
		}
		if !out.revoked[is.cert.Serial] {
			out.escaped = append(out.escaped, is.cert.Serial)
		}
	}
	audit.mu.Lock()
	for _, r := range audit.recs {
		if r.Outcome == "refused" && r.Serial != 0 {
			out.refusedSigned++
		}
	}
	audit.mu.Unlock()
	return out
}

// TestIdentityRevocationAtomicWithIssuance races 16 clients issuing for one identity against
// its revocation, over 10 trials on a real redis-server: every certificate a client received
// is revoked (none recorded after the block was returned), every certificate in the
// inventory is revoked, and every refusal is a denial that says the identity was revoked.
func TestIdentityRevocationAtomicWithIssuance(t *testing.T) {
	if testing.Short() {
		t.Skip("races 16 clients over 10 trials")
	}
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr, PoolSize: 64})
	t.Cleanup(func() { rdb.Close() })
	const trials, clients = 10, 16
	caKey, _ := newSSHKey(t)
	_, userKey := newSSHKey(t)
	for _, mode := range []struct {
		name             string
		layout1, byEmail bool
	}{
		{"layout 2", false, false},
		{"rolling upgrade, store at layout 1", true, false},
		{"by e-mail, 16 identities", false, true},
	} {
		layout1, byEmail := mode.layout1, mode.byEmail
		t.Run(mode.name, func(t *testing.T) {
			var issued, refused, refusedSigned, after, escaped, unrevokedRecords int
			for trial := range trials {
				o := raceTrial{rdb: rdb, caKey: caKey, userKey: userKey, trial: trial, clients: clients, minBefore: 40, layout1: layout1, byEmail: byEmail}.run(t)
				issued += len(o.issued)
				refused += o.refused
				refusedSigned += o.refusedSigned
				after += o.afterAnswer
				escaped += len(o.escaped)
				for _, rec := range o.recorded {
					if !o.revoked[rec.Serial] {
						unrevokedRecords++
					}
				}
				if len(o.escaped) > 0 {
					t.Errorf("trial %d: %d certificates returned but not revoked (serials %v), %d of them after the revocation answered",
						trial, len(o.escaped), o.escaped[:min(len(o.escaped), 5)], o.afterAnswer)
				}
			}
			t.Logf("%d trials, %d clients: %d certificates returned, %d requests refused (%d of them signed, refused when recorded), %d returned after the revocation answered, %d returned but not revoked, %d records not revoked",
				trials, clients, issued, refused, refusedSigned, after, escaped, unrevokedRecords)
			if unrevokedRecords > 0 {
				t.Errorf("%d certificates in the inventory are not revoked", unrevokedRecords)
			}
			if refused == 0 {
				t.Error("no request was refused: the revocation did not happen while clients were issuing")
			}
		})
	}
}

// TestIdentityRevocationRaceWithSSHD: the same race, then the KRL a bastion installs once the
// revocation has answered, in a real sshd. No certificate that a client received once the
// revocation had started logs in (under layout 1 those included certificates recorded after
// the block, absent from the KRL); a certificate of another identity issued then does.
func TestIdentityRevocationRaceWithSSHD(t *testing.T) {
	if testing.Short() {
		t.Skip("races 16 clients, then logs in with each certificate in flight")
	}
	testenv.Need(t, "ssh")
	ctx := context.Background()
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr, PoolSize: 64})
	t.Cleanup(func() { rdb.Close() })
	dir := t.TempDir()
	caKey, caPath := keyFiles(t, dir, "user_ca")
	user, userPath := keyFiles(t, dir, "user")
	hostKey, hostPath := keyFiles(t, dir, "host")
	krlPath := filepath.Join(dir, "revoked.krl")
	empty, err := revocation.EncodeKRL()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(krlPath, empty, 0o644); err != nil {
		t.Fatal(err)
	}
	sshd := testenv.StartSSHD(t, testenv.SSHDConfig{HostKey: hostPath, TrustedUserCAKeys: caPath + ".pub", RevokedKeys: krlPath, Principals: []string{"victim"}})
	knownHosts := filepath.Join(dir, "known_hosts")
	line := "[127.0.0.1]:" + strconv.Itoa(sshd.Port) + " " + string(ssh.MarshalAuthorizedKey(hostKey.PublicKey()))
	if err := os.WriteFile(knownHosts, []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
	certPath := userPath + "-cert.pub"
	login := func(c *ssh.Certificate) (string, error) {
		if err := os.WriteFile(certPath, ssh.MarshalAuthorizedKey(c), 0o644); err != nil {
			t.Fatal(err)
		}
		return sshd.SSH(userPath, certPath, knownHosts, "echo", "logged-in")
	}
	const trials = 3
	var tried, loggedIn int
	for trial := range trials {
		o := raceTrial{rdb: rdb, caKey: caKey, userKey: user.PublicKey(), trial: trial, clients: 16, minBefore: 40}.run(t)
		// What a bastion installs once the revocation has answered.
		states, err := o.admin.UserRevocationStates(ctx)
		if err != nil {
			t.Fatal(err)
		}
		krl, err := revocation.EncodeKRL(states...)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(krlPath+".new", krl, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(krlPath+".new", krlPath); err != nil {
			t.Fatal(err)
		}
		// The control: sshd takes a certificate of the same CA that is not revoked.
		db := store.NewRedis(rdb, store.RedisOptions{})
		sgn := signer.New(caKey, db, signer.Options{})
		bystander, err := ca.New(ca.Config{Authenticator: fakeAuth{ca.Identity{Issuer: "https://idp", Subject: "bystander"}}, Policy: raceGrant,
			UserSigner: sgn, HostSigner: sgn, Store: db, Revocations: db})
		if err != nil {
			t.Fatal(err)
		}
		got, err := bystander.Issue(ctx, "good", ca.Request{Kind: ca.UserCert, PublicKey: user.PublicKey()})
		if err != nil {
			t.Fatal(err)
		}
		if out, err := login(got.Cert); err != nil || !strings.Contains(out, "logged-in") {
			t.Fatalf("trial %d: a certificate that is not revoked does not log in: %v\n%s", trial, err, out)
		}
		for _, is := range o.issued {
			if !is.returned.After(o.revokeStarted) {
				continue // recorded before the revocation started, so read by it
			}
			tried++
			if out, err := login(is.cert); err == nil || strings.Contains(out, "logged-in") {
				loggedIn++
				t.Errorf("trial %d: serial %d, returned %s after the revocation started (%s after its answer), logged in",
					trial, is.cert.Serial, is.returned.Sub(o.revokeStarted), is.returned.Sub(o.revokedAt))
			}
		}
	}
	t.Logf("%d trials: %d certificates returned after the revocation started, %d of them logged in", trials, tried, loggedIn)
}

// lateRecorder is an inventory in which a certificate of a new identity is recorded right
// after the first alias resolution answers: what a request in flight does when it records
// between the revocation's resolution of an e-mail and its block.
type lateRecorder struct {
	*store.Memory
	once sync.Once
	late ca.Certificate
}

func (l *lateRecorder) ResolveAlias(ctx context.Context, alias string, now time.Time) ([]string, error) {
	ids, err := l.Memory.ResolveAlias(ctx, alias, now)
	l.once.Do(func() {
		if err := l.Memory.Record(ctx, l.late); err != nil {
			panic(err)
		}
	})
	return ids, err
}

// TestRevokeByEmailCatchesIdentityRecordedMeanwhile: revoking an e-mail resolves it to the
// identities recorded under it before blocking; an identity whose first certificate is
// recorded in between is found after the block, blocked, listed among the matches, and its
// certificate revoked.
func TestRevokeByEmailCatchesIdentityRecordedMeanwhile(t *testing.T) {
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Second)
	clock := func() time.Time { return now }
	caKey, _ := newSSHKey(t)
	db := store.NewMemory(clock)
	sgn := signer.New(caKey, db, signer.Options{Now: clock})
	early := ca.Identity{Issuer: "https://idp", Subject: "early", Email: "shared@example.com"}
	issuer, err := ca.New(ca.Config{Authenticator: fakeAuth{early}, Policy: raceGrant, UserSigner: sgn, HostSigner: sgn, Store: db, Revocations: db, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	_, key := newSSHKey(t)
	if _, err := issuer.Issue(ctx, "good", ca.Request{Kind: ca.UserCert, PublicKey: key}); err != nil {
		t.Fatal(err)
	}
	late := ca.Certificate{Serial: 4242, KeyID: "late#4242", Kind: ca.UserCert, Identity: "https://idp|late", Aliases: []string{"email:shared@example.com"},
		Principals: []string{"victim"}, CAFingerprint: ssh.FingerprintSHA256(caKey.PublicKey()), ValidAfter: now, ValidBefore: now.Add(time.Hour), IndexUntil: now.Add(24 * time.Hour)}
	inv := &lateRecorder{Memory: db, late: late}
	admin, err := ca.New(ca.Config{Authenticator: fakeAuth{ca.Identity{Issuer: "https://idp", Subject: "admin"}}, Policy: raceGrant, UserSigner: sgn, HostSigner: sgn,
		Store: inv, Revocations: db, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	res, err := admin.Revoke(ctx, "good", ca.RevokeRequest{Identity: "shared@example.com", AllMatches: true, Reason: "offboarding"})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, c := range res.Certificates {
		found = found || c.Serial == late.Serial
	}
	if !found || !slices.Contains(res.Matches, late.Identity) {
		t.Fatalf("the identity recorded between resolution and block escaped: certificates %+v, matches %v", res.Certificates, res.Matches)
	}
	if why, err := db.Refused(ctx, caKey.PublicKey(), []string{late.Identity}, key); err != nil || why == "" {
		t.Errorf("the late identity is not blocked by its own name: %q, %v", why, err)
	}
}
