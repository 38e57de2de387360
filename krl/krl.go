package krl

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// KRL is a key revocation list. The zero value is an empty KRL.
//
// The fields may hold entries in any order and with duplicates or overlaps; MarshalBinary
// writes them sorted and merged, and Parse returns them in that canonical form: one
// CertificateSection per CA in order of first appearance, serial ranges sorted and merged
// (adjacent ranges joined), key IDs, keys and hashes sorted by their bytes and deduplicated,
// and sections without entries dropped. A KRL is not safe for concurrent mutation; concurrent
// reads (MarshalBinary, IsRevoked) are safe.
type KRL struct {
	// Version increases each time the KRL is modified (krl_version).
	Version uint64
	// GeneratedDate has a resolution of one second; the zero Time is written as 0, and 0 is
	// read back as the zero Time.
	GeneratedDate time.Time
	// Comment must not contain NUL bytes.
	Comment string
	// Certificates revokes certificates by serial number or key ID, per issuing CA.
	Certificates []*CertificateSection
	// RevokedKeys revokes plain keys (KRL_SECTION_EXPLICIT_KEY). A certificate given here is
	// revoked through its underlying key.
	RevokedKeys []ssh.PublicKey
	// RevokedSHA1 and RevokedSHA256 revoke plain keys by the hash of their wire encoding
	// (KRL_SECTION_FINGERPRINT_SHA1 and _SHA256, the raw bytes behind "SHA256:..." fingerprints).
	RevokedSHA1   [][sha1.Size]byte
	RevokedSHA256 [][sha256.Size]byte
}

// CertificateSection revokes certificates signed by one CA (KRL_SECTION_CERTIFICATES).
type CertificateSection struct {
	// CA is the issuing CA's public key; nil means any CA, which OpenSSH applies to every
	// certificate (useful for key IDs).
	CA ssh.PublicKey
	// Serials are inclusive ranges of revoked serial numbers; a single serial is {n, n}.
	// OpenSSH reserves serial 0 for "no serial", so no range may contain it.
	Serials []SerialRange
	// KeyIDs are revoked certificate key IDs; they must not contain NUL bytes.
	KeyIDs []string
}

// SerialRange is the inclusive range of serials Lo..Hi.
type SerialRange struct {
	Lo, Hi uint64
}

// maxDate bounds generated_date so that it converts to a time.Time and back unchanged.
const maxDate = 1 << 62

var errNUL = errors.New("contains a NUL byte")

// section returns the certificate section for ca (nil: any CA), creating it if needed.
func (k *KRL) section(ca ssh.PublicKey) *CertificateSection {
	want := keyBlob(ca)
	for _, s := range k.Certificates {
		if bytes.Equal(keyBlob(s.CA), want) {
			return s
		}
	}
	s := &CertificateSection{CA: ca}
	k.Certificates = append(k.Certificates, s)
	return s
}

// RevokeSerials revokes the certificates with the given serials issued by ca (nil: any CA).
func (k *KRL) RevokeSerials(ca ssh.PublicKey, serials ...uint64) {
	s := k.section(ca)
	s.Serials = slices.Grow(s.Serials, len(serials))
	for _, n := range serials {
		s.Serials = append(s.Serials, SerialRange{n, n})
	}
}

// RevokeSerialRange revokes the certificates with serials lo..hi (inclusive) issued by ca.
func (k *KRL) RevokeSerialRange(ca ssh.PublicKey, lo, hi uint64) {
	s := k.section(ca)
	s.Serials = append(s.Serials, SerialRange{lo, hi})
}

// RevokeKeyIDs revokes the certificates with the given key IDs issued by ca (nil: any CA).
func (k *KRL) RevokeKeyIDs(ca ssh.PublicKey, ids ...string) {
	s := k.section(ca)
	s.KeyIDs = append(s.KeyIDs, ids...)
}

// RevokeKey revokes a key explicitly; it and every certificate for it are revoked.
func (k *KRL) RevokeKey(key ssh.PublicKey) {
	k.RevokedKeys = append(k.RevokedKeys, plainKey(key))
}

