package ca_test

import (
	"context"
	"errors"
	"maps"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
)

// lostReplyAudit is a real audit.Log on redis-server reached through a proxy that can drop one
// answer, by a client that retries nothing (serve's), and the same chain as another replica
// sees it, directly.
func lostReplyAudit(t *testing.T) (*testenv.ReplyDropper, *audit.Log, *audit.Log) {
	t.Helper()
	srv := testenv.StartRedis(t)
	proxy := testenv.DropReply(t, srv.Addr)
	proxied := redis.NewClient(&redis.Options{Addr: proxy.Addr, MaxRetries: -1})
	direct := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { proxied.Close(); direct.Close() })
	key := make([]byte, audit.KeySize)
	al, other := audit.New(proxied, audit.Options{Key: key}), audit.New(direct, audit.Options{Key: key})
	// Loads the append scripts: the first run of a script is an EVALSHA that Redis refuses
	// (NOSCRIPT) before the EVAL that runs it, and an answer dropped then lands nothing.
	if err := al.AppendOnce(context.Background(), ca.AuditRecord{Outcome: "done", Identity: "warm-up"}, ca.NewOnceKey()); err != nil {
		t.Fatal(err)
	}
	if err := al.Append(context.Background(), ca.AuditRecord{Outcome: "done", Identity: "warm-up"}); err != nil {
		t.Fatal(err)
	}
	return proxy, al, other
}

// chainOutcomes verifies the chain and counts its records by outcome and serial.
func chainOutcomes(t *testing.T, l *audit.Log) map[string]int {
	t.Helper()
	got := map[string]int{}
	if rep, err := l.Verify(context.Background(), func(e audit.Entry) {
		got[e.Record.Outcome+" "+e.Record.Identity+" "+strconv.FormatUint(e.Record.Serial, 10)]++
	}); err != nil {
		t.Fatalf("verify: %+v %v", rep, err)
	}
	return got
}

