package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
)

// TestAuditTrail: against real redis-server, each decision the service makes (a privileged
// certificate with its ticket, a denial with its reasons, a revocation) is in the audit chain,
// `sshca audit verify` checks the chain with the key and prints the records, and a record
// removed from Redis makes it fail.
func TestAuditTrail(t *testing.T) {
	r := testenv.StartRedis(t)
	idp := startIssuer(t, "sshca")
	cfg := serveConfig(t, r.Addr, identity.IssuerConfig{IssuerURL: idp.URL(), Audiences: []string{"sshca"}})
	cfg.Policy.DataFile = standingRootData(t) // a privileged certificate without an access request
	base := startServe(t, cfg)
	mint := minter(t, idp)
	userKey := keygen(t, t.TempDir(), "alice")
	pub := readFile(t, userKey+".pub")

	ops := mint(map[string]any{"sub": "u-alice", "preferred_username": "alice", "email": "alice@example.com", "email_verified": true,
		"groups": []string{"ops"}, "amr": []string{"pwd", "mfa"}, "auth_time": time.Now().Unix()})
	c := issue(t, base, "user", ops, map[string]any{"public_key": pub, "principals": []string{"root"}, "reason": "OPS-4242 disk full"})
	plain := mint(map[string]any{"sub": "u-bob", "preferred_username": "bob", "email": "bob@example.com", "email_verified": true})
	if code, out := call(t, http.MethodPost, base+"/v1/certs/user", plain, map[string]any{"public_key": pub, "principals": []string{"root"}}); code != http.StatusForbidden {
		t.Fatalf("bob asking for root = %d %s", code, out)
	}
	admin := mint(map[string]any{"sub": "admin", "preferred_username": "admin1", "email": "admin@example.com", "email_verified": true, "groups": []string{"sshca-admins"}})
	if code, out := call(t, http.MethodPost, base+"/v1/revocations", admin, map[string]any{"serial": c.Serial, "reason": "done"}); code != http.StatusOK {
		t.Fatalf("revoke = %d %s", code, out)
	}

	out, err := runCLI(t, "", "audit", "verify", "--redis", "redis://"+r.Addr, "--key-file", cfg.Audit.KeyFile, "--print")
	if err != nil {
		t.Fatalf("audit verify: %v\n%s", err, out)
	}
	for _, want := range []string{
		"OK: 3 audit records, chain intact, keyed",
		`"v":3,`, // ca writes version 3 records
		`"outcome":"issued"`, `"ticket":"OPS-4242"`, `"serial":"` + c.Serial + `"`, `"principals":["root"]`,
		`"outcome":"denied"`, `|u-bob","issuer":`, `"subject":"u-bob"`, "principal root is not granted",
		`"action":"revoke","outcome":"allowed"`, `"target":"serial:` + c.Serial + `"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("audit verify output lacks %s:\n%s", want, out)
		}
	}
	if strings.Contains(out, ops) || strings.Contains(out, "eyJ") {
		t.Error("a token reached the audit log")
	}

	// Without the key the chain does not verify; with a record gone it fails where it broke.
	other := filepath.Join(t.TempDir(), "other.key")
	if err := writeAuditKey(other); err != nil {
		t.Fatal(err)
	}
	if out, err := runCLI(t, "", "audit", "verify", "--redis", "redis://"+r.Addr, "--key-file", other); err == nil {
		t.Fatalf("verified with another key:\n%s", out)
	}
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	ctx := context.Background()
	msgs, err := rdb.XRange(ctx, "sshca:{audit}:log", "-", "+").Result()
	if err != nil || len(msgs) != 3 {
		t.Fatalf("stream: %d entries, %v", len(msgs), err)
	}
	// Archive the three records to a file, with the record of the store's generation marks that
	// archive appends first, then the chain in Redis goes on from them.
	archiveFile := filepath.Join(t.TempDir(), "audit.jsonl")
	if out, err := runCLI(t, "", "audit", "archive", "--redis", "redis://"+r.Addr, "--key-file", cfg.Audit.KeyFile, "--out", archiveFile); err != nil ||
		!strings.Contains(out, "archived 4 audit records") {
		t.Fatalf("audit archive: %v\n%s", err, out)
	}
	if st, err := os.Stat(archiveFile); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("archive file: %v %v", st, err)
	}
	if out, err := runCLI(t, "", "audit", "verify", "--archive", archiveFile, "--key-file", cfg.Audit.KeyFile); err != nil ||
		!strings.Contains(out, "OK: 4 audit records, chain intact, keyed (HMAC-SHA256), records 1 to 4") {
		t.Fatalf("audit verify --archive: %v\n%s", err, out)
	}
	if n, _ := rdb.XLen(ctx, "sshca:{audit}:log").Result(); n != 0 {
		t.Fatalf("%d records left in Redis after archiving", n)
	}
	for range 3 {
		if code, _ := call(t, http.MethodPost, base+"/v1/certs/user", plain, map[string]any{"public_key": pub, "principals": []string{"root"}}); code != http.StatusForbidden {
			t.Fatalf("bob asking for root = %d", code)
		}
	}
	if out, err := runCLI(t, "", "audit", "verify", "--redis", "redis://"+r.Addr, "--key-file", cfg.Audit.KeyFile); err != nil ||
		!strings.Contains(out, "OK: 3 audit records") {
		t.Fatalf("audit verify after the archive: %v\n%s", err, out)
	}
	msgs, err = rdb.XRange(ctx, "sshca:{audit}:log", "-", "+").Result()
	if err != nil || len(msgs) != 3 {
		t.Fatalf("stream: %d entries, %v", len(msgs), err)
	}
	rdb.XDel(ctx, "sshca:{audit}:log", msgs[1].ID)
	out, err = runCLI(t, "", "audit", "verify", "--redis", "redis://"+r.Addr, "--key-file", cfg.Audit.KeyFile)
	if err == nil || !strings.Contains(err.Error(), "record 7 where 6 should be") {
		t.Fatalf("a removed record went unnoticed: %v\n%s", err, out)
	}
}

// TestAuditKeyFile: the key file is created 0600 and never overwritten; one readable by others
// is refused.
func TestAuditKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.key")
	if out, err := runCLI(t, "", "audit", "genkey", "--out", path); err != nil {
		t.Fatalf("genkey: %v\n%s", err, out)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, %v", st.Mode(), err)
	}
	if _, err := runCLI(t, "", "audit", "genkey", "--out", path); err == nil {
		t.Fatal("genkey overwrote an existing key")
	}
	if _, err := readAuditKey(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readAuditKey(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("a world-readable key was accepted: %v", err)
	}
}

// TestDevAudit: the audit command `sshca dev` prints verifies the decisions it made.
func TestDevAudit(t *testing.T) {
	base, _, banner := startDevBanner(t)
	if _, out := call(t, http.MethodGet, base+"/readyz", "", nil); !strings.Contains(string(out), `"policy_evaluator":"compiled"`) {
		t.Errorf("dev /readyz does not say how the policy is evaluated: %s", out)
	}
	tok := devToken(t, base, map[string]any{"sub": "alice", "email": "alice@example.com", "preferred_username": "alice"})
	issue(t, base, "user", tok, map[string]any{"public_key": readFile(t, keygen(t, t.TempDir(), "alice")+".pub")})
	_, line, ok := strings.Cut(banner, "sshca audit verify ")
	if !ok {
		t.Fatalf("the banner has no audit command:\n%s", banner)
	}
	line, _, _ = strings.Cut(line, "\n")
	out, err := runCLI(t, "", append([]string{"audit", "verify"}, strings.Fields(line)...)...)
	if err != nil || !strings.Contains(out, "OK: 1 audit record, chain intact, keyed") || !strings.Contains(out, `"outcome":"issued"`) {
		t.Fatalf("audit verify %s: %v\n%s", line, err, out)
	}
}

// TestShippedArchiveUnit: the archive unit runs commands this binary has, with flags it knows,
// and verifies the very file it archived to: the file's name (this month's) is computed once,
// so that a run that ends after midnight UTC on the 1st does not verify the new month's file
// (it named the month twice before, once per command).
func TestShippedArchiveUnit(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "systemd", "sshca-audit-archive.service"))
	if err != nil {
		t.Fatal(err)
	}
	var cmds [][]string
	months := 0
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(l, "ExecStart") {
			continue
		}
		months += strings.Count(l, "$(date")
		for _, c := range strings.Split(l, "/usr/local/bin/sshca ")[1:] {
			c, _, _ = strings.Cut(c, " && ")
			c = regexp.MustCompile(`\$\([^)]*\)`).ReplaceAllString(c, "MONTH") // the shell's $(date ...)
			c = strings.NewReplacer(`"`, "", "'", "").Replace(c)
			cmds = append(cmds, strings.Fields(c))
		}
	}
	if len(cmds) != 2 {
		t.Fatalf("%d sshca commands in the unit, want archive and verify", len(cmds))
	}
	if months != 1 {
		t.Errorf("the unit computes the month %d times, want once (the file verified is the file archived to)", months)
	}
	files := map[string]string{}
	for _, args := range cmds {
		c, rest, err := newRootCommand().Find(args)
		if err != nil {
			t.Fatalf("sshca %v: %v", args, err)
		}
		if err := c.ParseFlags(rest); err != nil {
			t.Fatalf("sshca %v: %v", args, err)
		}
		for _, name := range []string{"out", "archive"} {
			if f := c.Flags().Lookup(name); f != nil && f.Value.String() != "" {
				files[c.Name()] = f.Value.String()
			}
		}
		if f := c.Flags().Lookup("key-file"); f == nil || f.Value.String() != "/etc/sshca/audit.key" {
			t.Errorf("sshca %s does not use the audit key", c.Name())
		}
	}
	if files["archive"] == "" || files["archive"] != files["verify"] {
		t.Errorf("the unit archives to %q and verifies %q", files["archive"], files["verify"])
	}
}

