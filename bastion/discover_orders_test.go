package bastion

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDisableOrdersFile: the orders file round-trips, is rewritten only when the orders
// change (each write starts the disable unit), is not created for no orders, and a file with a
// malformed fingerprint (a path, an MD5 one, padding) is refused naming the entry.
func TestDisableOrdersFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "discover", "orders.json")
	const a, b = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU", "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"
	if wrote, err := WriteDisableOrders(path, DisableOrders{Host: "h"}); wrote || err != nil {
		t.Errorf("no orders, no file: wrote %v, %v", wrote, err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("orders file made for no orders: %v", err)
	}
	at := time.Date(2026, 11, 30, 1, 0, 0, 0, time.UTC)
	for i, c := range []struct {
		fps  []string
		want bool
	}{{[]string{b, a}, true}, {[]string{a, b}, false}, {[]string{a}, true}, {nil, true}, {nil, false}} {
		wrote, err := WriteDisableOrders(path, DisableOrders{Host: "h", Fingerprints: c.fps, Received: at.Add(time.Duration(i) * time.Hour)})
		if err != nil || wrote != c.want {
			t.Errorf("write %d %v: wrote %v, %v; want %v", i, c.fps, wrote, err, c.want)
		}
	}
	if o, err := ReadDisableOrders(path); err != nil || len(o.Fingerprints) != 0 || o.Host != "h" {
		t.Errorf("read back: %+v %v", o, err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("orders file mode: %v %v", fi.Mode(), err)
	}
	for _, bad := range []string{"/home/alice/.ssh/authorized_keys", "MD5:00:11", a + "=", "SHA256:" + strings.Repeat("!", 43), ""} {
		if err := os.WriteFile(path, []byte(`{"host":"h","fingerprints":["`+a+`",`+jsonString(bad)+`]}`), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := ReadDisableOrders(path); err == nil || !strings.Contains(err.Error(), "fingerprints[1]") {
			t.Errorf("fingerprint %q: %v, want an error naming fingerprints[1]", bad, err)
		}
	}
	if _, err := ReadDisableOrders(filepath.Join(t.TempDir(), "none")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v, want one that wraps ErrNotExist", err)
	}
}

func jsonString(s string) string { return `"` + s + `"` }
