package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/internal/testenv"
)

// testCA issues TLS certificates for tests: server certificates for 127.0.0.1 and client
// certificates.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

var tlsSerial struct {
	sync.Mutex
	n int64
}

func nextSerial() *big.Int {
	tlsSerial.Lock()
	defer tlsSerial.Unlock()
	tlsSerial.n++
	return big.NewInt(tlsSerial.n + 100)
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: nextSerial(), Subject: pkix.Name{CommonName: name}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &testCA{cert: c, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns a certificate and key (PEM) named cn, for a server on 127.0.0.1 or a client.
func (ca *testCA) issue(t *testing.T, cn string, server bool) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: nextSerial(), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature}
	if server {
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb})
}

// startServeTLS runs serve with cfg, logging to the test and to the returned buffer, and
// returns the https base URL.
func startServeTLS(t *testing.T, cfg *Config) (string, *testenv.SyncBuffer) {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("config: %v", err)
	}
	logs := &testenv.SyncBuffer{}
	log := slog.New(slog.NewTextHandler(io.MultiWriter(logs, testWriter{t}), nil))
	ctx, cancel := context.WithCancel(context.Background())
	ready, errc := make(chan string, 1), make(chan error, 1)
	go func() { errc <- serve(ctx, cfg, log, ready) }()
	select {
	case addr := <-ready:
		t.Cleanup(func() { cancel(); <-errc })
		return "https://" + addr, logs
	case err := <-errc:
		cancel()
		t.Fatalf("serve: %v", err)
	case <-time.After(60 * time.Second):
		cancel()
		t.Fatal("serve did not start within 60s")
	}
	return "", nil
}

