package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/krl"
	"github.com/sshca/sshca/revocation"
	"github.com/sshca/sshca/store"
)

func parsePub(t *testing.T, path string) ssh.PublicKey {
	t.Helper()
	k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(readFile(t, path)))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestStoreRebuild loses the whole store (FLUSHALL on redis-server running the shipped
// configuration) after revocations of every kind: a serial, a ban, a ban lifted since, an
// identity (by e-mail) with a live certificate, and a certificate left live. The audit log was
// archived first (the chain in Redis is lost with the store). The CA fails closed; `sshca
// store rebuild` (the cobra command) with the archive, the audit key, the CA public keys and
// the bastion's installed KRL version brings it back: /readyz 200, the banned key and the
// blocked identity are refused at issuance again, the token spent before the loss is refused,
// a fresh token is taken, the lifted key is issued, the KRL (version above the bastion's)
// revokes the serial, the identity's certificate and the banned key but neither the lifted key
// nor the live certificate, the bastion agent installs it, and the inventory lists the live
// certificate again.
func TestStoreRebuild(t *testing.T) {
	r := startLostStateRig(t)
	admin, ctx, mint, cfg, redisURL, base, dir, flags, agent := r.admin, r.ctx, r.mint, r.cfg, r.redisURL, r.base, r.dir, r.flags, r.agent

	tok := func(sub string) string {
		return mint(map[string]any{"sub": "u-" + sub, "preferred_username": sub, "email": sub + "@example.com", "email_verified": true})
	}
	adminTok := func() string {
		return mint(map[string]any{"sub": "admin", "preferred_username": "admin1", "email": "admin@example.com", "email_verified": true, "groups": []string{"sshca-admins"}})
	}
	post := func(path string, b map[string]any) {
		t.Helper()
		b["reason"] = "test"
		if code, out := call(t, http.MethodPost, base+path, adminTok(), b); code != http.StatusOK {
			t.Fatalf("POST %s = %d %s", path, code, out)
		}
	}
	body := func(key string) map[string]any {
		return map[string]any{"public_key": readFile(t, key+".pub"), "ttl": "10m"}
	}
	aliceKey, bobKey, carolKey := keygen(t, dir, "alice"), keygen(t, dir, "bob"), keygen(t, dir, "carol")
	malloryKey, eveKey := keygen(t, dir, "mallory"), keygen(t, dir, "eve")

	// The CA public keys, as an operator would save them.
	_, userPub := getBody(t, base+"/v1/ca/user.pub")
	_, knownHosts := getBody(t, base+"/v1/ca/known_hosts")
	hostLine := strings.TrimPrefix(strings.SplitN(knownHosts, "\n", 2)[0], "@cert-authority * ")
	userCAFile, hostCAFile := filepath.Join(dir, "user-ca.pub"), filepath.Join(dir, "host-ca.pub")
	if err := os.WriteFile(userCAFile, []byte(userPub), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(hostCAFile, []byte(hostLine+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	aliceTok := tok("alice")
	revokedCert := issue(t, base, "user", aliceTok, body(aliceKey))
	post("/v1/revocations", map[string]any{"serial": revokedCert.Serial})
	bobCert := issue(t, base, "user", tok("bob"), body(bobKey))
	post("/v1/revocations", map[string]any{"identity": "bob@example.com"})
	post("/v1/revocations", map[string]any{"public_key": readFile(t, malloryKey+".pub")})
	post("/v1/revocations", map[string]any{"public_key": readFile(t, eveKey+".pub")})
	post("/v1/revocations/lift", map[string]any{"public_key": readFile(t, eveKey+".pub")})
	liveCert := issue(t, base, "user", tok("carol"), body(carolKey))

	var installed uint64
	waitFor(t, 10*time.Second, "the agent installs the KRL of every revocation", func() bool {
		st := agent.Status()
		installed = st.KRLVersion
		return st.Connected && installed >= 5
	})
	oldHeader := krlHeaderVersion(t, base)
	archive := filepath.Join(dir, "audit.archive")
	if out, err := runCLI(t, "", "audit", "archive", "--redis", redisURL, "--key-file", cfg.Audit.KeyFile, "--out", archive); err != nil {
		t.Fatalf("audit archive: %v\n%s", err, out)
	}

	// The store loses everything.
	if err := admin.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "/readyz says the state was lost", func() bool {
		code, out := getBody(t, base+"/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(out, "revocation state lost")
	})
	if code, out := call(t, http.MethodPost, base+"/v1/certs/user", tok("mallory"), body(malloryKey)); code != http.StatusServiceUnavailable {
		t.Fatalf("issuance on the emptied store = %d %s, want 503", code, out)
	}

	start := time.Now()
	out, err := runCLI(t, "", "store", "rebuild", "--redis", redisURL, "--audit-key", cfg.Audit.KeyFile, "--archive", archive,
		"--user-ca", userCAFile, "--host-ca", hostCAFile, "--above-version", strconv.FormatUint(installed, 10), "--token-lifetime", "10m")
	t.Logf("store rebuild (%s):\n%s", time.Since(start).Round(time.Millisecond), out)
	if err != nil {
		t.Fatalf("store rebuild: %v", err)
	}
	for _, want := range []string{"could not restore: 0", "restored: 3 revocations, 1 ban lifted, 2 identity names blocked, 3 live certificates", "new generation 1 "} {
		if !strings.Contains(out, want) {
			t.Errorf("store rebuild output lacks %q", want)
		}
	}
	// Records written now carry what an exact rebuild needs: the CA key of each certificate
	// and the e-mail and username of its identity.
	for _, unwanted := range []string{"without their CA key", "without their identity's e-mail"} {
		if strings.Contains(out, unwanted) {
			t.Errorf("store rebuild output says %q: the records of issuance lack what they should carry", unwanted)
		}
	}

	waitFor(t, 10*time.Second, "/readyz is 200 again", func() bool {
		code, _ := getBody(t, base+"/readyz")
		return code == http.StatusOK
	})
	time.Sleep(1100 * time.Millisecond) // fresh tokens expire after the refusal (whole seconds)
	if code, out := call(t, http.MethodPost, base+"/v1/certs/user", tok("mallory"), body(malloryKey)); code != http.StatusForbidden || !strings.Contains(string(out), "revoked") {
		t.Errorf("the banned key after the rebuild = %d %s, want 403 revoked", code, out)
	}
	if code, out := call(t, http.MethodPost, base+"/v1/certs/user", tok("bob"), body(bobKey)); code != http.StatusForbidden || !strings.Contains(string(out), "revoked") {
		t.Errorf("the blocked identity after the rebuild = %d %s, want 403 revoked", code, out)
	}
	if code, out := call(t, http.MethodPost, base+"/v1/certs/user", aliceTok, body(aliceKey)); code != http.StatusUnauthorized {
		t.Errorf("a token spent before the loss, replayed after the rebuild = %d %s, want 401", code, out)
	}
	issue(t, base, "user", tok("alice"), body(aliceKey)) // a fresh token is taken
	issue(t, base, "user", tok("eve"), body(eveKey))     // the lift holds

	code, krlBody := getBody(t, base+"/v1/krl")
	if code != http.StatusOK {
		t.Fatalf("/v1/krl after the rebuild = %d %q", code, krlBody)
	}
	k, err := krl.Parse([]byte(krlBody))
	if err != nil {
		t.Fatal(err)
	}
	gen, _ := revocation.SplitVersion(k.Version)
	if k.Version <= installed || gen != 1 {
		t.Errorf("KRL version after the rebuild %d (generation %d), the bastion holds %d", k.Version, gen, installed)
	}
	// X-KRL-Version is the KRL's own version, so it too is above every version published
	// before the loss.
	if v := krlHeaderVersion(t, base); v != k.Version || v <= oldHeader {
		t.Errorf("X-KRL-Version after the rebuild %d, the KRL says %d, before the loss %d", v, k.Version, oldHeader)
	}
	if !k.IsRevoked(parseCert(t, revokedCert.Certificate)) || !k.IsRevoked(parseCert(t, bobCert.Certificate)) {
		t.Errorf("the rebuilt KRL does not revoke the serial %s or the identity's certificate %s", revokedCert.Serial, bobCert.Serial)
	}
	if !k.IsKeyRevoked(parsePub(t, malloryKey+".pub")) {
		t.Error("the rebuilt KRL does not revoke the banned key")
	}
	if k.IsKeyRevoked(parsePub(t, eveKey+".pub")) || k.IsRevoked(parseCert(t, liveCert.Certificate)) {
		t.Error("the rebuilt KRL revokes the lifted key or the live certificate")
	}
	waitFor(t, 15*time.Second, "the agent installs the rebuilt KRL", func() bool {
		st := agent.Status()
		return st.Alert == "" && st.KRLVersion >= k.Version
	})
	if v := installedVersion(t, flags.krlPath); v < k.Version {
		t.Errorf("the agent's KRL file is at version %d, the rebuilt one %d", v, k.Version)
	}

	code, inv := call(t, http.MethodGet, base+"/v1/certs?identity=carol@example.com", adminTok(), nil)
	var certs []struct {
		Serial string `json:"serial"`
	}
	_ = json.Unmarshal(inv, &certs)
	if code != http.StatusOK || !strings.Contains(string(inv), liveCert.Serial) {
		t.Errorf("inventory of carol after the rebuild = %d %s, want serial %s", code, inv, liveCert.Serial)
	}
	t.Logf("bastion held %d, rebuilt KRL %d (generation %d); agent %+v", installed, k.Version, gen, agent.Status())
}

// TestStoreRebuildFromSnapshot restores redis-server from an RDB copy taken before N
// revocations, with the audit log archived after them, and restarts the CA replica and the
// bastion agent (so only the agent's installed KRL remembers the newer state: it refuses the
// older KRL and alerts). `sshca store rebuild` with the archive (the restored chain in Redis
// repeats its first records, which are read once) and the agent's version brings back every
// revocation: the agent installs the rebuilt KRL and the alert clears.
func TestStoreRebuildFromSnapshot(t *testing.T) {
	r := startLostStateRig(t)
	srv, admin, ctx, mint, cfg, redisURL, dir, flags := r.srv, r.admin, r.ctx, r.mint, r.cfg, r.redisURL, r.dir, r.flags
	base, stopReplica, agent, stopAgent := r.base, r.stopReplica, r.agent, r.stopAgent
	alice := func() string {
		return mint(map[string]any{"sub": "u-alice", "preferred_username": "alice", "email": "alice@example.com", "email_verified": true})
	}
	adminTok := func() string {
		return mint(map[string]any{"sub": "admin", "preferred_username": "admin1", "email": "admin@example.com", "email_verified": true, "groups": []string{"sshca-admins"}})
	}
	userKey := keygen(t, dir, "alice")
	var revoked []issuedCert
	revokeNew := func() {
		t.Helper()
		c := issue(t, base, "user", alice(), map[string]any{"public_key": readFile(t, userKey+".pub"), "ttl": "10m"})
		if code, out := call(t, http.MethodPost, base+"/v1/revocations", adminTok(), map[string]any{"serial": c.Serial, "reason": "test"}); code != http.StatusOK {
			t.Fatalf("revoke = %d %s", code, out)
		}
		revoked = append(revoked, c)
	}
	_, userPub := getBody(t, base+"/v1/ca/user.pub")
	_, knownHosts := getBody(t, base+"/v1/ca/known_hosts")
	userCAFile, hostCAFile := filepath.Join(dir, "user-ca.pub"), filepath.Join(dir, "host-ca.pub")
	if err := os.WriteFile(userCAFile, []byte(userPub), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(hostCAFile, []byte(strings.TrimPrefix(strings.SplitN(knownHosts, "\n", 2)[0], "@cert-authority * ")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	revokeNew()
	if err := admin.Save(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	snapshot, err := os.ReadFile(filepath.Join(srv.Dir, "dump.rdb"))
	if err != nil {
		t.Fatal(err)
	}
	const n = 4
	for range n {
		revokeNew()
	}
	waitFor(t, 10*time.Second, "the agent installs the KRL of every revocation", func() bool {
		return agent.Status().KRLVersion == n+1
	})
	archive := filepath.Join(dir, "audit.archive")
	if out, err := runCLI(t, "", "audit", "archive", "--redis", redisURL, "--key-file", cfg.Audit.KeyFile, "--out", archive); err != nil {
		t.Fatalf("audit archive: %v\n%s", err, out)
	}

	stopReplica()
	stopAgent()
	srv.Kill()
	if err := os.WriteFile(filepath.Join(srv.Dir, "dump.rdb"), snapshot, 0o600); err != nil {
		t.Fatal(err)
	}
	srv.Start()
	base, _ = startServeStoppable(t, cfg)
	agent, _ = startAgentStoppable(t, flags)
	waitFor(t, 15*time.Second, "the restarted agent refuses the older KRL and alerts", func() bool {
		st := agent.Status()
		return !st.Connected && st.Alert != "" && st.KRLVersion == n+1
	})

	out, err := runCLI(t, "", "store", "rebuild", "--redis", redisURL, "--audit-key", cfg.Audit.KeyFile, "--archive", archive,
		"--user-ca", userCAFile, "--host-ca", hostCAFile, "--above-version", strconv.FormatUint(agent.Status().KRLVersion, 10), "--token-lifetime", "10m")
	t.Logf("store rebuild:\n%s", out)
	if err != nil {
		t.Fatalf("store rebuild: %v", err)
	}
	if !strings.Contains(out, "restored: 5 revocations") || !strings.Contains(out, "could not restore: 0") {
		t.Errorf("store rebuild did not restore the %d revocations", n+1)
	}
	waitFor(t, 15*time.Second, "the agent installs the rebuilt KRL and the alert clears", func() bool {
		st := agent.Status()
		return st.Connected && st.Alert == "" && st.KRLVersion > n+1
	})
	k, err := krl.Parse([]byte(readFile(t, flags.krlPath)))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range revoked {
		if !k.IsRevoked(parseCert(t, c.Certificate)) {
			t.Errorf("serial %s is not in the bastion's KRL after the rebuild", c.Serial)
		}
	}
	if code, out := getBody(t, base+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz after the rebuild = %d %s", code, out)
	}
	gen, _ := revocation.SplitVersion(k.Version)
	t.Logf("bastion KRL %d (generation %d) after the rebuild; it held %d", k.Version, gen, n+1)
}

// krlHeaderVersion is the X-KRL-Version of GET /v1/krl, which must be the version inside the
// KRL it answers with.
func krlHeaderVersion(t *testing.T, base string) uint64 {
	t.Helper()
	resp, err := http.Get(base + "/v1/krl")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/v1/krl = %d %s", resp.StatusCode, b)
	}
	v, err := strconv.ParseUint(resp.Header.Get("X-KRL-Version"), 10, 64)
	if err != nil {
		t.Fatalf("X-KRL-Version %q: %v", resp.Header.Get("X-KRL-Version"), err)
	}
	k, err := krl.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if k.Version != v {
		t.Errorf("X-KRL-Version %d, the KRL's version %d", v, k.Version)
	}
	return v
}

// TestStoreRebuildKeyring: key-ring changes through the API (a user key generated and
// promoted, the old one marked compromised, a host key generated and promoted, the old host key
// marked compromised, a next user key generated), the audit log archived, the whole store lost
// (FLUSHALL): `sshca store rebuild` writes back the keyring document byte for byte (keys,
// states, times, version), the user CA keys bastions trust, the compromised user key in the
// KRL, and the compromised host key's ban that every replica's admission reads (never in the
// user KRL's list of CA keys); the replicas serve again.
func TestStoreRebuildKeyring(t *testing.T) {
	keyDir := t.TempDir()
	r := startLostStateRig(t, func(c *Config) {
		c.Keyring = KeyringConfig{Enabled: true, KMS: "softkms:", KeyDir: keyDir, TrustRefresh: 2 * time.Second, Refresh: 200 * time.Millisecond}
	})
	admin, ctx, mint, cfg, redisURL, base, dir := r.admin, r.ctx, r.mint, r.cfg, r.redisURL, r.base, r.dir
	adminTok := mint(map[string]any{"sub": "sre", "preferred_username": "sre", "groups": []string{"sshca-admins"}})
	keys := func(args ...string) string {
		t.Helper()
		out, err := runCLIEnv(t, base, adminTok, append([]string{"keys"}, args...)...)
		if err != nil {
			t.Fatalf("keys %v: %v\n%s", args, err, out)
		}
		return out
	}
	doc := func() (ca.Keyring, []byte) {
		t.Helper()
		b, err := admin.Get(ctx, store.Keys{}.Keyring()).Bytes()
		if err != nil {
			t.Fatalf("keyring document: %v", err)
		}
		var k ca.Keyring
		if err := json.Unmarshal(b, &k); err != nil {
			t.Fatal(err)
		}
		return k, b
	}
	oldUser, _ := doc()
	firstUser, _ := oldUser.Active(ca.UserCert)
	keys("generate", "--ca", "user")
	keys("promote", "--ca", "user", "--force")
	waitFor(t, 10*time.Second, "the replica signs with the promoted user key", func() bool {
		_, rv := call(t, http.MethodGet, base+"/v1/revocations", adminTok, nil)
		var got struct {
			UserCA struct {
				Fingerprint string `json:"fingerprint"`
			} `json:"user_ca"`
		}
		_ = json.Unmarshal(rv, &got)
		return got.UserCA.Fingerprint != "" && got.UserCA.Fingerprint != firstUser.Fingerprint
	})
	keys("compromised", firstUser.Fingerprint)
	keys("generate", "--ca", "host")
	keys("promote", "--ca", "host", "--force")
	firstHost, _ := oldUser.Active(ca.HostCert)
	keys("compromised", firstHost.Fingerprint)
	keys("generate", "--ca", "user")
	// A change the keyring refuses (promoting with no next key) leaves no key ring to restore,
	// and must not be reported as lost.
	if out, err := runCLIEnv(t, base, adminTok, "keys", "promote", "--ca", "host"); err == nil {
		t.Fatalf("promote without a next key succeeded: %s", out)
	}
	before, beforeBytes := doc()
	trustedBefore, _ := admin.SMembers(ctx, store.Keys{}.TrustedUserCAs()).Result()
	if len(before.Keys) != 5 {
		t.Fatalf("key ring before the loss has %d keys, want 5:\n%s", len(before.Keys), beforeBytes)
	}
	activeUser, _ := before.Active(ca.UserCert)
	activeHost, _ := before.Active(ca.HostCert)
	userCAFile, hostCAFile := filepath.Join(dir, "user-ca.pub"), filepath.Join(dir, "host-ca.pub")
	writeFile(t, userCAFile, activeUser.PublicKey+"\n")
	writeFile(t, hostCAFile, activeHost.PublicKey+"\n")

	archive := filepath.Join(dir, "audit.archive")
	if out, err := runCLI(t, "", "audit", "archive", "--redis", redisURL, "--key-file", cfg.Audit.KeyFile, "--out", archive); err != nil {
		t.Fatalf("audit archive: %v\n%s", err, out)
	}
	if err := admin.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "/readyz says the state was lost", func() bool {
		code, out := getBody(t, base+"/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(out, "revocation state lost")
	})

	out, err := runCLI(t, "", "store", "rebuild", "--redis", redisURL, "--audit-key", cfg.Audit.KeyFile, "--archive", archive,
		"--user-ca", userCAFile, "--host-ca", hostCAFile, "--ca", userCAFile, "--keyring-kms", "softkms:", "--token-lifetime", "10m")
	t.Logf("store rebuild:\n%s", out)
	if err != nil {
		t.Fatalf("store rebuild: %v", err)
	}
	if !strings.Contains(out, "could not restore: 0") || !strings.Contains(out, fmt.Sprintf("key ring: restored at version %d with 5 keys", before.Version)) {
		t.Errorf("store rebuild did not restore the key ring at version %d", before.Version)
	}
	after, afterBytes := doc()
	if !bytes.Equal(afterBytes, beforeBytes) {
		t.Errorf("keyring document after the rebuild:\n%s\nbefore the loss:\n%s", afterBytes, beforeBytes)
	}
	if after.Version != before.Version {
		t.Errorf("keyring version %d after the rebuild, %d before", after.Version, before.Version)
	}
	trustedAfter, _ := admin.SMembers(ctx, store.Keys{}.TrustedUserCAs()).Result()
	slices.Sort(trustedBefore)
	slices.Sort(trustedAfter)
	if !slices.Equal(trustedAfter, trustedBefore) {
		t.Errorf("user CA keys trusted by bastions after the rebuild %q, before %q", trustedAfter, trustedBefore)
	}
	waitFor(t, 10*time.Second, "/readyz is 200 again", func() bool {
		code, _ := getBody(t, base+"/readyz")
		return code == http.StatusOK
	})
	bad, err := firstUser.SSHPublicKey()
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the rebuilt KRL revokes the compromised user CA key", func() bool {
		code, krlBody := getBody(t, base+"/v1/krl")
		k, err := krl.Parse([]byte(krlBody))
		return code == http.StatusOK && err == nil && k.IsKeyRevoked(bad)
	})
	if list := keys("list"); !strings.Contains(list, activeUser.Fingerprint) || !strings.Contains(list, "compromised") {
		t.Errorf("keys list after the rebuild:\n%s", list)
	}
	// The compromised host CA key is banned again where every replica's admission reads it
	// (no replica signs host certificates with it before its key ring catches up), and neither
	// host key is listed among the user CA keys the user KRL is built from.
	badHost, err := firstHost.SSHPublicKey()
	if err != nil {
		t.Fatal(err)
	}
	if score, err := admin.ZScore(ctx, store.Keys{}.RevokedKeys(), "key:"+revocation.KeyEntry(badHost)).Result(); err != nil || !math.IsInf(score, 1) {
		t.Errorf("the compromised host CA key's ban after the rebuild: score %v, %v; want +inf (for good)", score, err)
	}
	cas, _ := admin.SMembers(ctx, store.Keys{}.CAs()).Result()
	for _, line := range cas {
		if line == firstHost.PublicKey || line == activeHost.PublicKey {
			t.Errorf("host CA key %s is listed among the user CA keys after the rebuild", line)
		}
	}
}
