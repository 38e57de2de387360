package kms

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/sshca/sshca/internal/testenv"
)

func TestRedact(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		// What must pass unchanged: nothing secret in it, and the operator needs to read it.
		{"softkms:", "softkms:"},
		{"softkms:path=/var/lib/sshca/user_ca.pem", "softkms:path=/var/lib/sshca/user_ca.pem"},
		{"/var/lib/sshca/user_ca.pem", "/var/lib/sshca/user_ca.pem"},
		{"pkcs11:module-path=/usr/lib/softhsm/libsofthsm2.so;token=ssh-ca", "pkcs11:module-path=/usr/lib/softhsm/libsofthsm2.so;token=ssh-ca"},
		{"pkcs11:id=7331;object=ssh-user-ca", "pkcs11:id=7331;object=ssh-user-ca"},
		{"pkcs11:token=ssh-ca?pin-source=/etc/sshca/pin", "pkcs11:token=ssh-ca?pin-source=/etc/sshca/pin"},
		{"", ""},
		// Secrets, in the path and in the query.
		{"pkcs11:token=ssh-ca?pin-value=1234", "pkcs11:token=ssh-ca?pin-value=REDACTED"},
		{"pkcs11:token=ssh-ca;pin-value=1234", "pkcs11:token=ssh-ca;pin-value=REDACTED"},
		{"pkcs11:pin-value=1234;token=ssh-ca?max-sessions=2&pin-value=99", "pkcs11:pin-value=REDACTED;token=ssh-ca?max-sessions=2&pin-value=REDACTED"},
		{"pkcs11:token=ssh-ca;PIN-Value=1234", "pkcs11:token=ssh-ca;PIN-Value=REDACTED"},
		{"pkcs11:token=ssh-ca;pin%2Dvalue=1234", "pkcs11:token=ssh-ca;pin%2Dvalue=REDACTED"},
		{"pkcs11:token=ssh-ca;so-pin=5678", "pkcs11:token=ssh-ca;so-pin=REDACTED"},
		{"vault:name=k?client-secret=s&password=p&passwd=q&auth-token=t&access_token=u&region=eu",
			"vault:name=k?client-secret=REDACTED&password=REDACTED&passwd=REDACTED&auth-token=REDACTED&access_token=REDACTED&region=eu"},
		{"pkcs11:token=ssh-ca;pin-value=", "pkcs11:token=ssh-ca;pin-value=REDACTED"},
		{"pkcs11:token=a;pin-value=x=y;object=o", "pkcs11:token=a;pin-value=REDACTED;object=o"},
	} {
		if diff := cmp.Diff(tt.want, Redact(tt.in)); diff != "" {
			t.Errorf("Redact(%q) (-want +got):\n%s", tt.in, diff)
		}
	}
}

func TestScrub(t *testing.T) {
	uri := `pkcs11:token=t;pin-value=a%22b%21c?password=p1`
	for _, msg := range []string{
		"error parsing " + uri + ": bad",
		`parse "pkcs11:token=t;pin-value=a%22b%21c": invalid`,
		`value "a\"b!c" is wrong`,
		"pin a\"b!c and p1",
	} {
		got := scrub(errors.New(msg), uri).Error()
		for _, s := range []string{"a%22b%21c", `a"b!c`, `a\"b!c`, "p1"} {
			if strings.Contains(got, s) {
				t.Errorf("scrub(%q) = %q: still holds %q", msg, got, s)
			}
		}
	}
	// A message without secrets passes unchanged.
	if got := scrub(errors.New("key not found"), uri).Error(); got != "key not found" {
		t.Errorf("scrub changed a clean message: %q", got)
	}
}

func secret(t *testing.T) string {
	t.Helper()
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "Pn" + hex.EncodeToString(b)
}

