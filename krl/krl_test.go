package krl

import (
	"bytes"
	"crypto/ed25519"
	cryptorand "crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"flag"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/crypto/ssh"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// testDate is fixed so that golden files are stable.
var testDate = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// testPrivate is a deterministic Ed25519 key, so golden files are stable.
func testPrivate(seed byte) ed25519.PrivateKey {
	return ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize))
}

func testKey(t testing.TB, seed byte) ssh.PublicKey {
	t.Helper()
	pub, err := ssh.NewPublicKey(testPrivate(seed).Public())
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// cmpKeys compares keys by their wire encoding.
var cmpKeys = cmp.Comparer(func(a, b ssh.PublicKey) bool { return bytes.Equal(keyBlob(a), keyBlob(b)) })

// randomSerials returns n distinct non-zero pseudo-random 64-bit serials.
func randomSerials(n int, seed uint64) []uint64 {
	r := rand.New(rand.NewPCG(seed, seed^0x5eed))
	seen := make(map[uint64]bool, n)
	out := make([]uint64, 0, n)
	for len(out) < n {
		s := r.Uint64()
		if s != 0 && !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// strided returns count serials from start, step apart: a dense cluster.
func strided(start, step uint64, count int) []uint64 {
	out := make([]uint64, count)
	for i := range out {
		out[i] = start + uint64(i)*step
	}
	return out
}

type testCase struct {
	name string
	krl  *KRL
	// types lists the serial subsection types the encoding must use (nil: not checked).
	types []byte
}

func testCases(t testing.TB) []testCase {
	ca, ca2 := testKey(t, 1), testKey(t, 2)
	header := func() *KRL { return &KRL{Version: 7, GeneratedDate: testDate, Comment: "sshca test"} }

	list := header()
	list.RevokeSerials(ca, randomSerials(20, 1)...)

	ranges := header()
	ranges.RevokeSerialRange(ca, 1000, 5000)
	ranges.RevokeSerialRange(ca, 1, 100)
	ranges.RevokeSerialRange(ca, 1<<40, 1<<41)
	ranges.RevokeSerialRange(ca, 1<<63, ^uint64(0))

	bitmap := header()
	bitmap.RevokeSerials(ca, strided(500, 3, 100)...)

	wide := header() // a dense cluster wider than one bitmap may be
	wide.RevokeSerials(ca, strided(100000, 2, 20000)...)

	keyIDs := header()
	keyIDs.RevokeKeyIDs(ca, "stolen-laptop", "alice@example.com", "stolen-laptop")
	keyIDs.RevokeKeyIDs(nil, "compromised")

	keys := header()
	keys.RevokeKey(testKey(t, 50))
	keys.RevokeKey(testKey(t, 53))
	keys.RevokeKeySHA256(testKey(t, 51))
	keys.RevokeKeySHA1(testKey(t, 52))

	mixed := header()
	mixed.RevokeSerials(ca, randomSerials(5, 2)...)
	mixed.RevokeSerialRange(ca, 1000, 1099)
	mixed.RevokeSerials(ca, strided(5000, 3, 100)...)
	mixed.RevokeSerials(ca, 42, 44, 46, 1100) // 1100 joins the range
	mixed.RevokeKeyIDs(ca, "stolen-laptop")
	mixed.RevokeKeyIDs(nil, "compromised")
	mixed.RevokeSerials(ca2, 42)
	mixed.RevokeKeyIDs(ca2, "x")
	mixed.RevokeKey(testKey(t, 50))
	mixed.RevokeKeySHA256(testKey(t, 51))
	mixed.RevokeKeySHA1(testKey(t, 52))

	return []testCase{
		{name: "empty", krl: &KRL{}},
		{name: "header", krl: header()},
		{name: "list", krl: list, types: []byte{certSerialList}},
		{name: "range", krl: ranges, types: []byte{certSerialRange}},
		{name: "bitmap", krl: bitmap, types: []byte{certSerialBitmap}},
		{name: "bitmap-wide", krl: wide, types: []byte{certSerialBitmap}},
		{name: "keyids", krl: keyIDs},
		{name: "keys", krl: keys},
		{name: "mixed", krl: mixed, types: []byte{certSerialList, certSerialRange, certSerialBitmap}},
	}
}

func TestRoundTrip(t *testing.T) {
	for _, tc := range testCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			b, err := tc.krl.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			got, err := Parse(b)
			if err != nil {
				t.Fatal(err)
			}
			want, err := tc.krl.normalize()
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, got, cmpKeys); diff != "" {
				t.Errorf("Parse(MarshalBinary(k)) mismatch (-want +got):\n%s", diff)
			}
			b2, err := got.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(b, b2) {
				t.Error("re-encoding the decoded KRL changed its bytes")
			}
		})
	}
}

