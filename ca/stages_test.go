package ca_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/signer"
	"github.com/sshca/sshca/store"
)

type stageCall struct {
	Stage ca.Stage
	Kind  string // "ok" or the error's kind
}

type stageRecorder struct {
	mu    sync.Mutex
	calls []stageCall
}

func (r *stageRecorder) ObserveStage(s ca.Stage, took time.Duration, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	kind := "ok"
	if err != nil {
		kind = ca.KindOf(err).String()
	}
	if took < 0 {
		kind = "negative duration"
	}
	r.calls = append(r.calls, stageCall{s, kind})
}

// TestStageObserver: an issued certificate passes authenticate, store (revocation check),
// policy, sign, store (inventory), audit, in that order; a refused token stops at
// authenticate; a failing signer is reported as a failed sign stage; a keyring signer stays a
// Publisher once observed (its published keys are still what hosts trust).
func TestStageObserver(t *testing.T) {
	now := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	caKey, _ := newSSHKey(t)
	_, userKey := newSSHKey(t)
	alice := ca.Identity{Issuer: "https://idp", Subject: "u1", Username: "alice"}
	grant := ca.Decision{Allow: true, Principals: []string{"alice"}, TTL: 10 * time.Minute}
	req := ca.Request{Kind: ca.UserCert, PublicKey: userKey}

	for _, tt := range []struct {
		name    string
		token   string
		signErr error
		want    []stageCall
	}{
		{"issued", "good", nil, []stageCall{
			{ca.StageAuthenticate, "ok"}, {ca.StageStore, "ok"}, {ca.StagePolicy, "ok"}, {ca.StageSign, "ok"},
			{ca.StageStore, "ok"}, {ca.StageAudit, "ok"}}},
		{"bad token", "bad", nil, []stageCall{{ca.StageAuthenticate, "unauthenticated"}}},
		{"kms down", "good", errors.New("kms: device removed"), []stageCall{
			{ca.StageAuthenticate, "ok"}, {ca.StageStore, "ok"}, {ca.StagePolicy, "ok"}, {ca.StageSign, "internal"},
			{ca.StageAudit, "ok"}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rec := &stageRecorder{}
			sgn := fakeSigner{key: caKey, now: clock, err: tt.signErr}
			a, err := ca.New(ca.Config{Authenticator: fakeAuth{alice}, Policy: &fakePolicy{dec: grant}, UserSigner: sgn, HostSigner: sgn,
				Store: &fakeStore{}, Revocations: store.NewMemory(clock), Audit: &fakeAudit{}, Now: clock, Stages: rec})
			if err != nil {
				t.Fatal(err)
			}
			_, _ = a.Issue(context.Background(), tt.token, req)
			if d := cmp.Diff(tt.want, rec.calls); d != "" {
				t.Errorf("stages (-want +got):\n%s", d)
			}
		})
	}

	t.Run("publisher kept", func(t *testing.T) {
		_, older := newSSHKey(t)
		_, compromised := newSSHKey(t)
		hk := hostKeyring{Signer: signer.New(caKey, store.NewMemory(clock), signer.Options{Now: clock}), older: older, compromised: compromised}
		a, err := ca.New(ca.Config{Authenticator: fakeAuth{alice}, Policy: &fakePolicy{dec: grant}, UserSigner: hk, HostSigner: hk,
			Store: &fakeStore{}, Revocations: store.NewMemory(clock), Stages: &stageRecorder{}, Now: clock})
		if err != nil {
			t.Fatal(err)
		}
		if got := a.HostCAKeys(); len(got) != 2 || !sameKey(got[1], older) {
			t.Errorf("HostCAKeys = %d keys, want the keyring's 2", len(got))
		}
		if got := a.RevokedHostCAKeys(); len(got) != 1 || !sameKey(got[0], compromised) {
			t.Errorf("RevokedHostCAKeys = %v, want the compromised key", got)
		}
	})
}

func sameKey(a, b ssh.PublicKey) bool { return string(a.Marshal()) == string(b.Marshal()) }