// servedCN connects with a fresh TLS connection (no session reuse) and returns the common name
// of the certificate the server presented.
func servedCN(t *testing.T, base string, roots *x509.CertPool) string {
	t.Helper()
	conn, err := tls.Dial("tcp", strings.TrimPrefix(base, "https://"), &tls.Config{RootCAs: roots})
	if err != nil {
		t.Fatalf("TLS handshake: %v", err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].Subject.CommonName
}

// TestServeTLSReloadsRotatedPair rotates the certificate and key files under a running serve:
// the old certificate is served until both files are replaced, a half-written pair (new
// certificate, old key; then a truncated key) is never served and is logged, and the new pair
// is served after, without a restart.
func TestServeTLSReloadsRotatedPair(t *testing.T) {
	r := testenv.StartRedis(t)
	idp := startIssuer(t, "sshca")
	cfg := serveConfig(t, r.Addr, identity.IssuerConfig{IssuerURL: idp.URL(), Audiences: []string{"sshca"}})
	serverCA := newTestCA(t, "server CA")
	dir := t.TempDir()
	cfg.TLS = TLSConfig{CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key")}
	oldCert, oldKey := serverCA.issue(t, "old", true)
	writeFile(t, cfg.TLS.CertFile, string(oldCert))
	writeFile(t, cfg.TLS.KeyFile, string(oldKey))
	base, logs := startServeTLS(t, cfg)
	roots := x509.NewCertPool()
	roots.AddCert(serverCA.cert)

	if cn := servedCN(t, base, roots); cn != "old" {
		t.Fatalf("before rotation the server presented %q, want old", cn)
	}
	newCert, newKey := serverCA.issue(t, "new", true)
	writeFile(t, cfg.TLS.CertFile, string(newCert)) // the key is not written yet
	if cn := servedCN(t, base, roots); cn != "old" {
		t.Fatalf("with a new certificate and the old key the server presented %q, want old kept", cn)
	}
	if !strings.Contains(logs.String(), "do not load together") {
		t.Errorf("the mismatched pair was not logged:\n%s", logs.String())
	}
	writeFile(t, cfg.TLS.KeyFile, string(newKey[:len(newKey)/2])) // half written
	if cn := servedCN(t, base, roots); cn != "old" {
		t.Fatalf("with a truncated key the server presented %q, want old kept", cn)
	}
	writeFile(t, cfg.TLS.KeyFile, string(newKey))
	if cn := servedCN(t, base, roots); cn != "new" {
		t.Fatalf("after rotation the server presented %q, want new", cn)
	}
	// And an HTTP client of the API sees the new certificate on an ordinary request.
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	resp, err := hc.Get(base + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if cn := resp.TLS.PeerCertificates[0].Subject.CommonName; resp.StatusCode != 200 || cn != "new" {
		t.Fatalf("GET /healthz = %d over %q, want 200 over new", resp.StatusCode, cn)
	}
}

// TestServeTLSRefusesOldVersions: TLS 1.0 and 1.1 handshakes fail; 1.2 and 1.3 succeed. Go's
// own default would allow 1.0 under GODEBUG=tls10server=1 (set here): the explicit minimum
// does not.
func TestServeTLSRefusesOldVersions(t *testing.T) {
	t.Setenv("GODEBUG", "tls10server=1")
	r := testenv.StartRedis(t)
	idp := startIssuer(t, "sshca")
	cfg := serveConfig(t, r.Addr, identity.IssuerConfig{IssuerURL: idp.URL(), Audiences: []string{"sshca"}})
	serverCA := newTestCA(t, "server CA")
	dir := t.TempDir()
	cfg.TLS = TLSConfig{CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key")}
	c, k := serverCA.issue(t, "srv", true)
	writeFile(t, cfg.TLS.CertFile, string(c))
	writeFile(t, cfg.TLS.KeyFile, string(k))
	base, _ := startServeTLS(t, cfg)
	roots := x509.NewCertPool()
	roots.AddCert(serverCA.cert)
	for _, v := range []struct {
		version uint16
		ok      bool
	}{{tls.VersionTLS10, false}, {tls.VersionTLS11, false}, {tls.VersionTLS12, true}, {tls.VersionTLS13, true}} {
		conn, err := tls.Dial("tcp", strings.TrimPrefix(base, "https://"), &tls.Config{RootCAs: roots, MinVersion: v.version, MaxVersion: v.version})
		if err == nil {
			conn.Close()
		}
		if (err == nil) != v.ok {
			t.Errorf("TLS version %x: handshake error %v, want success %v", v.version, err, v.ok)
		}
	}
}

// TestServeAdminClientCert: with tls.client_ca_file set, admin endpoints need a client
// certificate from that CA (none: 403 naming the requirement; another CA's: the handshake
// fails), the right one gets through to the token and the policy, through the CLI's
// --tls-cert/--tls-key too, and issuance needs no client certificate.
func TestServeAdminClientCert(t *testing.T) {
	r := testenv.StartRedis(t)
	idp := startIssuer(t, "sshca")
	cfg := serveConfig(t, r.Addr, identity.IssuerConfig{IssuerURL: idp.URL(), Audiences: []string{"sshca"}})
	serverCA, adminCA, otherCA := newTestCA(t, "server CA"), newTestCA(t, "admin CA"), newTestCA(t, "other CA")
	dir := t.TempDir()
	cfg.TLS = TLSConfig{CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key"), ClientCAFile: filepath.Join(dir, "admin-ca.pem")}
	c, k := serverCA.issue(t, "srv", true)
	writeFile(t, cfg.TLS.CertFile, string(c))
	writeFile(t, cfg.TLS.KeyFile, string(k))
	writeFile(t, cfg.TLS.ClientCAFile, string(adminCA.pem))
	writeFile(t, filepath.Join(dir, "server-ca.pem"), string(serverCA.pem))
	base, _ := startServeTLS(t, cfg)
	roots := x509.NewCertPool()
	roots.AddCert(serverCA.cert)
	mint := minter(t, idp)
	admin := mint(map[string]any{"sub": "admin", "preferred_username": "admin1", "email": "admin@example.com", "email_verified": true, "groups": []string{"sshca-admins"}})

	// clientWith presents a certificate from ca, even when the server's list of acceptable CAs
	// does not name it (Go's client would otherwise send none).
	clientWith := func(ca *testCA) *http.Client {
		conf := &tls.Config{RootCAs: roots}
		if ca != nil {
			cp, kp := ca.issue(t, "admin1", false)
			pair, err := tls.X509KeyPair(cp, kp)
			if err != nil {
				t.Fatal(err)
			}
			conf.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil }
		}
		return &http.Client{Transport: &http.Transport{TLSClientConfig: conf}}
	}
	do := func(hc *http.Client, method, path, token string, body any) (int, string, error) {
		var rd io.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		req, _ := http.NewRequest(method, base+path, rd)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := hc.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(out), nil
	}

	none, right, other := clientWith(nil), clientWith(adminCA), clientWith(otherCA)
	for _, route := range []struct{ method, path string }{
		{"GET", "/v1/revocations"}, {"POST", "/v1/revocations"}, {"POST", "/v1/revocations/lift"},
		{"GET", "/v1/certs"}, {"GET", "/v1/keys"}, {"POST", "/v1/keys/generate"},
		{"POST", "/v1/requests/r1/approve"}, {"POST", "/v1/requests/r1/deny"},
		// The web console's admin actions, whether or not the console is mounted.
		{"POST", "/ui/requests/r1/approve"}, {"POST", "/ui/requests/r1/deny"}, {"POST", "/ui/requests/r1/revoke"},
	} {
		code, out, err := do(none, route.method, route.path, admin, map[string]any{})
		if err != nil || code != http.StatusForbidden || !strings.Contains(out, "client certificate is required") {
			t.Errorf("%s %s without a client certificate = %d %s %v, want 403 saying a client certificate is required", route.method, route.path, code, out, err)
		}
		if code, out, err := do(other, route.method, route.path, admin, map[string]any{}); err == nil {
			t.Errorf("%s %s with a certificate from another CA = %d %s, want the handshake refused", route.method, route.path, code, out)
		}
	}
	if code, out, err := do(right, "GET", "/v1/revocations", admin, nil); err != nil || code != http.StatusOK {
		t.Errorf("GET /v1/revocations with the admin CA's certificate = %d %s %v, want 200", code, out, err)
	}
	// The certificate is a second factor, not a replacement: the token still decides.
	if code, out, err := do(right, "GET", "/v1/revocations", "", nil); err != nil || code != http.StatusUnauthorized {
		t.Errorf("GET /v1/revocations with the certificate and no token = %d %s %v, want 401", code, out, err)
	}

	// Issuance, and paths that only look like admin ones, need no client certificate.
	alice := mint(map[string]any{"sub": "u-alice", "preferred_username": "alice", "email": "alice@example.com", "email_verified": true})
	userKey := keygen(t, dir, "alice")
	code, out, err := do(none, "POST", "/v1/certs/user", alice, map[string]any{"public_key": readFile(t, userKey+".pub"), "ttl": "5m"})
	if err != nil || code != http.StatusOK {
		t.Fatalf("POST /v1/certs/user without a client certificate = %d %s %v, want 200", code, out, err)
	}
	var issued struct {
		Serial string `json:"serial"`
	}
	if err := json.Unmarshal([]byte(out), &issued); err != nil || issued.Serial == "" {
		t.Fatalf("POST /v1/certs/user: %v %s", err, out)
	}
	for _, path := range []string{"/v1/krl", "/v1/ca/user.pub", "/v1/requests/r1", "/ui/requests/r1"} {
		if code, out, err := do(none, "GET", path, alice, nil); err != nil || code == http.StatusForbidden && strings.Contains(out, "client certificate") {
			t.Errorf("GET %s without a client certificate = %d %s %v, want no client certificate requirement", path, code, out, err)
		}
	}

	// The CLI presents one with --tls-cert/--tls-key (and trusts the server with --tls-ca).
	cp, kp := adminCA.issue(t, "admin1", false)
	writeFile(t, filepath.Join(dir, "admin.crt"), string(cp))
	writeFile(t, filepath.Join(dir, "admin.key"), string(kp))
	t.Setenv("SSHCA_TOKEN", admin)
	run := func(args ...string) (string, error) {
		cmd := newRootCommand()
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetErr(&out)
		cmd.SetArgs(args)
		err := cmd.ExecuteContext(context.Background())
		return out.String(), err
	}
	revoke := []string{"revoke", "--server", base, "--serial", issued.Serial, "--reason", "test", "--tls-ca", filepath.Join(dir, "server-ca.pem")}
	if out, err := run(revoke...); err == nil || !strings.Contains(err.Error()+out, "client certificate") {
		t.Errorf("sshca revoke without --tls-cert: %v %s, want an error saying a client certificate is required", err, out)
	}
	if out, err := run(append(revoke, "--tls-cert", filepath.Join(dir, "admin.crt"), "--tls-key", filepath.Join(dir, "admin.key"))...); err != nil {
		t.Errorf("sshca revoke --tls-cert --tls-key: %v %s", err, out)
	}
	if _, err := run(append(revoke, "--tls-cert", filepath.Join(dir, "admin.crt"))...); err == nil || !strings.Contains(err.Error(), "--tls-key") {
		t.Errorf("sshca revoke --tls-cert without --tls-key: %v, want an error naming --tls-key", err)
	}
}

// TestTLSConfigValidation: client_ca_file needs TLS on the listener and a PEM certificate.
func TestTLSConfigValidation(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		tls  TLSConfig
		want string
	}{
		{TLSConfig{ClientCAFile: notPEM}, "tls.client_ca_file: client certificates need TLS"},
		{TLSConfig{CertFile: notPEM, KeyFile: notPEM, ClientCAFile: notPEM}, "holds no PEM CERTIFICATE block"},
	} {
		cfg := &Config{Listen: "127.0.0.1:0", TLS: tc.tls}
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.tls, err, tc.want)
		}
	}
}
