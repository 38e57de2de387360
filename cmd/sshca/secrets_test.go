package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sshca/sshca/bastion"
	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/internal/testenv"
)

// plantedSecret is a distinctive random string to plant where a secret goes and grep for.
func plantedSecret(t *testing.T) string {
	t.Helper()
	b := make([]byte, 10)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "Sx" + hex.EncodeToString(b)
}

// logCapture is a slog.Logger at debug level whose every line the test can read.
type logCapture struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (c *logCapture) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.Write(p)
}

func (c *logCapture) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

func (c *logCapture) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(c, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// noSecret fails the test when text (an error, a log, a body) holds one of the secrets.
func noSecret(t *testing.T, what, text string, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		if s != "" && strings.Contains(text, s) {
			t.Errorf("%s holds the secret %q:\n%s", what, s, text)
		}
	}
}

func TestRedisURLErrorsHideThePassword(t *testing.T) {
	pw := plantedSecret(t)
	for _, raw := range []string{
		"redis://user:" + pw + "@127.0.0.1:1/0",
		"rediss://:" + pw + "@127.0.0.1:notaport/0",
		"redis://user:" + pw[:6] + "/" + pw[6:] + "@127.0.0.1:6379/0", // a "/" in the password: url reads part of it as the port
		"redis://user:" + pw[:6] + "@" + pw[6:] + "@127.0.0.1:6379/0",
		"redis://user:" + pw + "%zz@127.0.0.1:6379/0",
		"redis://user:" + pw + "@127.0.0.1:6379/notanumber",
		"redis://user:" + pw + "@127.0.0.1:6379/0?bogus=1",
		"redis://127.0.0.1:6379/0?password=" + pw + "&bogus=1",
		"redis://127.0.0.1:6379/0?password=" + pw,
		"http://user:" + pw + "@127.0.0.1:6379",
		"user:" + pw + "@127.0.0.1:6379",
	} {
		_, err := parseRedisURL(raw)
		if err != nil {
			noSecret(t, "parseRedisURL error", err.Error(), pw, pw[:6], pw[6:])
		}
		noSecret(t, "redactRedisURL", redactRedisURL(raw), pw, pw[:6], pw[6:])
	}
	// What must pass: a URL without a password parses and prints unchanged.
	if _, err := parseRedisURL("redis://sshca-bastion@127.0.0.1:6379/0"); err != nil {
		t.Errorf("a URL without a password: %v", err)
	}
	if got := redactRedisURL("redis://sshca-bastion@127.0.0.1:6379/0"); got != "redis://sshca-bastion@127.0.0.1:6379/0" {
		t.Errorf("redactRedisURL changed a URL without a password: %q", got)
	}
	if got := redactRedisURL("rediss://u:" + pw + "@h:6380/1?password=" + pw + "&protocol=3"); !strings.Contains(got, "u:REDACTED@h:6380/1") || !strings.Contains(got, "protocol=3") {
		t.Errorf("redactRedisURL = %q: keep user, host, db and other parameters", got)
	}
}

