// Package signer turns an approved certificate template into a signed OpenSSH certificate:
// it draws a random serial and reserves it so it is unique, sets the validity window with a
// clock-skew allowance, and signs with the CA key (rsa-sha2-512 for RSA keys, through the
// ssh.Signer the kms package hands out).
package signer

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"golang.org/x/crypto/ssh"
)

// SerialReserver reserves a serial until a time; false means it is already taken.
type SerialReserver interface {
	ReserveSerial(ctx context.Context, serial uint64, until time.Time) (bool, error)
}

// Options tune a Signer. Zero values are the defaults.
type Options struct {
	Now  func() time.Time // default time.Now
	Rand io.Reader        // default crypto/rand
	// Skew is how far in the past a certificate becomes valid (default 30s).
	Skew time.Duration
}

// KeyError is a signature the CA key (the KMS behind the ssh.Signer) did not make, as opposed
// to a refused template or a serial the store could not reserve: what metrics count as a KMS
// error. Find it with errors.As.
type KeyError struct{ Err error }

func (e *KeyError) Error() string { return "signer: sign: " + e.Err.Error() }
func (e *KeyError) Unwrap() error { return e.Err }

// Signer signs certificates with one CA key.
type Signer struct {
	key     ssh.Signer
	fp      string // key's SHA256 fingerprint
	reserve SerialReserver
	now     func() time.Time
	rand    io.Reader
	skew    time.Duration
}

// New returns a Signer for key that reserves serials through r.
func New(key ssh.Signer, r SerialReserver, o Options) *Signer {
	s := &Signer{key: key, fp: ssh.FingerprintSHA256(key.PublicKey()), reserve: r, now: o.Now, rand: o.Rand, skew: o.Skew}
	if s.now == nil {
		s.now = time.Now
	}
	if s.rand == nil {
		s.rand = rand.Reader
	}
	if s.skew == 0 {
		s.skew = 30 * time.Second
	}
	return s
}

// PublicKey is the CA public key.
func (s *Signer) PublicKey() ssh.PublicKey { return s.key.PublicKey() }

// Fingerprint is the CA public key's SHA256 fingerprint (ssh.FingerprintSHA256), computed once
// in New: the authority names it in every certificate's record, and computing it marshals the
// key by reflection (7 allocations for an Ed25519 key).
func (s *Signer) Fingerprint() string { return s.fp }

const maxSerialAttempts = 8

// Sign signs a copy of tmpl valid for ttl. The copy gets a fresh reserved serial (or tmpl's
// own when it is not zero: a serial the caller reserved until at least now+ttl), the KeyId
// tmpl.KeyId + "#<serial>", ValidAfter now-skew and ValidBefore now+ttl (or tmpl's own
// ValidAfter and ValidBefore, in unix seconds, when ValidBefore is not zero and that window is
// no wider, ends after now and not after now+ttl). The template is not modified. A template
// without principals is refused: OpenSSH treats an empty principal list as "any user" or "any
// host".
func (s *Signer) Sign(ctx context.Context, tmpl *ssh.Certificate, ttl time.Duration) (*ssh.Certificate, error) {
	if tmpl == nil || tmpl.Key == nil {
		return nil, errors.New("signer: template has no public key")
	}
	if len(tmpl.ValidPrincipals) == 0 {
		return nil, errors.New("signer: refusing to sign a certificate with no principals")
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("signer: ttl must be positive, got %s", ttl)
	}
	now := s.now()
	validAfter, validBefore := uint64(now.Add(-s.skew).Unix()), uint64(now.Add(ttl).Unix())
	// A window the caller fixed in the template (the authority, which recorded the certificate
	// before asking for it) is kept when it is no wider than the one drawn here and ends no
	// later: never a certificate that lives longer than asked.
	if va, vb := tmpl.ValidAfter, tmpl.ValidBefore; vb != 0 && va < vb && vb <= validBefore && vb > uint64(now.Unix()) && vb-va <= validBefore-validAfter {
		validAfter, validBefore = va, vb
	}
	// A serial in the template was reserved by the caller (the authority's admission, in the
	// same round trip as its other checks); otherwise draw and reserve one here.
	serial := tmpl.Serial
	if serial == 0 {
		var err error
		if serial, err = s.reserveSerial(ctx, time.Unix(int64(validBefore), 0)); err != nil {
			return nil, err
		}
	}
	c := *tmpl
	c.ValidPrincipals = append([]string(nil), tmpl.ValidPrincipals...)
	c.Permissions = ssh.Permissions{
		CriticalOptions: copyMap(tmpl.CriticalOptions),
		Extensions:      copyMap(tmpl.Extensions),
	}
	c.Serial = serial
	c.KeyId = tmpl.KeyId + "#" + strconv.FormatUint(serial, 10)
	c.ValidAfter, c.ValidBefore = validAfter, validBefore
	c.Nonce = nil // SignCert draws a fresh nonce
	if err := c.SignCert(s.rand, s.key); err != nil {
		return nil, &KeyError{Err: err}
	}
	return &c, nil
}

func (s *Signer) reserveSerial(ctx context.Context, until time.Time) (uint64, error) {
	var b [8]byte
	for range maxSerialAttempts {
		if _, err := io.ReadFull(s.rand, b[:]); err != nil {
			return 0, fmt.Errorf("signer: serial: %w", err)
		}
		serial := binary.BigEndian.Uint64(b[:])
		if serial == 0 {
			continue
		}
		ok, err := s.reserve.ReserveSerial(ctx, serial, until)
		if err != nil {
			return 0, fmt.Errorf("signer: reserve serial: %w", err)
		}
		if ok {
			return serial, nil
		}
	}
	return 0, fmt.Errorf("signer: no free serial after %d attempts", maxSerialAttempts)
}

func copyMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