// TestSerialEncoding checks which serial encodings the encoder picks and that no bitmap is
// wider than OpenSSH accepts.
func TestSerialEncoding(t *testing.T) {
	for _, tc := range testCases(t) {
		if tc.types == nil {
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			b, err := tc.krl.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			var types []byte
			for _, s := range subsections(t, b) {
				if s.typ == certKeyID {
					continue
				}
				if !slices.Contains(types, s.typ) {
					types = append(types, s.typ)
				}
				if s.typ == certSerialBitmap {
					if n := binary.BigEndian.Uint32(s.data[8:]); n > maxBitmapBytes {
						t.Errorf("bitmap of %d bytes", n)
					}
				}
			}
			slices.Sort(types)
			if diff := cmp.Diff(tc.types, types); diff != "" {
				t.Errorf("subsection types (-want +got):\n%s", diff)
			}
		})
	}
}

type subsection struct {
	typ  byte
	data []byte
}

// subsections walks an encoded KRL and returns the subsections of its certificate sections.
func subsections(t *testing.T, b []byte) []subsection {
	t.Helper()
	r := reader{b[len(magic)+4+3*8:]}
	var out []subsection
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	_, err := r.str()
	must(err)
	_, err = r.str()
	must(err)
	for len(r.b) > 0 {
		typ, err := r.u8()
		must(err)
		data, err := r.str()
		must(err)
		if typ != sectionCertificates {
			continue
		}
		s := reader{data}
		_, err = s.str()
		must(err)
		_, err = s.str()
		must(err)
		for len(s.b) > 0 {
			typ, err := s.u8()
			must(err)
			data, err := s.str()
			must(err)
			out = append(out, subsection{typ, data})
		}
	}
	return out
}

func TestGolden(t *testing.T) {
	for _, tc := range testCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			b, err := tc.krl.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", tc.name+".krl")
			if *update {
				if err := os.WriteFile(path, b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run `go test ./krl -update` to create it)", err)
			}
			if !bytes.Equal(want, b) {
				t.Errorf("MarshalBinary differs from %s (run `go test ./krl -update` if intended)", path)
			}
		})
	}
}

// header is a valid KRL header with no sections.
func header() []byte {
	b := []byte(magic)
	b = binary.BigEndian.AppendUint32(b, formatVersion)
	b = binary.BigEndian.AppendUint64(b, 1)
	b = binary.BigEndian.AppendUint64(b, uint64(testDate.Unix()))
	b = binary.BigEndian.AppendUint64(b, 0)
	b = appendString(b, nil)
	return appendString(b, []byte("c"))
}

// section appends a section of type typ with the concatenated parts as its body.
func section(b []byte, typ byte, parts ...[]byte) []byte {
	b = append(b, typ)
	return appendString(b, slices.Concat(parts...))
}

func str(s []byte) []byte { return appendString(nil, s) }

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// certSection builds a certificate section for ca (nil: any CA) with one subsection.
func certSection(ca ssh.PublicKey, typ byte, parts ...[]byte) []byte {
	return section(nil, sectionCertificates, str(keyBlob(ca)), str(nil), section(nil, typ, parts...))
}

type parseCase struct {
	name string
	in   []byte
	err  error // nil: must parse
}

