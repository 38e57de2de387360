package signer_test

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/signer"
)

// brokenKey is a CA key whose KMS fails every signature.
type brokenKey struct{ ssh.Signer }

func (brokenKey) Sign(io.Reader, []byte) (*ssh.Signature, error) {
	return nil, errors.New("pkcs11: CKR_DEVICE_REMOVED")
}

// TestKeyError: a signature the key does not make is a KeyError (what metrics count as a KMS
// error); a serial the store cannot reserve and a refused template are not.
func TestKeyError(t *testing.T) {
	ctx := context.Background()
	tmpl := &ssh.Certificate{Key: newKey(t).PublicKey(), CertType: ssh.UserCert, KeyId: "alice", ValidPrincipals: []string{"alice"}}
	var ke *signer.KeyError

	_, err := signer.New(brokenKey{newKey(t)}, &fakeReserver{taken: map[uint64]bool{}}, signer.Options{}).Sign(ctx, tmpl, time.Minute)
	if !errors.As(err, &ke) || err.Error() != "signer: sign: pkcs11: CKR_DEVICE_REMOVED" {
		t.Errorf("key failure: %v, want a KeyError", err)
	}
	_, err = signer.New(newKey(t), &fakeReserver{err: errors.New("redis: connection refused")}, signer.Options{}).Sign(ctx, tmpl, time.Minute)
	if err == nil || errors.As(err, &ke) {
		t.Errorf("reservation failure: %v, want an error that is no KeyError", err)
	}
	noPrincipals := *tmpl
	noPrincipals.ValidPrincipals = nil
	_, err = signer.New(newKey(t), &fakeReserver{taken: map[uint64]bool{}}, signer.Options{}).Sign(ctx, &noPrincipals, time.Minute)
	if err == nil || errors.As(err, &ke) {
		t.Errorf("refused template: %v, want an error that is no KeyError", err)
	}
}
