package krl

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"golang.org/x/crypto/ssh"
)

// Errors Parse wraps, for callers that need to tell them apart.
var (
	// ErrBadMagic: the input is not a KRL at all.
	ErrBadMagic = errors.New("krl: not a KRL (bad magic)")
	// ErrSigned: the KRL carries a KRL_SECTION_SIGNATURE. OpenSSH 9.4 and later refuse such
	// KRLs and so does Parse; authenticate KRLs with SSHSIG instead.
	ErrSigned = errors.New("krl: signed KRLs are not supported")
	// ErrMalformed: the input is truncated or breaks PROTOCOL.krl.
	ErrMalformed = errors.New("krl: malformed")
)

// maxBitmapBytes is the largest bitmap mpint OpenSSH accepts, counting a zero sign byte.
const maxBitmapBytes = maxBitmapBits/8 + 1

// Parse decodes a KRL and returns it in canonical form (see KRL). It never panics; it rejects
// with an error wrapping ErrBadMagic, ErrSigned or ErrMalformed anything OpenSSH 9.x rejects
// (truncation, trailing bytes in a section, unknown section types, serial 0, bitmaps wider than
// 16384 bits or running past 2^64, hashes of the wrong length) and, in addition:
//   - signature sections (see ErrSigned);
//   - critical extensions (non-critical ones, such as the Bloom filters of PROTOCOL.krl, are
//     skipped; OpenSSH 9.2 rejects every extension);
//   - key blobs x/crypto/ssh cannot parse, and certificates given as a CA or revoked key;
//   - a generated date after 2^62 seconds, which time.Time cannot round-trip.
//
// Flags and reserved fields are ignored, as OpenSSH does. Memory use is proportional to the
// number of separate serial runs, which a bitmap can make up to 64 times the input size.
func Parse(b []byte) (*KRL, error) {
	if len(b) < len(magic) || string(b[:len(magic)]) != magic {
		return nil, ErrBadMagic
	}
	r := reader{b[len(magic):]}
	if v, err := r.u32(); err != nil {
		return nil, malformed("header", err)
	} else if v != formatVersion {
		return nil, fmt.Errorf("%w: format version %d, want %d", ErrMalformed, v, formatVersion)
	}
	k := &KRL{}
	var date uint64
	var err error
	if k.Version, err = r.u64(); err != nil {
		return nil, malformed("header", err)
	}
	if date, err = r.u64(); err != nil {
		return nil, malformed("header", err)
	}
	if _, err = r.u64(); err != nil { // flags
		return nil, malformed("header", err)
	}
	if _, err = r.str(); err != nil { // reserved
		return nil, malformed("header", err)
	}
	comment, err := r.cstring()
	if err != nil {
		return nil, malformed("comment", err)
	}
	k.Comment = comment
	if date > maxDate {
		return nil, fmt.Errorf("%w: generated date %d out of range", ErrMalformed, date)
	}
	if date != 0 {
		k.GeneratedDate = time.Unix(int64(date), 0).UTC()
	}

	for len(r.b) > 0 {
		typ, err := r.u8()
		if err != nil {
			return nil, malformed("section", err)
		}
		if typ == sectionSignature {
			return nil, ErrSigned
		}
		data, err := r.str()
		if err != nil {
			return nil, malformed(fmt.Sprintf("section %d", typ), err)
		}
		s := reader{data}
		switch typ {
		case sectionCertificates:
			err = k.parseCertificates(&s)
		case sectionExplicitKey:
			for len(s.b) > 0 && err == nil {
				var blob []byte
				if blob, err = s.str(); err != nil {
					break
				}
				var key ssh.PublicKey
				if key, err = ssh.ParsePublicKey(blob); err != nil {
					break
				}
				if _, ok := key.(*ssh.Certificate); ok {
					err = errors.New("revoked key is a certificate")
					break
				}
				k.RevokedKeys = append(k.RevokedKeys, key)
			}
		case sectionFingerprintSHA:
			err = parseHashes(&s, sha1.Size, func(h []byte) {
				k.RevokedSHA1 = append(k.RevokedSHA1, [sha1.Size]byte(h))
			})
		case sectionFingerprint256:
			err = parseHashes(&s, sha256.Size, func(h []byte) {
				k.RevokedSHA256 = append(k.RevokedSHA256, [sha256.Size]byte(h))
			})
		case sectionExtension:
			err = parseExtension(&s)
		default:
			err = errors.New("unknown section type")
		}
		if err == nil && len(s.b) > 0 {
			err = errors.New("trailing data")
		}
		if err != nil {
			return nil, malformed(fmt.Sprintf("section %d", typ), err)
		}
	}
	n, err := k.normalize()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return n, nil
}

