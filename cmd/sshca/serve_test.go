package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/identity/devissuer"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/kms"
)

// startIssuer serves a development OIDC issuer on its own loopback listener, standing in for an
// independent identity provider.
func startIssuer(t *testing.T, audience string) *devissuer.Issuer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + l.Addr().String() + "/oidc"
	iss, err := devissuer.New(url, devissuer.Options{Audience: audience})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/oidc/", http.StripPrefix("/oidc", iss.Handler()))
	srv := httptest.NewUnstartedServer(mux)
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	return iss
}

// startServe runs `sshca serve` (production wiring) with cfg and returns its base URL.
func startServe(t *testing.T, cfg *Config) string {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("config: %v", err)
	}
	base, _ := startServeStoppable(t, cfg)
	return base
}

func serveConfig(t *testing.T, redisAddr string, issuers ...identity.IssuerConfig) *Config {
	t.Helper()
	dir := t.TempDir()
	ctx := context.Background()
	for _, name := range []string{"user_ca.pem", "host_ca.pem"} {
		k, err := kms.Create(ctx, kms.KeyRef{KMS: "softkms:", Key: "softkms:path=" + filepath.Join(dir, name)}, kms.ECDSAP256)
		if err != nil {
			t.Fatal(err)
		}
		k.Close()
	}
	if err := writeAuditKey(filepath.Join(dir, "audit.key")); err != nil {
		t.Fatal(err)
	}
	return &Config{
		Listen: "127.0.0.1:0",
		Audit:  AuditConfig{KeyFile: filepath.Join(dir, "audit.key")},
		UserCA: KeyConfig{KMS: "softkms:", Key: "softkms:path=" + filepath.Join(dir, "user_ca.pem")},
		HostCA: KeyConfig{KMS: "softkms:", Key: "softkms:path=" + filepath.Join(dir, "host_ca.pem")},
		Redis:  RedisConfig{Addrs: []string{redisAddr}, DialTimeout: time.Second, ReadTimeout: time.Second},
		OIDC:   identity.Config{Issuers: issuers},
		Limits: LimitsConfig{Rate: testRates}, // tests that load the service are not testing its limits
	}
}

