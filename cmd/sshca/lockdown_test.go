package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/client"
	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/internal/testenv"
)

// lockdownTrials is how many live sessions each kind of revocation ends in each agent mode.
const lockdownTrials = 20

// TestLockdownEndsLiveSessions (issue 14 §3): real redis-server, sshd and ssh, the bastion
// agent following the Redis stream or polling HTTPS. Every kind of revocation (serial, key ID,
// identity, public key, and the compromise of the CA key that was active when the session
// began: keys generate, promote --force, then compromised) ends the live sessions it covers.
// Each trial opens a session, revokes, and times from the revocation's answer to the end of
// the ssh client; p50/p99 per kind and mode are logged (and printed as LOCKDOWN lines). The
// bound asserted is generous (the machine is shared): p99 under 3 s.
func TestLockdownEndsLiveSessions(t *testing.T) {
	if testing.Short() {
		t.Skip("about 4 minutes of real ssh sessions")
	}
	testenv.Need(t, "sshd", "/usr/sbin")
	testenv.Need(t, "ssh")
	for _, mode := range []string{"redis", "https"} {
		// The modes share nothing (own redis-server, serve, agent and sshd) and mostly wait
		// on ssh, so they run side by side: half the wall time of this, the suite's longest test.
		t.Run(mode, func(t *testing.T) { t.Parallel(); lockdown(t, mode) })
	}
}

