package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/client"
	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
)

// TestCertsListEndToEnd: `sshca certs list` against `sshca serve` on a real redis-server with
// the shipped policy (its data with a standing root grant to ops, standingRootData). An
// auditor lists everyone's unexpired certificates from the global index, narrows by identity
// and principal, sees the one an admin revoked flagged (and left out with --live); the auditor
// cannot revoke, and a plain user cannot list. Every list is in the verified audit chain as a
// read, none as a revocation.
func TestCertsListEndToEnd(t *testing.T) {
	r := testenv.StartRedis(t)
	idp := startIssuer(t, "sshca")
	cfg := serveConfig(t, r.Addr, identity.IssuerConfig{IssuerURL: idp.URL(), Audiences: []string{"sshca"}})
	cfg.Policy.DataFile = standingRootData(t) // bob's root certificate without an access request
	base := startServe(t, cfg)
	mint := minter(t, idp)
	dir := t.TempDir()
	claims := map[string]map[string]any{
		"alice":   {"sub": "u-alice", "preferred_username": "alice", "email": "alice@example.com", "email_verified": true},
		"bob":     {"sub": "u-bob", "preferred_username": "bob", "email": "bob@example.com", "email_verified": true, "groups": []string{"ops"}, "amr": []string{"pwd", "mfa"}},
		"auditor": {"sub": "u-audit", "preferred_username": "audit", "email": "audit@example.com", "email_verified": true, "groups": []string{"auditors"}},
		"admin":   {"sub": "u-admin", "preferred_username": "admin1", "email": "admin@example.com", "email_verified": true, "groups": []string{"sshca-admins"}},
	}
	token := func(who string) string {
		t.Helper()
		c := claims[who]
		c["auth_time"] = time.Now().Unix()
		path := filepath.Join(dir, who+".token")
		writeFile(t, path, mint(c))
		return path
	}
	cli := func(who string, args ...string) (string, error) {
		t.Helper()
		return runCLI(t, "", append(args, "--server", base, "--token-file", token(who))...)
	}
	get := func(who string, principals []string, reason string) issuedCert {
		t.Helper()
		key := keygen(t, dir, who+"-"+strings.Join(principals, "-"))
		c := claims[who]
		c["auth_time"] = time.Now().Unix()
		return issue(t, base, "user", mint(c), map[string]any{"public_key": readFile(t, key+".pub"), "principals": principals, "reason": reason})
	}
	alice, bobUser, bobRoot := get("alice", []string{"alice"}, ""), get("bob", []string{"bob"}, ""), get("bob", []string{"root"}, "OPS-77 disk full")

	list := func(args ...string) map[string]client.Certificate {
		t.Helper()
		out, err := cli("auditor", append([]string{"certs", "list", "--json"}, args...)...)
		if err != nil {
			t.Fatalf("certs list %v: %v\n%s", args, err, out)
		}
		var certs []client.Certificate
		if err := json.Unmarshal([]byte(out), &certs); err != nil {
			t.Fatalf("certs list %v: %v\n%s", args, err, out)
		}
		m := map[string]client.Certificate{}
		for _, c := range certs {
			m[c.Serial] = c
		}
		return m
	}
	serials := func(m map[string]client.Certificate) []string {
		var out []string
		for _, s := range []string{alice.Serial, bobUser.Serial, bobRoot.Serial} {
			if _, ok := m[s]; ok {
				out = append(out, s)
			}
		}
		if len(out) != len(m) {
			t.Errorf("listed certificates not issued here: %v", m)
		}
		return out
	}
	same := func(what string, got, want []string) {
		t.Helper()
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("%s: %v, want %v", what, got, want)
		}
	}
	all := list()
	same("everyone", serials(all), []string{alice.Serial, bobUser.Serial, bobRoot.Serial})
	if c := all[bobRoot.Serial]; c.Ticket != "OPS-77" || c.Identity == "" || c.Revoked != "" {
		t.Errorf("bob's root certificate as listed: %+v", c)
	}
	same("root", serials(list("--principal", "root")), []string{bobRoot.Serial})
	same("bob by e-mail", serials(list("--identity", "bob@example.com")), []string{bobUser.Serial, bobRoot.Serial})
	same("alice's root", serials(list("--identity", "alice@example.com", "--principal", "root")), nil)

	// The auditor cannot revoke; an admin can.
	if out, err := cli("auditor", "revoke", "--serial", bobRoot.Serial, "--reason", "audit"); err == nil || !strings.Contains(out+err.Error(), "may not revoke") {
		t.Fatalf("an auditor revoked: %v\n%s", err, out)
	}
	if out, err := cli("admin", "revoke", "--serial", bobRoot.Serial, "--reason", "OPS-77 done"); err != nil {
		t.Fatalf("admin revoke: %v\n%s", err, out)
	}
	all = list()
	if all[bobRoot.Serial].Revoked != "serial" || all[bobUser.Serial].Revoked != "" || all[alice.Serial].Revoked != "" {
		t.Errorf("after the revocation: %+v", all)
	}
	same("live", serials(list("--live")), []string{alice.Serial, bobUser.Serial})
	out, err := cli("auditor", "certs", "list", "--principal", "root")
	if err != nil || !strings.Contains(out, "REVOKED (serial)") || !strings.Contains(out, bobRoot.Serial) || strings.Contains(out, alice.Serial) {
		t.Errorf("table: %v\n%s", err, out)
	}

	// Neither an auditor nor an admin: no read.
	if out, err := cli("alice", "certs", "list"); err == nil || !strings.Contains(out+err.Error(), "may not read the certificate inventory") {
		t.Errorf("alice listing: %v\n%s", err, out)
	}
	// A malformed filter is a 400 that names the field.
	if out, err := cli("auditor", "certs", "list", "--principal", "ro ot"); err == nil || !strings.Contains(out+err.Error(), "principal contains spaces") {
		t.Errorf("bad principal: %v\n%s", err, out)
	}

	// The verified audit chain holds the lists as reads, none as a revocation.
	out, err = runCLI(t, "", "audit", "verify", "--redis", "redis://"+r.Addr, "--key-file", cfg.Audit.KeyFile, "--print")
	if err != nil {
		t.Fatalf("audit verify: %v\n%s", err, out)
	}
	reads, denied := 0, 0
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var e struct {
			Record struct{ Action, Outcome, Target, Identity string }
		}
		if json.Unmarshal([]byte(line), &e) != nil {
			continue // the summary line
		}
		switch rec := e.Record; {
		case rec.Action == "read" && rec.Outcome == "allowed" && strings.HasPrefix(rec.Target, "list certificates"):
			reads++
		case rec.Action == "read" && rec.Outcome == "denied":
			denied++
		case rec.Action == "revoke" && strings.HasPrefix(rec.Target, "list"):
			t.Errorf("a read audited as a revocation: %+v", rec)
		}
	}
	if reads != 7 || denied != 1 {
		t.Errorf("%d allowed and %d denied reads in the audit chain, want 7 and 1:\n%s", reads, denied, out)
	}
}

