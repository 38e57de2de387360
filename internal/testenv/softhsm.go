package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// SoftHSMModule is where Debian's softhsm2 package puts the PKCS#11 module.
const SoftHSMModule = "/usr/lib/softhsm/libsofthsm2.so"

// SoftHSMToken initialises a fresh SoftHSM2 token labelled label (user PIN 1234) in a temp
// directory, points SOFTHSM2_CONF at it for the rest of the test, and returns the KMS URI.
func SoftHSMToken(t *testing.T, label string) string {
	t.Helper()
	util := Need(t, "softhsm2-util")
	if _, err := os.Stat(SoftHSMModule); err != nil {
		Need(t, "libsofthsm2.so (package softhsm2)")
	}
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "tokens"), 0o700); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	content := fmt.Sprintf("directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n", dir)
	if err := os.WriteFile(conf, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", conf)
	Run(t, util, "--init-token", "--free", "--label", label, "--so-pin", "5678", "--pin", "1234")
	return fmt.Sprintf("pkcs11:module-path=%s;token=%s?pin-value=1234", SoftHSMModule, label)
}