// RevokeKeySHA1 revokes a key by the SHA-1 hash of its wire encoding.
func (k *KRL) RevokeKeySHA1(key ssh.PublicKey) {
	k.RevokedSHA1 = append(k.RevokedSHA1, sha1.Sum(plainKey(key).Marshal()))
}

// RevokeKeySHA256 revokes a key by its SHA-256 fingerprint.
func (k *KRL) RevokeKeySHA256(key ssh.PublicKey) {
	k.RevokedSHA256 = append(k.RevokedSHA256, sha256.Sum256(plainKey(key).Marshal()))
}

// IsRevoked reports whether OpenSSH would refuse cert under this KRL: its key, or its signing
// CA key, is revoked explicitly or by hash, or the certificate is revoked by serial or key ID
// in the section for its CA or the any-CA section. Serial 0 ("no serial") is never revoked
// by serial. Like OpenSSH it does not check which CAs are trusted. It scans the KRL, so it
// costs time linear in the KRL's size.
func (k *KRL) IsRevoked(cert *ssh.Certificate) bool {
	if cert == nil {
		return false
	}
	if k.keyRevoked(cert.Key) {
		return true
	}
	ca := keyBlob(cert.SignatureKey)
	for _, s := range k.Certificates {
		if s.CA != nil && !bytes.Equal(keyBlob(s.CA), ca) {
			continue
		}
		if slices.Contains(s.KeyIDs, cert.KeyId) {
			return true
		}
		if cert.Serial != 0 {
			for _, r := range s.Serials {
				if r.Lo <= cert.Serial && cert.Serial <= r.Hi {
					return true
				}
			}
		}
	}
	return cert.SignatureKey != nil && k.keyRevoked(cert.SignatureKey)
}

// IsKeyRevoked reports whether key is revoked: explicitly or by hash for a plain key, as by
// IsRevoked for a certificate.
func (k *KRL) IsKeyRevoked(key ssh.PublicKey) bool {
	if c, ok := key.(*ssh.Certificate); ok {
		return k.IsRevoked(c)
	}
	return k.keyRevoked(key)
}

func (k *KRL) keyRevoked(key ssh.PublicKey) bool {
	key = plainKey(key)
	if key == nil {
		return false
	}
	blob := key.Marshal()
	if len(k.RevokedSHA1) > 0 && slices.Contains(k.RevokedSHA1, sha1.Sum(blob)) {
		return true
	}
	if len(k.RevokedSHA256) > 0 && slices.Contains(k.RevokedSHA256, sha256.Sum256(blob)) {
		return true
	}
	return slices.ContainsFunc(k.RevokedKeys, func(r ssh.PublicKey) bool {
		return bytes.Equal(keyBlob(plainKey(r)), blob)
	})
}

// plainKey strips the certificate from a certificate key, as OpenSSH does before hashing or
// comparing revoked keys.
func plainKey(key ssh.PublicKey) ssh.PublicKey {
	if c, ok := key.(*ssh.Certificate); ok {
		return c.Key
	}
	return key
}

// keyBlob is key's wire encoding, or nil for a nil key (the any-CA section's empty ca_key).
func keyBlob(key ssh.PublicKey) []byte {
	if key == nil {
		return nil
	}
	return key.Marshal()
}

