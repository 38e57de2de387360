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

	"github.com/creack/pty"

	"github.com/sshca/sshca/internal/testenv"
)

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
	var h struct {
		Version int    `json:"version"`
		Command string `json:"command"`
	}
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
