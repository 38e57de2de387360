package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// TestBadInput sends malformed and unauthorized requests through the real HTTP server and
// checks each gets exactly its status code and a message that says what was wrong.
func TestBadInput(t *testing.T) {
	base, _ := startDev(t)
	dir := t.TempDir()
	userKey := keygen(t, dir, "user")
	pub := strings.TrimSpace(readFile(t, userKey+".pub"))
	alice := devToken(t, base, map[string]any{"sub": "u-alice", "preferred_username": "alice", "email": "alice@example.com", "email_verified": true})
	ci := devToken(t, base, map[string]any{"sub": "ci-job", "preferred_username": "ci", "groups": []string{"ci"}})
	now := time.Now().Unix()
	expired := devToken(t, base, map[string]any{"sub": "u-alice", "preferred_username": "alice", "iat": now - 3600, "nbf": now - 3600, "exp": now - 600})
	wrongAud := devToken(t, base, map[string]any{"sub": "u-alice", "preferred_username": "alice", "aud": "someone-else"})
	wrongIss := devToken(t, base, map[string]any{"sub": "u-alice", "preferred_username": "alice", "iss": "https://evil.example.com"})
	unsigned := unsignedToken(t, base, alice)

	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	smallPub, _ := ssh.NewPublicKey(&small.PublicKey)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecPub, _ := ssh.NewPublicKey(&ecKey.PublicKey)
	sshSigner, _ := ssh.NewSignerFromKey(ecKey)
	cert := &ssh.Certificate{Key: ecPub, CertType: ssh.UserCert, ValidPrincipals: []string{"alice"}, ValidBefore: ssh.CertTimeInfinity}
	_ = cert.SignCert(rand.Reader, sshSigner)
	certLine := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(cert)))

	type tc struct {
		name, kind, token string
		body              any
		code              int
		msg               string
	}
	body := func(kv ...any) map[string]any {
		m := map[string]any{"public_key": pub}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1]
		}
		return m
	}
	tests := []tc{
		{"malformed public key", "user", alice, body("public_key", "ssh-ed25519 AAAAnotbase64!!"), 400, "not a valid ssh-ed25519"},
		{"certificate instead of key", "user", alice, body("public_key", certLine), 400, "is a certificate"},
		{"dsa key", "user", alice, body("public_key", "ssh-dss AAAAB3NzaC1kc3MAAACBAP8= dsa"), 400, "DSA"},
		{"rsa 1024", "user", alice, body("public_key", strings.TrimSpace(string(ssh.MarshalAuthorizedKey(smallPub)))), 400, "too small"},
		{"unknown key type", "user", alice, body("public_key", "ssh-quantum AAAA x"), 400, "unsupported key type"},
		{"missing public key", "user", alice, map[string]any{"ttl": "5m"}, 400, "public_key is required"},
		{"unparsable ttl", "user", alice, body("ttl", "ten minutes"), 400, "not a duration"},
		{"negative ttl", "user", alice, body("ttl", "-5m"), 400, "positive"},
		{"zero ttl", "user", alice, body("ttl", "0s"), 400, "positive"},
		{"ttl number", "user", alice, body("ttl", 300), 400, "ttl"},
		{"ttl over hard cap", "user", alice, body("ttl", "25h"), 400, "service maximum"},
		{"ttl over policy", "user", alice, body("ttl", "2h"), 403, ""},
		{"unknown field", "user", alice, body("admin", true), 400, "unknown field \"admin\""},
		{"empty body", "user", alice, "", 400, "empty"},
		{"not json", "user", alice, "{public_key:", 400, "malformed JSON"},
		{"two objects", "user", alice, `{"public_key":"x"} {}`, 400, "after the JSON object"},
		{"body over 64 KiB", "user", alice, `{"public_key":"` + strings.Repeat("A", 70<<10) + `"}`, 413, "64 KiB"},
		{"missing token", "user", "", body(), 401, "missing bearer token"},
		{"expired token", "user", expired, body(), 401, "expired"},
		{"wrong audience", "user", wrongAud, body(), 401, "audience"},
		{"wrong issuer", "user", wrongIss, body(), 401, "issuer"},
		{"unsigned token", "user", unsigned, body(), 401, ""},
		{"garbage token", "user", "not.a.jwt", body(), 401, ""},
		{"principal not granted", "user", alice, body("principals", []string{"bob"}), 403, "bob"},
		{"principal breaks grammar", "user", alice, body("principals", []string{"al ice"}), 400, "must match"},
		{"principal with comma", "user", alice, body("principals", []string{"alice,root"}), 400, "must match"},
		{"hostnames on a user cert", "user", alice, body("hostnames", []string{"a.dev.internal"}), 400, "host certificates"},
		{"host outside patterns", "host", ci, body("hostnames", []string{"db.prod.internal"}), 403, "db.prod.internal"},
		{"host suffix trick", "host", ci, body("hostnames", []string{"a.dev.internal.evil.com"}), 403, ""},
		{"host wildcard", "host", ci, body("hostnames", []string{"*.dev.internal"}), 400, "host name"},
		{"host without names", "host", ci, body(), 400, "host name is required"},
		{"user cannot get host certs", "host", alice, body("hostnames", []string{"a.dev.internal"}), 403, ""},
		{"ok user (control)", "user", alice, body("ttl", "5m"), 200, ""},
		{"ok host (control)", "host", ci, body("hostnames", []string{"web1.dev.internal"}), 200, ""},
		{"replayed token", "user", alice, body("ttl", "5m"), 401, "token already used"},
		{"replayed workload token", "host", ci, body("hostnames", []string{"web1.dev.internal"}), 401, "token already used"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out := call(t, http.MethodPost, base+"/v1/certs/"+tt.kind, tt.token, tt.body)
			if code != tt.code {
				t.Fatalf("status = %d, want %d; body %s", code, tt.code, out)
			}
			if code == 200 {
				return
			}
			var e struct {
				Error   string   `json:"error"`
				Reasons []string `json:"reasons"`
			}
			if err := json.Unmarshal(out, &e); err != nil || e.Error == "" {
				t.Fatalf("error body %q is not {\"error\": ...}: %v", out, err)
			}
			all := e.Error + " " + strings.Join(e.Reasons, " ")
			if !strings.Contains(all, tt.msg) {
				t.Errorf("message %q does not mention %q", all, tt.msg)
			}
			if code == 403 && len(e.Reasons) == 0 {
				t.Errorf("403 without reasons: %s", out)
			}
			if tt.token != "" && strings.Contains(string(out), tt.token) {
				t.Errorf("the answer echoes the token")
			}
		})
	}
}

// unsignedToken re-encodes a real token's claims with "alg": "none" and no signature.
func unsignedToken(t *testing.T, base, token string) string {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d parts", len(parts))
	}
	header := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`))
	return header + "." + parts[1] + "."
}
