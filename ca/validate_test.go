package ca_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
)

func authorizedKey(t *testing.T, k any) string {
	t.Helper()
	pk, err := ssh.NewPublicKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return string(ssh.MarshalAuthorizedKey(pk))
}

func TestParsePublicKey(t *testing.T) {
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	big, _ := rsa.GenerateKey(rand.Reader, 2048)
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	signer, edPub := newSSHKey(t)
	cert := &ssh.Certificate{Key: edPub, CertType: ssh.UserCert, ValidPrincipals: []string{"a"}, ValidBefore: ssh.CertTimeInfinity}
	if err := cert.SignCert(rand.Reader, signer); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, line, wantErr string
	}{
		{"ed25519", string(ssh.MarshalAuthorizedKey(edPub)), ""},
		{"ecdsa", authorizedKey(t, &ec.PublicKey), ""},
		{"rsa 2048", authorizedKey(t, &big.PublicKey), ""},
		{"rsa 1024", authorizedKey(t, &small.PublicKey), "too small"},
		{"certificate", string(ssh.MarshalAuthorizedKey(cert)), "is a certificate"},
		{"dsa", "ssh-dss AAAAB3NzaC1kc3MAAACBAP== x", "DSA keys are not accepted"},
		{"unknown", "ssh-foo AAAA", "unsupported key type"},
		{"garbage", "ssh-ed25519 !!!!", "not a valid ssh-ed25519"},
		{"empty", "  ", "required"},
		{"sk", "sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAIEX/dQ0v4127bEo8eeG1EV0ApO2lWbSnN6RWusn/NjqIAAAABHNzaDo= sk", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ca.ParsePublicKey(tt.line)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || ca.KindOf(err) != ca.KindInvalid {
				t.Fatalf("error = %v, want invalid containing %q", err, tt.wantErr)
			}
		})
	}
}

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