func parseCases(t testing.TB) []parseCase {
	ca := testKey(t, 1)
	h := header()
	ext := func(critical byte) []byte {
		return slices.Concat(str([]byte("x@example.com")), []byte{critical}, str(nil))
	}
	cert := newCert(t, 1, 2, 1, "id")
	return []parseCase{
		{"header only", h, nil},
		{"empty", nil, ErrBadMagic},
		{"bad magic", append([]byte("SSHKRL\n\x01"), h[8:]...), ErrBadMagic},
		{"bad format version", slices.Concat([]byte(magic), []byte{0, 0, 0, 2}, h[12:]), ErrMalformed},
		{"truncated header", h[:len(h)-1], ErrMalformed},
		{"NUL in comment", slices.Concat(h[:len(h)-5], str([]byte("a\x00"))), ErrMalformed},
		{"date out of range", slices.Concat(h[:20], u64(1<<63), h[28:]), ErrMalformed},
		{"signature", section(h, sectionSignature, str(testKey(t, 1).Marshal())), ErrSigned},
		{"unknown section", section(h, 9), ErrMalformed},
		{"section longer than input", append(slices.Clone(h), sectionExplicitKey, 0, 0, 1, 0), ErrMalformed},
		{"non-critical extension", section(h, sectionExtension, ext(0)), nil},
		{"critical extension", section(h, sectionExtension, ext(1)), ErrMalformed},
		{"extension trailing data", section(h, sectionExtension, ext(0), []byte{0}), ErrMalformed},
		{"serial list", append(h, certSection(ca, certSerialList, u64(1), u64(5))...), nil},
		{"serial list empty", append(h, certSection(ca, certSerialList)...), nil},
		{"serial list odd length", append(h, certSection(ca, certSerialList, u64(1), []byte{1})...), ErrMalformed},
		{"serial 0 in list", append(h, certSection(ca, certSerialList, u64(0))...), ErrMalformed},
		{"serial range", append(h, certSection(ca, certSerialRange, u64(1), u64(5))...), nil},
		{"serial range reversed", append(h, certSection(ca, certSerialRange, u64(5), u64(1))...), ErrMalformed},
		{"serial range from 0", append(h, certSection(ca, certSerialRange, u64(0), u64(1))...), ErrMalformed},
		{"serial range short", append(h, certSection(ca, certSerialRange, u64(5))...), ErrMalformed},
		{"serial range trailing", append(h, certSection(ca, certSerialRange, u64(1), u64(5), []byte{0})...), ErrMalformed},
		{"bitmap", append(h, certSection(ca, certSerialBitmap, u64(10), str([]byte{0x00, 0x85}))...), nil},
		{"bitmap empty", append(h, certSection(ca, certSerialBitmap, u64(10), str(nil))...), nil},
		{"bitmap negative", append(h, certSection(ca, certSerialBitmap, u64(10), str([]byte{0x85}))...), ErrMalformed},
		{"bitmap widest", append(h, certSection(ca, certSerialBitmap, u64(1), str(append([]byte{0, 0xff}, make([]byte, 2047)...)))...), nil},
		{"bitmap too wide", append(h, certSection(ca, certSerialBitmap, u64(1), str(append([]byte{1}, make([]byte, 2048)...)))...), ErrMalformed},
		{"bitmap serial 0", append(h, certSection(ca, certSerialBitmap, u64(0), str([]byte{1}))...), ErrMalformed},
		{"bitmap wraps", append(h, certSection(ca, certSerialBitmap, u64(^uint64(0)), str([]byte{2}))...), ErrMalformed},
		{"bitmap at the top", append(h, certSection(ca, certSerialBitmap, u64(^uint64(0)), str([]byte{1}))...), nil},
		{"bitmap trailing", append(h, certSection(ca, certSerialBitmap, u64(1), str([]byte{1}), []byte{0})...), ErrMalformed},
		{"key ids", append(h, certSection(nil, certKeyID, str([]byte("a")), str(nil))...), nil},
		{"key id with NUL", append(h, certSection(nil, certKeyID, str([]byte("a\x00b")))...), ErrMalformed},
		{"unknown subsection", append(h, certSection(ca, 0x30)...), ErrMalformed},
		{"cert extension", append(h, certSection(ca, certExtension, ext(0))...), nil},
		{"critical cert extension", append(h, certSection(ca, certExtension, ext(1))...), ErrMalformed},
		{"bad CA key", append(h, section(nil, sectionCertificates, str([]byte("junk")), str(nil))...), ErrMalformed},
		{"certificate as CA", append(h, section(nil, sectionCertificates, str(cert.Marshal()), str(nil))...), ErrMalformed},
		{"certificates missing reserved", append(h, section(nil, sectionCertificates, str(ca.Marshal()))...), ErrMalformed},
		{"explicit key", section(h, sectionExplicitKey, str(ca.Marshal())), nil},
		{"explicit key junk", section(h, sectionExplicitKey, str([]byte("junk"))), ErrMalformed},
		{"explicit key certificate", section(h, sectionExplicitKey, str(cert.Marshal())), ErrMalformed},
		{"sha1", section(h, sectionFingerprintSHA, str(make([]byte, 20))), nil},
		{"sha1 wrong length", section(h, sectionFingerprintSHA, str(make([]byte, 32))), ErrMalformed},
		{"sha256", section(h, sectionFingerprint256, str(make([]byte, 32)), str(make([]byte, 32))), nil},
		{"sha256 wrong length", section(h, sectionFingerprint256, str(make([]byte, 20))), ErrMalformed},
		{"sha256 truncated", section(h, sectionFingerprint256, str(make([]byte, 32))[:20]), ErrMalformed},
	}
}