// TestCertsListPagesEndToEnd: GET /v1/certs on `sshca serve` and a real redis-server pages
// 2,500 certificates 1,000 at a time while certificates expire and are recorded between pages:
// the 1,000 of the first page expire (and are pruned, cursor's included) before the second is
// asked for, 1,500 live throughout (seven to a second, so pages end inside a second) are each
// listed once, certificates recorded after the position are listed once, those recorded before
// it not at all, and no serial twice. `sshca certs list` follows every page, with a progress
// line on stderr and only JSON on stdout.
func TestCertsListPagesEndToEnd(t *testing.T) {
	r := testenv.StartRedis(t)
	idp := startIssuer(t, "sshca")
	cfg := serveConfig(t, r.Addr, identity.IssuerConfig{IssuerURL: idp.URL(), Audiences: []string{"sshca"}})
	base := startServe(t, cfg)
	mint := minter(t, idp)
	auditor := mint(map[string]any{"sub": "u-audit", "preferred_username": "audit", "email": "audit@example.com",
		"email_verified": true, "groups": []string{"auditors"}, "auth_time": time.Now().Unix()})

	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	db := store.NewRedis(rdb, cfg.Redis.StoreOptions())
	ctx := context.Background()
	serial := uint64(1000)
	record := func(validBefore time.Time) string {
		t.Helper()
		serial++
		c := ca.Certificate{Serial: serial, KeyID: fmt.Sprintf("bulk#%d", serial), Kind: ca.UserCert, Identity: "https://idp|bulk",
			Principals: []string{"bulk"}, KeyFingerprint: "SHA256:k", CAFingerprint: "SHA256:ca", ValidAfter: time.Now().Add(-time.Minute), ValidBefore: validBefore}
		if err := db.Record(ctx, c); err != nil {
			t.Fatal(err)
		}
		return strconv.FormatUint(serial, 10)
	}
	now := time.Now().Truncate(time.Second)
	shortUntil := now.Add(6 * time.Second)
	short, long := map[string]bool{}, map[string]bool{}
	for range 1000 {
		short[record(shortUntil)] = true
	}
	for i := range 1500 {
		long[record(now.Add(time.Hour+time.Duration(i/7)*time.Second))] = true
	}

	c := client.New(base)
	seen := map[string]int{}
	after, before := map[string]bool{}, map[string]bool{}
	cursor := ""
	pages := 0
	for {
		page, err := c.InventoryPage(ctx, auditor, client.CertQuery{Limit: 1000}, cursor)
		if err != nil {
			t.Fatalf("page %d: %v", pages+1, err)
		}
		pages++
		if len(page.Certificates) > 1000 {
			t.Fatalf("page %d holds %d", pages, len(page.Certificates))
		}
		for _, cert := range page.Certificates {
			seen[cert.Serial]++
		}
		switch pages {
		case 1:
			// The first page's certificates expire, and the next record prunes them.
			time.Sleep(time.Until(shortUntil.Add(100 * time.Millisecond)))
			for range 30 {
				after[record(now.Add(2*time.Hour))] = true
			}
		case 2:
			for range 30 {
				after[record(now.Add(3*time.Hour))] = true
				before[record(now.Add(time.Hour-time.Minute))] = true
			}
		}
		if page.NextCursor == "" {
			break
		}
		cursor = page.NextCursor
		if pages > 10 {
			t.Fatal("no last page")
		}
	}
	for s, n := range seen {
		if n != 1 {
			t.Errorf("serial %s listed %d times", s, n)
		}
	}
	checkListed(t, seen, "the first page's, live then", short, true)
	checkListed(t, seen, "live throughout", long, true)
	checkListed(t, seen, "recorded after the position", after, true)
	checkListed(t, seen, "recorded before the position", before, false)
	if pages != 3 {
		t.Errorf("%d pages, want 3 (the 1,000 short ones, then 1,560 after them, 1,000 a page)", pages)
	}

	// The CLI follows the pages: every live certificate once, progress on stderr only.
	cmd := newRootCommand()
	var stdout, stderr bytes.Buffer
	cmd.SetOut(&stdout)
	cmd.SetErr(&stderr)
	tokenFile := filepath.Join(t.TempDir(), "auditor.token")
	writeFile(t, tokenFile, auditor)
	cmd.SetArgs([]string{"certs", "list", "--json", "--page-size", "500", "--server", base, "--token-file", tokenFile})
	if err := cmd.ExecuteContext(ctx); err != nil {
		t.Fatalf("certs list: %v\n%s", err, stderr.String())
	}
	var listed []client.Certificate
	if err := json.Unmarshal(stdout.Bytes(), &listed); err != nil {
		t.Fatalf("certs list --json: %v\n%.300s", err, stdout.String())
	}
	ids := map[string]bool{}
	for _, c := range listed {
		ids[c.Serial] = true
	}
	want := len(long) + len(after) + len(before)
	if len(listed) != want || len(ids) != want {
		t.Errorf("certs list: %d certificates (%d distinct), want %d", len(listed), len(ids), want)
	}
	if !strings.Contains(stderr.String(), "certificates in 3 pages so far") || !strings.Contains(stderr.String(), "in 4 pages") {
		t.Errorf("no progress on stderr:\n%s", stderr.String())
	}
	if out, err := runCLI(t, "", "certs", "list", "--page-size", "0", "--server", base, "--token-file", tokenFile); err == nil ||
		!strings.Contains(err.Error(), "--page-size") {
		t.Errorf("--page-size 0: %v\n%s", err, out)
	}
}
