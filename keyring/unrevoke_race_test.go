package keyring_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/keyring"
	"github.com/sshca/sshca/revocation"
	"github.com/sshca/sshca/store"
)

// TestUnrevokeCompromisedOnAnotherReplica: a CA key, user or host, marked compromised through
// another replica is never lifted by an administrator's unrevoke of its public key at this
// replica, also before this replica's key ring refreshed (keyring.refresh apart): there is no
// un-compromise. Against a real redis-server. Before, this replica checked only its own view
// of the key ring: the lift took the key out of the keys refused at signing time and out of
// both scopes (the KRLs), and this replica then signed a certificate with the compromised key.
// A ban of a public key that is no compromised key is still lifted, for host certificates too
// (Redis.LiftKey walked only the user CA keys' scopes before: the key stayed refused for host
// certificates, in the host KRL and in @revoked lines, after an unrevoke that answered OK).
func TestUnrevokeCompromisedOnAnotherReplica(t *testing.T) {
	for _, kind := range []ca.CertKind{ca.UserCert, ca.HostCert} {
		t.Run(string(kind), func(t *testing.T) {
			ctx := context.Background()
			r := newTwoReplicas(t, kind, false, nil)
			next := r.promoteNew(t, kind)
			old := ssh.FingerprintSHA256(r.first)
			if _, err := r.m.Compromised(ctx, old); err != nil {
				t.Fatal(err)
			}
			if got := ssh.FingerprintSHA256(r.kr.PublicKey()); got != old {
				t.Fatalf("this replica's keyring refreshed by itself (active %s): the test shows nothing", got)
			}

			_, err := r.a.Unrevoke(ctx, "admin-1", ca.UnrevokeRequest{PublicKey: r.first, Reason: "lift"})
			if ca.KindOf(err) != ca.KindConflict {
				t.Errorf("unrevoke of the key compromised through another replica: %v (%v), want a conflict", err, ca.KindOf(err))
			}
			nextPub, err := next.SSHPublicKey()
			if err != nil {
				t.Fatal(err)
			}
			r.checkFirstBanned(t, nextPub)
			// Whatever this replica's view is by now, the compromised key signs nothing.
			if iss, err := r.a.Issue(ctx, "after-lift", r.req); err == nil && ssh.FingerprintSHA256(iss.Cert.SignatureKey) == old {
				t.Fatalf("issued a certificate signed by %s, the compromised key, after the unrevoke", old)
			}

			// A public key banned by an administrator, no CA key: lifted, and a certificate of
			// it is signed again.
			_, banned, _ := newKey(t)
			if _, err := r.db.Revoke(ctx, nextPub, []ca.RevocationEntry{{Kind: ca.RevokedKey, Value: revocation.KeyEntry(banned)}}); err != nil {
				t.Fatal(err)
			}
			req := r.req
			req.PublicKey = banned
			if _, err := r.a.Issue(ctx, "banned-1", req); ca.KindOf(err) != ca.KindDenied {
				t.Fatalf("a certificate of the banned key: %v, want denied", err)
			}
			if _, err := r.a.Unrevoke(ctx, "admin-2", ca.UnrevokeRequest{PublicKey: banned, Reason: "lift"}); err != nil {
				t.Fatalf("unrevoke of a banned key that is no CA key: %v", err)
			}
			if _, err := r.a.Issue(ctx, "banned-2", req); err != nil {
				t.Fatalf("a certificate of the key whose ban was lifted: %v", err)
			}
		})
	}
}

// liftAfter is the store, whose LiftKey runs before first: a compromise landing between the
// unrevoke's check of the key ring and its lift.
type liftAfter struct {
	*store.Redis
	before func()
}

func (l liftAfter) LiftKey(ctx context.Context, key ssh.PublicKey) (map[string]uint64, error) {
	l.before()
	return l.Redis.LiftKey(ctx, key)
}

