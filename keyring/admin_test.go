package keyring_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/keyring"
	"github.com/sshca/sshca/store"
)

// fakeAuthorizer allows or denies every action and records what it was asked and, for an
// action that failed once allowed, the failure it would settle in the audit log.
type fakeAuthorizer struct {
	allow   bool
	targets []string
	settled []error
}

func (f *fakeAuthorizer) Authorize(_ context.Context, token string, action ca.Action, target string) error {
	f.targets = append(f.targets, string(action)+": "+target)
	if token == "" {
		return ca.Unauthenticated("no token", nil)
	}
	if !f.allow {
		return ca.Denied("not an admin")
	}
	return nil
}

func (f *fakeAuthorizer) AuthorizeThenKeep(ctx context.Context, token string, action ca.Action, target string, act func(context.Context) (ca.AuditRecord, error)) error {
	if err := f.Authorize(ctx, token, action, target); err != nil {
		return err
	}
	if _, err := act(ctx); err != nil {
		f.settled = append(f.settled, err)
		return err
	}
	return nil
}

func kindOf(err error) (ca.ErrorKind, bool) {
	var e *ca.Error
	if !errors.As(err, &e) {
		return 0, false
	}
	return e.Kind, true
}

// TestAdminDeniedDoesNothing: a denied (or unauthenticated) caller gets the policy's error and
// the keyring stays as it was, for every operation; the policy is asked with action admin and
// a target naming the operation.
func TestAdminDeniedDoesNothing(t *testing.T) {
	ctx := context.Background()
	db := store.NewMemory(time.Now)
	auth := &fakeAuthorizer{}
	a := keyring.Admin{Authority: auth, Manager: &keyring.Manager{Store: db, KMS: "softkms:", KeyDir: t.TempDir(), MaxUserTTL: time.Hour, MaxHostTTL: time.Hour}}
	before, _ := db.Keyring(ctx)
	for _, token := range []string{"t", ""} {
		want := ca.KindDenied
		if token == "" {
			want = ca.KindUnauthenticated
		}
		calls := map[string]func() error{
			"list":        func() error { _, err := a.Keys(ctx, token); return err },
			"generate":    func() error { _, err := a.GenerateKey(ctx, token, ca.UserCert, ""); return err },
			"promote":     func() error { _, err := a.PromoteKey(ctx, token, ca.UserCert, true); return err },
			"retire":      func() error { _, err := a.RetireKey(ctx, token, "SHA256:x", true); return err },
			"compromised": func() error { _, err := a.CompromisedKey(ctx, token, "SHA256:x"); return err },
		}
		for op, call := range calls {
			if k, ok := kindOf(call()); !ok || k != want {
				t.Errorf("%s with token %q: kind %v, want %v", op, token, k, want)
			}
		}
	}
	after, _ := db.Keyring(ctx)
	if after.Version != before.Version || len(after.Keys) != 0 {
		t.Errorf("a refused caller changed the keyring: %+v", after)
	}
	wantTargets := []string{"admin: list CA keys", "admin: generate user CA key", "admin: promote user CA key",
		"admin: retire CA key SHA256:x", "admin: mark CA key SHA256:x compromised"}
	for _, w := range wantTargets {
		found := false
		for _, got := range auth.targets {
			found = found || got == w
		}
		if !found {
			t.Errorf("the policy was never asked %q (asked %q)", w, auth.targets)
		}
	}
}

