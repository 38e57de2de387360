package keyring

import (
	"context"
	"errors"
	"strings"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/kms"
)

// Authorizer asks the policy whether a token's identity may take an action (ca.Authority is
// the one sshca wires). AuthorizeThenKeep runs act only once the "allowed" decision is
// recorded, settles that record with act's real outcome when act fails, and keeps what act
// answers in a "done" record when it succeeds.
type Authorizer interface {
	Authorize(ctx context.Context, token string, action ca.Action, target string) error
	AuthorizeThenKeep(ctx context.Context, token string, action ca.Action, target string, act func(context.Context) (ca.AuditRecord, error)) error
}

var _ Authorizer = (*ca.Authority)(nil)

// Admin is CA key administration as the API offers it: each operation is authorized by the
// policy (action "admin", the target naming the operation, e.g. "promote user CA key") and
// then carried out by the Manager. Keys are answered with their KMS and key URIs as
// kms.Redact shows them, since a PKCS#11 URI may carry its PIN (pin-value).
//
// Errors: those of the Authorizer (ca.Unauthenticated, ca.Denied), ca.Invalid for an unknown
// key type, the Manager's, and ca.Unavailable when the keyring store does not answer.
type Admin struct {
	Authority Authorizer
	Manager   *Manager
}

// Keys is the whole keyring (action admin, target "list CA keys").
func (a Admin) Keys(ctx context.Context, token string) (ca.Keyring, error) {
	if err := a.Authority.Authorize(ctx, token, ca.ActionAdmin, "list CA keys"); err != nil {
		return ca.Keyring{}, err
	}
	r, err := a.Manager.Store.Keyring(ctx)
	var e *ca.Error
	if err != nil && !errors.As(err, &e) {
		err = ca.Unavailable("keyring store unavailable", err)
	}
	return Redacted(r), err
}

// GenerateKey creates a key of keyType (kms.ParseKeyType names; "" is ecdsa-p256 on PKCS#11,
// where Ed25519 is not generally available, and ed25519 elsewhere) and adds it as kind's next.
func (a Admin) GenerateKey(ctx context.Context, token string, kind ca.CertKind, keyType string) (ca.CAKey, error) {
	return a.do(ctx, token, "generate "+string(kind)+" CA key", func(ctx context.Context) (ca.CAKey, error) {
		if keyType == "" {
			keyType = string(kms.ECDSAP256)
			if !strings.HasPrefix(a.Manager.KMS, "pkcs11:") {
				keyType = string(kms.Ed25519)
			}
		}
		typ, err := kms.ParseKeyType(keyType)
		if err != nil {
			return ca.CAKey{}, ca.Invalid("%v", err)
		}
		return a.Manager.Generate(ctx, kind, typ)
	})
}

// PromoteKey makes kind's next key active (Manager.Promote).
func (a Admin) PromoteKey(ctx context.Context, token string, kind ca.CertKind, force bool) (ca.CAKey, error) {
	return a.do(ctx, token, "promote "+string(kind)+" CA key", func(ctx context.Context) (ca.CAKey, error) {
		return a.Manager.Promote(ctx, kind, force)
	})
}

// RetireKey withdraws the retired key with SHA256 fingerprint fp from publication.
func (a Admin) RetireKey(ctx context.Context, token, fp string, force bool) (ca.CAKey, error) {
	return a.do(ctx, token, "retire CA key "+fp, func(ctx context.Context) (ca.CAKey, error) {
		return a.Manager.Retire(ctx, fp, force)
	})
}

// CompromisedKey withdraws the key with fingerprint fp and revokes everything it signed.
func (a Admin) CompromisedKey(ctx context.Context, token, fp string) (ca.CAKey, error) {
	return a.do(ctx, token, "mark CA key "+fp+" compromised", func(ctx context.Context) (ca.CAKey, error) {
		return a.Manager.Compromised(ctx, fp)
	})
}

// do authorizes a key operation and carries it out; an operation that fails once allowed is
// settled in the audit log with its real outcome, and one that succeeded is followed by a
// record of the key ring it left, URIs redacted, which `sshca store rebuild` restores
// (Authorizer.AuthorizeThenKeep).
func (a Admin) do(ctx context.Context, token, target string, op func(context.Context) (ca.CAKey, error)) (ca.CAKey, error) {
	var key ca.CAKey
	err := a.Authority.AuthorizeThenKeep(ctx, token, ca.ActionAdmin, target, func(ctx context.Context) (ca.AuditRecord, error) {
		var err error
		if key, err = op(ctx); err != nil {
			return ca.AuditRecord{}, err
		}
		// The ring as it is now: a change made meanwhile by another replica is in it too, and
		// recorded again by that replica.
		ring, err := a.Manager.Store.Keyring(ctx)
		if err != nil {
			return ca.AuditRecord{}, nil // done; the next change's record holds the ring
		}
		ring = Redacted(ring)
		return ca.AuditRecord{Keyring: &ring}, nil
	})
	return RedactedKey(key), err
}

// RedactedKey is k with its KMS and key URIs as kms.Redact shows them (no PIN).
func RedactedKey(k ca.CAKey) ca.CAKey {
	k.KMS, k.Key = kms.Redact(k.KMS), kms.Redact(k.Key)
	return k
}

// Redacted is r with every key as RedactedKey shows it; r itself is left as it is (its Keys
// slice is copied).
func Redacted(r ca.Keyring) ca.Keyring {
	keys := make([]ca.CAKey, len(r.Keys))
	for i, k := range r.Keys {
		keys[i] = RedactedKey(k)
	}
	r.Keys = keys
	return r
}