func TestParseCases(t *testing.T) {
	for _, tc := range parseCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			k, err := Parse(tc.in)
			if tc.err == nil {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				if _, err := k.MarshalBinary(); err != nil {
					t.Fatalf("MarshalBinary of a parsed KRL: %v", err)
				}
				return
			}
			if !errors.Is(err, tc.err) {
				t.Fatalf("Parse error = %v, want %v", err, tc.err)
			}
			if !strings.HasPrefix(err.Error(), "krl: ") {
				t.Errorf("error %q lacks the package prefix", err)
			}
		})
	}
}

func TestParseBitmap(t *testing.T) {
	ca := testKey(t, 1)
	// 0x85 = bits 0, 2, 7 and 0x01 in the next byte = bit 8: serials 10, 12, 17-18.
	in := append(header(), certSection(ca, certSerialBitmap, u64(10), str([]byte{0x01, 0x85}))...)
	k, err := Parse(in)
	if err != nil {
		t.Fatal(err)
	}
	want := []SerialRange{{10, 10}, {12, 12}, {17, 18}}
	if diff := cmp.Diff(want, k.Certificates[0].Serials); diff != "" {
		t.Errorf("serials (-want +got):\n%s", diff)
	}
}

// TestParseTruncated checks that every proper prefix of a valid KRL is rejected or, where it
// ends on a section boundary, parsed; never a panic.
func TestParseTruncated(t *testing.T) {
	for _, tc := range testCases(t) {
		b, err := tc.krl.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		if len(b) > 4096 {
			b = b[:4096]
		}
		for i := range len(b) {
			_, _ = Parse(b[:i])
		}
	}
}

func TestMarshalErrors(t *testing.T) {
	ca := testKey(t, 1)
	cert := newCert(t, 1, 2, 1, "id")
	for name, k := range map[string]*KRL{
		"serial 0":          {Certificates: []*CertificateSection{{CA: ca, Serials: []SerialRange{{0, 0}}}}},
		"reversed range":    {Certificates: []*CertificateSection{{CA: ca, Serials: []SerialRange{{5, 1}}}}},
		"NUL in key ID":     {Certificates: []*CertificateSection{{CA: ca, KeyIDs: []string{"a\x00"}}}},
		"NUL in comment":    {Comment: "a\x00"},
		"date before 1970":  {GeneratedDate: time.Date(1960, 1, 1, 0, 0, 0, 0, time.UTC)},
		"certificate as CA": {Certificates: []*CertificateSection{{CA: cert, KeyIDs: []string{"a"}}}},
		"nil revoked key":   {RevokedKeys: []ssh.PublicKey{nil}},
	} {
		if _, err := k.MarshalBinary(); err == nil {
			t.Errorf("%s: MarshalBinary succeeded", name)
		}
	}
}

