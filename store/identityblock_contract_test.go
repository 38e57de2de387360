package store_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
)

// TestIdentityBlockContract: Record refuses a certificate whose identity or one of whose
// aliases is blocked, writing nothing, with a denial that says the identity was revoked; a
// block on another name, or one that has ended, refuses nothing; a certificate recorded before
// the block is among the live ones read after it. On every backend.
func TestIdentityBlockContract(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newStore newStore) {
		ctx := context.Background()
		now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
		c := &clock{t: now}
		s := newStore(t, c)
		const alice, bob = "https://idp|alice", "https://idp|bob"
		cert := func(serial uint64, id string, aliases ...string) ca.Certificate {
			return ca.Certificate{Serial: serial, KeyID: id + "#x", Kind: ca.UserCert, Identity: id, Aliases: aliases,
				Principals: []string{"p"}, ValidAfter: now, ValidBefore: now.Add(time.Hour), IndexUntil: now.Add(2 * time.Hour)}
		}
		refused := func(t *testing.T, c ca.Certificate, blockedName string) {
			t.Helper()
			err := s.Record(ctx, c)
			if ca.KindOf(err) != ca.KindDenied || !strings.Contains(err.Error(), "the certificates of "+blockedName+" were revoked") {
				t.Fatalf("record %d of %s (aliases %v): %v, want a denial naming %s as revoked", c.Serial, c.Identity, c.Aliases, err, blockedName)
			}
			if _, ok, err := s.Get(ctx, c.Serial); err != nil || ok {
				t.Errorf("refused record %d was written (%t, %v)", c.Serial, ok, err)
			}
		}

		if err := s.Record(ctx, cert(1, alice, "email:alice@example.com")); err != nil {
			t.Fatal(err)
		}
		if err := s.BlockIdentity(ctx, alice, now.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		live, err := s.Live(ctx, alice, now)
		if err != nil || len(live) != 1 || live[0].Serial != 1 {
			t.Fatalf("live after the block: %+v, %v; want the record made before it", live, err)
		}
		refused(t, cert(2, alice, "email:alice@example.com"), alice)
		// Blocked by an alias: whatever canonical name the certificate has.
		if err := s.BlockIdentity(ctx, "email:carol@example.com", now.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		refused(t, cert(3, "https://other|carol", "username:carol", "email:carol@example.com"), "email:carol@example.com")
		if got, err := s.ResolveAlias(ctx, "email:carol@example.com", now); err != nil || len(got) != 0 {
			t.Errorf("a refused record indexed its alias: %v, %v", got, err)
		}
		// Under an access request: refused the same way, and the request does not list it.
		req := ca.AccessRequest{ID: "req_blockedblockedbl", Requester: ca.Identity{Issuer: "https://idp", Subject: "alice"}, Principals: []string{"p"},
			TTLSeconds: 1800, Reason: "OPS-1", CreatedAt: now, PendingUntil: now.Add(time.Hour), ApprovalsRequired: 1, Status: ca.RequestApproved}
		if err := s.CreateRequest(ctx, req); err != nil {
			t.Fatal(err)
		}
		anyRequest := func(ca.AccessRequest) error { return nil }
		if err := s.RecordUnderRequest(ctx, cert(7, alice), req.ID, anyRequest); ca.KindOf(err) != ca.KindDenied || !strings.Contains(err.Error(), "were revoked") {
			t.Errorf("record under a request for a blocked identity: %v, want a denial", err)
		}
		if got, ok, err := s.GetRequest(ctx, req.ID); err != nil || !ok || len(got.Serials) != 0 {
			t.Errorf("the request lists %v after a refused record (%t, %v)", got.Serials, ok, err)
		}
		if err := s.RecordUnderRequest(ctx, cert(8, bob), req.ID, anyRequest); err != nil {
			t.Errorf("record under a request for an identity not blocked: %v", err)
		}
		// What gets past: another identity, an alias that is not blocked, a block that ended.
		if err := s.Record(ctx, cert(4, "https://idp|bobby", "email:bob@example.com")); err != nil {
			t.Errorf("bob is not blocked: %v", err)
		}
		if err := s.Record(ctx, cert(5, "https://idp|alice2", "username:alice")); err != nil {
			t.Errorf("an identity sharing no blocked name: %v", err)
		}
		c.Set(now.Add(time.Hour + time.Second))
		later := cert(6, alice)
		later.ValidAfter, later.ValidBefore = c.Now(), c.Now().Add(time.Hour)
		if err := s.Record(ctx, later); err != nil {
			t.Errorf("after the block ended: %v", err)
		}
		// Refused agrees with Record.
		if why, err := s.Refused(ctx, testenv.PublicKey(t), []string{"https://other|dave", "email:carol@example.com"}, testenv.PublicKey(t)); err != nil || why != "" {
			t.Errorf("a block that ended still refuses: %q, %v", why, err)
		}
	})
}
