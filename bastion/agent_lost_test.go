package bastion

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sshca/sshca/krl"
	"github.com/sshca/sshca/revocation"
)

// TestAgentAlertsOnOlderKRL: a source that offers a KRL older than the installed one (its
// store lost or rolled back revocations) is refused, the installed file stays (fail static),
// and the status says why until a newer KRL (a rebuilt store's next generation) is installed.
func TestAgentAlertsOnOlderKRL(t *testing.T) {
	path := filepath.Join(t.TempDir(), "revoked.krl")
	encode := func(v uint64) []byte {
		b, err := (&krl.KRL{Version: v, GeneratedDate: time.Now()}).MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	newer := encode(revocation.ComposeVersion(0, 12))
	if err := os.WriteFile(path, newer, 0o644); err != nil {
		t.Fatal(err)
	}
	a, err := NewAgent(Options{KRLPath: path, HTTP: &HTTPSource{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Prepare(); err != nil {
		t.Fatal(err)
	}
	if err := a.installKRL(encode(revocation.ComposeVersion(0, 3)), "redis"); err != nil {
		t.Fatal(err)
	}
	st := a.Status()
	if st.Connected || !strings.Contains(st.Alert, "lost or rolled back") || st.LastError != st.Alert || st.OfferedVersion != 3 {
		t.Fatalf("after an older KRL: %+v", st)
	}
	if b, _ := os.ReadFile(path); !bytes.Equal(b, newer) {
		t.Fatal("the older KRL replaced the installed one")
	}
	a.setConnected("https") // a 304 for the same older KRL keeps the alert
	if st := a.Status(); st.Connected || st.Alert == "" {
		t.Fatalf("a 304 cleared the alert: %+v", st)
	}
	rebuilt := revocation.ComposeVersion(1, 1)
	if err := a.installKRL(encode(rebuilt), "redis"); err != nil {
		t.Fatal(err)
	}
	if st := a.Status(); !st.Connected || st.Alert != "" || st.KRLVersion != rebuilt {
		t.Fatalf("after a rebuilt store's KRL: %+v", st)
	}
}
