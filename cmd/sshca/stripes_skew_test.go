package main

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/revocation"
	"github.com/sshca/sshca/store"
)

// TestStoreRebuildClockSkew: two CA replicas keep their records in stripes 0 and 1 of one
// audit chain, and replica 0's clock is 20 s ahead of replica 1's. `sshca store rebuild`
// orders records of different stripes by their time, so what replica 1 did after replica 0
// may come first. Each case is an order that would restore less than was in force:
//   - a key banned, lifted (replica 0), banned again 10 s later (replica 1): the new ban
//     carries an earlier time than the lift; the key must stay banned, the lift listed;
//   - a certificate issued (replica 0) just before an identity revocation (replica 1): its
//     time is after the revocation's; it must be revoked again;
//   - an access request created (replica 0), then approved, used and revoked (replica 1):
//     its creation carries the latest time; it must be restored revoked and its
//     certificate revoked again;
//   - the key ring changed to version 2 (replica 0), then to version 3 (replica 1): the
//     version-2 record is the later by time; the key ring must be restored at version 3.
//
// What should get past the checks: a lift on the ban's own stripe 5 s after it (chain order
// is the true order) is applied.
func TestStoreRebuildClockSkew(t *testing.T) {
	e := newRebuildEnv(t)
	rdb, key, userKey, hostKey := e.rdb, e.key, e.userKey, e.hostKey
	ctx := context.Background()

	const ahead = 20 * time.Second // replica 0's clock against replica 1's
	t0 := time.Now().Add(-10 * time.Minute).UTC().Truncate(time.Second)
	// at is the time replica r writes at true time t0+d.
	at := func(r int, d time.Duration) time.Time {
		if r == 0 {
			return t0.Add(d + ahead)
		}
		return t0.Add(d)
	}
	replicas := []*audit.Log{audit.New(rdb, audit.Options{Key: key, Stripes: 2, Home: new(0)}), audit.New(rdb, audit.Options{Key: key, Stripes: 2, Home: new(1)})}
	keep := func(r int, rec ca.AuditRecord) {
		t.Helper()
		if err := replicas[r].Append(ctx, rec); err != nil {
			t.Fatal(err)
		}
	}
	revoke := func(r int, d time.Duration, target string) ca.AuditRecord {
		return ca.AuditRecord{Time: at(r, d), Action: ca.ActionRevoke, Outcome: "allowed", Identity: "admin", Reason: "r", Target: target}
	}

	// Ban, lift, ban again.
	rebanned, sameStripe := testenv.PublicKey(t), testenv.PublicKey(t)
	ban := func(r int, d time.Duration, k ssh.PublicKey) ca.AuditRecord {
		rec := revoke(r, d, "public_key:"+ssh.FingerprintSHA256(k))
		rec.PublicKey = revocation.KeyEntry(k)
		return rec
	}
	keep(1, ban(1, 0, rebanned))
	keep(0, revoke(0, time.Minute, "unrevoke public_key:"+ssh.FingerprintSHA256(rebanned)))
	keep(1, ban(1, time.Minute+10*time.Second, rebanned))
	keep(1, ban(1, 2*time.Minute, sameStripe))
	keep(1, revoke(1, 2*time.Minute+5*time.Second, "unrevoke public_key:"+ssh.FingerprintSHA256(sameStripe)))

	// A certificate issued just before its identity is revoked.
	issued := func(r int, d time.Duration, serial uint64, id, request string) ca.AuditRecord {
		return ca.AuditRecord{Time: at(r, d), Action: ca.ActionUser, Outcome: "issued", Identity: id, Serial: serial,
			KeyID: id + "#" + strconv.FormatUint(serial, 10), ValidBefore: time.Now().Add(time.Hour).UTC(), Principals: []string{"p"},
			CAFingerprint: ssh.FingerprintSHA256(userKey), AccessRequest: request}
	}
	keep(0, issued(0, 3*time.Minute, 101, "https://idp|bob", ""))
	keep(1, revoke(1, 3*time.Minute+5*time.Second, "identity:https://idp|bob"))

	// An access request created, approved, used and revoked.
	alice := ca.Identity{Issuer: "https://idp", Subject: "alice"}
	approver := ca.Identity{Issuer: "https://idp", Subject: "carol"}
	req := ca.AccessRequest{ID: "req_aaaaaaaaaaaaaaaa", Requester: alice, Principals: []string{"prod"}, TTLSeconds: 3600, Reason: "OPS-1",
		CreatedAt: at(0, 4*time.Minute), PendingUntil: at(0, 64*time.Minute), ApprovalsRequired: 1, Status: ca.RequestPending}
	change := func(r int, d time.Duration, event string, v ca.AccessRequest) ca.AuditRecord {
		return ca.AuditRecord{Time: at(r, d), Action: ca.ActionApprove, Outcome: "allowed", Identity: approver.Name(),
			AccessRequest: req.ID, Event: event, Access: &v}
	}
	created := change(0, 4*time.Minute, "create", req)
	created.Action, created.Identity = ca.ActionRequest, alice.Name()
	keep(0, created)
	approved := req
	approved.Approvals = []ca.Approval{{Approver: approver, At: at(1, 4*time.Minute+5*time.Second), ContentHash: req.ContentHash()}}
	approved.Status, approved.DecidedAt, approved.DecidedBy = ca.RequestApproved, at(1, 4*time.Minute+5*time.Second), approver.Name()
	approved.NotAfter = approved.DecidedAt.Add(time.Hour)
	keep(1, change(1, 4*time.Minute+5*time.Second, "approve", approved))
	keep(1, issued(1, 4*time.Minute+8*time.Second, 202, alice.Name(), req.ID))
	revoked := approved
	revoked.Status, revoked.DecidedAt = ca.RequestRevoked, at(1, 4*time.Minute+10*time.Second)
	keep(1, change(1, 4*time.Minute+10*time.Second, "revoke", revoked))

	// The key ring: version 2, then 3.
	line := func(k ssh.PublicKey) string { return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))) }
	nextKey := testenv.PublicKey(t)
	ring := func(v uint64, keys ...ssh.PublicKey) *ca.Keyring {
		kr := &ca.Keyring{Version: v}
		for i, k := range keys {
			state := ca.KeyActive
			if i > 0 {
				state = ca.KeyNext
			}
			kr.Keys = append(kr.Keys, ca.CAKey{CA: ca.UserCert, KMS: "softkms:", Key: "softkms:path=/k/" + strconv.Itoa(i), PublicKey: line(k),
				Fingerprint: ssh.FingerprintSHA256(k), State: state, Created: t0})
		}
		kr.Keys = append(kr.Keys, ca.CAKey{CA: ca.HostCert, KMS: "softkms:", Key: "softkms:path=/k/host", PublicKey: line(hostKey),
			Fingerprint: ssh.FingerprintSHA256(hostKey), State: ca.KeyActive, Created: t0})
		return kr
	}
	ringDone := func(r int, d time.Duration, kr *ca.Keyring) ca.AuditRecord {
		return ca.AuditRecord{Time: at(r, d), Action: ca.ActionAdmin, Outcome: ca.OutcomeDone, Identity: "sre", Target: "generate user CA key", Keyring: kr}
	}
	keep(0, ringDone(0, 5*time.Minute, ring(2, userKey)))
	keep(1, ringDone(1, 5*time.Minute+5*time.Second, ring(3, userKey, nextKey)))

	out, err := e.rebuild()
	t.Logf("store rebuild:\n%s", out)
	if err != nil {
		t.Fatalf("rebuild: %v", err)
	}
	st := store.NewRedis(rdb, store.RedisOptions{})
	if why, err := st.Refused(ctx, userKey, nil, rebanned); err != nil || why == "" {
		t.Errorf("the key banned again after its lift (on the replica behind) is not refused (%q, %v); want it banned", why, err)
	}
	if !strings.Contains(out, "unrevoke public_key:"+ssh.FingerprintSHA256(rebanned)+": not applied") {
		t.Errorf("the lift not applied is not listed")
	}
	if why, err := st.Refused(ctx, userKey, nil, sameStripe); err != nil || why != "" {
		t.Errorf("the key lifted on its ban's own stripe 5 s later is refused (%q, %v); want it lifted", why, err)
	}
	state, err := st.State(ctx, userKey)
	if err != nil {
		t.Fatal(err)
	}
	var serials []string
	for _, e := range state.Entries {
		if e.Kind == ca.RevokedSerial {
			serials = append(serials, e.Value)
		}
	}
	for _, want := range []string{"101", "202"} {
		if !slices.Contains(serials, want) {
			t.Errorf("serial %s is not revoked (revoked serials %q): 101 was issued just before its identity's revocation, 202 under the request revoked", want, serials)
		}
	}
	got, ok, err := st.GetRequest(ctx, req.ID)
	if err != nil || !ok || got.Status != ca.RequestRevoked {
		t.Errorf("access request restored as %q (found %v, %v); want revoked", got.Status, ok, err)
	}
	kr, err := st.Keyring(ctx)
	if err != nil || len(kr.Keys) != 3 || !slices.ContainsFunc(kr.Keys, func(k ca.CAKey) bool { return k.Fingerprint == ssh.FingerprintSHA256(nextKey) }) {
		t.Errorf("key ring restored with %d keys (%v); want version 3's three keys, the next user CA key among them", len(kr.Keys), err)
	}
}
