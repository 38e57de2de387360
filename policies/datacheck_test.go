package policies_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/sshca/sshca/policies"
)

// TestDataCheckedOnLoad: each documented data key with a value the service would not sign is
// refused at load, naming the key and the value; the near miss beside it loads.
func TestDataCheckedOnLoad(t *testing.T) {
	data, err := os.ReadFile("data.json")
	if err != nil {
		t.Fatal(err)
	}
	rego, err := os.ReadFile("sshca.rego")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, old, new string
		wantErr        string // "" when it must load
	}{
		{"shipped", "", "", ""},
		{"source address with host bits", `"10.0.0.0/8"`, `"10.0.0.1/8"`, `user.group_source_addresses["contractors"]`},
		{"source address with a space", `"10.0.0.0/8"`, `"10.0.0.0/8 "`, `"10.0.0.0/8 "`},
		{"two addresses in one element", `"10.0.0.0/8"`, `"10.0.0.0/8,10.1.0.0/16"`, `one address or CIDR per list element`},
		{"source address near miss", `"10.0.0.0/8"`, `"2001:db8::/32", "192.0.2.1", "::1"`, ""},
		{"source addresses not a list", `"contractors": ["10.0.0.0/8", "192.168.0.0/16"]`, `"contractors": "10.0.0.0/8"`, "user.group_source_addresses[contractors] is not a list"},
		{"force command with newline", `"/usr/local/bin/backup-only"`, `"/usr/local/bin/backup-only\nsh"`, `user.principal_force_command["backup"]`},
		{"empty force command", `"/usr/local/bin/backup-only"`, `""`, `force-command is empty`},
		{"extension with a value", `"permit-port-forwarding": ""`, `"permit-port-forwarding": "yes"`, `user.group_extensions[bastion-users]`},
		{"extension outside the allow-list", `"permit-port-forwarding": ""`, `"permit-everything": ""`, `"permit-everything"`},
		{"default extension with a value", `"default_extensions": {"permit-pty": ""}`, `"default_extensions": {"permit-pty": "1"}`, `user.default_extensions`},
		{"default extensions near miss", `"default_extensions": {"permit-pty": ""}`, `"default_extensions": {"permit-pty": "", "permit-agent-forwarding": ""}`, ""},
		{"host pattern star", `"*.dev.internal", "localhost"`, `"*"`, `host.group_patterns["ci"]: "*"`},
		{"host pattern star tld", `"*.dev.internal", "localhost"`, `"web.*"`, `the last label must be literal`},
		{"host pattern with port", `"*.dev.internal", "localhost"`, `"web1:22.dev.internal"`, `"web1:22.dev.internal"`},
		{"host pattern upper case", `"*.dev.internal", "localhost"`, `"WEB.dev.internal"`, `"WEB.dev.internal"`},
		{"host pattern numeric", `"*.dev.internal", "localhost"`, `"127.1"`, `"127.1"`},
		{"host pattern near misses", `"*.dev.internal", "localhost"`, `"*.dev.internal", "web-*.dev.internal", "::1", "localhost"`, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := strings.Replace(string(data), tt.old, tt.new, 1)
			if tt.old != "" && d == string(data) {
				t.Fatalf("%s not found in data.json", tt.old)
			}
			_, err := policies.LoadFS(context.Background(), fstest.MapFS{"sshca.rego": {Data: rego}, "data.json": {Data: []byte(d)}})
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want one containing %s", err, tt.wantErr)
			}
		})
	}
}

// TestFaultyDecisionsRefusedOnLoad: a policy whose allowed decisions the service would not sign
// (its data passes, its Rego makes the fault) is refused by the load-time check, in both
// evaluators; one that is fine loads.
func TestFaultyDecisionsRefusedOnLoad(t *testing.T) {
	const head = "package sshca\n\nimport rego.v1\n\n"
	for _, tt := range []struct {
		name, decision, wantErr string
	}{
		{"fine", `{"allow": input.kind == "user", "principals": ["alice"], "ttl_seconds": 600, "critical_options": {"source-address": "10.0.0.0/8"}}`, ""},
		{"host bits", `{"allow": input.kind == "user", "principals": ["alice"], "ttl_seconds": 600, "critical_options": {"source-address": "10.0.0.1/8"}}`, `"10.0.0.1/8"`},
		{"ttl 30s", `{"allow": true, "principals": ["alice"], "ttl_seconds": 30}`, "ttl_seconds"},
		{"wildcard principal", `{"allow": true, "principals": ["*"], "ttl_seconds": 600}`, `"*"`},
		{"option for a host", `{"allow": true, "principals": ["alice"], "ttl_seconds": 600, "critical_options": {"source-address": "10.0.0.0/8"}}`, "host certificates carry no critical options"},
		{"denied faults are not certificates", `{"allow": false, "principals": ["*"], "ttl_seconds": 1}`, ""},
	} {
		for _, mode := range []struct {
			name string
			opts []policies.Option
		}{{"compiled", nil}, {"interpreted", []policies.Option{policies.Interpreted()}}} {
			t.Run(tt.name+"/"+mode.name, func(t *testing.T) {
				src := head + "decision := " + tt.decision + "\n"
				_, err := policies.LoadFS(context.Background(), fstest.MapFS{"p.rego": {Data: []byte(src)}}, mode.opts...)
				if tt.wantErr == "" {
					if err != nil {
						t.Fatalf("refused: %v", err)
					}
					return
				}
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "would not sign") {
					t.Fatalf("error %v, want one naming %s", err, tt.wantErr)
				}
			})
		}
	}
}

// TestReloadKeepsLastGoodOnFaultyData: a hot reload of data that grants what the service would
// not sign is refused, and the last good policy stays in force.
func TestReloadKeepsLastGoodOnFaultyData(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := copyPolicy(t)
	r, err := policies.NewReloader(ctx, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	good := r.Revision()
	data, _ := os.ReadFile(filepath.Join(dir, "data.json"))
	bad := strings.Replace(string(data), `"10.0.0.0/8"`, `"10.0.0.1/8"`, 1)
	if err := os.WriteFile(filepath.Join(dir, "data.json"), []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := r.Reload(ctx); err == nil || !strings.Contains(err.Error(), "10.0.0.1/8") {
		t.Fatalf("reload of faulty data: %v", err)
	}
	if rev, lastErr := r.Status(); rev != good || lastErr == nil {
		t.Errorf("status %s %v: want the last good revision %s and the refusal", rev, lastErr, good)
	}
}
