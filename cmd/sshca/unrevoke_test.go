package main

import (
	"net/http"
	"strings"
	"testing"
)

// TestBanAndLiftCLI: `sshca revoke --public-key` bans a key (listed as permanent, refused at
// signing time); `sshca revoke --public-key FILE --lift` lifts it, and the key gets
// certificates again.
func TestBanAndLiftCLI(t *testing.T) {
	base, _ := startDev(t)
	key := keygen(t, t.TempDir(), "user")
	alice := devToken(t, base, map[string]any{"sub": "u-alice", "preferred_username": "alice", "email": "alice@example.com", "email_verified": true})
	admin := devToken(t, base, map[string]any{"sub": "admin", "preferred_username": "admin1", "groups": []string{"sshca-admins"}})
	t.Setenv("SSHCA_TOKEN", admin)

	got, err := runCLI(t, "", "revoke", "--server", base, "--public-key", key+".pub", "--reason", "laptop stolen")
	if err != nil || !strings.Contains(got, "until lifted") {
		t.Fatalf("sshca revoke --public-key: %v\n%s", err, got)
	}
	code, out := call(t, http.MethodGet, base+"/v1/revocations", admin, nil)
	if code != 200 || !strings.Contains(string(out), `"permanent":true`) {
		t.Fatalf("GET /v1/revocations: %d %s", code, out)
	}
	req := map[string]any{"public_key": readFile(t, key+".pub")}
	if code, out := call(t, http.MethodPost, base+"/v1/certs/user", alice, req); code != http.StatusForbidden {
		t.Fatalf("banned key: %d %s; want 403", code, out)
	}
	if _, err := runCLI(t, "", "revoke", "--server", base, "--serial", "1", "--lift", "--reason", "r"); err == nil {
		t.Error("--lift with --serial accepted")
	}
	got, err = runCLI(t, "", "revoke", "--server", base, "--public-key", key+".pub", "--lift", "--reason", "laptop found")
	if err != nil || !strings.Contains(got, "ban lifted") {
		t.Fatalf("sshca revoke --lift: %v\n%s", err, got)
	}
	// The token shown with the banned key was spent by the admission that refused it (the
	// token's SET NX travels with the refusal check, ca.Admission): it stays spent after the
	// lift, and a fresh token gets the lifted key its certificate.
	if code, out := call(t, http.MethodPost, base+"/v1/certs/user", alice, req); code != http.StatusUnauthorized || !strings.Contains(string(out), "already used") {
		t.Fatalf("the token refused with the banned key, after the lift: %d %s; want 401 token already used", code, out)
	}
	alice = devToken(t, base, map[string]any{"sub": "u-alice", "preferred_username": "alice", "email": "alice@example.com", "email_verified": true})
	if code, out := call(t, http.MethodPost, base+"/v1/certs/user", alice, req); code != http.StatusOK {
		t.Fatalf("after the lift: %d %s; want 200", code, out)
	}
	got, err = runCLI(t, "", "revoke", "--server", base, "--public-key", key+".pub", "--lift", "--reason", "again")
	if err != nil || !strings.Contains(got, "was not banned") {
		t.Errorf("lifting again: %v\n%s", err, got)
	}
}