// normalize returns k in canonical form (see KRL) without modifying k, or the first reason k
// cannot be encoded.
func (k *KRL) normalize() (*KRL, error) {
	n := &KRL{Version: k.Version, Comment: k.Comment}
	if strings.IndexByte(k.Comment, 0) >= 0 {
		return nil, fmt.Errorf("krl: comment %w", errNUL)
	}
	if !k.GeneratedDate.IsZero() {
		sec := k.GeneratedDate.Unix()
		if sec < 0 || sec > maxDate {
			return nil, fmt.Errorf("krl: generated date %v out of range", k.GeneratedDate)
		}
		if sec != 0 {
			n.GeneratedDate = time.Unix(sec, 0).UTC()
		}
	}

	var secs []*CertificateSection
	byCA := map[string]int{} // CA key blob → index in secs
	for _, s := range k.Certificates {
		if s == nil {
			continue
		}
		if _, ok := s.CA.(*ssh.Certificate); ok {
			return nil, errors.New("krl: CA key is a certificate")
		}
		blob := string(keyBlob(s.CA))
		i, ok := byCA[blob]
		if !ok {
			i = len(secs)
			byCA[blob] = i
			secs = append(secs, &CertificateSection{CA: s.CA})
		}
		m := secs[i]
		for _, r := range s.Serials {
			if r.Lo == 0 || r.Lo > r.Hi {
				return nil, fmt.Errorf("krl: invalid serial range %d-%d", r.Lo, r.Hi)
			}
		}
		m.Serials = append(m.Serials, s.Serials...)
		for _, id := range s.KeyIDs {
			if strings.IndexByte(id, 0) >= 0 {
				return nil, fmt.Errorf("krl: key ID %q %w", id, errNUL)
			}
		}
		m.KeyIDs = append(m.KeyIDs, s.KeyIDs...)
	}
	for _, s := range secs {
		s.Serials = mergeSerials(s.Serials)
		slices.Sort(s.KeyIDs)
		s.KeyIDs = slices.Compact(s.KeyIDs)
		if len(s.Serials) > 0 || len(s.KeyIDs) > 0 {
			n.Certificates = append(n.Certificates, s)
		}
	}

	type keyBlobPair struct {
		key  ssh.PublicKey
		blob []byte
	}
	keys := make([]keyBlobPair, 0, len(k.RevokedKeys))
	for _, key := range k.RevokedKeys {
		key = plainKey(key)
		if key == nil {
			return nil, errors.New("krl: nil revoked key")
		}
		keys = append(keys, keyBlobPair{key, key.Marshal()})
	}
	slices.SortFunc(keys, func(a, b keyBlobPair) int { return bytes.Compare(a.blob, b.blob) })
	keys = slices.CompactFunc(keys, func(a, b keyBlobPair) bool { return bytes.Equal(a.blob, b.blob) })
	for _, p := range keys {
		n.RevokedKeys = append(n.RevokedKeys, p.key)
	}

	n.RevokedSHA1 = sortedHashes(k.RevokedSHA1, func(h *[sha1.Size]byte) []byte { return h[:] })
	n.RevokedSHA256 = sortedHashes(k.RevokedSHA256, func(h *[sha256.Size]byte) []byte { return h[:] })
	return n, nil
}

// sortedHashes sorts a copy of hs as big-endian integers (the order PROTOCOL.krl requires)
// and drops duplicates.
func sortedHashes[H any](hs []H, bytesOf func(*H) []byte) []H {
	if len(hs) == 0 {
		return nil
	}
	out := slices.Clone(hs)
	slices.SortFunc(out, func(a, b H) int { return bytes.Compare(bytesOf(&a), bytesOf(&b)) })
	return slices.CompactFunc(out, func(a, b H) bool { return bytes.Equal(bytesOf(&a), bytesOf(&b)) })
}

// mergeSerials sorts ranges and joins overlapping and adjacent ones, in place.
func mergeSerials(rs []SerialRange) []SerialRange {
	if len(rs) == 0 {
		return nil
	}
	slices.SortFunc(rs, func(a, b SerialRange) int {
		switch {
		case a.Lo < b.Lo:
			return -1
		case a.Lo > b.Lo:
			return 1
		}
		return 0
	})
	out := rs[:1]
	for _, r := range rs[1:] {
		last := &out[len(out)-1]
		if last.Hi == ^uint64(0) || r.Lo <= last.Hi+1 {
			last.Hi = max(last.Hi, r.Hi)
			continue
		}
		out = append(out, r)
	}
	return slices.Clip(out)
}
