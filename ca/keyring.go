package ca

import (
	"fmt"
	"time"

	"golang.org/x/crypto/ssh"
)

// KeyState is where a CA key is in its life: next → active → retired, or compromised.
type KeyState string

const (
	// KeyNext is published (hosts and clients learn to trust it) but signs nothing yet.
	KeyNext KeyState = "next"
	// KeyActive signs. Exactly one key per CA is active.
	KeyActive KeyState = "active"
	// KeyRetired signs nothing; it stays published until RetireAfter, when every certificate
	// it signed has expired.
	KeyRetired KeyState = "retired"
	// KeyCompromised is withdrawn at once and announced as revoked.
	KeyCompromised KeyState = "compromised"
)

// CAKey is one key of a keyring. The key material stays in the KMS; the keyring holds where it
// is, what it is, and its state and times.
type CAKey struct {
	CA          CertKind  `json:"ca"`
	KMS         string    `json:"kms"`
	Key         string    `json:"key"`
	PublicKey   string    `json:"public_key"` // authorized_keys form
	Fingerprint string    `json:"fingerprint"`
	Algorithm   string    `json:"algorithm"`
	State       KeyState  `json:"state"`
	Created     time.Time `json:"created"`
	Promoted    time.Time `json:"promoted,omitzero"`
	Demoted     time.Time `json:"demoted,omitzero"`
	RetireAfter time.Time `json:"retire_after,omitzero"`
}

// SSHPublicKey parses the key's public half.
func (k CAKey) SSHPublicKey() (ssh.PublicKey, error) {
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k.PublicKey))
	if err != nil {
		return nil, fmt.Errorf("keyring: key %s: %w", k.Fingerprint, err)
	}
	return pub, nil
}

// Keyring is every CA key of the user and host CAs, at a version.
type Keyring struct {
	Version uint64  `json:"version"`
	Keys    []CAKey `json:"keys"`
}

// Active is the CA's signing key.
func (r Keyring) Active(ca CertKind) (CAKey, bool) {
	for _, k := range r.Keys {
		if k.CA == ca && k.State == KeyActive {
			return k, true
		}
	}
	return CAKey{}, false
}

// Published are the keys hosts and clients trust at now: next, active, and retired keys
// whose certificates may still be valid.
func (r Keyring) Published(ca CertKind, now time.Time) []CAKey {
	var out []CAKey
	for _, k := range r.Keys {
		if k.CA != ca {
			continue
		}
		if k.State == KeyNext || k.State == KeyActive || (k.State == KeyRetired && k.RetireAfter.After(now)) {
			out = append(out, k)
		}
	}
	return out
}

// Compromised are the CA's compromised keys.
func (r Keyring) Compromised(ca CertKind) []CAKey {
	var out []CAKey
	for _, k := range r.Keys {
		if k.CA == ca && k.State == KeyCompromised {
			out = append(out, k)
		}
	}
	return out
}

func (r *Keyring) find(fp string) (*CAKey, error) {
	for i := range r.Keys {
		if r.Keys[i].Fingerprint == fp {
			return &r.Keys[i], nil
		}
	}
	return nil, &Error{Kind: KindNotFound, Msg: fmt.Sprintf("no CA key with fingerprint %s in the keyring", fp)}
}

// AddNext adds a new key as the CA's next key. There is at most one next key per CA.
func (r *Keyring) AddNext(k CAKey, now time.Time) error {
	for _, o := range r.Keys {
		if o.CA == k.CA && o.State == KeyNext {
			return &Error{Kind: KindConflict, Msg: fmt.Sprintf("the %s CA already has a next key (%s): promote it or mark it compromised first", k.CA, o.Fingerprint)}
		}
		if o.Fingerprint == k.Fingerprint {
			return &Error{Kind: KindConflict, Msg: "that key is already in the keyring"}
		}
	}
	k.State, k.Created = KeyNext, now
	r.Keys = append(r.Keys, k)
	return nil
}

// Promote makes the CA's next key active and the active key retired (published until every
// certificate it signed has expired: maxTTL from now). It refuses a next key published for
// less than trustRefresh (hosts must have fetched it), unless force.
func (r *Keyring) Promote(ca CertKind, now time.Time, trustRefresh, maxTTL time.Duration, force bool) (CAKey, error) {
	var next *CAKey
	for i := range r.Keys {
		if r.Keys[i].CA == ca && r.Keys[i].State == KeyNext {
			next = &r.Keys[i]
		}
	}
	if next == nil {
		return CAKey{}, &Error{Kind: KindConflict, Msg: fmt.Sprintf("the %s CA has no next key: generate one first", ca)}
	}
	if age := now.Sub(next.Created); age < trustRefresh && !force {
		return CAKey{}, &Error{Kind: KindConflict, Msg: fmt.Sprintf("key %s has been published for %s only; hosts refresh their trust every %s: wait %s or use --force",
			next.Fingerprint, age.Round(time.Second), trustRefresh, (trustRefresh - age).Round(time.Second))}
	}
	for i := range r.Keys {
		if r.Keys[i].CA == ca && r.Keys[i].State == KeyActive {
			r.Keys[i].State, r.Keys[i].Demoted, r.Keys[i].RetireAfter = KeyRetired, now, now.Add(maxTTL)
		}
	}
	next.State, next.Promoted = KeyActive, now
	return *next, nil
}

// Retire withdraws a retired key from publication. It refuses while certificates it signed may
// still be valid, unless force.
func (r *Keyring) Retire(fp string, now time.Time, force bool) (CAKey, error) {
	k, err := r.find(fp)
	if err != nil {
		return CAKey{}, err
	}
	if k.State != KeyRetired {
		return CAKey{}, &Error{Kind: KindConflict, Msg: fmt.Sprintf("key %s is %s; only a retired key (promoted away from) can be withdrawn", fp, k.State)}
	}
	if k.RetireAfter.After(now) && !force {
		return CAKey{}, &Error{Kind: KindConflict, Msg: fmt.Sprintf("certificates signed by %s may be valid until %s: wait, or use --force", fp, k.RetireAfter.UTC().Format(time.RFC3339))}
	}
	k.RetireAfter = now
	return *k, nil
}

// MarkCompromised withdraws a key at once. The active key cannot be marked while no other key
// could sign: generate and promote a new key first (an emergency promotion may use --force).
func (r *Keyring) MarkCompromised(fp string, now time.Time) (CAKey, error) {
	k, err := r.find(fp)
	if err != nil {
		return CAKey{}, err
	}
	if k.State == KeyActive {
		return CAKey{}, &Error{Kind: KindConflict, Msg: fmt.Sprintf("key %s is the active %s key: generate a new key and promote it with --force first, then mark this one", fp, k.CA)}
	}
	k.State, k.Demoted, k.RetireAfter = KeyCompromised, now, now
	return *k, nil
}