// TestBastionAgentRedisPasswordNeverShown: the bastion agent given a Redis URL with a password,
// against a closed port and against a redis-server that refuses the password, never shows it
// in its errors, its log or its health answer.
func TestBastionAgentRedisPasswordNeverShown(t *testing.T) {
	pw := plantedSecret(t)
	conf := testenv.WriteFile(t, "redis.conf", "")
	r := testenv.StartRedisConfig(t, conf, "--save", "", "--appendonly", "no", "--requirepass", "not-"+pw)
	closed := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	for _, u := range []string{
		"redis://default:" + pw + "@" + closed + "/0",
		"redis://" + closed + "/0?password=" + pw,
		"redis://default:" + pw + "@" + r.Addr + "/0",
		"redis://" + r.Addr + "/0?password=" + pw,
	} {
		t.Run(redactRedisURL(u), func(t *testing.T) {
			var logs logCapture
			dir := t.TempDir()
			health := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
			flags := agentFlags{redis: redisTarget{url: u}, krlPath: filepath.Join(dir, "sshca.krl"), userCA: filepath.Join(dir, "user_ca.pub"),
				health: health, poll: 100 * time.Millisecond, caRefresh: 100 * time.Millisecond}
			ctx, cancel := context.WithCancel(context.Background())
			ready := make(chan *bastion.Agent, 1)
			done := make(chan error, 1)
			go func() { done <- runAgent(ctx, flags, logs.logger(), ready) }()
			var agent *bastion.Agent
			select {
			case agent = <-ready:
			case err := <-done: // go-redis takes no password parameter: refused at start
				cancel()
				noSecret(t, "agent error", err.Error(), pw)
				t.Logf("refused: %v", err)
				return
			case <-time.After(30 * time.Second):
				cancel()
				t.Fatal("the agent did not start")
			}
			waitFor(t, 10*time.Second, "the agent reports its source down", func() bool { return agent.Status().LastError != "" })
			code, body := call(t, http.MethodGet, "http://"+health+"/healthz", "", nil)
			if code != http.StatusServiceUnavailable {
				t.Errorf("/healthz = %d %s, want 503", code, body)
			}
			noSecret(t, "/healthz", string(body), pw)
			cancel()
			if err := <-done; err != nil {
				noSecret(t, "agent error", err.Error(), pw)
			}
			noSecret(t, "agent log", logs.String(), pw)
			t.Logf("/healthz: %s", body)
		})
	}
	// A URL that does not parse: the error says so, without the URL.
	err := runAgent(context.Background(), agentFlags{redis: redisTarget{url: "redis://u:" + pw + "/x@" + closed + "/0"}, krlPath: filepath.Join(t.TempDir(), "k")}, testLog(t), nil)
	if err == nil || !strings.Contains(err.Error(), "--redis") {
		t.Errorf("unparseable URL: %v", err)
	} else {
		noSecret(t, "agent error", err.Error(), pw, pw[:6])
	}
}

// TestAuditRedisPasswordNeverShown: `sshca audit verify --redis URL` with a password, against
// a closed port and with a URL that does not parse, prints no part of it.
func TestAuditRedisPasswordNeverShown(t *testing.T) {
	pw := plantedSecret(t)
	closed := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	for _, u := range []string{
		"redis://default:" + pw + "@" + closed + "/0",
		"redis://" + closed + "/0?password=" + pw,
		"redis://default:" + pw[:8] + "/" + pw[8:] + "@" + closed + "/0",
		"redis://default:" + pw + "@" + closed + "/zero",
	} {
		out, err := runCLI(t, "", "audit", "verify", "--redis", u)
		if err == nil {
			t.Errorf("audit verify against %s succeeded", closed)
			continue
		}
		noSecret(t, "audit verify", err.Error()+"\n"+out, pw, pw[:8], pw[8:])
	}
}

// TestConfigErrorsHideSecrets: a configuration with secrets planted next to bad fields is
// refused with every problem named and no secret in the message.
func TestConfigErrorsHideSecrets(t *testing.T) {
	pw, spw, pin, cs, upw := plantedSecret(t), plantedSecret(t), plantedSecret(t), plantedSecret(t), plantedSecret(t)
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tt := range []struct {
		name, yaml string
		want       []string
	}{
		{"validation", `
listen: "not an address"
user_ca: {kms: "pkcs11:module-path=/nonexistent.so;token=t;pin-value=` + pin + `?pin-value=` + pin + `", key: ""}
host_ca: {kms: "", key: "pkcs11:id=1;object=h"}
redis:
  addrs: ["redis://default:` + upw + `@127.0.0.1:6379", "127.0.0.1:6379"]
  password: ` + pw + `
  password_file: /nonexistent/pw
  sentinel_password: ` + spw + `
  ca_file: /nonexistent/ca.pem
oidc: {issuers: [{issuer_url: "not a url"}]}
`, []string{"listen", "user_ca.key", "host_ca.kms", "redis.addrs[0]", "password or password_file", "redis.ca_file"}},
		{"unknown field (a client secret)", `
listen: 127.0.0.1:8080
redis: {addrs: ["127.0.0.1:6379"], password: ` + pw + `}
oidc: {issuers: [{issuer_url: "https://idp.example.com", audiences: [sshca], client_secret: ` + cs + `}]}
`, []string{"client_secret"}},
		{"a bad value beside the password", `
listen: 127.0.0.1:8080
redis: {addrs: ["127.0.0.1:6379"], password: ` + pw + `, db: nope, sentinel_password: ` + spw + `}
`, []string{"nope"}},
		{"a bad value of the password's type", `
redis: {addrs: ["127.0.0.1:6379"], password: [` + pw + `]}
`, []string{"line 2"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadConfig(write("config.yaml", tt.yaml))
			if err == nil {
				t.Fatal("config accepted")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("the error does not name %q:\n%v", w, err)
				}
			}
			noSecret(t, "config error", err.Error(), pw, spw, pin, cs, upw)
		})
	}
}