func lockdown(t *testing.T, mode string) {
	r := testenv.StartRedis(t)
	idp := startIssuer(t, "sshca")
	dir := t.TempDir()
	cfg := serveConfig(t, r.Addr, identity.IssuerConfig{IssuerURL: idp.URL(), Audiences: []string{"sshca"}})
	cfg.Keyring = KeyringConfig{Enabled: true, KMS: "softkms:", KeyDir: filepath.Join(dir, "keys"), TrustRefresh: time.Second, Refresh: 100 * time.Millisecond}
	base := startServe(t, cfg)
	mint := minter(t, idp)
	admin := mint(map[string]any{"sub": "admin", "preferred_username": "admin1", "email": "admin@example.com", "email_verified": true, "groups": []string{"sshca-admins"}})

	flags := agentFlags{krlPath: filepath.Join(dir, "sshca.krl"), userCA: filepath.Join(dir, "user_ca.pub"),
		health: "127.0.0.1:0", sshdLog: filepath.Join(dir, "sshd.log"), poll: 250 * time.Millisecond, caRefresh: 500 * time.Millisecond}
	switch mode {
	case "redis":
		flags.redis.url = "redis://" + r.Addr
	case "https":
		flags.server, flags.serverCA = tlsFront(t, base, dir)
	}
	// The agent's own account (debug level: each KRL installed, each session learned and
	// ended), shown when a trial fails: the ssh client's end alone does not say which step
	// was late.
	var agentLog testenv.SyncBuffer
	startAgentLog(t, flags, slog.New(slog.NewTextHandler(&agentLog, &slog.HandlerOptions{Level: slog.LevelDebug})))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent log:\n%s", agentLog.String())
		}
	})
	sshd, kh := startBastionSSHD(t, base, mint, dir, flags)

	post := func(path string, body any) []byte {
		t.Helper()
		code, out := call(t, http.MethodPost, base+path, admin, body)
		if code != http.StatusOK {
			t.Fatalf("POST %s = %d %s", path, code, out)
		}
		return out
	}
	keyOp := func(op string, req client.KeyRequest) ca.CAKey {
		t.Helper()
		var resp client.KeyResponse
		if err := json.Unmarshal(post("/v1/keys/"+op, req), &resp); err != nil || resp.Key == nil {
			t.Fatalf("POST /v1/keys/%s: %v", op, err)
		}
		return *resp.Key
	}
	activeUserKey := func() ca.CAKey {
		t.Helper()
		code, out := call(t, http.MethodGet, base+"/v1/keys", admin, nil)
		var resp client.KeyResponse
		if code != http.StatusOK || json.Unmarshal(out, &resp) != nil || resp.Ring == nil {
			t.Fatalf("GET /v1/keys = %d %s", code, out)
		}
		for _, k := range resp.Ring.Keys {
			if k.CA == ca.UserCert && k.State == ca.KeyActive {
				return k
			}
		}
		t.Fatal("no active user CA key")
		return ca.CAKey{}
	}

	// session is one trial's live session: a new key, identity and certificate.
	type session struct {
		key, cert, email string
		c                issuedCert
		ended            <-chan time.Time
	}
	n := 0
	open := func(kind string, signedBy string) session {
		t.Helper()
		n++
		name := fmt.Sprintf("%s-%d", kind, n)
		s := session{email: name + "@example.com"}
		s.key = keygen(t, dir, name)
		tok := func() string {
			return mint(map[string]any{"sub": "u-" + name, "preferred_username": "alice", "email": s.email, "email_verified": true})
		}
		// Right after a promotion the replica may still sign with the key before for a
		// moment (it re-reads the keyring every 100 ms): ask until the active key signs.
		for deadline := time.Now().Add(10 * time.Second); ; {
			s.c = issue(t, base, "user", tok(), map[string]any{"public_key": readFile(t, s.key+".pub"), "ttl": "10m"})
			pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(s.c.Certificate))
			if err != nil {
				t.Fatal(err)
			}
			if signedBy == "" || ssh.FingerprintSHA256(pub.(*ssh.Certificate).SignatureKey) == signedBy {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("certificates are not signed by %s within 10s", signedBy)
			}
			time.Sleep(50 * time.Millisecond)
		}
		s.cert = s.key + "-cert.pub"
		writeFile(t, s.cert, s.c.Certificate+"\n")
		done := startSession(t, sshd, s.key, s.cert, kh)
		ended := make(chan time.Time, 1)
		go func() { <-done; ended <- time.Now() }()
		s.ended = ended
		return s
	}
	// endsWithin times from the revocation's answer (at) to the session's end.
	endsWithin := func(s session, at time.Time) time.Duration {
		t.Helper()
		select {
		case end := <-s.ended:
			return max(0, end.Sub(at))
		case <-time.After(10 * time.Second):
			t.Fatalf("the live session of %s (%s) was not ended within 10s of its revocation at %s", s.c.KeyID, s.email, at.UTC().Format(time.RFC3339Nano))
			return 0
		}
	}

	kinds := []struct {
		name string
		// trial opens a session and revokes what covers it, and returns when the revocation
		// was answered.
		trial func() (session, time.Time)
	}{
		{"serial", func() (session, time.Time) {
			s := open("serial", "")
			post("/v1/revocations", map[string]any{"serial": s.c.Serial, "reason": "test"})
			return s, time.Now()
		}},
		{"key_id", func() (session, time.Time) {
			s := open("keyid", "")
			post("/v1/revocations", map[string]any{"key_id": s.c.KeyID, "reason": "test"})
			return s, time.Now()
		}},
		{"identity", func() (session, time.Time) {
			s := open("identity", "")
			post("/v1/revocations", map[string]any{"identity": s.email, "reason": "test"})
			return s, time.Now()
		}},
		{"public_key", func() (session, time.Time) {
			s := open("pubkey", "")
			post("/v1/revocations", map[string]any{"public_key": strings.TrimSpace(readFile(t, s.key+".pub")), "reason": "test"})
			return s, time.Now()
		}},
		{"ca_key", func() (session, time.Time) {
			// The session's certificate is signed by the active key; a next key is made and
			// trusted by the bastion, promoted with --force, and the key that was active
			// until then is marked compromised.
			was := activeUserKey()
			s := open("cakey", was.Fingerprint)
			next := keyOp("generate", client.KeyRequest{CA: string(ca.UserCert)})
			pub := strings.Fields(next.PublicKey)[1]
			waitFor(t, 10*time.Second, "the bastion trusts the next key", func() bool {
				return strings.Contains(readFile(t, flags.userCA), pub)
			})
			keyOp("promote", client.KeyRequest{CA: string(ca.UserCert), Force: true})
			keyOp("compromised", client.KeyRequest{Fingerprint: was.Fingerprint})
			return s, time.Now()
		}},
	}
	for _, k := range kinds {
		var lat []time.Duration
		for range lockdownTrials {
			s, at := k.trial()
			lat = append(lat, endsWithin(s, at))
			// sshd refuses the revoked certificate too (it is in the installed KRL).
			if _, err := sshd.SSH(s.key, s.cert, kh, "true"); err == nil {
				t.Errorf("%s: a revoked certificate (%s) still logs in", k.name, s.c.KeyID)
			}
		}
		slices.Sort(lat)
		p50, p99 := lat[len(lat)/2], lat[(len(lat)*99-1)/100]
		t.Logf("%s mode, revocation by %s: session ended after p50 %s, p99 %s, max %s over %d trials",
			mode, k.name, p50.Round(time.Millisecond), p99.Round(time.Millisecond), lat[len(lat)-1].Round(time.Millisecond), len(lat))
		fmt.Printf("LOCKDOWN mode=%s kind=%s n=%d p50=%s p99=%s max=%s\n", mode, k.name, len(lat),
			p50.Round(time.Millisecond), p99.Round(time.Millisecond), lat[len(lat)-1].Round(time.Millisecond))
		if p99 > 3*time.Second {
			t.Errorf("%s mode, revocation by %s: p99 session end %s, want well under 3s (target 1s)", mode, k.name, p99)
		}
	}
}
