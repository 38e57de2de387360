package bastion

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/creack/pty"
	"github.com/google/go-cmp/cmp"

	"github.com/sshca/sshca/internal/testenv"
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

// TestAsciicastPlaysInAsciinema: a recorded session whose output splits "é" across two
// chunks and holds an invalid byte exports to a cast that Debian's asciinema plays back as
// the session's output, with the split joined and the invalid byte replaced.
func TestAsciicastPlaysInAsciinema(t *testing.T) {
	asciinema := testenv.Need(t, "asciinema")
	f := newRecordFixture(t, fixtureOptions{})
	cmd := `printf 'caf\303'; sleep 0.3; printf '\251 ok \377 done\n'; stty size 2>/dev/null; true`
	if _, _, code := f.ssh(f.cert(nil), false, "", cmd); code != 0 {
		t.Fatalf("ssh exit %d", code)
	}
	r := f.ended()
	split := false
	for _, c := range r.Chunks {
		if c.Kind == ChunkOutput && bytes.HasSuffix(c.Data, []byte("caf\xc3")) {
			split = true
		}
	}
	if !split {
		t.Fatalf("the output did not split \"é\" across chunks (chunks %+v): the test proves nothing", r.Chunks)
	}
	var cast bytes.Buffer
	if err := ExportAsciicast(&cast, r); err != nil {
		t.Fatal(err)
	}
	var h asciicastHeader
	if err := json.Unmarshal(bytes.SplitN(cast.Bytes(), []byte("\n"), 2)[0], &h); err != nil || h.Version != 2 || h.Command != cmd {
		t.Fatalf("cast header %+v (%v)", h, err)
	}
	p := filepath.Join(t.TempDir(), "s.cast")
	if err := os.WriteFile(p, cast.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// asciinema cat opens /dev/tty, so it runs on a pty of its own (which turns "\n" into "\r\n").
	c := exec.CommandContext(ctx, asciinema, "cat", p)
	c.Env = append(os.Environ(), "HOME="+t.TempDir(), "LANG=C.UTF-8", "LC_ALL=C.UTF-8")
	ptmx, err := pty.Start(c)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(ptmx) // EIO once asciinema has exited
	ptmx.Close()
	if err := c.Wait(); err != nil {
		t.Fatalf("asciinema cat: %v\n%s", err, raw)
	}
	out := strings.ReplaceAll(string(raw), "\r\n", "\n")
	if want := "café ok \uFFFD done\n"; out != want {
		t.Errorf("asciinema cat printed %q, want %q", out, want)
	}
}
