package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sshca/sshca/audit"
)

// BenchmarkCheckArchiveRun: what an archive run reads of the file the last run wrote, to
// check it is whole before appending (checkArchiveRun: its size and its last line), against
// files of 1 MiB and 64 MiB of 1 KiB lines: the same bytes and allocations whatever the
// file's size, since only the last line is read.
func BenchmarkCheckArchiveRun(b *testing.B) {
	for _, mib := range []int{1, 64} {
		b.Run(fmt.Sprintf("%dMiB", mib), func(b *testing.B) {
			path := filepath.Join(b.TempDir(), "audit.jsonl")
			line := `{"seq":1,"rec":"` + strings.Repeat("x", 1000) + `"}` + "\n"
			if err := os.WriteFile(path, []byte(strings.Repeat(line, mib<<20/len(line))), 0o600); err != nil {
				b.Fatal(err)
			}
			f, err := os.Open(path)
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			st, _ := f.Stat()
			tail, err := lastLineHash(f, st.Size())
			if err != nil {
				b.Fatal(err)
			}
			abs, host, _ := archivePlace(path)
			rec := &audit.ArchiveFile{Path: abs, Host: host, Size: st.Size(), Tail: tail}
			b.ReportAllocs()
			for b.Loop() {
				if err := checkArchiveRun(rec, f, path, st.Size(), false, ""); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