// TestAdminGenerate: an allowed generate without a type makes an Ed25519 key on softkms and
// adds it as next; an unknown type is a 4xx (ca.Invalid) naming the type, settled as failed.
func TestAdminGenerate(t *testing.T) {
	ctx := context.Background()
	db := store.NewMemory(time.Now)
	auth := &fakeAuthorizer{allow: true}
	a := keyring.Admin{Authority: auth, Manager: &keyring.Manager{Store: db, KMS: "softkms:", KeyDir: t.TempDir(), MaxUserTTL: time.Hour, MaxHostTTL: time.Hour}}
	k, err := a.GenerateKey(ctx, "t", ca.UserCert, "")
	if err != nil {
		t.Fatal(err)
	}
	if k.Algorithm != "ssh-ed25519" || k.State != ca.KeyNext || k.CA != ca.UserCert {
		t.Errorf("generated %+v, want an ed25519 next user CA key", k)
	}
	r, err := a.Keys(ctx, "t")
	if err != nil || len(r.Keys) != 1 || r.Keys[0].Fingerprint != k.Fingerprint {
		t.Errorf("keyring after generate: %+v, %v", r, err)
	}
	if len(auth.settled) != 0 {
		t.Errorf("a successful generate was settled as failed: %v", auth.settled)
	}
	_, err = a.GenerateKey(ctx, "t", ca.UserCert, "dsa-1024")
	if k, ok := kindOf(err); !ok || k != ca.KindInvalid || !strings.Contains(err.Error(), "dsa-1024") {
		t.Errorf("unknown key type: %v, want invalid naming it", err)
	}
	if len(auth.settled) != 1 {
		t.Errorf("a generate that failed once allowed was not settled: %v", auth.settled)
	}
	if r, _ := a.Keys(ctx, "t"); len(r.Keys) != 1 {
		t.Errorf("a refused generate added a key: %+v", r.Keys)
	}
}

// downStore is a keyring store that does not answer.
type downStore struct{ keyring.ManagerStore }

func (downStore) Keyring(context.Context) (ca.Keyring, error) {
	return ca.Keyring{}, errors.New("dial tcp 127.0.0.1:6379: connection refused")
}

// TestAdminKeysStoreDown: a keyring store that does not answer is ca.Unavailable (503), its
// cause kept for the log.
func TestAdminKeysStoreDown(t *testing.T) {
	a := keyring.Admin{Authority: &fakeAuthorizer{allow: true}, Manager: &keyring.Manager{Store: downStore{}}}
	_, err := a.Keys(context.Background(), "t")
	if k, ok := kindOf(err); !ok || k != ca.KindUnavailable {
		t.Errorf("store down: %v, want unavailable", err)
	}
}

// TestKeyAPIShowsRedactedURIs: the key administration API shows a key's URIs without the
// PIN they may carry, and leaves the keyring it was given unchanged.
func TestKeyAPIShowsRedactedURIs(t *testing.T) {
	b := make([]byte, 10)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	pin := "Sx" + hex.EncodeToString(b)
	kmsURI := "pkcs11:module-path=/usr/lib/softhsm/libsofthsm2.so;token=ssh-ca;pin-value=" + pin + "?pin-value=" + pin
	r := ca.Keyring{Version: 3, Keys: []ca.CAKey{
		{CA: ca.UserCert, KMS: kmsURI, Key: "pkcs11:id=7331;object=u;pin-value=" + pin, Fingerprint: "SHA256:a"},
		{CA: ca.HostCert, KMS: "softkms:", Key: "softkms:path=/var/lib/sshca/host_ca.pem", Fingerprint: "SHA256:b"},
	}}
	shown := keyring.Redacted(r)
	js, err := json.Marshal(shown)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(js), pin) {
		t.Errorf("keyring answer holds the PIN: %s", js)
	}
	if shown.Keys[0].KMS != "pkcs11:module-path=/usr/lib/softhsm/libsofthsm2.so;token=ssh-ca;pin-value=REDACTED?pin-value=REDACTED" ||
		shown.Keys[1].Key != "softkms:path=/var/lib/sshca/host_ca.pem" || shown.Version != 3 {
		t.Errorf("shown keyring: %s", js)
	}
	if r.Keys[0].KMS != kmsURI {
		t.Error("Redacted changed the keyring it was given")
	}
	k := keyring.RedactedKey(r.Keys[0])
	if strings.Contains(k.KMS+k.Key, pin) {
		t.Errorf("key answer holds the PIN: %s %s", k.KMS, k.Key)
	}
}
