package main

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDevKeyring: in sshca dev the README's rotation commands work: an admin lists the
// keyring, generates a user CA key (a file in the state directory, published at once on
// /v1/ca/user.pub as the next key), and is refused promotion until it has been published for
// devTrustRefresh; a user who is no admin is refused by the policy, not by a missing route.
func TestDevKeyring(t *testing.T) {
	base, state := startDev(t)
	admin := devToken(t, base, map[string]any{"sub": "root-admin", "email": "admin@example.com", "email_verified": true, "groups": []string{"sshca-admins"}})
	out, err := runCLIEnv(t, base, admin, "keys", "list")
	if err != nil || !strings.Contains(out, "active") {
		t.Fatalf("sshca keys list: %v\n%s", err, out)
	}
	out, err = runCLIEnv(t, base, admin, "keys", "generate", "--ca", "user")
	if err != nil || !strings.Contains(out, "next") {
		t.Fatalf("sshca keys generate --ca user: %v\n%s", err, out)
	}
	files, _ := filepath.Glob(filepath.Join(state, "keys", "*"))
	if len(files) != 1 {
		t.Errorf("key files in %s/keys: %v, want the generated one", state, files)
	}
	// Each replica re-reads the keyring every 2 s.
	waitFor(t, 10*time.Second, "the next key on /v1/ca/user.pub", func() bool {
		code, pub := getBody(t, base+"/v1/ca/user.pub")
		return code == http.StatusOK && strings.Count(pub, "\n") == 2
	})
	if out, err = runCLIEnv(t, base, admin, "keys", "promote", "--ca", "user"); err == nil {
		t.Errorf("promote at once was allowed: %s", out)
	} else if strings.Contains(err.Error()+out, "404") {
		t.Errorf("promote: %v %s: the route is missing", err, out)
	}

	alice := devToken(t, base, map[string]any{"sub": "alice", "email": "alice@example.com", "email_verified": true})
	out, err = runCLIEnv(t, base, alice, "keys", "list")
	if err == nil || !strings.Contains(err.Error()+out, "403") && !strings.Contains(strings.ToLower(err.Error()+out), "denied") {
		t.Errorf("keys list as a non-admin: %v %s, want a policy refusal", err, out)
	}
	if _, err := os.Stat(filepath.Join(state, "user_ca.pem")); err != nil {
		t.Error(err)
	}
}
