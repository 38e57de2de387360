// Package keyring serves the CA keys of a keyring kept in Redis: the active key signs, next,
// active and not-yet-expired retired keys are published, compromised keys are announced. Every
// replica refreshes from the shared keyring, so a rotation reaches all of them within seconds
// without a restart. Key material stays in the KMS; the keyring holds URIs and states.
package keyring

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jonboulle/clockwork"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/kms"
	"github.com/sshca/sshca/signer"
)

// CA is the keyring of one certificate authority (user or host), as a ca.Signer.
type CA struct {
	kind     ca.CertKind
	store    Document
	reserver signer.SerialReserver
	now      func() time.Time
	log      *slog.Logger

	mu     sync.Mutex
	opened map[string]*kms.Key // by fingerprint

	cur atomic.Pointer[view]
}

type view struct {
	version     uint64
	active      *signingKey
	published   []ssh.PublicKey
	compromised []ssh.PublicKey
	all         []ssh.PublicKey
	// publishedFP and compromisedFP are the fingerprints of published and compromised, as
	// the keyring lists them: what a key fixed earlier checks before it signs (maySign).
	publishedFP, compromisedFP []string
}

// signingKey is the active key of one view, as the ca.SigningKey an authority fixes for one
// certificate. It signs while the CA's current view still lets it (maySign): a rotation that
// promotes another key meanwhile leaves it signing, published until its certificates expire;
// one that marks it compromised, or withdraws it, stops it before it signs.
type signingKey struct {
	*signer.Signer // PublicKey, Fingerprint (computed once per key), Sign
	ca             *CA
}

// Sign signs tmpl with this key, unless the keyring (as this replica last refreshed it) has
// marked it compromised or withdrawn it since it was fixed: then a *ca.Error of
// KindUnavailable, and nothing signed.
func (k *signingKey) Sign(ctx context.Context, tmpl *ssh.Certificate, ttl time.Duration) (*ssh.Certificate, error) {
	if err := k.ca.cur.Load().maySign(k.ca.kind, k.Fingerprint()); err != nil {
		return nil, err
	}
	return k.Signer.Sign(ctx, tmpl, ttl)
}

// maySign: the key of fingerprint fp, fixed while it was active, may still sign in v: it is
// v's active key, or published (retired, whose certificates may still live). A compromised
// key never signs again, whatever else the keyring says of it.
func (v *view) maySign(kind ca.CertKind, fp string) error {
	switch {
	case slices.Contains(v.compromisedFP, fp):
		return ca.Unavailable(fmt.Sprintf("the %s CA key %s was marked compromised while this certificate was issued; nothing was signed: ask again", kind, fp), nil)
	case v.active.Fingerprint() == fp, slices.Contains(v.publishedFP, fp):
		return nil
	}
	return ca.Unavailable(fmt.Sprintf("the %s CA key %s was withdrawn while this certificate was issued; nothing was signed: ask again", kind, fp), nil)
}

