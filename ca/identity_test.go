package ca_test

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/sshca/sshca/ca"
)

func TestIdentityNames(t *testing.T) {
	for _, tt := range []struct {
		name                     string
		id                       ca.Identity
		wantName, wantKeyIDStart string
		wantAliases              []string
	}{
		{"verified e-mail", ca.Identity{Issuer: "https://idp", Subject: "u1", Email: "Alice@Example.com", Username: "alice"},
			"https://idp|u1", "Alice@Example.com~", []string{"email:alice@example.com", "username:alice"}},
		{"username only", ca.Identity{Issuer: "https://idp", Subject: "u1", Username: "alice"}, "https://idp|u1", "alice~", []string{"username:alice"}},
		{"subject only", ca.Identity{Issuer: "https://idp", Subject: "248289761001"}, "https://idp|248289761001", "248289761001~", nil},
		// A '|' in the issuer or subject cannot make two pairs share a name.
		{"pipe in subject", ca.Identity{Issuer: "https://idp", Subject: "a|b"}, "https://idp|a%7Cb", "a|b~", nil},
		{"pipe in issuer", ca.Identity{Issuer: "https://idp|a", Subject: "b"}, "https://idp%7Ca|b", "b~", nil},
		// A newline in a claim would forge a line in sshd's log ("Accepted publickey for root").
		{"newline in subject", ca.Identity{Issuer: "https://idp", Subject: "x\nAccepted publickey for root"},
			"https://idp|x%0AAccepted%20publickey%20for%20root", "x%0AAccepted%20publickey%20for%20root~", nil},
		{"key ID separators", ca.Identity{Issuer: "https://idp", Subject: "a#b/c%d~e f"}, "https://idp|a#b/c%25d~e%20f", "a%23b%2Fc%25d%7Ee%20f~", nil},
		{"non-ASCII", ca.Identity{Issuer: "https://idp", Subject: "zoë"}, "https://idp|zo%C3%AB", "zo%C3%AB~", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.id.Name(); got != tt.wantName {
				t.Errorf("Name() = %q, want %q", got, tt.wantName)
			}
			kid := tt.id.KeyIDName()
			if !strings.HasPrefix(kid, tt.wantKeyIDStart) || !strings.HasSuffix(kid, "~"+tt.id.Handle()) {
				t.Errorf("KeyIDName() = %q, want %q…~%s", kid, tt.wantKeyIDStart, tt.id.Handle())
			}
			checkKeyIDName(t, kid)
			if diff := cmp.Diff(tt.wantAliases, tt.id.Aliases()); diff != "" {
				t.Errorf("Aliases (-want +got):\n%s", diff)
			}
		})
	}
}

// TestKeyIDNameBounded: a 20,000-character subject made a 27 kB certificate; the key ID's
// identity part is at most 128 bytes, cut on an escape boundary, and still names the pair.
func TestKeyIDNameBounded(t *testing.T) {
	for _, sub := range []string{strings.Repeat("a", 20000), strings.Repeat("\n", 20000), strings.Repeat("é", 10000), strings.Repeat("a", 110) + "\x01\x01"} {
		id := ca.Identity{Issuer: "https://idp", Subject: sub}
		kid := id.KeyIDName()
		if len(kid) > ca.MaxKeyIDName {
			t.Errorf("key ID name of %d bytes", len(kid))
		}
		checkKeyIDName(t, kid)
		other := ca.Identity{Issuer: "https://idp", Subject: sub + "x"}
		if other.KeyIDName() == kid {
			t.Errorf("two subjects with the same first 128 bytes share a key ID name %q", kid)
		}
	}
}

// checkKeyIDName: printable ASCII, no '#', no space, no broken escape.
func checkKeyIDName(t *testing.T, kid string) {
	t.Helper()
	for i := 0; i < len(kid); i++ {
		c := kid[i]
		if c < 0x21 || c > 0x7e || c == '#' {
			t.Fatalf("key ID name %q has byte %#x at %d", kid, c, i)
		}
		if c == '%' && (i+2 >= len(kid) || !isHex(kid[i+1]) || !isHex(kid[i+2])) {
			t.Fatalf("key ID name %q has a cut escape at %d", kid, i)
		}
	}
}

func isHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'A' && c <= 'F' }

func TestIdentityForm(t *testing.T) {
	for in, want := range map[string][2]string{
		"https://idp|u1":    {"https://idp|u1", ""},
		"Alice@Example.com": {"", "email:alice@example.com"},
		"alice":             {"", "username:alice"},
	} {
		c, a := ca.IdentityForm(in)
		if c != want[0] || a != want[1] {
			t.Errorf("IdentityForm(%q) = %q, %q; want %q, %q", in, c, a, want[0], want[1])
		}
	}
}

// FuzzKeyIDName: whatever the claims, the key ID name is bounded printable ASCII without '#'
// or spaces, and two pairs never share a canonical name.
func FuzzKeyIDName(f *testing.F) {
	f.Add("https://idp", "u1", "alice@example.com", "alice")
	f.Add("https://idp|a", "b", "", "")
	f.Add("https://idp", "a|b", "x#y", "z\n")
	f.Fuzz(func(t *testing.T, iss, sub, email, user string) {
		id := ca.Identity{Issuer: iss, Subject: sub, Email: email, Username: user}
		kid := id.KeyIDName()
		if len(kid) > ca.MaxKeyIDName {
			t.Fatalf("%d bytes", len(kid))
		}
		checkKeyIDName(t, kid)
		name := id.Name()
		if strings.Count(name, "|") != 1 {
			t.Fatalf("canonical name %q has %d separators", name, strings.Count(name, "|"))
		}
		swapped := ca.Identity{Issuer: iss + "|" + sub, Subject: ""}
		if swapped.Name() == name {
			t.Fatalf("(%q, %q) and (%q, %q) share the name %q", iss, sub, swapped.Issuer, swapped.Subject, name)
		}
	})
}