// TestSignedAuditRetryKeptOnce: the record of a certificate signed but not handed out (the
// inventory failed) whose first append lands with its answer lost is retried in the
// background (settleSigned, retrySigned); another replica moves the chain's head before the
// retry. The record is then in the chain once, not twice. Two requests failing alike in the
// same second (records equal in every field, serial and key ID too) are two records, each
// kept once: the retry is recognised by its key, not by what the record says. Through a real
// audit.Log on redis-server behind a proxy that drops the first attempts' answers.
func TestSignedAuditRetryKeptOnce(t *testing.T) {
	ctx := context.Background()
	proxy, al, other := lostReplyAudit(t)
	caKey, _ := newSSHKey(t)
	_, userKey := newSSHKey(t)
	now := time.Date(2026, 11, 30, 7, 0, 0, 0, time.UTC)
	retry := make(chan time.Time) // closed once the head has moved: the retries wait for it
	alice := ca.Identity{Issuer: "https://idp", Subject: "u1", Email: "alice@example.com", Username: "alice"}
	a, err := ca.New(ca.Config{Authenticator: fakeAuth{alice}, Policy: &fakePolicy{dec: deadlineGrant},
		UserSigner: &countingSigner{key: caKey}, HostSigner: &countingSigner{key: caKey},
		Store: &fakeStore{err: errors.New("inventory down")}, Revocations: store.NewMemory(time.Now), Audit: al,
		Now: func() time.Time { return now }, After: func(time.Duration) <-chan time.Time { return retry }})
	if err != nil {
		t.Fatal(err)
	}
	lost := "unavailable " + alice.Name() + " 7"
	for i := range 2 {
		proxy.Arm("certificate inventory unavailable") // in the signed certificate's record
		if _, err := a.Issue(ctx, "good", ca.Request{Kind: ca.UserCert, PublicKey: userKey}); ca.KindOf(err) != ca.KindUnavailable {
			t.Fatalf("Issue with the inventory down = %v, want unavailable", err)
		}
		if proxy.Armed() {
			t.Fatal("the proxy dropped no answer: the first attempt did not go through it")
		}
		if n := chainOutcomes(t, other)[lost]; n != i+1 {
			t.Fatalf("the first attempt whose answer was dropped did not land (%d records): the test does not test a lost answer", n)
		}
		if i == 0 {
			// Another request's record: the log learns the head that the lost append moved,
			// so the next first attempt appends (and its answer is the one dropped).
			if err := al.Append(ctx, ca.AuditRecord{Action: ca.ActionUser, Outcome: "issued", Identity: "carol", Serial: 9}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := other.Append(ctx, ca.AuditRecord{Action: ca.ActionUser, Outcome: "issued", Identity: "bob", Serial: 8}); err != nil {
		t.Fatal(err)
	}
	close(retry)
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := a.DrainRetries(dctx); err != nil {
		t.Fatal(err)
	}
	want := map[string]int{"done warm-up 0": 2, lost: 2, "issued carol 9": 1, "issued bob 8": 1}
	if got := chainOutcomes(t, other); !maps.Equal(got, want) {
		t.Errorf("the chain holds %v, want %v", got, want)
	}
}

// TestGrantAuditLostReplySaysWhatIsTrue: when the answer to a grant's audit append is lost,
// the record is in the chain, yet the caller gets no certificate: the answer is unavailable
// (503) and says that nothing was granted and that the record may have been kept, not that
// nothing was done. The chain then holds the "issued" record and, after it, the record that
// says the certificate was not handed out (settleSigned), once each.
func TestGrantAuditLostReplySaysWhatIsTrue(t *testing.T) {
	ctx := context.Background()
	proxy, al, other := lostReplyAudit(t)
	caKey, _ := newSSHKey(t)
	_, userKey := newSSHKey(t)
	alice := ca.Identity{Issuer: "https://idp", Subject: "u1", Email: "alice@example.com", Username: "alice"}
	a := deadlineAuthority(t, &fakePolicy{dec: deadlineGrant}, &countingSigner{key: caKey}, &fakeStore{}, al)
	proxy.Arm(`"outcome":"issued"`)
	_, err := a.Issue(ctx, "good", ca.Request{Kind: ca.UserCert, PublicKey: userKey})
	if proxy.Armed() {
		t.Fatal("the proxy dropped no answer")
	}
	var e *ca.Error
	if !errors.As(err, &e) || e.Kind != ca.KindUnavailable {
		t.Fatalf("Issue with the audit answer lost = %v, want unavailable", err)
	}
	for _, say := range []string{"nothing was granted", "no certificate handed out", "may or may not have been kept"} {
		if !strings.Contains(e.Msg, say) {
			t.Errorf("answer %q does not say %q", e.Msg, say)
		}
	}
	if strings.Contains(e.Msg, "nothing was done") {
		t.Errorf("answer %q says nothing was done, but the record was kept", e.Msg)
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := a.DrainRetries(dctx); err != nil {
		t.Fatal(err)
	}
	want := map[string]int{"done warm-up 0": 2, "issued " + alice.Name() + " 7": 1, "unavailable " + alice.Name() + " 7": 1}
	if got := chainOutcomes(t, other); !maps.Equal(got, want) {
		t.Errorf("the chain holds %v, want the issued record and the unavailable one, once each", got)
	}
}

// TestRecordingAuditKeptOnce: a session's start record whose append landed with its answer
// lost makes the batch fail (503, saying the record may have been kept), and the agent sends
// the batch again after another replica moved the chain's head: the session then has one start
// record, not two, and its end record is kept once too. Two sessions of one host are two
// start records. Through a real audit.Log on redis-server behind a proxy that drops the first
// attempt's answer.
func TestRecordingAuditKeptOnce(t *testing.T) {
	proxy, al, other := lostReplyAudit(t)
	f := newRecordingFixtureAudit(t, al)
	st := f.newStore()
	rec := newTestRecording(t, sessA, ca.RecordingHeader{User: "root", KeyID: "alice~01#77", Serial: "77", Kind: "exec", Command: "true"})
	rec.add(ca.ChunkOutput, []byte("ok\n"))
	rec.end(0)
	proxy.Arm(`"event":"start"`)
	_, err := f.ship(t, st, ca.RecordingLimits{}, rec, 0, 1)
	if proxy.Armed() {
		t.Fatal("the proxy dropped no answer")
	}
	var e *ca.Error
	if !errors.As(err, &e) || e.Kind != ca.KindUnavailable || !strings.Contains(e.Msg, "may or may not have been") {
		t.Fatalf("the batch whose start record's answer was lost = %v, want unavailable, saying the record may have been kept", err)
	}
	if err := other.Append(context.Background(), ca.AuditRecord{Outcome: "issued", Identity: "bob", Serial: 8}); err != nil {
		t.Fatal(err)
	}
	for _, b := range [][2]int{{0, 1}, {1, 3}} {
		if got, err := f.ship(t, st, ca.RecordingLimits{}, rec, b[0], b[1]); err != nil || got.Received != int64(b[1]) {
			t.Fatalf("lines %v: %+v %v", b, got, err)
		}
	}
	second := newTestRecording(t, "bbbbbbbbbbbbbbbbbbbbbbbb", ca.RecordingHeader{User: "root", KeyID: "alice~01#77", Serial: "77", Kind: "exec", Command: "true"})
	if _, err := f.ship(t, st, ca.RecordingLimits{}, second, 0, 1); err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	if _, err := other.Verify(context.Background(), func(e audit.Entry) {
		if s := e.Record.Session; s != nil {
			got[s.ID+" "+e.Record.Event]++
		}
	}); err != nil {
		t.Fatal(err)
	}
	want := map[string]int{sessA + " start": 1, sessA + " end": 1, "bbbbbbbbbbbbbbbbbbbbbbbb start": 1}
	if !maps.Equal(got, want) {
		t.Errorf("session records in the chain %v, want %v", got, want)
	}
}
