package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/client"
	"github.com/sshca/sshca/internal/testenv"
)

// discoveryHost is a host to inventory: a development CA, the host's key with a host
// certificate for web1.dev.internal, alice's key (authorized_keys is the test's to write), a
// passwd file naming her home, and an sshd_config for sshd -T.
type discoveryHost struct {
	base, dir, hostKey, userKey, home, passwd, sshdConfig string
	hostCert                                              issuedCert
}

// newDiscoveryHost makes one; sshdExtra is appended to its sshd_config.
func newDiscoveryHost(t *testing.T, sshdExtra string) discoveryHost {
	t.Helper()
	testenv.Need(t, "sshd", "/usr/sbin")
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		t.Skip("sshd -T needs /run/sshd")
	}
	h := discoveryHost{dir: t.TempDir()}
	h.base, _ = startDev(t)
	h.hostKey, h.userKey = keygen(t, h.dir, "host"), keygen(t, h.dir, "alice-laptop")
	ci := devToken(t, h.base, map[string]any{"sub": "ci-job", "groups": []string{"ci"}})
	h.hostCert = issue(t, h.base, "host", ci, map[string]any{"public_key": readFile(t, h.hostKey+".pub"), "hostnames": []string{"web1.dev.internal"}, "ttl": "1h"})
	writeFile(t, h.hostKey+"-cert.pub", h.hostCert.Certificate+"\n")
	h.home = filepath.Join(h.dir, "home", "alice")
	if err := os.MkdirAll(filepath.Join(h.home, ".ssh"), 0o700); err != nil {
		t.Fatal(err)
	}
	h.passwd = filepath.Join(h.dir, "passwd")
	writeFile(t, h.passwd, "alice:x:1000:1000::"+h.home+":/bin/sh\n")
	h.sshdConfig = filepath.Join(h.dir, "sshd_config")
	writeFile(t, h.sshdConfig, "HostKey "+h.hostKey+"\nAuthorizedKeysFile .ssh/authorized_keys\n"+sshdExtra+"UsePAM no\n")
	return h
}

