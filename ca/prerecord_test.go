package ca_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
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

// inventoryExplained checks, once the authority's background settling is drained, the
// invariant TestFaultsStalledRedis checks end to end: every serial in the inventory is named by
// an audit record, every "issued" record's serial is in the inventory, and every certificate
// handed out (got) is in both.
func inventoryExplained(t *testing.T, a *ca.Authority, db *store.Redis, al *audit.Log, got ...uint64) {
	t.Helper()
	ctx := context.Background()
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := a.DrainRetries(dctx); err != nil {
		t.Fatal(err)
	}
	live, err := db.AllLive(ctx, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	inventory := map[uint64]bool{}
	for _, c := range live {
		inventory[c.Serial] = true
	}
	audited, issued := map[uint64]bool{}, map[uint64]bool{}
	if _, err := al.Verify(ctx, func(e audit.Entry) {
		audited[e.Record.Serial] = true
		if e.Record.Outcome == "issued" {
			issued[e.Record.Serial] = true
		}
	}); err != nil {
		t.Fatal(err)
	}
	for s := range inventory {
		if !audited[s] {
			t.Errorf("serial %d is in the inventory without an audit record that names it", s)
		}
	}
	for s := range issued {
		if !inventory[s] {
			t.Errorf("serial %d is audited as issued but not in the inventory", s)
		}
	}
	for _, s := range got {
		if !inventory[s] || !issued[s] {
			t.Errorf("serial %d was handed out: in the inventory %v, audited as issued %v", s, inventory[s], issued[s])
		}
	}
}

// failingUnrecord is an Admission whose withdrawals fail (Redis unreachable at that moment);
// with taken, it also finds every serial it drew taken, after recording under it.
type failingUnrecord struct {
	ca.Admission
	taken bool
}

func (f failingUnrecord) Admit(ctx context.Context, q ca.AdmissionRequest) (ca.Admitted, error) {
	res, err := f.Admission.Admit(ctx, q)
	if f.taken {
		res.SerialReserved = false
	}
	return res, err
}

func (failingUnrecord) Unrecord(context.Context, ca.Certificate) error {
	return errors.New("dial tcp 127.0.0.1:6379: connect: connection refused")
}

// ownSerial is a signer that draws and reserves its own serial whatever the template holds
// (a ca.Signer other than signer.Signer may): what it signs is not what was recorded.
type ownSerial struct{ ca.Signer }

func (s ownSerial) Sign(ctx context.Context, tmpl *ssh.Certificate, ttl time.Duration) (*ssh.Certificate, error) {
	c := *tmpl
	c.Serial = 0
	return s.Signer.Sign(ctx, &c, ttl)
}

// TestPreRecordWithdrawalFailureIsAudited: a record made before signing under a serial that the
// certificate does not then carry (the serial's reservation found taken; a signer that drew
// its own) and whose withdrawal fails stays in the inventory: the audit log must name it, as
// it does when nothing was signed (TestAdmissionLostAnswerIsAudited). Against a real
// redis-server and audit log.
func TestPreRecordWithdrawalFailureIsAudited(t *testing.T) {
	for _, tc := range []struct {
		name   string
		taken  bool
		signer func(ca.Signer) ca.Signer
	}{
		{"serial taken", true, func(s ca.Signer) ca.Signer { return s }},
		{"signed with another serial", false, func(s ca.Signer) ca.Signer { return ownSerial{s} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			rdb, db, _, sgn := tripRig(t)
			al := audit.New(rdb, audit.Options{Key: make([]byte, audit.KeySize), Marks: db})
			alice := ca.Identity{Issuer: "https://idp", Subject: "u1", Email: "alice@example.com", Username: "alice"}
			s := tc.signer(sgn)
			a, err := ca.New(ca.Config{Authenticator: singleUseTokens{alice}, Policy: denyReason{}, UserSigner: s, HostSigner: s,
				Store: db, Revocations: db, Tokens: db, Admission: failingUnrecord{db, tc.taken}, Audit: al})
			if err != nil {
				t.Fatal(err)
			}
			_, userKey := newSSHKey(t)
			var got []uint64
			iss, err := a.Issue(ctx, "t1", ca.Request{Kind: ca.UserCert, PublicKey: userKey, TTL: 5 * time.Minute})
			switch {
			case err == nil:
				got = append(got, iss.Cert.Serial)
			case ca.KindOf(err) != ca.KindUnavailable:
				t.Fatalf("issue: %v, want a certificate or unavailable", err)
			}
			inventoryExplained(t, a, db, al, got...)
			if n := rdbKeys(t, rdb, "sshca:{inventory}:cert:*"); n == 0 {
				t.Fatal("nothing in the inventory: the test shows nothing")
			}
		})
	}
}

func rdbKeys(t *testing.T, rdb *redis.Client, pattern string) int {
	t.Helper()
	keys, err := rdb.Keys(context.Background(), pattern).Result()
	if err != nil {
		t.Fatal(err)
	}
	return len(keys)
}

// rotatingSigner says one key is the CA's (the keyring's active key when the admission
// recorded the certificate) and signs with another (the active key after a promote), and runs
// during before it signs: here, an administrator's revocation by serial.
type rotatingSigner struct {
	ca.Signer           // what PublicKey says
	signs     ca.Signer // what signs
	during    func(tmpl *ssh.Certificate)
}

func (s rotatingSigner) Sign(ctx context.Context, tmpl *ssh.Certificate, ttl time.Duration) (*ssh.Certificate, error) {
	s.during(tmpl)
	return s.signs.Sign(ctx, tmpl, ttl)
}

// TestAdmissionRotationRaceRevokeBySerial: a revocation by serial (or key ID) that finds the
// record made before signing revokes the serial in the scope of the CA key recorded. When the
// keyring's active key changed before the signature, the certificate signed by the new key must
// not be handed out unrevoked: either it is refused, or its serial is revoked in its own CA
// key's scope (what a bastion's KRL holds). Against a real redis-server.
func TestAdmissionRotationRaceRevokeBySerial(t *testing.T) {
	for _, by := range []string{"serial", "key_id"} {
		t.Run(by, func(t *testing.T) {
			ctx := context.Background()
			rdb, db, _, sgn := tripRig(t)
			al := audit.New(rdb, audit.Options{Key: make([]byte, audit.KeySize), Marks: db})
			alice := ca.Identity{Issuer: "https://idp", Subject: "u1", Email: "alice@example.com", Username: "alice"}
			next := softkmsSigner(t, db)
			var a *ca.Authority
			var revoked ca.RevokeResult
			var revokeErr error
			s := rotatingSigner{Signer: sgn, signs: next, during: func(tmpl *ssh.Certificate) {
				req := ca.RevokeRequest{Serial: tmpl.Serial, Reason: "compromised laptop"}
				if by == "key_id" {
					req = ca.RevokeRequest{KeyID: tmpl.KeyId + "#" + strconv.FormatUint(tmpl.Serial, 10), Reason: "compromised laptop"}
				}
				revoked, revokeErr = a.Revoke(ctx, "admin", req)
			}}
			var err error
			if a, err = ca.New(ca.Config{Authenticator: singleUseTokens{alice}, Policy: denyReason{}, UserSigner: s, HostSigner: s,
				Store: db, Revocations: db, Tokens: db, Admission: db, Audit: al}); err != nil {
				t.Fatal(err)
			}
			_, userKey := newSSHKey(t)
			iss, err := a.Issue(ctx, "t1", ca.Request{Kind: ca.UserCert, PublicKey: userKey, TTL: 5 * time.Minute})
			if revokeErr != nil || len(revoked.Revoked) != 1 {
				t.Fatalf("the revocation during the signature: %+v %v; the test shows nothing", revoked, revokeErr)
			}
			if err != nil {
				if ca.KindOf(err) != ca.KindUnavailable {
					t.Fatalf("issue: %v, want a certificate or unavailable", err)
				}
				inventoryExplained(t, a, db, al)
				return
			}
			st, err := db.State(ctx, iss.Cert.SignatureKey)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range st.Entries {
				if e.Value == strconv.FormatUint(iss.Cert.Serial, 10) || e.Value == iss.Cert.KeyId {
					return
				}
			}
			t.Errorf("certificate %s handed out after its %s was revoked (%+v), and its CA key's scope %+v does not revoke it", iss.Cert.KeyId, by, revoked.Revoked, st.Entries)
		})
	}
}

// TestAdmissionLostReplyKeepsInventoryExplained: the admission's pipeline (the record made
// before signing in it) loses its reply once and go-redis sends it again, as a client that
// retries does (testenv.ReplyDropper): for a certificate issued, a revoked key, a blocked
// identity and a replayed token, every serial left in the inventory is named by an audit
// record, and the certificate issued is in both. Against redis-server.
func TestAdmissionLostReplyKeepsInventoryExplained(t *testing.T) {
	ctx := context.Background()
	srv := testenv.StartRedis(t)
	proxy := testenv.DropReply(t, srv.Addr)
	rdb := proxy.RetryingClient(t)
	db := store.NewRedis(rdb, store.RedisOptions{})
	al := audit.New(rdb, audit.Options{Key: make([]byte, audit.KeySize), Marks: db})
	sgn := softkmsSigner(t, db)
	var got []uint64
	for i, tc := range []struct {
		name  string
		setup func(a *ca.Authority, id ca.Identity, userKey ssh.PublicKey)
		want  ca.ErrorKind
	}{
		{"issued", func(*ca.Authority, ca.Identity, ssh.PublicKey) {}, 0},
		{"revoked key", func(_ *ca.Authority, _ ca.Identity, k ssh.PublicKey) {
			if _, err := db.Revoke(ctx, sgn.PublicKey(), []ca.RevocationEntry{{Kind: ca.RevokedKey, Value: keyEntryOf(k), Expiry: time.Now().Add(time.Hour)}}); err != nil {
				t.Fatal(err)
			}
		}, ca.KindDenied},
		{"blocked identity", func(_ *ca.Authority, id ca.Identity, _ ssh.PublicKey) {
			if err := db.BlockIdentity(ctx, id.Name(), time.Now().Add(time.Hour)); err != nil {
				t.Fatal(err)
			}
		}, ca.KindDenied},
		{"replayed token", func(a *ca.Authority, _ ca.Identity, k ssh.PublicKey) {
			if _, err := a.Issue(ctx, "replayed", ca.Request{Kind: ca.UserCert, PublicKey: k, TTL: 5 * time.Minute}); err != nil {
				t.Fatal(err)
			}
		}, ca.KindUnauthenticated},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := ca.Identity{Issuer: "https://idp", Subject: fmt.Sprintf("u%d", i), Email: fmt.Sprintf("u%d@example.com", i), Username: fmt.Sprintf("u%d", i)}
			a, err := ca.New(ca.Config{Authenticator: singleUseTokens{id}, Policy: denyReason{}, UserSigner: sgn, HostSigner: sgn,
				Store: db, Revocations: db, Tokens: db, Admission: db, Audit: al})
			if err != nil {
				t.Fatal(err)
			}
			_, userKey := newSSHKey(t)
			tc.setup(a, id, userKey)
			token := "t-" + tc.name
			if tc.name == "replayed token" {
				token = "replayed"
			}
			proxy.Arm("\r\nNX\r\n") // the token's SET NX: the admission's pipeline
			iss, err := a.Issue(ctx, token, ca.Request{Kind: ca.UserCert, PublicKey: userKey, TTL: 5 * time.Minute})
			if proxy.Armed() {
				t.Fatal("the proxy dropped no reply: the test does not test the retry")
			}
			switch {
			case tc.want == 0 && err != nil:
				t.Fatalf("issue, its admission's reply lost once: %v, want a certificate", err)
			case tc.want == 0:
				got = append(got, iss.Cert.Serial)
			case ca.KindOf(err) != tc.want:
				t.Fatalf("issue: %v, want %v", err, tc.want)
			}
			if tc.name == "replayed token" {
				// The first use of the token issued a certificate.
				live, err := db.Live(ctx, id.Name(), time.Now())
				if err != nil || len(live) != 1 {
					t.Fatalf("%s: %d live certificates (%v), want the first use's", id.Name(), len(live), err)
				}
				got = append(got, live[0].Serial)
			}
			inventoryExplained(t, a, db, al, got...)
		})
	}
}