// keyedAudit is an audit log on a real redis-server with a key written to keyFile (for
// --key-file).
type keyedAudit struct {
	redis   *testenv.Redis
	keyFile string
	key     []byte
	rdb     *redis.Client
	log     *audit.Log
}

func newKeyedAudit(t *testing.T) keyedAudit {
	t.Helper()
	f := keyedAudit{redis: testenv.StartRedis(t), keyFile: filepath.Join(t.TempDir(), "audit.key")}
	if err := writeAuditKey(f.keyFile); err != nil {
		t.Fatal(err)
	}
	var err error
	if f.key, err = readAuditKey(f.keyFile); err != nil {
		t.Fatal(err)
	}
	f.rdb = redis.NewClient(&redis.Options{Addr: f.redis.Addr})
	t.Cleanup(func() { f.rdb.Close() })
	f.log = audit.New(f.rdb, audit.Options{Key: f.key})
	return f
}

// TestAuditBaseMarkCLI: against real redis-server, `sshca audit verify` refuses a chain whose
// oldest records were deleted and whose base mark was moved past them without the key; the
// honest archive and verify pass; with --archive an emptied log fails; a legacy base mark is
// refused unless vouched for, and archive signs it; without a key verify says a base is forgeable.
func TestAuditBaseMarkCLI(t *testing.T) {
	fx := newKeyedAudit(t)
	r, keyFile, key, rdb, l := fx.redis, fx.keyFile, fx.key, fx.rdb, fx.log
	ctx := context.Background()
	appendN := func(l *audit.Log, from, to int) {
		t.Helper()
		for i := from; i < to; i++ {
			if err := l.Append(ctx, ca.AuditRecord{Time: time.Unix(1764064800+int64(i), 0).UTC(), Action: ca.ActionUser,
				Outcome: "issued", Identity: fmt.Sprintf("user%d@example.com", i), Serial: uint64(1000 + i)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	url := "redis://" + r.Addr
	verify := func(extra ...string) (string, error) {
		return runCLI(t, "", append([]string{"audit", "verify", "--redis", url, "--key-file", keyFile}, extra...)...)
	}
	const base = "sshca:{audit}:base"

	// The honest path: archive, then verify the chain alone and after the archive.
	appendN(l, 0, 10)
	archiveFile := filepath.Join(t.TempDir(), "audit.jsonl")
	if out, err := runCLI(t, "", "audit", "archive", "--redis", url, "--key-file", keyFile, "--out", archiveFile); err != nil ||
		!strings.Contains(out, "archived 10 audit records") || !strings.Contains(out, "goes on from record 10") {
		t.Fatalf("archive: %v\n%s", err, out)
	}
	appendN(l, 10, 15)
	if out, err := verify(); err != nil || !strings.Contains(out, "OK: 5 audit records") || strings.Contains(out, "WARNING") {
		t.Fatalf("verify: %v\n%s", err, out)
	}
	if out, err := verify("--archive", archiveFile); err != nil || !strings.Contains(out, "OK: 10 audit records, chain intact, keyed (HMAC-SHA256), records 1 to 10") ||
		!strings.Contains(out, "OK: 5 audit records") || !strings.Contains(out, "goes on from the archive's last record 10") || strings.Contains(out, "WARNING") {
		t.Fatalf("verify with the archive: %v\n%s", err, out)
	}
	signed, _ := rdb.Get(ctx, base).Result()

	// The attack: the two oldest records deleted, the base moved to the second of them.
	msgs, _ := rdb.XRange(ctx, "sshca:{audit}:log", "-", "+").Result()
	rdb.XDel(ctx, "sshca:{audit}:log", msgs[0].ID, msgs[1].ID)
	moved := msgs[1].Values["seq"].(string) + " " + msgs[1].Values["mac"].(string)
	for _, tt := range []struct{ base, want string }{
		{moved, "old unsigned form"},
		{moved + " " + strings.Repeat("ab", 32), "the base mark of the chain is not signed with the audit key: records before it may have been removed"},
	} {
		rdb.Set(ctx, base, tt.base, 0)
		out, err := verify()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("base %q: verify = %v\n%s", tt.base, err, out)
		}
		outArchive, errArchive := verify("--archive", archiveFile)
		if errArchive == nil {
			t.Errorf("base %q: verify --archive passed\n%s", tt.base, outArchive)
		}
		// Checked on what the refusals say (it read the key's own err before, always nil).
		if strings.Contains(fmt.Sprint(err, out, errArchive, outArchive), hexKey(key)) {
			t.Error("the audit key is in an error")
		}
	}

	// The whole log truncated: alone it looks new; the archive shows otherwise.
	rdb.Del(ctx, "sshca:{audit}:log", "sshca:{audit}:head", base)
	if out, err := verify(); err != nil {
		t.Fatalf("pinned: an emptied log verifies alone: %v\n%s", err, out)
	}
	if out, err := verify("--archive", archiveFile); err == nil || !strings.Contains(err.Error(), "the log was emptied or lost") {
		t.Fatalf("an emptied log after an archive: %v\n%s", err, out)
	}

	// A legacy base mark, as archives wrote before base marks were signed.
	rdb.FlushAll(ctx)
	l = audit.New(rdb, audit.Options{Key: key})
	appendN(l, 0, 10)
	legacyFile := filepath.Join(t.TempDir(), "legacy.jsonl")
	if out, err := runCLI(t, "", "audit", "archive", "--redis", url, "--key-file", keyFile, "--out", legacyFile); err != nil {
		t.Fatalf("archive: %v\n%s", err, out)
	}
	b, _ := os.ReadFile(legacyFile)
	lines := strings.SplitAfter(string(b), "\n")
	if err := os.WriteFile(legacyFile, []byte(strings.Join(lines[:10], "")), 0o600); err != nil { // without its base line
		t.Fatal(err)
	}
	signed, _ = rdb.Get(ctx, base).Result()
	f := strings.Fields(signed)
	rdb.Set(ctx, base, f[0]+" "+f[1], 0)
	// sshca of that time recorded no archive file either (stop 18).
	rdb.Del(ctx, store.Keys{}.AuditArchiveFile())
	appendN(l, 10, 12)
	if out, err := verify(); err == nil || !strings.Contains(err.Error(), "--accept-legacy-base") {
		t.Fatalf("a legacy base verified: %v\n%s", err, out)
	}
	if out, err := verify("--accept-legacy-base"); err != nil || !strings.Contains(out, "WARNING: the base mark (record 10) is of the old unsigned form") {
		t.Fatalf("verify --accept-legacy-base: %v\n%s", err, out)
	}
	if out, err := verify("--archive", legacyFile); err != nil || !strings.Contains(out, "WARNING: the archive does not end with a signed base mark") {
		t.Fatalf("verify after the archive that ends at the legacy base: %v\n%s", err, out)
	}
	// Archive into the file that ends at it signs it.
	if out, err := runCLI(t, "", "audit", "archive", "--redis", url, "--key-file", keyFile, "--out", legacyFile); err != nil || !strings.Contains(out, "archived 2 audit records") {
		t.Fatalf("archive after a legacy base: %v\n%s", err, out)
	}
	if out, err := verify("--archive", legacyFile); err != nil || strings.Contains(out, "WARNING") {
		t.Fatalf("verify after signing: %v\n%s", err, out)
	}

	// Without a key: the base mark is forgeable, and verify says so.
	unkeyed := "redis://" + r.Addr + "/1"
	rdb1 := redis.NewClient(&redis.Options{Addr: r.Addr, DB: 1})
	defer rdb1.Close()
	appendN(audit.New(rdb1, audit.Options{}), 0, 3)
	plainFile := filepath.Join(t.TempDir(), "plain.jsonl")
	if out, err := runCLI(t, "", "audit", "archive", "--redis", unkeyed, "--out", plainFile); err != nil {
		t.Fatalf("archive: %v\n%s", err, out)
	}
	for _, args := range [][]string{{"--redis", unkeyed}, {"--archive", plainFile}, {"--redis", unkeyed, "--archive", plainFile}} {
		if out, err := runCLI(t, "", append([]string{"audit", "verify"}, args...)...); err != nil ||
			!strings.Contains(out, "WARNING: without the audit key the chain and its base mark are plain SHA-256") {
			t.Errorf("verify %v: %v\n%s", args, err, out)
		}
	}
}

func hexKey(key []byte) string { return fmt.Sprintf("%x", key) }
