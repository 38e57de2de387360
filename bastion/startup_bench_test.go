package bastion

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// BenchmarkStartupCheckPass is one pass of the start-up files check over 100 recorded
// accounts (11 home files each, 2 of them present) and 4 system files: what the agent spends
// every --startup-check-every and on each relevant inotify event.
func BenchmarkStartupCheckPass(b *testing.B) {
	const accounts = 100
	dir := b.TempDir()
	var passwd, members strings.Builder
	for i := range accounts {
		home := filepath.Join(dir, "home", fmt.Sprintf("u%d", i))
		if err := os.MkdirAll(filepath.Join(home, ".ssh"), 0o755); err != nil {
			b.Fatal(err)
		}
		for _, f := range []string{".bashrc", ".profile"} {
			if err := os.WriteFile(filepath.Join(home, f), []byte(strings.Repeat("# start-up\n", 300)), 0o644); err != nil {
				b.Fatal(err)
			}
		}
		fmt.Fprintf(&passwd, "u%d:x:%d:%d::%s:/bin/bash\n", i, 50000+i, 50000+i, home)
		if i > 0 {
			members.WriteByte(',')
		}
		fmt.Fprintf(&members, "u%d", i)
	}
	etc := filepath.Join(dir, "etc")
	if err := os.MkdirAll(filepath.Join(etc, "profile.d"), 0o755); err != nil {
		b.Fatal(err)
	}
	for _, f := range []string{"profile", "bash.bashrc", "profile.d/a.sh"} {
		if err := os.WriteFile(filepath.Join(etc, f), []byte("umask 022\n"), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	pw, gr := filepath.Join(dir, "passwd"), filepath.Join(dir, "group")
	if err := os.WriteFile(pw, []byte(passwd.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(gr, []byte("admins:x:60000:"+members.String()+"\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	c := &StartupCheck{Groups: []string{"admins"}, Passwd: pw, Group: gr,
		SystemFiles: []string{filepath.Join(etc, "profile"), filepath.Join(etc, "profile.d"), filepath.Join(etc, "bash.bashrc")}}
	if st := c.Check(); len(st.Accounts) != accounts || st.Error != "" {
		b.Fatalf("accounts %d, error %q", len(st.Accounts), st.Error)
	}
	b.ResetTimer()
	for b.Loop() {
		c.Check()
	}
}
