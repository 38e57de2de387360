package main

import (
	"net/http"
	"strings"
	"testing"
)

// TestRevokeCLIAndAdminReads: `sshca revoke` through the API, idempotent; the admin reads
// (GET /v1/revocations, GET /v1/certs) need an admin; a non-admin gets 403 with the reason.
func TestRevokeCLIAndAdminReads(t *testing.T) {
	base, _ := startDev(t)
	key := keygen(t, t.TempDir(), "user")
	alice := devToken(t, base, map[string]any{"sub": "u-alice", "preferred_username": "alice", "email": "alice@example.com", "email_verified": true})
	c := issue(t, base, "user", alice, map[string]any{"public_key": readFile(t, key+".pub")})
	admin := devToken(t, base, map[string]any{"sub": "admin", "preferred_username": "admin1", "groups": []string{"sshca-admins"}})
	t.Setenv("SSHCA_TOKEN", admin)

	code, out := call(t, http.MethodGet, base+"/v1/certs?identity=alice@example.com", admin, nil)
	if code != 200 || !strings.Contains(string(out), `"serial":"`+c.Serial+`"`) {
		t.Fatalf("GET /v1/certs: %d %s", code, out)
	}
	for range 2 { // idempotent
		got, err := runCLI(t, "", "revoke", "--server", base, "--serial", c.Serial, "--reason", "laptop lost")
		if err != nil || !strings.Contains(got, "revoked serial "+c.Serial) {
			t.Fatalf("sshca revoke: %v\n%s", err, got)
		}
	}
	code, out = call(t, http.MethodGet, base+"/v1/revocations", admin, nil)
	if code != 200 || !strings.Contains(string(out), `"value":"`+c.Serial+`"`) || !strings.Contains(string(out), `"version":"1"`) {
		t.Fatalf("GET /v1/revocations: %d %s", code, out)
	}
	if _, err := runCLI(t, "", "revoke", "--server", base, "--serial", c.Serial); err == nil {
		t.Error("revoke without --reason accepted")
	}
	if _, err := runCLI(t, "", "revoke", "--server", base, "--serial", "1", "--key-id", "x", "--reason", "r"); err == nil {
		t.Error("two targets accepted")
	}
	code, out = call(t, http.MethodPost, base+"/v1/revocations", admin, map[string]any{"serial": "-3", "reason": "r"})
	if code != 400 {
		t.Errorf("negative serial: %d %s", code, out)
	}
	code, out = call(t, http.MethodPost, base+"/v1/revocations", admin, map[string]any{"serial": "12345", "reason": "r"})
	if code != 404 {
		t.Errorf("unknown serial: %d %s", code, out)
	}
	user := devToken(t, base, map[string]any{"sub": "u-bob", "preferred_username": "bob"})
	for _, path := range []string{"/v1/revocations", "/v1/certs?identity=alice@example.com"} {
		code, out := call(t, http.MethodGet, base+path, user, nil)
		if code != 403 || !strings.Contains(string(out), "may not revoke or read revocations") {
			t.Errorf("GET %s as a non-admin: %d %s", path, code, out)
		}
	}
	if code, _ := call(t, http.MethodGet, base+"/v1/revocations", "", nil); code != 401 {
		t.Errorf("GET /v1/revocations without a token: %d", code)
	}
}
