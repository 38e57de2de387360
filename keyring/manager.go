package keyring

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/kms"
	"github.com/sshca/sshca/revocation"
)

// Manager carries out the rotation commands on the shared keyring. Authorization is the
// caller's (the service asks the policy, kind "admin").
type Manager struct {
	Store ManagerStore
	// KMS is where new keys are created; for softkms, KeyDir is where their files go.
	KMS    string
	KeyDir string
	// TrustRefresh is how long a next key must be published before it may be promoted.
	TrustRefresh time.Duration
	// MaxTTL per CA: how long a retired key's certificates may live.
	MaxUserTTL, MaxHostTTL time.Duration
	Now                    func() time.Time
}

func (m *Manager) now() time.Time {
	if m.Now != nil {
		return m.Now()
	}
	return time.Now()
}

func (m *Manager) maxTTL(kind ca.CertKind) time.Duration {
	if kind == ca.HostCert {
		return m.MaxHostTTL
	}
	return m.MaxUserTTL
}

// Generate creates a key in the KMS and adds it as the CA's next key. A user CA key is
// published to bastions at once, so hosts trust it before it signs anything.
func (m *Manager) Generate(ctx context.Context, kind ca.CertKind, typ kms.KeyType) (ca.CAKey, error) {
	var b [6]byte
	_, _ = rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	ref := kms.KeyRef{KMS: m.KMS}
	if strings.HasPrefix(m.KMS, "pkcs11:") {
		ref.Key = fmt.Sprintf("pkcs11:id=%s;object=sshca-%s-ca-%s", id, kind, id)
	} else {
		ref.Key = "softkms:path=" + filepath.Join(m.KeyDir, fmt.Sprintf("%s_ca_%s.pem", kind, id))
	}
	key, err := kms.Create(ctx, ref, typ)
	if err != nil {
		return ca.CAKey{}, ca.Invalid("cannot create a %s key: %v", typ, err)
	}
	defer key.Close()
	pub := key.Signer().PublicKey()
	k := ca.CAKey{CA: kind, KMS: ref.KMS, Key: ref.Key, PublicKey: authorizedLine(pub), Fingerprint: ssh.FingerprintSHA256(pub), Algorithm: pub.Type()}
	r, err := m.update(ctx, func(r *ca.Keyring) error { return r.AddNext(k, m.now()) })
	if err != nil {
		return ca.CAKey{}, err
	}
	switch kind {
	case ca.UserCert:
		if err := m.Store.RegisterCA(ctx, pub); err != nil {
			return ca.CAKey{}, ca.Unavailable("key added, but not yet published to bastions", err)
		}
	case ca.HostCert:
		// Registered now, not at the next serve start: a host revocation under this key
		// before then would otherwise be listed in the user KRL.
		if err := m.Store.RegisterHostCA(ctx, pub); err != nil {
			return ca.CAKey{}, ca.Unavailable("key added, but not yet registered as a host CA key", err)
		}
	}
	return find(r, k.Fingerprint), nil
}

// Promote makes the CA's next key active.
func (m *Manager) Promote(ctx context.Context, kind ca.CertKind, force bool) (ca.CAKey, error) {
	var out ca.CAKey
	_, err := m.update(ctx, func(r *ca.Keyring) error {
		k, err := r.Promote(kind, m.now(), m.TrustRefresh, m.maxTTL(kind), force)
		out = k
		return err
	})
	return out, err
}

// Retire withdraws a retired key from publication.
func (m *Manager) Retire(ctx context.Context, fp string, force bool) (ca.CAKey, error) {
	var out ca.CAKey
	if _, err := m.update(ctx, func(r *ca.Keyring) error {
		k, err := r.Retire(fp, m.now(), force)
		out = k
		return err
	}); err != nil {
		return ca.CAKey{}, err
	}
	if out.CA == ca.UserCert {
		if err := m.Store.UnregisterCA(ctx, out.PublicKey); err != nil {
			return out, ca.Unavailable("retired, but bastions may trust it until their next refresh", err)
		}
	}
	return out, nil
}

// Compromised withdraws a key at once, and bans it for good in the store: its public key goes
// into the revocation scopes revocation.CompromiseScopes names (its own, then the active key's
// of its kind) and with them into the keys refused at signing time (store.Keys.RevokedKeys),
// which every replica's admission reads before it signs, so another replica whose key ring has
// not refreshed yet (keyring.refresh) signs nothing more with it. For the user CA the ban
// puts the key into the user KRL, so bastions refuse every certificate it signed within a
// second, and bastions stop trusting it. For the host CA the scopes are host CA keys' (the
// host KRL, GET /v1/krl/host, and @revoked lines in /v1/ca/known_hosts): both keys are
// registered as host CA keys first (RegisterHostCA, idempotent), because a scope whose key is
// not registered so is listed among the user CA keys the user KRL is built from.
func (m *Manager) Compromised(ctx context.Context, fp string) (ca.CAKey, error) {
	var out ca.CAKey
	var active ca.CAKey
	if _, err := m.update(ctx, func(r *ca.Keyring) error {
		k, err := r.MarkCompromised(fp, m.now())
		out = k
		active, _ = r.Active(k.CA)
		return err
	}); err != nil {
		return ca.CAKey{}, err
	}
	bad, err := out.SSHPublicKey()
	if err != nil {
		return out, err
	}
	scope, err := active.SSHPublicKey()
	if err != nil {
		return out, err
	}
	const again = "marked compromised, but not yet banned in the store (other replicas may sign with it until their key ring refreshes): run the command again"
	if out.CA == ca.HostCert {
		for _, k := range []ssh.PublicKey{bad, scope} {
			if err := m.Store.RegisterHostCA(ctx, k); err != nil {
				return out, ca.Unavailable(again, err)
			}
		}
	}
	// For as long as the key is marked compromised, which is for good: permanent (zero Expiry).
	// One that lapsed after max_user_ttl would let a host that pulls the KRL, but trusts the key
	// from an earlier user.pub, accept certificates minted with the stolen key.
	entry := ca.RevocationEntry{Kind: ca.RevokedKey, Value: revocation.KeyEntry(bad)}
	for _, sc := range revocation.CompromiseScopes(bad, scope) {
		if _, err := m.Store.Revoke(ctx, sc, []ca.RevocationEntry{entry}); err != nil {
			return out, ca.Unavailable(again, err)
		}
	}
	if out.CA != ca.UserCert {
		return out, nil
	}
	if err := m.Store.UnregisterCA(ctx, out.PublicKey); err != nil {
		return out, ca.Unavailable("in the KRL, but bastions may trust it until their next refresh", err)
	}
	return out, nil
}

// update is m.Store.UpdateKeyring with the store's failures classified: an error of fn (the
// keyring's own refusals) or one the store already classified stays as it is; any other is
// the store not answering, a dependency failure (503), not a fault of ours.
func (m *Manager) update(ctx context.Context, fn func(*ca.Keyring) error) (ca.Keyring, error) {
	r, err := m.Store.UpdateKeyring(ctx, fn)
	var e *ca.Error
	if err != nil && !errors.As(err, &e) {
		return r, ca.Unavailable("keyring store unavailable", err)
	}
	return r, err
}

func find(r ca.Keyring, fp string) ca.CAKey {
	for _, k := range r.Keys {
		if k.Fingerprint == fp {
			return k
		}
	}
	return ca.CAKey{}
}
