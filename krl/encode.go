package krl

import (
	"encoding/binary"
	"fmt"
)

// Wire constants from PROTOCOL.krl.
const (
	magic         = "SSHKRL\n\x00"
	formatVersion = 1

	sectionCertificates   = 1
	sectionExplicitKey    = 2
	sectionFingerprintSHA = 3
	sectionSignature      = 4
	sectionFingerprint256 = 5
	sectionExtension      = 255

	certSerialList   = 0x20
	certSerialRange  = 0x21
	certSerialBitmap = 0x22
	certKeyID        = 0x23
	certExtension    = 0x39
)

// maxBitmapBits is the widest bitmap OpenSSH reads: its bignum parser refuses more than
// 16384 bits (SSHBUF_MAX_BIGNUM), so krl.c's own encoder could write bitmaps sshd rejects.
const maxBitmapBits = 16384

// MarshalBinary encodes k in the KRL format (canonical form, see KRL). It fails on a serial
// range containing 0 or with Lo > Hi, a NUL byte in the comment or a key ID, a CA key that is
// a certificate, or a date before 1970.
func (k *KRL) MarshalBinary() ([]byte, error) {
	n, err := k.normalize()
	if err != nil {
		return nil, err
	}
	var date uint64
	if !n.GeneratedDate.IsZero() {
		date = uint64(n.GeneratedDate.Unix())
	}
	b := make([]byte, 0, n.sizeHint())
	b = append(b, magic...)
	b = binary.BigEndian.AppendUint32(b, formatVersion)
	b = binary.BigEndian.AppendUint64(b, n.Version)
	b = binary.BigEndian.AppendUint64(b, date)
	b = binary.BigEndian.AppendUint64(b, 0) // flags: none defined
	b = appendString(b, nil)                // reserved
	b = appendString(b, []byte(n.Comment))

	for _, s := range n.Certificates {
		b = append(b, sectionCertificates)
		at := beginString(&b)
		b = appendString(b, keyBlob(s.CA))
		b = appendString(b, nil) // reserved
		b, err = appendSerials(b, s.Serials)
		if err != nil {
			return nil, err
		}
		if len(s.KeyIDs) > 0 {
			b = append(b, certKeyID)
			at := beginString(&b)
			for _, id := range s.KeyIDs {
				b = appendString(b, []byte(id))
			}
			endString(b, at)
		}
		endString(b, at)
	}
	if len(n.RevokedKeys) > 0 {
		b = append(b, sectionExplicitKey)
		at := beginString(&b)
		for _, key := range n.RevokedKeys {
			b = appendString(b, key.Marshal())
		}
		endString(b, at)
	}
	if len(n.RevokedSHA1) > 0 {
		b = append(b, sectionFingerprintSHA)
		at := beginString(&b)
		for _, h := range n.RevokedSHA1 {
			b = appendString(b, h[:])
		}
		endString(b, at)
	}
	if len(n.RevokedSHA256) > 0 {
		b = append(b, sectionFingerprint256)
		at := beginString(&b)
		for _, h := range n.RevokedSHA256 {
			b = appendString(b, h[:])
		}
		endString(b, at)
	}
	return b, nil
}

// sizeHint is an upper bound of the encoded size for the common case, to allocate once.
func (k *KRL) sizeHint() int {
	n := 128 + len(k.Comment) + (4+20)*len(k.RevokedSHA1) + (4+32)*len(k.RevokedSHA256)
	for _, s := range k.Certificates {
		n += 64 + 8*len(s.Serials)
		for _, id := range s.KeyIDs {
			n += 4 + len(id)
		}
	}
	return n + 128*len(k.RevokedKeys)
}