// TestServeTwoIssuersWithRotation: `serve` trusts two independent issuers; one rotates its
// signing key mid-test. Tokens from both verify; a token signed by the retired key does not.
func TestServeTwoIssuersWithRotation(t *testing.T) {
	r := testenv.StartRedis(t)
	a := startIssuer(t, "sshca-a")
	b := startIssuer(t, "sshca-b")
	base := startServe(t, serveConfig(t, r.Addr,
		identity.IssuerConfig{IssuerURL: a.URL(), Audiences: []string{"sshca-a"}},
		identity.IssuerConfig{IssuerURL: b.URL(), Audiences: []string{"other-app", "sshca-b"}},
	))
	userKey := keygen(t, t.TempDir(), "user")
	body := map[string]any{"public_key": readFile(t, userKey+".pub")}
	mint := func(iss *devissuer.Issuer, user string) string {
		tok, err := iss.Mint(map[string]any{"sub": user, "preferred_username": user})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	for _, tt := range []struct {
		iss  *devissuer.Issuer
		user string
	}{{a, "alice"}, {b, "bob"}} {
		c := issue(t, base, "user", mint(tt.iss, tt.user), body)
		if strings.Join(c.Principals, ",") != tt.user {
			t.Errorf("%s: principals %v", tt.user, c.Principals)
		}
	}

	// Tokens signed by the key about to be retired (single use each, so one per attempt).
	var retired []string
	for range 50 {
		retired = append(retired, mint(a, "alice"))
	}
	if err := a.Rotate(); err != nil {
		t.Fatal(err)
	}
	issue(t, base, "user", mint(a, "carol"), body) // new key: JWKS refetched
	// (go-oidc replaces its cached key set a moment after the refetch answers.)
	waitFor(t, 2*time.Second, "a token signed by the retired key gets 401", func() bool {
		if len(retired) == 0 {
			t.Fatal("every retired-key token was accepted")
		}
		tok := retired[0]
		retired = retired[1:]
		code, out := call(t, http.MethodPost, base+"/v1/certs/user", tok, body)
		return code == http.StatusUnauthorized && strings.Contains(string(out), "token rejected")
	})
	issue(t, base, "user", mint(b, "bob"), body) // the other issuer is unaffected
}

// TestReadyzFollowsRedis: /readyz is 503 while redis-server is down and 200 once it is back.
func TestReadyzFollowsRedis(t *testing.T) {
	r := testenv.StartRedisPersistent(t) // a restart keeps the data, as production's does: an empty one is lost state
	a := startIssuer(t, "sshca")
	base := startServe(t, serveConfig(t, r.Addr, identity.IssuerConfig{IssuerURL: a.URL(), Audiences: []string{"sshca"}}))
	waitStatus := func(want int) string {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for {
			code, out := call(t, http.MethodGet, base+"/readyz", "", nil)
			if code == want {
				return string(out)
			}
			if time.Now().After(deadline) {
				t.Fatalf("/readyz = %d %s, want %d", code, out, want)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitStatus(http.StatusOK)
	r.Stop()
	out := waitStatus(http.StatusServiceUnavailable)
	if !strings.Contains(out, `"redis"`) {
		t.Errorf("/readyz does not name redis: %s", out)
	}
	// While Redis is down, a certificate request gets 503, not a certificate that was never recorded.
	tok, _ := a.Mint(map[string]any{"sub": "alice", "preferred_username": "alice"})
	userKey := keygen(t, t.TempDir(), "user")
	if code, out := call(t, http.MethodPost, base+"/v1/certs/user", tok, map[string]any{"public_key": readFile(t, userKey+".pub")}); code != http.StatusServiceUnavailable {
		t.Errorf("issue with redis down = %d %s, want 503", code, out)
	}
	r.Start()
	waitStatus(http.StatusOK)
}

// TestServePolicyReloadVisible: a broken policy written into the watched directory is refused;
// the service keeps deciding with the last good one and /readyz says so.
func TestServePolicyReloadVisible(t *testing.T) {
	r := testenv.StartRedis(t)
	a := startIssuer(t, "sshca")
	cfg := serveConfig(t, r.Addr, identity.IssuerConfig{IssuerURL: a.URL(), Audiences: []string{"sshca"}})
	dir := t.TempDir()
	for _, f := range []string{"sshca.rego", "sshca_test.rego", "data.json"} {
		writeFile(t, filepath.Join(dir, f), readFile(t, filepath.Join("..", "..", "policies", f)))
	}
	cfg.Policy.Dir = dir
	base := startServe(t, cfg)
	writeFile(t, filepath.Join(dir, "broken.rego"), "package sshca\n\ndecision := {")
	waitFor(t, 10*time.Second, "/readyz reports the refused reload", func() bool {
		code, out := call(t, http.MethodGet, base+"/readyz", "", nil)
		return code == http.StatusOK && strings.Contains(string(out), "refused, last good policy in force")
	})
	tok, _ := a.Mint(map[string]any{"sub": "alice", "preferred_username": "alice"})
	userKey := keygen(t, t.TempDir(), "user")
	issue(t, base, "user", tok, map[string]any{"public_key": readFile(t, userKey+".pub")})
	// The policy in force is compiled, says so, and its decisions are timed.
	if _, out := call(t, http.MethodGet, base+"/readyz", "", nil); !strings.Contains(string(out), `"policy_evaluator":"compiled"`) {
		t.Errorf("/readyz does not name the compiled evaluator: %s", out)
	}
	if _, out := call(t, http.MethodGet, base+"/metrics", "", nil); !strings.Contains(string(out), `sshca_policy_decision_seconds_count{evaluator="compiled"} 1`) {
		t.Errorf("/metrics has no decision timing:\n%s", out)
	}
}

// TestServeTLS: with tls files configured, the service answers over HTTPS only.
func TestServeTLS(t *testing.T) {
	r := testenv.StartRedis(t)
	a := startIssuer(t, "sshca")
	cfg := serveConfig(t, r.Addr, identity.IssuerConfig{IssuerURL: a.URL(), Audiences: []string{"sshca"}})
	dir := t.TempDir()
	certPEM, keyPEM := selfSigned(t)
	cfg.TLS = TLSConfig{CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key")}
	writeFile(t, cfg.TLS.CertFile, string(certPEM))
	writeFile(t, cfg.TLS.KeyFile, string(keyPEM))
	base := startServe(t, cfg)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := client.Get(strings.Replace(base, "http://", "https://", 1) + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("https healthz: %v %v", resp, err)
	}
	resp.Body.Close()
	if resp, err := http.Get(base + "/healthz"); err == nil && resp.StatusCode == 200 {
		t.Fatal("plain HTTP answered on the TLS listener")
	}
}

func selfSigned(t *testing.T) (certPEM, keyPEM []byte) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
}
