package krl

import "testing"

// BenchmarkBuild1M encodes a KRL revoking one million random 64-bit serials of one CA (sshca's
// serials are random, so this is the list encoding at its largest).
func BenchmarkBuild1M(b *testing.B) {
	ca := testKey(b, 1)
	serials := randomSerials(1_000_000, 5)
	var size int
	for b.Loop() {
		k := &KRL{Version: 1, GeneratedDate: testDate}
		k.RevokeSerials(ca, serials...)
		data, err := k.MarshalBinary()
		if err != nil {
			b.Fatal(err)
		}
		size = len(data)
	}
	b.ReportMetric(float64(size), "bytes")
}

// BenchmarkParse1M decodes the KRL BenchmarkBuild1M encodes.
func BenchmarkParse1M(b *testing.B) {
	k := &KRL{Version: 1, GeneratedDate: testDate}
	k.RevokeSerials(testKey(b, 1), randomSerials(1_000_000, 5)...)
	data, err := k.MarshalBinary()
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := Parse(data); err != nil {
			b.Fatal(err)
		}
	}
}