// appendSerials writes the serial subsections for sorted, merged ranges, choosing for each
// run between the list, range and bitmap encodings with krl.c's cost model
// (revoked_certs_generate / choose_next_state), so our output matches ssh-keygen's in size.
func appendSerials(b []byte, rs []SerialRange) ([]byte, error) {
	var (
		state       byte // current subsection type; 0: none open
		at          int  // offset of the open subsection's length
		last        uint64
		bitmapStart uint64
		bitmap      []byte // bit i is serial bitmapStart+i, little-endian by bit
	)
	finish := func() {
		if state == certSerialBitmap {
			b = appendBitmap(b, bitmap)
		}
		endString(b, at)
	}
	for i, r := range rs {
		final := i == len(rs)-1
		var gap uint64
		if !final {
			gap = rs[i+1].Lo - r.Hi
		}
		contig := r.Hi - r.Lo + 1 // no overflow: Lo > 0
		var lastGap uint64
		if state != 0 {
			lastGap = r.Lo - last
		}
		next, restart := chooseNext(state, contig, final, lastGap, gap)
		if next == certSerialBitmap {
			start := bitmapStart
			if state != certSerialBitmap || restart {
				start = r.Lo
			}
			if r.Hi-start >= maxBitmapBits {
				if start != r.Lo {
					// The open bitmap cannot grow this far: decide as if starting afresh.
					next, _ = chooseNext(0, contig, final, 0, gap)
					restart = true
				}
				if next == certSerialBitmap && r.Hi-r.Lo >= maxBitmapBits {
					next, restart = certSerialRange, false
				}
			}
		}
		if state != 0 && (restart || next != state || state == certSerialRange) {
			finish()
		}
		if state == 0 || next != state || restart || state == certSerialRange {
			state = next
			b = append(b, state)
			at = beginString(&b)
			if state == certSerialBitmap {
				bitmapStart = r.Lo
				bitmap = bitmap[:0]
				b = binary.BigEndian.AppendUint64(b, bitmapStart)
			}
		}
		switch state {
		case certSerialList:
			for s := r.Lo; ; s++ {
				b = binary.BigEndian.AppendUint64(b, s)
				if s == r.Hi {
					break
				}
			}
		case certSerialRange:
			b = binary.BigEndian.AppendUint64(b, r.Lo)
			b = binary.BigEndian.AppendUint64(b, r.Hi)
		case certSerialBitmap:
			if r.Hi-bitmapStart >= maxBitmapBits {
				return nil, fmt.Errorf("krl: internal error: bitmap of %d bits", r.Hi-bitmapStart+1)
			}
			for s := r.Lo - bitmapStart; s <= r.Hi-bitmapStart; s++ {
				for uint64(len(bitmap)) <= s/8 {
					bitmap = append(bitmap, 0)
				}
				bitmap[s/8] |= 1 << (s % 8)
			}
		}
		last = r.Hi
	}
	if state != 0 {
		finish()
	}
	return b, nil
}

// chooseNext is krl.c's choose_next_state: a bit-cost estimate of continuing or starting each
// subsection type for the next run of contig serials, given the gaps to the previous and next
// runs. It returns the chosen type and whether a new bitmap must be started.
func chooseNext(current byte, contig uint64, final bool, lastGap, nextGap uint64) (byte, bool) {
	const limit = 1 << 31 // keeps the sums below from overflowing
	contig, lastGap, nextGap = min(contig, limit), min(lastGap, limit), min(nextGap, limit)

	var costList, costBitmap, costBitmapRestart uint64
	costRange := uint64(8)
	switch current {
	case certSerialList:
		costBitmapRestart, costBitmap = 8+64, 8+64
	case certSerialBitmap:
		costList, costBitmapRestart = 8, 8+64
	default: // range or none
		costBitmapRestart, costBitmap = 8+64, 8+64
		costList = 8
	}
	var tail, bitmapTail uint64
	if !final {
		tail, bitmapTail = 8+64, min(nextGap, 8+64)
	}
	costList += 64*contig + tail
	costRange += 2*64 + tail
	costBitmap += lastGap + contig + bitmapTail
	costBitmapRestart += contig + bitmapTail

	costList, costRange = (costList+7)/8, (costRange+7)/8
	costBitmap, costBitmapRestart = (costBitmap+7)/8, (costBitmapRestart+7)/8

	next, cost, restart := byte(certSerialBitmap), costBitmap, false
	if costRange < cost {
		next, cost = certSerialRange, costRange
	}
	if costList < cost {
		next, cost = certSerialList, costList
	}
	if costBitmapRestart < cost {
		next, restart = certSerialBitmap, true
	}
	return next, restart
}

// appendBitmap writes bits (little-endian by bit) as a positive SSH mpint.
func appendBitmap(b []byte, bits []byte) []byte {
	for len(bits) > 0 && bits[len(bits)-1] == 0 {
		bits = bits[:len(bits)-1]
	}
	n := len(bits)
	pad := n > 0 && bits[n-1]&0x80 != 0
	if pad {
		n++
	}
	b = binary.BigEndian.AppendUint32(b, uint32(n))
	if pad {
		b = append(b, 0)
	}
	for i := len(bits) - 1; i >= 0; i-- {
		b = append(b, bits[i])
	}
	return b
}

func appendString(b, s []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

// beginString reserves a length prefix and returns its offset for endString.
func beginString(b *[]byte) int {
	at := len(*b)
	*b = append(*b, 0, 0, 0, 0)
	return at
}

func endString(b []byte, at int) {
	binary.BigEndian.PutUint32(b[at:], uint32(len(b)-at-4))
}