// TestDiscoverSendAndReport: a host inventories its keys (sshd -T of its own sshd_config, a
// passwd file), reports them under its host certificate, and an admin lists them as table,
// CSV and JSON, filtered by host and by use; a report for a host name its certificate lacks,
// a body changed after signing, a renewal proof and a non-admin listing are refused.
func TestDiscoverSendAndReport(t *testing.T) {
	h := newDiscoveryHost(t, "PasswordAuthentication yes\n")
	base, dir, hostKeyPath, hc, home, passwd, cfg := h.base, h.dir, h.hostKey, h.hostCert, h.home, h.passwd, h.sshdConfig
	writeFile(t, filepath.Join(home, ".ssh", "authorized_keys"), `from="10.0.0.0/8" `+readFile(t, h.userKey+".pub"))

	ctx := context.Background()
	var out bytes.Buffer
	f := discoverSendFlags{server: base, hostKey: hostKeyPath, sshdConfig: cfg, passwd: passwd}
	if err := discoverSend(ctx, &out, f); err != nil {
		t.Fatalf("send: %v", err)
	}
	if !strings.Contains(out.String(), "reported 1 keys of 1 accounts (0 files skipped) for web1.dev.internal") {
		t.Errorf("send printed %q", out.String())
	}
	f.host = "db1.dev.internal"
	if err := discoverSend(ctx, &out, f); err == nil || !strings.Contains(err.Error(), "not among the host names") {
		t.Errorf("report for a host the certificate does not name: %v", err)
	}

	body := []byte(`{"host":"web1.dev.internal","taken":"2026-11-29T10:00:00Z","keys":[],"accounts":0,"password_authentication":false,"kbd_interactive_authentication":false}`)
	key := parseSigner(t, readFile(t, hostKeyPath))
	cert := parseCert(t, hc.Certificate)
	proof, err := ca.SignDiscoverProof(key, cert, "web1.dev.internal", body, time.Now(), "p1")
	if err != nil {
		t.Fatal(err)
	}
	emptied := bytes.Replace(body, []byte(`"accounts":0`), []byte(`"accounts":1`), 1)
	if code, resp := call(t, http.MethodPost, base+"/v1/discovery", proof, emptied); code != http.StatusUnauthorized {
		t.Errorf("body changed after signing: %d %s", code, resp)
	}
	renewTok, _ := ca.SignRenewToken(key, cert, time.Now(), "r1")
	if code, resp := call(t, http.MethodPost, base+"/v1/discovery", renewTok, body); code != http.StatusUnauthorized {
		t.Errorf("renewal proof as a report proof: %d %s", code, resp)
	}
	if code, resp := call(t, http.MethodPost, base+"/v1/discovery", proof, `{"host":"web1.dev.internal","keys":[],"extra":1}`); code != http.StatusBadRequest || !strings.Contains(string(resp), "extra") {
		t.Errorf("unknown field: %d %s", code, resp)
	}
	user := devToken(t, base, map[string]any{"sub": "bob", "preferred_username": "bob", "groups": []string{"dev"}})
	if code, resp := call(t, http.MethodGet, base+"/v1/discovery", user, nil); code != http.StatusForbidden {
		t.Errorf("a non-admin lists discoveries: %d %s", code, resp)
	}

	admin := devToken(t, base, map[string]any{"sub": "admin", "preferred_username": "admin1", "groups": []string{"sshca-admins"}})
	recs, err := apiClient(ctx, base).Discoveries(ctx, admin, 0, nil)
	if err != nil || len(recs) != 1 || len(recs[0].Report.Keys) != 1 {
		t.Fatalf("list: %v %+v", err, recs)
	}
	k := recs[0].Report.Keys[0]
	if k.Account != "alice" || k.Comment != "alice-laptop" || len(k.Options) != 1 || k.Options[0] != `from="10.0.0.0/8"` || !recs[0].Report.PasswordAuthentication {
		t.Errorf("reported: %+v", recs[0])
	}
	var table, csvOut, js bytes.Buffer
	now := time.Now()
	if err := printDiscoveries(&table, recs, "", 0, "table", now); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"web1.dev.internal", "alice", k.Fingerprint, "never", "password authentication on"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
	_ = printDiscoveries(&csvOut, recs, "web1.dev.internal", 90*24*time.Hour, "csv", now)
	if lines := strings.Split(strings.TrimSpace(csvOut.String()), "\n"); len(lines) != 2 || !strings.Contains(lines[1], k.Fingerprint) {
		t.Errorf("csv of a never-used key:\n%s", csvOut.String())
	}
	// A key accepted an hour ago is not "unused for 90d"; another host's keys are filtered out.
	used := now.Add(-time.Hour)
	recs[0].Report.Keys[0].LastAccepted = &used
	_ = printDiscoveries(&js, recs, "", 90*24*time.Hour, "json", now)
	var got struct {
		Keys  []client.DiscoveredKey   `json:"keys"`
		Hosts []client.DiscoveryRecord `json:"hosts"`
	}
	if err := json.Unmarshal(js.Bytes(), &got); err != nil || len(got.Keys) != 0 || len(got.Hosts) != 1 {
		t.Errorf("json, used key filtered: %v %s", err, js.String())
	}
	csvOut.Reset()
	_ = printDiscoveries(&csvOut, recs, "other.dev.internal", 0, "csv", now)
	if lines := strings.Split(strings.TrimSpace(csvOut.String()), "\n"); len(lines) != 1 {
		t.Errorf("other host's filter shows keys:\n%s", csvOut.String())
	}

	// disable: a non-admin's order is refused; an admin's reaches the host with its next
	// report, which comments the key out and reports again, ending the order.
	order := client.DiscoveryDisableRequest{Host: "web1.dev.internal", Fingerprint: k.Fingerprint, Reason: "alice left"}
	var ce *client.Error
	if err := apiClient(ctx, base).DisableDiscovered(ctx, user, order); !errors.As(err, &ce) || ce.Status != http.StatusForbidden {
		t.Errorf("a non-admin's disable order: %v", err)
	}
	bad := order
	bad.Fingerprint = "MD5:00"
	if err := apiClient(ctx, base).DisableDiscovered(ctx, admin, bad); !errors.As(err, &ce) || ce.Status != http.StatusBadRequest || !strings.Contains(err.Error(), "fingerprint") {
		t.Errorf("a malformed fingerprint: %v", err)
	}
	if err := apiClient(ctx, base).DisableDiscovered(ctx, admin, order); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	f.host, f.stateDir = "", filepath.Join(dir, "state")
	if err := discoverSend(ctx, &out, f); err != nil {
		t.Fatalf("send with an order: %v\n%s", err, out.String())
	}
	akf := readFile(t, filepath.Join(home, ".ssh", "authorized_keys"))
	if !strings.HasPrefix(akf, "# sshca-disabled ") || !strings.Contains(out.String(), "disabled "+k.Fingerprint) ||
		!strings.Contains(out.String(), "reported 0 keys") {
		t.Errorf("after the order: file %q, output:\n%s", akf, out.String())
	}
	recs, _ = apiClient(ctx, base).Discoveries(ctx, admin, 0, nil)
	if len(recs) != 1 || len(recs[0].Report.Keys) != 0 {
		t.Errorf("the CA's last report still lists the key: %+v", recs)
	}
	out.Reset()
	if err := discoverSend(ctx, &out, f); err != nil || strings.Contains(out.String(), "disabled") {
		t.Errorf("the order outlived the key: %v %s", err, out.String())
	}
}