// TestUnrevokeRacesCompromise: a CA key, user or host, marked compromised through another
// replica after an unrevoke of its public key checked the key ring and before it lifted the
// ban (two administrators at once) is banned again at once, and the unrevoke answers a
// conflict that says so. Against a real redis-server; before, the lift took the key out of
// the keys refused at signing time and of both scopes, and this replica signed with it.
func TestUnrevokeRacesCompromise(t *testing.T) {
	for _, kind := range []ca.CertKind{ca.UserCert, ca.HostCert} {
		t.Run(string(kind), func(t *testing.T) {
			ctx := context.Background()
			r := newTwoReplicas(t, kind, false, nil)
			// A third replica whose key ring is read now and never again: the old key active.
			staleKR, err := keyring.New(ctx, kind, r.db, r.db, nil)
			if err != nil {
				t.Fatal(err)
			}
			stale, err := ca.New(ca.Config{Authenticator: singleUse{}, Policy: grantRequested{}, UserSigner: staleKR, HostSigner: staleKR,
				Store: r.db, Revocations: r.db, Tokens: r.db, Admission: r.db})
			if err != nil {
				t.Fatal(err)
			}
			next := r.promoteNew(t, kind)
			old := ssh.FingerprintSHA256(r.first)
			lift := liftAfter{Redis: r.db, before: func() {
				if _, err := r.m.Compromised(ctx, old); err != nil {
					t.Error(err)
				}
			}}
			a, err := ca.New(ca.Config{Authenticator: singleUse{}, Policy: grantRequested{}, UserSigner: r.kr, HostSigner: r.kr,
				Store: r.db, Revocations: lift, Tokens: r.db, Admission: r.db, Audit: r.al})
			if err != nil {
				t.Fatal(err)
			}
			_, err = a.Unrevoke(ctx, "admin-1", ca.UnrevokeRequest{PublicKey: r.first, Reason: "lift"})
			if ca.KindOf(err) != ca.KindConflict || !strings.Contains(err.Error(), "the key is banned again") {
				t.Errorf("unrevoke raced by a compromise: %v (%v), want a conflict saying the key was banned again", err, ca.KindOf(err))
			}
			nextPub, err := next.SSHPublicKey()
			if err != nil {
				t.Fatal(err)
			}
			r.checkFirstBanned(t, nextPub)
			// The replica whose key ring still names the old key active signs nothing with it:
			// its admission reads the ban.
			if iss, err := stale.Issue(ctx, "after-lift", r.req); err == nil {
				t.Fatalf("issued a certificate signed by %s after the unrevoke raced by the compromise of %s", ssh.FingerprintSHA256(iss.Cert.SignatureKey), old)
			}
		})
	}
}

// failingDoc is the store's key ring document, whose reads fail from the read numbered failFrom.
type failingDoc struct {
	*store.Redis
	reads, failFrom int
}

func (d *failingDoc) Keyring(ctx context.Context) (ca.Keyring, error) {
	d.reads++
	if d.failFrom > 0 && d.reads >= d.failFrom {
		return ca.Keyring{}, errors.New("redis: connection refused")
	}
	return d.Redis.Keyring(ctx)
}

// TestUnrevokeKeyringUnreadAfterLift: an unrevoke of a banned key whose key ring cannot be read
// after the lift (so whether a compromise raced it is not known) puts the ban back where the
// lift took it out and answers a 503 that says so, and writes no revocation scope of the
// banned key's own (which would list a user's key among the CA keys the user KRL is built
// from). Against a real redis-server.
func TestUnrevokeKeyringUnreadAfterLift(t *testing.T) {
	ctx := context.Background()
	r := newTwoReplicas(t, ca.UserCert, false, nil)
	doc := &failingDoc{Redis: r.db}
	kr, err := keyring.New(ctx, ca.UserCert, doc, r.db, nil)
	if err != nil {
		t.Fatal(err)
	}
	a, err := ca.New(ca.Config{Authenticator: singleUse{}, Policy: grantRequested{}, UserSigner: kr, HostSigner: kr,
		Store: r.db, Revocations: r.db, Tokens: r.db, Admission: r.db, Audit: r.al})
	if err != nil {
		t.Fatal(err)
	}
	_, banned, _ := newKey(t)
	if _, err := r.db.Revoke(ctx, r.first, []ca.RevocationEntry{{Kind: ca.RevokedKey, Value: revocation.KeyEntry(banned)}}); err != nil {
		t.Fatal(err)
	}
	doc.failFrom = doc.reads + 3 // the check before the lift reads it twice (user and host CA, one key ring here); the one after fails
	_, err = a.Unrevoke(ctx, "admin-1", ca.UnrevokeRequest{PublicKey: banned, Reason: "lift"})
	if ca.KindOf(err) != ca.KindUnavailable || !strings.Contains(err.Error(), "the key is banned again") {
		t.Fatalf("unrevoke with the key ring unread after the lift: %v (%v), want a 503 saying the key is banned again", err, ca.KindOf(err))
	}
	req := r.req
	req.PublicKey = banned
	if _, err := r.a.Issue(ctx, "banned", req); ca.KindOf(err) != ca.KindDenied {
		t.Errorf("a certificate of the key after the lift was undone: %v, want denied", err)
	}
	st, err := r.db.State(ctx, r.first)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(st.Entries, func(e ca.RevocationEntry) bool { return e.Value == revocation.KeyEntry(banned) }) {
		t.Error("the ban is gone from the user CA key's scope")
	}
	cas, err := r.db.CAs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if slices.ContainsFunc(cas, func(k ssh.PublicKey) bool { return ssh.FingerprintSHA256(k) == ssh.FingerprintSHA256(banned) }) {
		t.Error("the banned user key is listed among the CA keys the user KRL is built from")
	}
}

// checkFirstBanned fails t unless the bootstrapped CA key's ban (marked compromised) is in its
// own scope and in that of next, the key promoted in its place (revocation.CompromiseScopes).
func (r *twoReplicas) checkFirstBanned(t *testing.T, next ssh.PublicKey) {
	t.Helper()
	entry := revocation.KeyEntry(r.first)
	for _, scope := range []ssh.PublicKey{r.first, next} {
		st, err := r.db.State(context.Background(), scope)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(st.Entries, func(e ca.RevocationEntry) bool { return e.Kind == ca.RevokedKey && e.Value == entry }) {
			t.Errorf("the compromised key's ban is gone from the scope of %s", ssh.FingerprintSHA256(scope))
		}
	}
}
