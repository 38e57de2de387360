package main

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sshca/sshca/client"
	"github.com/sshca/sshca/krl"
)

// TestStoreRebuildAccessRequests loses the whole store (FLUSHALL on redis-server running the
// shipped configuration) holding access requests in every state: one approved with a
// certificate under it, one pending, one denied, one cancelled after a certificate was issued
// under it, and a break-glass one reviewed. `sshca store rebuild` with the archived trail
// brings each back exactly as the API showed it before (approvals, decisions, review and
// serials), the approved request's window still gives its requester a root certificate, the
// pending one can still be approved, and the certificate of the cancelled request is in the
// KRL again while the approved request's is not.
func TestStoreRebuildAccessRequests(t *testing.T) {
	r := startLostStateRig(t)
	admin, ctx, mint, cfg, redisURL, base, dir := r.admin, r.ctx, r.mint, r.cfg, r.redisURL, r.base, r.dir

	person := func(sub string, groups ...string) func() string {
		return func() string {
			return mint(map[string]any{"sub": "u-" + sub, "preferred_username": sub, "email": sub + "@example.com", "email_verified": true,
				"groups": groups, "amr": []string{"pwd", "mfa"}, "auth_time": time.Now().Unix()})
		}
	}
	alice, lead, lead2, oncall := person("alice", "developers"), person("lead", "sre-leads"), person("lead2", "sre-leads"), person("oncall", "oncall")
	request := func(method, path string, tok func() string, body any) client.AccessRequest {
		t.Helper()
		code, out := call(t, method, base+path, tok(), body)
		var ar client.AccessRequest
		if code != http.StatusOK || json.Unmarshal(out, &ar) != nil {
			t.Fatalf("%s %s = %d %s", method, path, code, out)
		}
		return ar
	}
	create := func(tok func() string, principals []string, reason string, breakGlass bool) client.AccessRequest {
		t.Helper()
		return request(http.MethodPost, "/v1/requests", tok, map[string]any{"principals": principals, "ttl": "30m", "reason": reason, "break_glass": breakGlass})
	}
	approve := func(tok func() string, ar client.AccessRequest) client.AccessRequest {
		t.Helper()
		return request(http.MethodPost, "/v1/requests/"+ar.ID+"/approve", tok, map[string]any{"content_hash": ar.Hash(), "reason": "looked at " + ar.Ticket})
	}
	aliceKey, oncallKey := keygen(t, dir, "alice"), keygen(t, dir, "oncall")
	under := func(tok func() string, key, id string) issuedCert {
		t.Helper()
		return issue(t, base, "user", tok(), map[string]any{"public_key": readFile(t, key+".pub"), "ttl": "5m", "access_request": id})
	}

	approved := create(alice, []string{"root"}, "OPS-1 disk full", false)
	approve(lead, approved)
	approvedCert := under(alice, aliceKey, approved.ID)
	pending := create(alice, []string{"prod-db"}, "OPS-2 slow queries", false) // two approvals needed
	approve(lead, pending)
	denied := create(alice, []string{"root"}, "OPS-3 look around", false)
	request(http.MethodPost, "/v1/requests/"+denied.ID+"/deny", lead, map[string]any{"reason": "use the runbook"})
	cancelled := create(alice, []string{"root"}, "OPS-4 rotate logs", false)
	approve(lead, cancelled)
	cancelledCert := under(alice, aliceKey, cancelled.ID)
	request(http.MethodPost, "/v1/requests/"+cancelled.ID+"/cancel", alice, map[string]any{"reason": "done"})
	glass := create(oncall, []string{"root"}, "INC-9 site down", true)
	under(oncall, oncallKey, glass.ID)
	request(http.MethodPost, "/v1/requests/"+glass.ID+"/review", lead, map[string]any{"reason": "justified"})

	ids := []string{approved.ID, pending.ID, denied.ID, cancelled.ID, glass.ID}
	show := func() map[string]client.AccessRequest {
		t.Helper()
		out := map[string]client.AccessRequest{}
		for _, id := range ids {
			out[id] = request(http.MethodGet, "/v1/requests/"+id, lead, nil)
		}
		return out
	}
	before := show()
	for id, want := range map[string]string{approved.ID: "approved", pending.ID: "pending", denied.ID: "denied", cancelled.ID: "cancelled", glass.ID: "approved"} {
		if before[id].State != want {
			t.Fatalf("before the loss, request %s is %s, want %s", id, before[id].State, want)
		}
	}

	_, userPub := getBody(t, base+"/v1/ca/user.pub")
	_, knownHosts := getBody(t, base+"/v1/ca/known_hosts")
	hostLine := strings.TrimPrefix(strings.SplitN(knownHosts, "\n", 2)[0], "@cert-authority * ")
	userCAFile, hostCAFile := filepath.Join(dir, "user-ca.pub"), filepath.Join(dir, "host-ca.pub")
	writeFile(t, userCAFile, userPub)
	writeFile(t, hostCAFile, hostLine+"\n")
	archive := filepath.Join(dir, "audit.archive")
	if out, err := runCLI(t, "", "audit", "archive", "--redis", redisURL, "--key-file", cfg.Audit.KeyFile, "--out", archive); err != nil {
		t.Fatalf("audit archive: %v\n%s", err, out)
	}
	if err := admin.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "/readyz says the state was lost", func() bool {
		code, _ := getBody(t, base+"/readyz")
		return code == http.StatusServiceUnavailable
	})

	out, err := runCLI(t, "", "store", "rebuild", "--redis", redisURL, "--audit-key", cfg.Audit.KeyFile, "--archive", archive,
		"--user-ca", userCAFile, "--host-ca", hostCAFile, "--token-lifetime", "10m")
	t.Logf("store rebuild:\n%s", out)
	if err != nil {
		t.Fatalf("store rebuild: %v", err)
	}
	for _, want := range []string{"could not restore: 0", "access requests: 5 restored"} {
		if !strings.Contains(out, want) {
			t.Errorf("store rebuild output lacks %q", want)
		}
	}
	waitFor(t, 10*time.Second, "/readyz is 200 again", func() bool {
		code, _ := getBody(t, base+"/readyz")
		return code == http.StatusOK
	})
	time.Sleep(1100 * time.Millisecond) // fresh tokens are issued after the refusal (whole seconds)

	after := show()
	for _, id := range ids {
		if diff := cmp.Diff(before[id], after[id]); diff != "" {
			t.Errorf("request %s after the rebuild (-before +after):\n%s", id, diff)
		}
	}
	if !slices.Contains(after[approved.ID].Serials, approvedCert.Serial) || len(after[glass.ID].Approvals) != 0 || after[glass.ID].ReviewedBy == "" {
		t.Errorf("restored: approved %+v, break-glass %+v", after[approved.ID], after[glass.ID])
	}

	// The approved window still works, for its requester only; the pending request can still
	// be decided, and its second approval approves it.
	c := under(alice, aliceKey, approved.ID)
	if !slices.Equal(c.Principals, []string{"root"}) || !strings.Contains(c.KeyID, "/"+approved.ID+"#") {
		t.Errorf("certificate under the restored request: principals %v, key ID %s", c.Principals, c.KeyID)
	}
	if code, out := call(t, http.MethodPost, base+"/v1/certs/user", lead(), map[string]any{"public_key": readFile(t, aliceKey+".pub"), "access_request": approved.ID}); code != http.StatusNotFound || !strings.Contains(string(out), "only its requester") {
		t.Errorf("lead under alice's restored request = %d %s, want 404 only its requester", code, out)
	}
	if code, out := call(t, http.MethodPost, base+"/v1/certs/user", alice(), map[string]any{"public_key": readFile(t, aliceKey+".pub"), "access_request": cancelled.ID}); code < 400 || code >= 500 {
		t.Errorf("a certificate under the restored cancelled request = %d %s, want 4xx", code, out)
	}
	if code, out := call(t, http.MethodPost, base+"/v1/requests/"+pending.ID+"/approve", lead(), map[string]any{"content_hash": pending.Hash()}); code != http.StatusConflict {
		t.Errorf("lead approving the restored request a second time = %d %s, want 409", code, out)
	}
	if st := approve(lead2, pending).State; st != "approved" {
		t.Errorf("the restored pending request after its second approval is %s, want approved", st)
	}

	code, krlBody := getBody(t, base+"/v1/krl")
	k, err := krl.Parse([]byte(krlBody))
	if code != http.StatusOK || err != nil {
		t.Fatalf("/v1/krl after the rebuild = %d, %v", code, err)
	}
	if !k.IsRevoked(parseCert(t, cancelledCert.Certificate)) {
		t.Error("the rebuilt KRL does not revoke the certificate of the cancelled request")
	}
	if k.IsRevoked(parseCert(t, approvedCert.Certificate)) {
		t.Error("the rebuilt KRL revokes the certificate of the approved request")
	}
	if _, err := os.Stat(archive); err != nil {
		t.Fatal(err)
	}
}