// TestServeSecretsNeverShown runs `sshca serve` with a Redis password and a Sentinel password
// planted in its configuration and Redis down, and greps its log, /readyz and the answer to a
// certificate request; then starts it with a PKCS#11 PIN in the path and in the query of a
// KMS URI (real SoftHSM2) for a key that is not there, and greps the start-up error.
func TestServeSecretsNeverShown(t *testing.T) {
	pw, spw := plantedSecret(t), plantedSecret(t)
	idp := startIssuer(t, "sshca")
	cfg := serveConfig(t, fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)), identity.IssuerConfig{IssuerURL: idp.URL(), Audiences: []string{"sshca"}})
	cfg.Redis.Username, cfg.Redis.Password, cfg.Redis.SentinelPassword = "sshca", pw, spw
	var logs logCapture
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	errc := make(chan error, 1)
	go func() { errc <- serve(ctx, cfg, logs.logger(), ready) }()
	var base string
	select {
	case addr := <-ready:
		base = "http://" + addr
	case err := <-errc:
		cancel()
		t.Fatalf("serve: %v", err)
	case <-time.After(60 * time.Second):
		cancel()
		t.Fatal("serve did not start")
	}
	code, body := call(t, http.MethodGet, base+"/readyz", "", nil)
	if code != http.StatusServiceUnavailable || !strings.Contains(string(body), "redis") {
		t.Errorf("/readyz = %d %s, want 503 naming redis", code, body)
	}
	noSecret(t, "/readyz", string(body), pw, spw)
	tok, err := idp.Mint(map[string]any{"sub": "alice", "preferred_username": "alice"})
	if err != nil {
		t.Fatal(err)
	}
	key := keygen(t, t.TempDir(), "id")
	code, body = call(t, http.MethodPost, base+"/v1/certs/user", tok, map[string]any{"public_key": readFile(t, key+".pub")})
	if code != http.StatusServiceUnavailable {
		t.Errorf("POST /v1/certs/user with Redis down = %d %s, want 503", code, body)
	}
	noSecret(t, "answer", string(body), pw, spw)
	cancel()
	if err := <-errc; err != nil {
		noSecret(t, "serve error", err.Error(), pw, spw)
	}
	if !strings.Contains(logs.String(), "level=") {
		t.Fatalf("nothing was logged: the capture is broken")
	}
	noSecret(t, "serve log", logs.String(), pw, spw)

	// A PKCS#11 PIN in the KMS URI, in the path and in the query, for a key that is not there.
	testenv.SoftHSMToken(t, "other")
	pin := plantedSecret(t)
	testenv.Run(t, testenv.Need(t, "softhsm2-util"), "--init-token", "--free", "--label", "serve-leak", "--so-pin", "5678", "--pin", pin)
	for _, kmsURI := range []string{
		"pkcs11:module-path=" + testenv.SoftHSMModule + ";token=serve-leak;pin-value=" + pin,
		"pkcs11:module-path=" + testenv.SoftHSMModule + ";token=serve-leak?pin-value=" + pin,
		"pkcs11:module-path=" + testenv.SoftHSMModule + ";token=serve-leak;pin-value=" + pin + "?pin-value=" + pin,
		"pkcs11:module-path=" + testenv.SoftHSMModule + ";token=serve-leak;pin-value=" + pin + "%zz",
	} {
		c := *cfg
		c.UserCA = KeyConfig{KMS: kmsURI, Key: "pkcs11:id=4242;object=missing;pin-value=" + pin}
		var logs logCapture
		err := serve(context.Background(), &c, logs.logger(), nil)
		if err == nil || !strings.Contains(err.Error(), "user CA key") || !strings.Contains(err.Error(), "REDACTED") {
			t.Errorf("serve with a missing PKCS#11 key: %v", err)
			continue
		}
		noSecret(t, "start-up error", err.Error(), pin, url.QueryEscape(pin))
		noSecret(t, "start-up log", logs.String(), pin)
	}
}
