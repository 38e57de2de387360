package main

import (
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/krl"
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
		if code != 403 || !strings.Contains(string(out), "may not read the certificate inventory or revocations") {
			t.Errorf("GET %s as a non-admin: %d %s", path, code, out)
		}
	}
	if code, _ := call(t, http.MethodGet, base+"/v1/revocations", "", nil); code != 401 {
		t.Errorf("GET /v1/revocations without a token: %d", code)
	}
}

// TestRevokeCLIVersionLines: `sshca revoke` says which KRL now carries what it revoked and the
// version to look for, read from that KRL: a certificate of a retired user CA key (whose scope
// is not the active key's) names the user KRL's version, the krl_version bastions report; a host
// certificate names the host KRL's, and not the user KRL (which it did not change).
func TestRevokeCLIVersionLines(t *testing.T) {
	r := testenv.StartRedis(t)
	idp := startIssuer(t, "sshca")
	cfg := serveConfig(t, r.Addr, identity.IssuerConfig{IssuerURL: idp.URL(), Audiences: []string{"sshca"}})
	cfg.Keyring = KeyringConfig{Enabled: true, KMS: "softkms:", KeyDir: filepath.Join(t.TempDir(), "keys"), TrustRefresh: time.Second, Refresh: 100 * time.Millisecond}
	base := startServe(t, cfg)
	mint := minter(t, idp)
	admin := mint(map[string]any{"sub": "sre", "preferred_username": "sre", "groups": []string{"sshca-admins"}})
	dir := t.TempDir()
	userKey, hostKey := keygen(t, dir, "alice"), keygen(t, dir, "host")
	old := issue(t, base, "user", mint(map[string]any{"sub": "u-alice", "preferred_username": "alice"}), map[string]any{"public_key": readFile(t, userKey+".pub")})
	host := issue(t, base, "host", mint(map[string]any{"sub": "ci", "groups": []string{"ci"}}), map[string]any{"public_key": readFile(t, hostKey+".pub"), "hostnames": []string{"127.0.0.1"}})
	for _, args := range [][]string{{"keys", "generate", "--ca", "user"}, {"keys", "promote", "--ca", "user", "--force"}} {
		if out, err := runCLIEnv(t, base, admin, args...); err != nil {
			t.Fatalf("sshca %v: %v\n%s", args, err, out)
		}
	}
	published := func(path string) uint64 {
		t.Helper()
		code, b := call(t, http.MethodGet, base+path, "", nil)
		k, err := krl.Parse(b)
		if code != http.StatusOK || err != nil {
			t.Fatalf("GET %s = %d, %v", path, code, err)
		}
		return k.Version
	}
	versionLine := func(out, prefix string) (uint64, bool) {
		for _, l := range strings.Split(out, "\n") {
			if rest, ok := strings.CutPrefix(l, prefix+" KRL version "); ok {
				f := strings.Fields(strings.TrimSuffix(rest, ":"))
				v, err := strconv.ParseUint(strings.TrimSuffix(f[0], ":"), 10, 64)
				return v, err == nil
			}
		}
		return 0, false
	}

	beforeUser := published("/v1/krl")
	out, err := runCLIEnv(t, base, admin, "revoke", "--serial", old.Serial, "--reason", "laptop lost")
	if err != nil {
		t.Fatalf("sshca revoke: %v\n%s", err, out)
	}
	v, ok := versionLine(out, "user")
	if now := published("/v1/krl"); !ok || v != now || v <= beforeUser {
		t.Errorf("revoking a retired key's certificate printed user KRL version %d (line found: %v); /v1/krl is at %d, was %d:\n%s", v, ok, now, beforeUser, out)
	}
	if _, ok := versionLine(out, "host"); ok {
		t.Errorf("a user certificate's revocation names the host KRL:\n%s", out)
	}

	beforeHost := published("/v1/krl/host")
	out, err = runCLIEnv(t, base, admin, "revoke", "--serial", host.Serial, "--reason", "host decommissioned")
	if err != nil {
		t.Fatalf("sshca revoke: %v\n%s", err, out)
	}
	v, ok = versionLine(out, "host")
	if now := published("/v1/krl/host"); !ok || v != now || v <= beforeHost {
		t.Errorf("revoking a host certificate printed host KRL version %d (line found: %v); /v1/krl/host is at %d, was %d:\n%s", v, ok, now, beforeHost, out)
	}
	if _, ok := versionLine(out, "user"); ok {
		t.Errorf("a host certificate's revocation names the user KRL:\n%s", out)
	}
}
