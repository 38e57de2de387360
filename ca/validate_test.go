package ca_test

import (
	"strings"
	"testing"
	"time"

	"github.com/sshca/sshca/ca"
)

func TestParseTTL(t *testing.T) {
	for in, want := range map[string]string{"": "", "5m": "", "-1m": "positive", "0s": "positive", "abc": "not a duration", "2h": "exceeds"} {
		_, err := ca.ParseTTL(in, time.Hour)
		if (want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), want)) {
			t.Errorf("ParseTTL(%q) = %v, want %q", in, err, want)
		}
	}
}

func TestPrincipalGrammar(t *testing.T) {
	for p, want := range map[string]bool{"alice": true, "_svc": true, "a.b-c_d": true, "Alice": false, "a,b": false, "a b": false, "*": false, "1abc": false, "": false, strings.Repeat("a", 33): false} {
		if got := ca.ValidUserPrincipal(p); got != want {
			t.Errorf("ValidUserPrincipal(%q) = %v, want %v", p, got, want)
		}
	}
	for p, want := range map[string]bool{"web1.dev.internal": true, "127.0.0.1": true, "::1": false, "localhost": true, "*.dev.internal": false, "A.example": false, "a..b": false, "a b": false} {
		if got := ca.ValidHostPrincipal(p); got != want {
			t.Errorf("ValidHostPrincipal(%q) = %v, want %v", p, got, want)
		}
	}
}