// newCert returns a certificate for the test key keySeed signed by the test key caSeed.
func newCert(t testing.TB, caSeed, keySeed byte, serial uint64, keyID string) *ssh.Certificate {
	t.Helper()
	signer, err := ssh.NewSignerFromKey(testPrivate(caSeed))
	if err != nil {
		t.Fatal(err)
	}
	c := &ssh.Certificate{
		Key: testKey(t, keySeed), Serial: serial, KeyId: keyID, CertType: ssh.UserCert,
		ValidPrincipals: []string{"user"}, ValidBefore: ssh.CertTimeInfinity,
	}
	if err := c.SignCert(cryptorand.Reader, signer); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestIsRevoked(t *testing.T) {
	ca, ca2 := testKey(t, 1), testKey(t, 2)
	k := &KRL{}
	k.RevokeSerials(ca, 7, 9)
	k.RevokeSerialRange(ca, 100, 200)
	k.RevokeKeyIDs(ca, "stolen")
	k.RevokeKeyIDs(nil, "anywhere")
	k.RevokeKey(testKey(t, 50))
	k.RevokeKeySHA256(testKey(t, 51))
	k.RevokeKeySHA1(testKey(t, 52))
	revokedCA := &KRL{}
	revokedCA.RevokeKey(ca2)

	for _, tc := range []struct {
		name    string
		krl     *KRL
		ca      byte
		key     byte
		serial  uint64
		id      string
		revoked bool
	}{
		{"serial", k, 1, 10, 7, "a", true},
		{"serial not listed", k, 1, 10, 8, "a", false},
		{"serial in range", k, 1, 10, 150, "a", true},
		{"range end", k, 1, 10, 200, "a", true},
		{"past range", k, 1, 10, 201, "a", false},
		{"serial from other CA", k, 2, 10, 7, "a", false},
		{"key ID", k, 1, 10, 0, "stolen", true},
		{"key ID from other CA", k, 2, 10, 0, "stolen", false},
		{"key ID for any CA", k, 2, 10, 1, "anywhere", true},
		{"explicit key", k, 2, 50, 1, "a", true},
		{"sha256", k, 2, 51, 1, "a", true},
		{"sha1", k, 2, 52, 1, "a", true},
		{"clean", k, 2, 53, 1, "a", false},
		{"revoked CA key", revokedCA, 2, 10, 1, "a", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cert := newCert(t, tc.ca, tc.key, tc.serial, tc.id)
			if got := tc.krl.IsRevoked(cert); got != tc.revoked {
				t.Errorf("IsRevoked = %v, want %v", got, tc.revoked)
			}
			if got := tc.krl.IsKeyRevoked(cert); got != tc.revoked {
				t.Errorf("IsKeyRevoked(cert) = %v, want %v", got, tc.revoked)
			}
			// The decoded KRL must agree.
			b, err := tc.krl.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			d, err := Parse(b)
			if err != nil {
				t.Fatal(err)
			}
			if got := d.IsRevoked(cert); got != tc.revoked {
				t.Errorf("decoded IsRevoked = %v, want %v", got, tc.revoked)
			}
		})
	}
	if !k.IsKeyRevoked(testKey(t, 51)) || k.IsKeyRevoked(testKey(t, 53)) {
		t.Error("IsKeyRevoked on plain keys is wrong")
	}
	if k.IsRevoked(nil) {
		t.Error("IsRevoked(nil) = true")
	}
}

func TestHashesSorted(t *testing.T) {
	k := &KRL{}
	for s := range byte(20) {
		k.RevokeKeySHA256(testKey(t, s))
		k.RevokeKeySHA1(testKey(t, s))
	}
	n, err := k.normalize()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.IsSortedFunc(n.RevokedSHA256, func(a, b [sha256.Size]byte) int { return bytes.Compare(a[:], b[:]) }) ||
		!slices.IsSortedFunc(n.RevokedSHA1, func(a, b [sha1.Size]byte) int { return bytes.Compare(a[:], b[:]) }) {
		t.Error("hashes are not sorted")
	}
}
