package ca_test

import (
	"context"
	"path/filepath"
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

// TestAdmissionOneRoundTripBeforeSigning runs issuance against a real redis-server with
// store.Redis as the Admission: between authentication and the signature, one round trip checks
// the refusals, spends the token and reserves the serial (the signer signs with it); the record
// and the audit entry are one round trip each after the signature. A replayed token and a revoked
// key or identity are refused without a signature, a request the policy denies keeps its

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

// token, and the refusals leave audit records.
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
	if _, err := a.Issue(ctx, "t1", req); err != nil {
		t.Fatal(err)
	}
	if pre := sgn.atSign.Load() - before; pre != 1 {
		t.Errorf("%d Redis round trips before the signer was called, want 1 (the admission)", pre)
	}
	if post := tr.n.Load() - sgn.atSign.Load(); post != 2 {
		t.Errorf("%d Redis round trips from the signer on, want 2 (inventory, audit): the admission reserved the serial", post)
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
}

// TestAdmissionSerialTaken: when the serial the admission drew is taken, the certificate is
// still issued, with another serial that the signer reserved itself, one round trip later.
func TestAdmissionSerialTaken(t *testing.T) {
	ctx := context.Background()
	_, db, tr, sgn := tripRig(t)
	a, err := ca.New(ca.Config{
		Authenticator: singleUseTokens{ca.Identity{Issuer: "https://idp", Subject: "u1", Email: "alice@example.com", Username: "alice"}},
		Policy:        denyReason{}, UserSigner: sgn, HostSigner: sgn,
		Store: db, Revocations: db, Tokens: db, Admission: serialTaken{db},
	})
	if err != nil {
		t.Fatal(err)
	}
	_, userKey := newSSHKey(t)
	req := ca.Request{Kind: ca.UserCert, PublicKey: userKey, TTL: 5 * time.Minute}
	if _, err := a.Issue(ctx, "warm-up", req); err != nil {
		t.Fatal(err)
	}
	before := tr.n.Load()
	iss, err := a.Issue(ctx, "t1", req)
	if err != nil {
		t.Fatal(err)
	}
	if post := tr.n.Load() - sgn.atSign.Load(); post != 2 || sgn.atSign.Load()-before != 1 {
		t.Errorf("round trips: %d before the signer, %d from it on; want 1 and 2 (its own serial, the inventory)", sgn.atSign.Load()-before, post)
	}
	if ok, err := db.ReserveSerial(ctx, iss.Cert.Serial, time.Now().Add(time.Hour)); err != nil || ok {
		t.Errorf("serial %d of the certificate is not reserved (%v)", iss.Cert.Serial, err)
	}
}
