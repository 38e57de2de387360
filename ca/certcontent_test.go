package ca_test

import (
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
)

type contentCase struct {
	name       string
	kind       ca.CertKind
	principals []string
	ttl        time.Duration
	ext, opts  map[string]string
	// wantField is the fault's field, "" when the content must be signed.
	wantField string
}

// contentCases: every bad value, and beside it the near miss that must pass.
func contentCases() []contentCase {
	user := func(name string, opts map[string]string, want string) contentCase {
		return contentCase{name: name, kind: ca.UserCert, principals: []string{"alice"}, ttl: 10 * time.Minute, opts: opts, wantField: want}
	}
	sa := func(v string) map[string]string { return map[string]string{"source-address": v} }
	fc := func(v string) map[string]string { return map[string]string{"force-command": v} }
	host := func(name, h, want string) contentCase {
		return contentCase{name: name, kind: ca.HostCert, principals: []string{h}, ttl: time.Hour, wantField: want}
	}
	const src, cmd = "critical_options.source-address", "critical_options.force-command"
	return []contentCase{
		// source-address
		user("cidr v4", sa("10.0.0.0/8"), ""),
		user("cidr v6", sa("2001:db8::/32"), ""),
		user("address v4", sa("192.0.2.1"), ""),
		user("address v6", sa("::1"), ""),
		user("list", sa("10.0.0.0/8,192.168.0.0/16,2001:db8::/32,192.0.2.1"), ""),
		user("host /32", sa("192.0.2.1/32"), ""),
		user("host bits set", sa("10.0.0.1/8"), src),
		user("host bits set v6", sa("2001:db8::1/32"), src),
		user("trailing space", sa("10.0.0.0/8 "), src),
		user("space after comma", sa("10.0.0.0/8, 192.168.0.0/16"), src),
		user("empty elements", sa("10.0.0.0/8,,"), src),
		user("leading comma", sa(",10.0.0.0/8"), src),
		user("empty", sa(""), src),
		user("zone", sa("fe80::1%eth0"), src),
		user("wildcard", sa("*"), src),
		user("host name", sa("example.com"), src),
		user("short v4", sa("10.1"), src),
		user("prefix too long", sa("10.0.0.0/33"), src),
		user("prefix leading zero", sa("10.0.0.0/08"), src),
		user("bare slash", sa("10.0.0.0/"), src),
		// force-command
		user("command", fc("/usr/local/bin/backup-only --full"), ""),
		user("command at the limit", fc("/bin/echo "+strings.Repeat("x", 4086)), ""),
		user("command with newline", fc("/bin/true\n/bin/sh"), cmd),
		user("command with CR", fc("/bin/true\r"), cmd),
		user("command with NUL", fc("/bin/true\x00"), cmd),
		user("command over the limit", fc(strings.Repeat("x", 4097)), cmd),
		user("empty command", fc(""), cmd),
		// flags and allow-lists
		user("verify-required", map[string]string{"verify-required": ""}, ""),
		user("verify-required with a value", map[string]string{"verify-required": "yes"}, "critical_options"),
		user("unknown option", map[string]string{"no-such-option": ""}, "critical_options"),
		{name: "flag extensions", kind: ca.UserCert, principals: []string{"alice"}, ttl: time.Minute,
			ext: map[string]string{"permit-pty": "", "permit-port-forwarding": "", "no-touch-required": ""}},
		{name: "flag extension with a value", kind: ca.UserCert, principals: []string{"alice"}, ttl: time.Minute,
			ext: map[string]string{"permit-pty": "yes"}, wantField: "extensions"},
		{name: "extension outside the allow-list", kind: ca.UserCert, principals: []string{"alice"}, ttl: time.Minute,
			ext: map[string]string{"permit-pty": "", "made-up@example.com": ""}, wantField: "extensions"},
		// principals and lifetime
		{name: "no principals", kind: ca.UserCert, ttl: time.Minute, wantField: "principals"},
		{name: "user wildcard", kind: ca.UserCert, principals: []string{"*"}, ttl: time.Minute, wantField: "principals"},
		{name: "user comma", kind: ca.UserCert, principals: []string{"alice,root"}, ttl: time.Minute, wantField: "principals"},
		{name: "ttl 60s", kind: ca.UserCert, principals: []string{"alice"}, ttl: time.Minute},
		{name: "ttl 59s", kind: ca.UserCert, principals: []string{"alice"}, ttl: 59 * time.Second, wantField: "ttl_seconds"},
		{name: "ttl 1ns", kind: ca.UserCert, principals: []string{"alice"}, ttl: 1, wantField: "ttl_seconds"},
		host("host name", "web1.dev.internal", ""),
		host("localhost", "localhost", ""),
		host("ipv4", "127.0.0.1", ""),
		host("ipv6 loopback", "::1", ""),
		host("4in6 canonical", "::ffff:127.0.0.1", ""),
		host("short ipv4", "127.1", "principals"),
		host("hex ipv4", "0x7f.1", "principals"),
		host("port", "web1:22.dev.internal", "principals"),
		host("empty label", "a..b", "principals"),
		host("leading dash", "-a.b", "principals"),
		host("trailing dash", "a-.b", "principals"),
		host("64-char label", strings.Repeat("a", 64)+".example", "principals"),
		host("254 in all", strings.Repeat(strings.Repeat("a", 62)+".", 4)+"ab", "principals"),
		host("upper case", "WEB1", "principals"),
		host("trailing dot", "web1.", "principals"),
		host("non-canonical ipv6", "0:0:0:0:0:0:0:1", "principals"),
		host("zone", "fe80::1%eth0", "principals"),
		host("wildcard", "*", "principals"),
		host("wildcard label", "*.dev.internal", "principals"),
		{name: "host with an extension", kind: ca.HostCert, principals: []string{"web1.dev.internal"}, ttl: time.Hour,
			ext: map[string]string{"permit-pty": ""}, wantField: "extensions"},
		{name: "host with source-address", kind: ca.HostCert, principals: []string{"web1.dev.internal"}, ttl: time.Hour,
			opts: sa("10.0.0.0/8"), wantField: "critical_options"},
	}
}