// TestPKCS11ErrorsHideSecrets drives every failing path of opening a key on a real SoftHSM2
// token with a distinctive PIN planted in the path or the query of the KMS URI (and of the key
// URI), and checks that no error carries it, while each still says what went wrong.
func TestPKCS11ErrorsHideSecrets(t *testing.T) {
	testenv.SoftHSMToken(t, "other") // points SOFTHSM2_CONF at a fresh token directory
	pin := secret(t)
	testenv.Run(t, testenv.Need(t, "softhsm2-util"), "--init-token", "--free", "--label", "leak-test", "--so-pin", "5678", "--pin", pin)
	mod := "pkcs11:module-path=" + testenv.SoftHSMModule
	wrong := secret(t)
	ctx := context.Background()
	for i, tt := range []struct {
		name string
		ref  KeyRef
		want string // what the error must still say
		secs []string
	}{
		{"pin in query, key missing", KeyRef{KMS: mod + ";token=leak-test?pin-value=" + pin, Key: "pkcs11:id=9999;object=missing"}, "not found", []string{pin}},
		{"pin in path, key missing", KeyRef{KMS: mod + ";token=leak-test;pin-value=" + pin, Key: "pkcs11:id=9999;object=missing"}, "not found", []string{pin}},
		{"wrong pin in query", KeyRef{KMS: mod + ";token=leak-test?pin-value=" + wrong, Key: "pkcs11:id=9999;object=missing"}, "pin-value=REDACTED", []string{wrong}},
		{"wrong pin in path", KeyRef{KMS: mod + ";token=leak-test;pin-value=" + wrong, Key: "pkcs11:id=9999;object=missing"}, "pin-value=REDACTED", []string{wrong}},
		{"pin in the key URI", KeyRef{KMS: mod + ";token=leak-test?pin-value=" + pin, Key: "pkcs11:id=9999;object=missing;pin-value=" + wrong}, "not found", []string{pin, wrong}},
		{"no such token", KeyRef{KMS: mod + ";token=nope;pin-value=" + pin, Key: "pkcs11:id=1;object=x"}, "REDACTED", []string{pin}},
		{"no such module", KeyRef{KMS: "pkcs11:module-path=/nonexistent.so;token=leak-test;pin-value=" + pin, Key: "pkcs11:id=1;object=x"}, "REDACTED", []string{pin}},
		{"unparseable URI", KeyRef{KMS: mod + ";token=leak-test;pin-value=" + pin + "%zz", Key: "pkcs11:id=1;object=x"}, "REDACTED", []string{pin}},
		{"key URI without id or object", KeyRef{KMS: mod + ";token=leak-test;pin-value=" + pin, Key: "pkcs11:pin-value=" + wrong}, "REDACTED", []string{pin, wrong}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// Each case its own key id, so that a key created by one case is not found by the next.
			openRef := tt.ref
			openRef.Key = strings.Replace(tt.ref.Key, "9999", fmt.Sprint(1000+i), 1)
			createRef := tt.ref
			createRef.Key = strings.Replace(tt.ref.Key, "9999", fmt.Sprint(2000+i), 1)
			for _, op := range []struct {
				name string
				do   func() (*Key, error)
			}{
				{"open", func() (*Key, error) { return Open(ctx, openRef) }},
				{"create", func() (*Key, error) { return Create(ctx, createRef, ECDSAP256) }},
			} {
				k, err := op.do()
				if err == nil {
					k.Close()
					if op.name == "create" {
						continue // creating the missing key is fine; the point is the errors
					}
					t.Fatalf("%s: no error", op.name)
				}
				for _, s := range tt.secs {
					if strings.Contains(err.Error(), s) {
						t.Errorf("%s: error leaks a secret: %v", op.name, err)
					}
				}
				if op.name == "open" && !strings.Contains(err.Error(), tt.want) {
					t.Errorf("%s: error %q does not say %q", op.name, err, tt.want)
				}
				t.Logf("%s: %v", op.name, err)
			}
		})
	}
}
