package main

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestConfigReportsEveryProblem: a file with several faults gets all of them in one error.
func TestConfigReportsEveryProblem(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	writeFile(t, path, `
listen: 0.0.0.0:8443
user_ca:
  kms: "softkms:"
host_ca:
  kms: "softkms:"
  key: "softkms:path=/tmp/host.pem"
redis:
  addrs: []
tls:
  cert_file: /nonexistent/cert.pem
oidc:
  issuers:
    - issuer_url: "not a url"
policy:
  dir: /nonexistent/policy
`)
	_, err := LoadConfig(path)
	if err == nil {
		t.Fatal("LoadConfig accepted a broken config")
	}
	msg := err.Error()
	for _, want := range []string{
		"user_ca.key: required",
		"redis.addrs",
		"cert_file and key_file must be given together",
		"policy.dir",
		"oidc:",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("the error does not report %q:\n%s", want, msg)
		}
	}
	if n := strings.Count(msg, "\n  - "); n < 5 {
		t.Errorf("%d problems reported, want at least 5:\n%s", n, msg)
	}
}

func TestConfigRefusesPlainHTTPOffLoopback(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	base := `
user_ca: {kms: "softkms:", key: "softkms:path=/tmp/u.pem"}
host_ca: {kms: "softkms:", key: "softkms:path=/tmp/h.pem"}
redis: {addrs: ["127.0.0.1:6379"]}
oidc:
  issuers:
    - issuer_url: https://idp.example.com
      audiences: [sshca]
`
	for _, tt := range []struct {
		extra string
		ok    bool
	}{
		{"listen: 0.0.0.0:8080\n", false},
		{"listen: 127.0.0.1:8080\n", true},
		{"listen: 0.0.0.0:8080\nbehind_tls_proxy: true\ntrusted_proxies: [10.0.0.0/8]\n", true},
		{"listen: 0.0.0.0:8080\nbehind_tls_proxy: true\ntrusted_proxies: [not-a-cidr]\n", false},
		{"listen: 127.0.0.1:8080\nunknown_key: 1\n", false},
		{"listen: 127.0.0.1:8080\nlimits: {identity_block: 2h}\n", true},
		{"listen: 127.0.0.1:8080\nlimits: {identity_block: -2h}\n", false},
	} {
		writeFile(t, path, base+tt.extra)
		_, err := LoadConfig(path)
		if (err == nil) != tt.ok {
			t.Errorf("%q: err = %v, want ok=%v", tt.extra, err, tt.ok)
		}
	}
}

// TestExampleConfig: deploy/config.example.yaml uses only keys the service knows; what it
// lacks on this machine (files, directories) is reported, nothing else.
func TestExampleConfig(t *testing.T) {
	_, err := LoadConfig(filepath.Join("..", "..", "deploy", "config.example.yaml"))
	if err == nil {
		return
	}
	for _, line := range strings.Split(err.Error(), "\n")[1:] {
		if !strings.Contains(line, "no such file or directory") && !strings.Contains(line, "is not a directory") {
			t.Errorf("unexpected problem with the example config: %s", line)
		}
	}
	if strings.Contains(err.Error(), "not found in type") {
		t.Errorf("the example uses unknown keys: %v", err)
	}
}

// TestConfigSentinelWaitReplicas: a Sentinel deployment (master_name) must say how many
// replicas confirm a revocation before it is acknowledged, and the wait must fit in the
// request's deadline; each fault is named with its fix. A single server needs neither.
func TestConfigSentinelWaitReplicas(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	base := `
listen: 127.0.0.1:8080
user_ca: {kms: "softkms:", key: "softkms:path=/tmp/u.pem"}
host_ca: {kms: "softkms:", key: "softkms:path=/tmp/h.pem"}
oidc:
  issuers:
    - issuer_url: https://idp.example.com
      audiences: [sshca]
`
	for _, tt := range []struct {
		redis, want string // want "": accepted
	}{
		{`{addrs: ["127.0.0.1:6379"]}`, ""},
		{`{addrs: ["127.0.0.1:26379", "127.0.0.2:26379"], master_name: sshca, wait_replicas: 1}`, ""},
		{`{addrs: ["127.0.0.1:26379"], master_name: sshca, wait_replicas: 2, wait_timeout: 1s}`, ""},
		{`{addrs: ["127.0.0.1:26379"], master_name: sshca}`, "redis.wait_replicas: required with master_name: set it to the number of replicas Sentinel may promote"},
		{`{addrs: ["127.0.0.1:6379"], wait_replicas: -1}`, "redis.wait_replicas: must not be negative"},
		{`{addrs: ["127.0.0.1:26379"], master_name: sshca, wait_replicas: 1, wait_timeout: 1500ms}`, "redis.wait_timeout: 1.5s is more than half of request_timeout (2s)"},
		{`{addrs: ["127.0.0.1:6379"], wait_timeout: -1s}`, "redis.wait_timeout: must not be negative"},
	} {
		writeFile(t, path, base+"redis: "+tt.redis+"\n")
		_, err := LoadConfig(path)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s: refused: %v", tt.redis, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%s: err = %v, want it to say %q", tt.redis, err, tt.want)
		}
	}
}

// TestConfigRecordingsRetention: recordings.retention defaults to 90 days, takes a longer or
// shorter one down to 24h, and refuses less (or a negative one) naming the key and the bound.
func TestConfigRecordingsRetention(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	base := `
listen: 127.0.0.1:8080
user_ca: {kms: "softkms:", key: "softkms:path=/tmp/u.pem"}
host_ca: {kms: "softkms:", key: "softkms:path=/tmp/h.pem"}
redis: {addrs: ["127.0.0.1:6379"]}
oidc:
  issuers:
    - issuer_url: https://idp.example.com
      audiences: [sshca]
recordings:
  redis: {addrs: ["127.0.0.1:6380"]}
`
	for _, tt := range []struct {
		line string
		want time.Duration // 0: refused
		err  string
	}{
		{"", 90 * 24 * time.Hour, ""},
		{"  retention: 24h\n", 24 * time.Hour, ""},
		{"  retention: 8760h\n", 8760 * time.Hour, ""},
		{"  retention: 23h\n", 0, "recordings.retention: 23h0m0s: want at least 24h0m0s"},
		{"  retention: -1h\n", 0, "recordings.retention: -1h0m0s: want at least 24h0m0s"},
	} {
		writeFile(t, path, base+tt.line)
		cfg, err := LoadConfig(path)
		switch {
		case tt.want == 0 && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("%q: err = %v, want it to say %q", tt.line, err, tt.err)
		case tt.want != 0 && err != nil:
			t.Errorf("%q: refused: %v", tt.line, err)
		case tt.want != 0 && cfg.withDefaults().Recordings.Retention != tt.want:
			t.Errorf("%q: retention %v, want %v", tt.line, cfg.withDefaults().Recordings.Retention, tt.want)
		}
	}
}