// parseCertificates parses a KRL_SECTION_CERTIFICATES body.
func (k *KRL) parseCertificates(r *reader) error {
	caBlob, err := r.str()
	if err != nil {
		return err
	}
	if _, err := r.str(); err != nil { // reserved
		return err
	}
	var ca ssh.PublicKey
	if len(caBlob) > 0 {
		if ca, err = ssh.ParsePublicKey(caBlob); err != nil {
			return fmt.Errorf("CA key: %w", err)
		}
		if _, ok := ca.(*ssh.Certificate); ok {
			return errors.New("CA key is a certificate")
		}
	}
	sec := &CertificateSection{CA: ca}
	k.Certificates = append(k.Certificates, sec) // normalize merges sections of one CA
	for len(r.b) > 0 {
		typ, err := r.u8()
		if err != nil {
			return err
		}
		data, err := r.str()
		if err != nil {
			return err
		}
		s := reader{data}
		switch typ {
		case certSerialList:
			if len(data)%8 != 0 {
				err = errShort
				break
			}
			sec.Serials = slices.Grow(sec.Serials, len(data)/8)
			for len(s.b) > 0 {
				n, _ := s.u64()
				if n == 0 {
					return errors.New("serial 0")
				}
				sec.Serials = append(sec.Serials, SerialRange{n, n})
			}
		case certSerialRange:
			var lo, hi uint64
			if lo, err = s.u64(); err != nil {
				break
			}
			if hi, err = s.u64(); err != nil {
				break
			}
			if lo == 0 || lo > hi {
				return fmt.Errorf("invalid serial range %d-%d", lo, hi)
			}
			sec.Serials = append(sec.Serials, SerialRange{lo, hi})
		case certSerialBitmap:
			sec.Serials, err = parseBitmap(&s, sec.Serials)
		case certKeyID:
			for len(s.b) > 0 && err == nil {
				var id string
				if id, err = s.cstring(); err == nil {
					sec.KeyIDs = append(sec.KeyIDs, id)
				}
			}
		case certExtension:
			err = parseExtension(&s)
		default:
			err = errors.New("unknown type")
		}
		if err == nil && len(s.b) > 0 {
			err = errors.New("trailing data")
		}
		if err != nil {
			return fmt.Errorf("subsection %#x: %w", typ, err)
		}
	}
	return nil
}

// parseBitmap parses a serial_offset and bitmap mpint and appends its runs of set bits.
func parseBitmap(r *reader, out []SerialRange) ([]SerialRange, error) {
	offset, err := r.u64()
	if err != nil {
		return out, err
	}
	m, err := r.str()
	if err != nil {
		return out, err
	}
	// Mirror sshbuf_get_bignum2_bytes_direct: no negative numbers, no more than 16384 bits.
	if len(m) > 0 && m[0]&0x80 != 0 {
		return out, errors.New("negative bitmap")
	}
	if len(m) > maxBitmapBytes || (len(m) == maxBitmapBytes && m[0] != 0) {
		return out, errors.New("bitmap too large")
	}
	m = bytes.TrimLeft(m, "\x00")
	if len(m) == 0 {
		return out, nil
	}
	nbits := uint64(len(m))*8 - uint64(bitsLeadingZeros(m[0]))
	if offset+nbits-1 < offset {
		return out, errors.New("bitmap wraps past 2^64")
	}
	inRun := false
	for i := range nbits {
		set := m[len(m)-1-int(i/8)]&(1<<(i%8)) != 0
		switch {
		case set && !inRun:
			if offset+i == 0 {
				return out, errors.New("serial 0")
			}
			out = append(out, SerialRange{offset + i, offset + i})
			inRun = true
		case set:
			out[len(out)-1].Hi = offset + i
		default:
			inRun = false
		}
	}
	return out, nil
}

func bitsLeadingZeros(b byte) int {
	n := 0
	for mask := byte(0x80); mask != 0 && b&mask == 0; mask >>= 1 {
		n++
	}
	return n
}

// parseExtension parses an extension body; only non-critical extensions are skipped.
func parseExtension(r *reader) error {
	name, err := r.str()
	if err != nil {
		return err
	}
	critical, err := r.u8()
	if err != nil {
		return err
	}
	if _, err := r.str(); err != nil {
		return err
	}
	if critical != 0 {
		return fmt.Errorf("unsupported critical extension %q", name)
	}
	return nil
}

// parseHashes parses a fingerprint section of size-byte hashes.
func parseHashes(r *reader, size int, add func([]byte)) error {
	for len(r.b) > 0 {
		h, err := r.str()
		if err != nil {
			return err
		}
		if len(h) != size {
			return fmt.Errorf("hash of %d bytes, want %d", len(h), size)
		}
		add(h)
	}
	return nil
}

func malformed(what string, err error) error {
	return fmt.Errorf("%w: %s: %w", ErrMalformed, what, err)
}

var errShort = errors.New("truncated")

// reader reads SSH wire types from b, consuming it.
type reader struct{ b []byte }

func (r *reader) u8() (byte, error) {
	if len(r.b) < 1 {
		return 0, errShort
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v, nil
}

func (r *reader) u32() (uint32, error) {
	if len(r.b) < 4 {
		return 0, errShort
	}
	v := binary.BigEndian.Uint32(r.b)
	r.b = r.b[4:]
	return v, nil
}

func (r *reader) u64() (uint64, error) {
	if len(r.b) < 8 {
		return 0, errShort
	}
	v := binary.BigEndian.Uint64(r.b)
	r.b = r.b[8:]
	return v, nil
}

func (r *reader) str() ([]byte, error) {
	n, err := r.u32()
	if err != nil {
		return nil, err
	}
	if uint64(n) > uint64(len(r.b)) {
		return nil, errShort
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v, nil
}

// cstring reads a string that must not contain NUL, as sshbuf_get_cstring requires.
func (r *reader) cstring() (string, error) {
	v, err := r.str()
	if err != nil {
		return "", err
	}
	if bytes.IndexByte(v, 0) >= 0 {
		return "", errNUL
	}
	return string(v), nil
}