func TestCheckCertificateContent(t *testing.T) {
	limits := ca.DefaultLimits
	for _, tt := range contentCases() {
		t.Run(tt.name, func(t *testing.T) {
			perms := ssh.Permissions{Extensions: tt.ext, CriticalOptions: tt.opts}
			f := ca.CheckCertificateContent(tt.kind, tt.principals, tt.ttl, perms, limits.Extensions, limits.CriticalOptions)
			if tt.wantField == "" {
				if f != nil {
					t.Fatalf("fault %+v, want none", f)
				}
				return
			}
			if f == nil {
				t.Fatalf("no fault, want one in %s", tt.wantField)
			}
			if f.Field != tt.wantField {
				t.Errorf("field %q, want %q (%s)", f.Field, tt.wantField, f.Reason())
			}
			// The reason names the field and the value (quoted, bounded), and says what to do.
			r := f.Reason()
			if !strings.Contains(r, f.Field) || !strings.Contains(r, `"`) || f.Why == "" || len(r) > 700 {
				t.Errorf("reason %q", r)
			}
		})
	}
}

// FuzzCertificateContent: no input panics, and what passes is what sshd reads as meant: no
// spaces or empty elements in source-address, no newline in force-command, no wildcard host.
func FuzzCertificateContent(f *testing.F) {
	for _, tt := range contentCases() {
		f.Add(string(tt.kind), strings.Join(tt.principals, ","), int64(tt.ttl), tt.opts["source-address"], tt.opts["force-command"])
	}
	limits := ca.DefaultLimits
	f.Fuzz(func(t *testing.T, kind, principals string, ttl int64, src, cmd string) {
		opts := map[string]string{}
		if src != "" {
			opts["source-address"] = src
		}
		if cmd != "" {
			opts["force-command"] = cmd
		}
		ps := strings.Split(principals, ",")
		fault := ca.CheckCertificateContent(ca.CertKind(kind), ps, time.Duration(ttl), ssh.Permissions{CriticalOptions: opts}, limits.Extensions, limits.CriticalOptions)
		if fault != nil {
			_ = fault.Reason()
			return
		}
		if time.Duration(ttl) < time.Minute {
			t.Fatalf("ttl %d passed", ttl)
		}
		if strings.ContainsAny(src, " ,,") && (strings.Contains(src, " ") || strings.Contains(src, ",,") || strings.HasPrefix(src, ",") || strings.HasSuffix(src, ",")) {
			t.Fatalf("source-address %q passed", src)
		}
		if strings.ContainsAny(cmd, "\n\r\x00") {
			t.Fatalf("force-command %q passed", cmd)
		}
		for _, p := range ps {
			if strings.ContainsAny(p, "* ") || p == "" {
				t.Fatalf("principal %q passed", p)
			}
		}
		if ca.CertKind(kind) == ca.HostCert && len(opts) > 0 {
			t.Fatalf("host certificate with options passed")
		}
	})
}