// New loads the keyring and opens the CA's active key.
func New(ctx context.Context, kind ca.CertKind, store Document, reserver signer.SerialReserver, log *slog.Logger) (*CA, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &CA{kind: kind, store: store, reserver: reserver, now: time.Now, log: log, opened: map[string]*kms.Key{}}
	if err := c.Refresh(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// Bootstrap makes the configured key the CA's active key when the keyring has none for it yet.
func Bootstrap(ctx context.Context, store Document, kind ca.CertKind, ref kms.KeyRef, key *kms.Key) error {
	pub := key.Signer().PublicKey()
	_, err := store.UpdateKeyring(ctx, func(r *ca.Keyring) error {
		for _, k := range r.Keys {
			if k.CA == kind {
				return errNothingToDo
			}
		}
		now := time.Now()
		r.Keys = append(r.Keys, ca.CAKey{CA: kind, KMS: ref.KMS, Key: ref.Key, PublicKey: authorizedLine(pub),
			Fingerprint: ssh.FingerprintSHA256(pub), Algorithm: pub.Type(), State: ca.KeyActive, Created: now, Promoted: now})
		return nil
	})
	if errors.Is(err, errNothingToDo) {
		return nil
	}
	return err
}

var errNothingToDo = errors.New("keyring: nothing to do")

// Refresh reloads the keyring and opens a newly active key.
func (c *CA) Refresh(ctx context.Context) error {
	r, err := c.store.Keyring(ctx)
	if err != nil {
		return err
	}
	v := c.cur.Load()
	if v != nil && r.Version < v.version {
		// Read before a concurrent Refresh (the periodic one and one on demand,
		// ca.RefreshingPublisher) installed a newer key ring: that one stays in force.
		return nil
	}
	if v != nil && v.version == r.Version {
		// Retired keys leave publication with time, not with a new version.
		c.install(c.view(r, v.active))
		return nil
	}
	active, ok := r.Active(c.kind)
	if !ok {
		return fmt.Errorf("keyring: the %s CA has no active key", c.kind)
	}
	key, err := c.open(ctx, active)
	if err != nil {
		return err
	}
	c.install(c.view(r, &signingKey{Signer: signer.New(key.Signer(), c.reserver, signer.Options{}), ca: c}))
	return nil
}

// install puts v in force unless a view of a newer key ring is: two Refreshes that overlap
// (the periodic one and one on demand) install in any order, and the one that read the older
// key ring must not bring back a key marked compromised or withdrawn since.
func (c *CA) install(v *view) {
	for {
		cur := c.cur.Load()
		if cur != nil && cur.version > v.version {
			return
		}
		if c.cur.CompareAndSwap(cur, v) {
			return
		}
	}
}

func (c *CA) view(r ca.Keyring, active *signingKey) *view {
	v := &view{version: r.Version, active: active}
	for _, k := range r.Published(c.kind, c.now()) {
		if pub, err := k.SSHPublicKey(); err == nil {
			v.published = append(v.published, pub)
			v.publishedFP = append(v.publishedFP, k.Fingerprint)
		}
	}
	for _, k := range r.Keys {
		if pub, err := k.SSHPublicKey(); err == nil && k.CA == c.kind {
			v.all = append(v.all, pub)
		}
	}
	for _, k := range r.Compromised(c.kind) {
		if pub, err := k.SSHPublicKey(); err == nil {
			v.compromised = append(v.compromised, pub)
		}
		v.compromisedFP = append(v.compromisedFP, k.Fingerprint)
	}
	return v
}

func (c *CA) open(ctx context.Context, k ca.CAKey) (*kms.Key, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if key := c.opened[k.Fingerprint]; key != nil {
		return key, nil
	}
	key, err := kms.Open(ctx, kms.KeyRef{KMS: k.KMS, Key: k.Key})
	if err != nil {
		return nil, fmt.Errorf("keyring: open %s key %s: %w", c.kind, k.Fingerprint, err)
	}
	if got := ssh.FingerprintSHA256(key.Signer().PublicKey()); got != k.Fingerprint {
		key.Close()
		return nil, fmt.Errorf("keyring: the KMS key for %s has fingerprint %s", k.Fingerprint, got)
	}
	c.opened[k.Fingerprint] = key
	return key, nil
}

// Run refreshes every interval on clk's ticker (nil: the real clock) until ctx ends; a failed
// refresh is logged and keeps the keys in force, and the next tick tries again.
func (c *CA) Run(ctx context.Context, clk clockwork.Clock, every time.Duration) {
	if clk == nil {
		clk = clockwork.NewRealClock()
	}
	t := clk.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.Chan():
			if err := c.Refresh(ctx); err != nil {
				c.log.Warn("keyring refresh failed; the keys in force stay", "ca", c.kind, "err", err)
			}
		}
	}
}

// Sign signs with the active key.
func (c *CA) Sign(ctx context.Context, tmpl *ssh.Certificate, ttl time.Duration) (*ssh.Certificate, error) {
	return c.cur.Load().active.Sign(ctx, tmpl, ttl)
}

// SigningKey is the active key, fixed: it signs after a promotion too, but not once marked
// compromised or withdrawn (signingKey.Sign).
func (c *CA) SigningKey() ca.SigningKey { return c.cur.Load().active }

// PublicKey is the active key.
func (c *CA) PublicKey() ssh.PublicKey { return c.cur.Load().active.PublicKey() }

// Published are the keys to trust now (next, active, retired whose certificates may live).
func (c *CA) Published() []ssh.PublicKey { return c.cur.Load().published }

// Scopes are every key of the CA in the keyring, whatever its state: their revocations stay
// in the KRL until they expire.
func (c *CA) Scopes() []ssh.PublicKey { return c.cur.Load().all }

// Compromised are the keys announced as revoked.
func (c *CA) Compromised() []ssh.PublicKey { return c.cur.Load().compromised }

// A CA publishes its keyring to the Authority (trusted keys, @revoked lines, KRL scopes).
var _ ca.RefreshingPublisher = (*CA)(nil)

// A CA fixes the key that signs one certificate; a signer.Signer is one such key.
var (
	_ ca.KeyedSigner = (*CA)(nil)
	_ ca.SigningKey  = (*signer.Signer)(nil)
)

func authorizedLine(k ssh.PublicKey) string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
}
