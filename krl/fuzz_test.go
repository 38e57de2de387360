package krl

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// FuzzParse checks that Parse never panics and that whatever it accepts survives an encode and
// decode unchanged. It is seeded from the golden files and the table cases.
func FuzzParse(f *testing.F) {
	golden, err := filepath.Glob(filepath.Join("testdata", "*.krl"))
	if err != nil {
		f.Fatal(err)
	}
	for _, path := range golden {
		b, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, tc := range testCases(f) {
		b, err := tc.krl.MarshalBinary()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, tc := range parseCases(f) {
		f.Add(tc.in)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		k, err := Parse(in)
		if err != nil {
			return
		}
		b, err := k.MarshalBinary()
		if err != nil {
			t.Fatalf("MarshalBinary of a parsed KRL: %v", err)
		}
		k2, err := Parse(b)
		if err != nil {
			t.Fatalf("Parse(MarshalBinary(Parse(in))): %v", err)
		}
		if diff := cmp.Diff(k, k2, cmpKeys); diff != "" {
			t.Fatalf("decode(encode(x)) != x (-x +decoded):\n%s", diff)
		}
		b2, err := k2.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, b2) {
			t.Fatal("encoding is not stable")
		}
	})
}
