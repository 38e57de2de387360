package ca_test

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/kms"
	"github.com/sshca/sshca/signer"
	"github.com/sshca/sshca/store"
)

// singleUseTokens authenticates every token as alice's single-use token named by it.
type singleUseTokens struct{ id ca.Identity }

func (f singleUseTokens) Authenticate(_ context.Context, token string) (ca.Identity, error) {
	id := f.id
	now := time.Now()
	id.Token = ca.TokenUse{SingleUse: true, ID: "test|" + token, IssuedAt: now, Expiry: now.Add(5 * time.Minute)}
	return id, nil
}

// trips counts Redis round trips: each command or pipeline sent.
type trips struct{ n atomic.Int64 }

func (h *trips) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *trips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { h.n.Add(1); return next(ctx, cmd) }
}
func (h *trips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { h.n.Add(1); return next(ctx, cmds) }
}

// tripSigner notes how many round trips had been made when it was asked to sign, and counts
// its signatures.
type tripSigner struct {
	ca.Signer
	trips      *trips
	atSign     atomic.Int64
	signatures atomic.Int64
}

func (s *tripSigner) Sign(ctx context.Context, tmpl *ssh.Certificate, ttl time.Duration) (*ssh.Certificate, error) {
	s.atSign.Store(s.trips.n.Load())
	s.signatures.Add(1)
	return s.Signer.Sign(ctx, tmpl, ttl)
}

// serialTaken is an Admission whose serial is always found taken (a collision with a live
// certificate's): the signer must then reserve its own.
type serialTaken struct{ ca.Admission }

func (s serialTaken) Admit(ctx context.Context, q ca.AdmissionRequest) (ca.Admitted, error) {
	res, err := s.Admission.Admit(ctx, q)
	res.SerialReserved = false
	return res, err
}

// denyReason is a policy that denies a request whose reason is "deny" and otherwise grants
// alice for ten minutes.
type denyReason struct{}

func (denyReason) Decide(_ context.Context, in ca.PolicyInput) (ca.Decision, error) {
	if in.Request.Reason == "deny" {
		return ca.Decision{Reasons: []string{"asked to deny"}}, nil
	}
	return ca.Decision{Allow: true, Principals: []string{"alice"}, TTL: 10 * time.Minute}, nil
}

// tripRig is a redis-server whose round trips tr counts, its store, and an Ed25519 softkms
// signer that notes the count when it signs.
func tripRig(t *testing.T) (*redis.Client, *store.Redis, *trips, *tripSigner) {
	t.Helper()
	srv := testenv.StartRedis(t)
	tr := &trips{}
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	rdb.AddHook(tr)
	db := store.NewRedis(rdb, store.RedisOptions{})
	key, err := kms.Create(context.Background(), kms.KeyRef{KMS: "softkms:", Key: "softkms:path=" + filepath.Join(t.TempDir(), "ca.pem")}, kms.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { key.Close() })
	return rdb, db, tr, &tripSigner{Signer: signer.New(key.Signer(), db, signer.Options{}), trips: tr}
}

