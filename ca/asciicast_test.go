package ca

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
)

var joinCases = []struct {
	name   string
	chunks []string
	want   []string // text per chunk, then the flush
}{
	{"ascii", []string{"ab", "c"}, []string{"ab", "c", ""}},
	{"two-byte split", []string{"caf\xc3", "\xa9!"}, []string{"caf", "é!", ""}},
	{"four-byte split thrice", []string{"\xf0", "\x9f", "\x98", "\x80x"}, []string{"", "", "", "😀x", ""}},
	{"invalid byte", []string{"a\xffb"}, []string{"a\uFFFDb", ""}},
	{"start byte then ascii", []string{"a\xc3", "b"}, []string{"a", "\uFFFDb", ""}},
	{"incomplete at the end", []string{"x\xe2\x82"}, []string{"x", "\uFFFD\uFFFD"}},
	{"stray continuation", []string{"\x80\x80"}, []string{"\uFFFD\uFFFD", ""}},
}

func TestUTF8Joiner(t *testing.T) {
	for _, tc := range joinCases {
		var u utf8Joiner
		var got []string
		for _, c := range tc.chunks {
			got = append(got, u.next([]byte(c)))
		}
		got = append(got, u.flush())
		if d := cmp.Diff(tc.want, got); d != "" {
			t.Errorf("%s (-want +got):\n%s", tc.name, d)
		}
	}
}

// FuzzUTF8Joiner: whatever the chunks, the text is valid UTF-8, and when the bytes were valid
// UTF-8 to begin with, the text is exactly those bytes however they were split.
func FuzzUTF8Joiner(f *testing.F) {
	for _, tc := range joinCases {
		f.Add([]byte(strings.Join(tc.chunks, "")), uint8(len(tc.chunks[0])), uint8(1))
	}
	f.Fuzz(func(t *testing.T, b []byte, split, step uint8) {
		var u utf8Joiner
		var out strings.Builder
		for i, n := 0, int(split); i < len(b); n = int(step) + 1 {
			j := min(len(b), i+n)
			out.WriteString(u.next(b[i:j]))
			i = j
		}
		out.WriteString(u.flush())
		if !utf8.ValidString(out.String()) {
			t.Fatalf("invalid UTF-8 out of %q", b)
		}
		if utf8.Valid(b) && out.String() != string(b) {
			t.Fatalf("%q came out as %q", b, out.String())
		}
	})
}
