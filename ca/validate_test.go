package ca_test

import (
	"strings"
	"testing"
	"time"

	"github.com/sshca/sshca/ca"
)

func TestParseTTL(t *testing.T) {
	for _, tt := range []struct {
		in, wantErr string
		want        time.Duration
	}{
		{in: ""},
		{in: "5m", want: 5 * time.Minute},
		{in: "1m", want: time.Minute},                       // the shortest accepted
		{in: "60.9s", want: time.Minute},                    // truncated to whole seconds
		{in: "90500ms", want: 90 * time.Second},             // truncated
		{in: "1h", want: time.Hour},                         // the maximum itself
		{in: "1ns", wantErr: "ttl must be at least 1m"},     // would be a certificate already expired
		{in: "59.999s", wantErr: "ttl must be at least 1m"}, // truncated below the minimum
		{in: "59s", wantErr: "ttl must be at least 1m"},
		{in: "-1m", wantErr: "positive"},
		{in: "0s", wantErr: "positive"},
		{in: "abc", wantErr: "not a duration"},
		{in: "2h", wantErr: "exceeds"},
		{in: "1h0m0.5s", want: time.Hour}, // truncated to the maximum
	} {
		got, err := ca.ParseTTL(tt.in, time.Hour)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || ca.KindOf(err) != ca.KindInvalid {
				t.Errorf("ParseTTL(%q) = %v, %v; want invalid containing %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseTTL(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

func TestPrincipalGrammar(t *testing.T) {
	for p, want := range map[string]bool{"alice": true, "_svc": true, "a.b-c_d": true, "Alice": false, "a,b": false, "a b": false, "*": false, "1abc": false, "": false, strings.Repeat("a", 33): false} {
		if got := ca.ValidUserPrincipal(p); got != want {
			t.Errorf("ValidUserPrincipal(%q) = %v, want %v", p, got, want)
		}
	}
}

// TestHostPrincipalGrammar: RFC 1123 names in lower case and canonical IP literals pass; what
// a resolver or ssh could read differently does not.
func TestHostPrincipalGrammar(t *testing.T) {
	label63 := strings.Repeat("a", 63)
	name253 := strings.Join([]string{label63, label63, label63, strings.Repeat("b", 61)}, ".") // 253
	for p, want := range map[string]bool{
		// near misses that must pass
		"web1.dev.internal": true, "localhost": true, "127.0.0.1": true, "::1": true, "2001:db8::1": true,
		"::ffff:127.0.0.1":   true, // canonical for netip (4in6 prints in this form)
		label63 + ".example": true, name253: true, "a-b.c": true, "1web.example": true, "web.x1": true,
		"0x7f.example": true, // only the last label is read as a number
		// refused
		"127.1": false, "0x7f.1": false, "web.0x1f": false, "1.2.3.04": false, "10": false,
		"web1:22.dev.internal": false, "127.0.0.1:22": false, "[::1]": false,
		"a..b": false, ".a.b": false, "-a.b": false, "a-.b": false, label63 + "a.example": false, name253 + "b": false,
		"WEB1": false, "A.example": false, "web1.": false, "0:0:0:0:0:0:0:1": false, "fe80::1%eth0": false,
		"*": false, "*.dev.internal": false, "web?.dev.internal": false, "a b": false, "a_b.example": false, "": false,
	} {
		if got := ca.ValidHostPrincipal(p); got != want {
			t.Errorf("ValidHostPrincipal(%q) = %v, want %v", p, got, want)
		}
	}
	if len(name253) != 253 {
		t.Fatalf("name253 is %d long", len(name253))
	}
}