// TestAdmissionOneRoundTripBeforeSigning runs issuance against a real redis-server with
// store.Redis as the Admission: between authentication and the signature, one round trip checks
// the refusals, spends the token, reserves the serial (the signer signs with it) and records the
// certificate in the inventory; the audit entry is the one round trip after the signature. The
// record is the certificate signed. A replayed token and a revoked key or identity are refused
// without a signature and leave no record in the inventory; a request the policy denies keeps
// its token, and the refusals leave audit records.
func TestAdmissionOneRoundTripBeforeSigning(t *testing.T) {
	ctx := context.Background()
	rdb, db, tr, sgn := tripRig(t)
	al := audit.New(rdb, audit.Options{Key: make([]byte, audit.KeySize), Marks: db})
	alice := ca.Identity{Issuer: "https://idp", Subject: "u1", Email: "alice@example.com", Username: "alice"}
	a, err := ca.New(ca.Config{
		Authenticator: singleUseTokens{alice}, Policy: denyReason{}, UserSigner: sgn, HostSigner: sgn,
		Store: db, Revocations: db, Tokens: db, Admission: db, Audit: al,
	})
	if err != nil {
		t.Fatal(err)
	}
	_, userKey := newSSHKey(t)
	req := ca.Request{Kind: ca.UserCert, PublicKey: userKey, TTL: 5 * time.Minute}
	if _, err := a.Issue(ctx, "warm-up", req); err != nil { // the generation and the scripts loaded
		t.Fatal(err)
	}

	before := tr.n.Load()
	iss, err := a.Issue(ctx, "t1", req)
	if err != nil {
		t.Fatal(err)
	}
	if pre := sgn.atSign.Load() - before; pre != 1 {
		t.Errorf("%d Redis round trips before the signer was called, want 1 (the admission)", pre)
	}
	if post := tr.n.Load() - sgn.atSign.Load(); post != 1 {
		t.Errorf("%d Redis round trips from the signer on, want 1 (audit): the admission reserved the serial and recorded the certificate", post)
	}
	got, ok, err := db.Get(ctx, iss.Cert.Serial)
	if err != nil || !ok {
		t.Fatalf("the certificate issued is not in the inventory (%v)", err)
	}
	if got.KeyID != iss.Cert.KeyId || got.ValidAfter.Unix() != int64(iss.Cert.ValidAfter) || got.ValidBefore.Unix() != int64(iss.Cert.ValidBefore) ||
		got.CAFingerprint != ssh.FingerprintSHA256(iss.Cert.SignatureKey) || !slices.Equal(got.Principals, iss.Cert.ValidPrincipals) {
		t.Errorf("the inventory's record %+v is not the certificate signed (key ID %q, valid %d..%d)", got, iss.Cert.KeyId, iss.Cert.ValidAfter, iss.Cert.ValidBefore)
	}

	signed := sgn.signatures.Load()
	_, err = a.Issue(ctx, "t1", req)
	if ca.KindOf(err) != ca.KindUnauthenticated || !strings.Contains(err.Error(), "token already used") {
		t.Errorf("replayed token: %v, want token already used", err)
	}

	// Denied by the policy: the token is not spent, and serves the next request.
	deny := req
	deny.Reason = "deny"
	if _, err := a.Issue(ctx, "t2", deny); ca.KindOf(err) != ca.KindDenied {
		t.Errorf("policy denial: %v", err)
	}
	if sgn.signatures.Load() != signed {
		t.Fatalf("%d signatures for refused requests", sgn.signatures.Load()-signed)
	}
	if _, err := a.Issue(ctx, "t2", req); err != nil {
		t.Errorf("the token of a request the policy denied was spent: %v", err)
	}

	// Revoked key, then blocked identity: refused before any signature.
	signed = sgn.signatures.Load()
	if _, err := db.Revoke(ctx, sgn.PublicKey(), []ca.RevocationEntry{{Kind: ca.RevokedKey, Value: keyEntryOf(userKey), Expiry: time.Now().Add(time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Issue(ctx, "t3", req); ca.KindOf(err) != ca.KindDenied || !strings.Contains(err.Error(), "revoked") {
		t.Errorf("revoked key: %v, want denied as revoked", err)
	}
	_, otherKey := newSSHKey(t)
	other := ca.Request{Kind: ca.UserCert, PublicKey: otherKey, TTL: 5 * time.Minute}
	if err := db.BlockIdentity(ctx, alice.Name(), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Issue(ctx, "t4", other); ca.KindOf(err) != ca.KindDenied {
		t.Errorf("blocked identity: %v, want denied", err)
	}
	if sgn.signatures.Load() != signed {
		t.Errorf("%d signatures for a revoked key or identity", sgn.signatures.Load()-signed)
	}
	refused := 0
	if _, err := al.Verify(ctx, func(e audit.Entry) {
		if e.Record.Outcome == "refused" {
			refused++
		}
	}); err != nil {
		t.Fatal(err)
	}
	if refused != 2 {
		t.Errorf("%d refused records in the audit log, want 2 (revoked key, blocked identity)", refused)
	}
	// Recorded before signing, the refused requests' certificates were withdrawn: the inventory
	// holds the three signed (warm-up, t1, t2), not the replay's or the refusals'.
	live, err := db.Live(ctx, alice.Name(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(live) != 3 || int64(len(live)) != sgn.signatures.Load() {
		t.Errorf("%d certificates in the inventory after %d signatures, want 3 (no record of a refused request)", len(live), sgn.signatures.Load())
	}
}

// TestAdmissionSerialTaken: when the serial the admission drew is taken, the certificate is
// still issued, with another serial that the signer reserved itself: the record made under the
// drawn serial is withdrawn (a second round trip before the signer), and the certificate is
// recorded after it (its own serial and the inventory from the signer on).
func TestAdmissionSerialTaken(t *testing.T) {
	ctx := context.Background()
	_, db, tr, sgn := tripRig(t)
	alice := ca.Identity{Issuer: "https://idp", Subject: "u1", Email: "alice@example.com", Username: "alice"}
	a, err := ca.New(ca.Config{
		Authenticator: singleUseTokens{alice},
		Policy:        denyReason{}, UserSigner: sgn, HostSigner: sgn,
		Store: db, Revocations: db, Tokens: db, Admission: serialTaken{db},
	})
	if err != nil {
		t.Fatal(err)
	}
	_, userKey := newSSHKey(t)
	req := ca.Request{Kind: ca.UserCert, PublicKey: userKey, TTL: 5 * time.Minute}
	warm, err := a.Issue(ctx, "warm-up", req)
	if err != nil {
		t.Fatal(err)
	}
	before := tr.n.Load()
	iss, err := a.Issue(ctx, "t1", req)
	if err != nil {
		t.Fatal(err)
	}
	if post := tr.n.Load() - sgn.atSign.Load(); post != 2 || sgn.atSign.Load()-before != 2 {
		t.Errorf("round trips: %d before the signer, %d from it on; want 2 (admission, withdrawal) and 2 (its own serial, the inventory)", sgn.atSign.Load()-before, post)
	}
	live, err := db.Live(ctx, alice.Name(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range live {
		if c.Serial != iss.Cert.Serial && c.Serial != warm.Cert.Serial {
			t.Errorf("the inventory holds serial %d, signed neither for the warm-up (%d) nor for t1 (%d)", c.Serial, warm.Cert.Serial, iss.Cert.Serial)
		}
	}
	if len(live) != 2 {
		t.Errorf("%d certificates in the inventory, want 2", len(live))
	}
	if ok, err := db.ReserveSerial(ctx, iss.Cert.Serial, time.Now().Add(time.Hour)); err != nil || ok {
		t.Errorf("serial %d of the certificate is not reserved (%v)", iss.Cert.Serial, err)
	}
}

// failSigner fails every signature, as a KMS that is down.
type failSigner struct{ ca.Signer }

func (failSigner) Sign(context.Context, *ssh.Certificate, time.Duration) (*ssh.Certificate, error) {
	return nil, errors.New("kms: unavailable")
}

// swapSigner says one key is the CA's and signs with another, as a keyring whose active key
// rotated between the admission and the signature.
type swapSigner struct {
	ca.Signer           // what PublicKey says
	signs     ca.Signer // what signs
}

func (s swapSigner) Sign(ctx context.Context, tmpl *ssh.Certificate, ttl time.Duration) (*ssh.Certificate, error) {
	return s.signs.Sign(ctx, tmpl, ttl)
}

// TestAdmissionRecordFollowsTheSignature: the record the admission makes before signing is
// withdrawn when the signature fails (the inventory holds no certificate that does not exist),
// and recorded again as signed when the signer signed otherwise than recorded (here its own
// serial): the inventory holds exactly the certificates signed, each as it was signed. One
// signed by another CA key than recorded (a promote meanwhile) is not handed out, and its
// record withdrawn (TestAdmissionRotationRaceRevokeBySerial says why).
func TestAdmissionRecordFollowsTheSignature(t *testing.T) {
	ctx := context.Background()
	_, db, _, sgn := tripRig(t)
	alice := ca.Identity{Issuer: "https://idp", Subject: "u1", Email: "alice@example.com", Username: "alice"}
	key, err := kms.Create(ctx, kms.KeyRef{KMS: "softkms:", Key: "softkms:path=" + filepath.Join(t.TempDir(), "other.pem")}, kms.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { key.Close() })
	other := signer.New(key.Signer(), db, signer.Options{})
	authority := func(s ca.Signer) *ca.Authority {
		a, err := ca.New(ca.Config{Authenticator: singleUseTokens{alice}, Policy: denyReason{}, UserSigner: s, HostSigner: s,
			Store: db, Revocations: db, Tokens: db, Admission: db})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	_, userKey := newSSHKey(t)
	req := ca.Request{Kind: ca.UserCert, PublicKey: userKey, TTL: 5 * time.Minute}
	if _, err := authority(failSigner{sgn}).Issue(ctx, "t1", req); err == nil {
		t.Fatal("issued with a signer that fails")
	}
	live, err := db.Live(ctx, alice.Name(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(live) != 0 {
		t.Fatalf("%d certificates in the inventory after a failed signature, want none", len(live))
	}

	if _, err := authority(swapSigner{sgn, other}).Issue(ctx, "t2", req); ca.KindOf(err) != ca.KindUnavailable {
		t.Fatalf("signed by another CA key than recorded: %v, want unavailable", err)
	}
	if live, err = db.Live(ctx, alice.Name(), time.Now()); err != nil {
		t.Fatal(err)
	}
	if len(live) != 0 {
		t.Fatalf("%d certificates in the inventory after one signed by another CA key was refused, want none", len(live))
	}

	iss, err := authority(ownSerial{sgn}).Issue(ctx, "t3", req)
	if err != nil {
		t.Fatal(err)
	}
	if live, err = db.Live(ctx, alice.Name(), time.Now()); err != nil {
		t.Fatal(err)
	}
	if len(live) != 1 || live[0].Serial != iss.Cert.Serial || live[0].CAFingerprint != ssh.FingerprintSHA256(sgn.PublicKey()) {
		t.Fatalf("inventory %+v, want only serial %d signed by %s", live, iss.Cert.Serial, ssh.FingerprintSHA256(sgn.PublicKey()))
	}
}

// lostAnswer is an Admission whose answer is lost after it ran (a read timeout under a stalled
// store), and whose withdrawals fail when failUnrecord is set.
type lostAnswer struct {
	ca.Admission
	failUnrecord bool
}

func (l lostAnswer) Admit(ctx context.Context, q ca.AdmissionRequest) (ca.Admitted, error) {
	if _, err := l.Admission.Admit(ctx, q); err != nil {
		return ca.Admitted{}, err
	}
	return ca.Admitted{}, errors.New("read tcp 127.0.0.1:1->127.0.0.1:2: i/o timeout")
}

func (l lostAnswer) Unrecord(ctx context.Context, c ca.Certificate) error {
	if l.failUnrecord {
		return errors.New("read tcp 127.0.0.1:1->127.0.0.1:2: i/o timeout")
	}
	return l.Admission.Unrecord(ctx, c)
}

// TestAdmissionLostAnswerIsAudited: when the admission ran but its answer was lost, the record
// it made may land after any withdrawal, so the request's audit record names its serial (kept
// as a signed certificate's failure is, in the background); when the withdrawal fails too, the
// inventory keeps that serial, and the audit log explains it: no serial in the inventory
// without an audit record that names it.
func TestAdmissionLostAnswerIsAudited(t *testing.T) {
	for _, failUnrecord := range []bool{false, true} {
		ctx := context.Background()
		rdb, db, _, sgn := tripRig(t)
		al := audit.New(rdb, audit.Options{Key: make([]byte, audit.KeySize), Marks: db})
		alice := ca.Identity{Issuer: "https://idp", Subject: "u1", Email: "alice@example.com", Username: "alice"}
		a, err := ca.New(ca.Config{Authenticator: singleUseTokens{alice}, Policy: denyReason{}, UserSigner: sgn, HostSigner: sgn,
			Store: db, Revocations: db, Tokens: db, Admission: lostAnswer{db, failUnrecord}, Audit: al})
		if err != nil {
			t.Fatal(err)
		}
		_, userKey := newSSHKey(t)
		if _, err := a.Issue(ctx, "t1", ca.Request{Kind: ca.UserCert, PublicKey: userKey, TTL: 5 * time.Minute}); ca.KindOf(err) != ca.KindUnavailable {
			t.Fatalf("failUnrecord %v: %v, want unavailable", failUnrecord, err)
		}
		if sgn.signatures.Load() != 0 {
			t.Fatalf("failUnrecord %v: signed after a lost admission", failUnrecord)
		}
		// Settled in the background: the caller's answer waited for neither.
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err = a.DrainRetries(dctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		var serials []uint64
		if _, err := al.Verify(ctx, func(e audit.Entry) { serials = append(serials, e.Record.Serial) }); err != nil {
			t.Fatal(err)
		}
		if len(serials) != 1 || serials[0] == 0 {
			t.Fatalf("failUnrecord %v: audit records of serials %v, want one naming the serial recorded", failUnrecord, serials)
		}
		live, err := db.Live(ctx, alice.Name(), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case !failUnrecord && len(live) != 0:
			t.Errorf("withdrawn: %d certificates in the inventory, want none", len(live))
		case failUnrecord && (len(live) != 1 || live[0].Serial != serials[0]):
			t.Errorf("not withdrawn: inventory %+v, want serial %d, the one the audit record names", live, serials[0])
		}
	}
}

// slowSigner signs after the request's deadline has passed, as a KMS that hangs until then.
type slowSigner struct{ ca.Signer }

func (slowSigner) Sign(ctx context.Context, _ *ssh.Certificate, _ time.Duration) (*ssh.Certificate, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

// TestAdmissionDeadlineWithdrawsLater: a signature cut off by the request's deadline leaves
// the record the admission made to be withdrawn in the background, and the request's audit
// record names its serial; the answer does not wait for either.
func TestAdmissionDeadlineWithdrawsLater(t *testing.T) {
	rdb, db, _, sgn := tripRig(t)
	al := audit.New(rdb, audit.Options{Key: make([]byte, audit.KeySize), Marks: db})
	alice := ca.Identity{Issuer: "https://idp", Subject: "u1", Email: "alice@example.com", Username: "alice"}
	a, err := ca.New(ca.Config{Authenticator: singleUseTokens{alice}, Policy: denyReason{}, UserSigner: slowSigner{sgn}, HostSigner: sgn,
		Store: db, Revocations: db, Tokens: db, Admission: db, Audit: al})
	if err != nil {
		t.Fatal(err)
	}
	_, userKey := newSSHKey(t)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	_, err = a.Issue(ctx, "t1", ca.Request{Kind: ca.UserCert, PublicKey: userKey, TTL: 5 * time.Minute})
	cancel()
	if ca.KindOf(err) != ca.KindUnavailable {
		t.Fatalf("%v, want unavailable", err)
	}
	dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer dcancel()
	if err := a.DrainRetries(dctx); err != nil {
		t.Fatal(err)
	}
	var serials []uint64
	if _, err := al.Verify(dctx, func(e audit.Entry) { serials = append(serials, e.Record.Serial) }); err != nil {
		t.Fatal(err)
	}
	live, err := db.Live(dctx, alice.Name(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(serials) != 1 || serials[0] == 0 || len(live) != 0 {
		t.Fatalf("audit records of serials %v and %d certificates in the inventory, want one record naming the serial withdrawn and none", serials, len(live))
	}
}