// softkmsSigner is a signer of a new Ed25519 softkms key, its serials reserved in db.
func softkmsSigner(t *testing.T, db *store.Redis) *signer.Signer {
	t.Helper()
	key, err := kms.Create(context.Background(), kms.KeyRef{KMS: "softkms:", Key: "softkms:path=" + filepath.Join(t.TempDir(), "ca.pem")}, kms.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { key.Close() })
	return signer.New(key.Signer(), db, signer.Options{})
}

// TestAdmissionRecordsPKCS11: with CA keys on a SoftHSM2 token through PKCS#11 (ECDSA, and RSA
// signing rsa-sha2-512), what the signer signs is what the admission recorded before signing:
// one round trip before the signature and none to record again, the inventory holding the
// certificate as signed. A token that fails to sign (its session closed) leaves no record.
func TestAdmissionRecordsPKCS11(t *testing.T) {
	uri := testenv.SoftHSMToken(t, "ssh-ca")
	ctx := context.Background()
	for _, tc := range []struct {
		typ kms.KeyType
		id  string
	}{{kms.ECDSAP256, "7431"}, {kms.RSA3072, "7433"}} {
		t.Run(string(tc.typ), func(t *testing.T) {
			rdb, db, tr, _ := tripRig(t)
			al := audit.New(rdb, audit.Options{Key: make([]byte, audit.KeySize), Marks: db})
			k, err := kms.Create(ctx, kms.KeyRef{KMS: uri, Key: "pkcs11:id=" + tc.id + ";object=ssh-ca-" + string(tc.typ)}, tc.typ)
			if err != nil {
				t.Fatal(err)
			}
			sgn := &tripSigner{Signer: signer.New(k.Signer(), db, signer.Options{}), trips: tr}
			alice := ca.Identity{Issuer: "https://idp", Subject: "u1", Email: "alice@example.com", Username: "alice"}
			a, err := ca.New(ca.Config{Authenticator: singleUseTokens{alice}, Policy: denyReason{}, UserSigner: sgn, HostSigner: sgn,
				Store: db, Revocations: db, Tokens: db, Admission: db, Audit: al})
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
			if n := sgn.atSign.Load() - before; n != 1 {
				t.Errorf("%d round trips before the signature, want 1 (the admission)", n)
			}
			if n := tr.n.Load() - sgn.atSign.Load(); n != 1 {
				t.Errorf("%d round trips after the signature, want 1 (the audit): the certificate was recorded again", n)
			}
			got, ok, err := db.Get(ctx, iss.Cert.Serial)
			if err != nil || !ok || got.CAFingerprint != ssh.FingerprintSHA256(iss.Cert.SignatureKey) ||
				got.ValidBefore.Unix() != int64(iss.Cert.ValidBefore) || got.ValidAfter.Unix() != int64(iss.Cert.ValidAfter) {
				t.Errorf("record %+v (%v %v), want certificate %s as signed", got, ok, err, iss.Cert.KeyId)
			}
			k.Close()
			if _, err := a.Issue(ctx, "t2", req); err == nil {
				t.Fatal("issued with a closed PKCS#11 session")
			}
			inventoryExplained(t, a, db, al, iss.Cert.Serial)
			live, err := db.Live(ctx, alice.Name(), time.Now())
			if err != nil || len(live) != 2 {
				t.Errorf("%d live certificates (%v) after a failed signature, want the two signed", len(live), err)
			}
		})
	}
}
