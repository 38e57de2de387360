package ca_test

import (
	"encoding/base64"
	"testing"

	"github.com/sshca/sshca/ca"
)

// FuzzParseCursors: a cursor string is either refused as Invalid naming the cursor, or it is
// the one encoding of the position it names (String gives it back exactly), for inventory,
// recording, revocation, access request and discovery cursors alike: no input panics, none
// gets a 500, and two strings never name one position (so a cursor cannot be varied to slip
// past a check made on its text).
func FuzzParseCursors(f *testing.F) {
	enc := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	for _, seed := range []string{"", "abc", "%%", enc("c1:1764500000000:42"), enc("c1:0:1"), enc("c1:9007199254740992:18446744073709551615"),
		enc("c1:1:0"), enc("c1:01:7"), enc("c1:-1:7"), enc("c1:+1:7"), enc("c1:1:7:8"), enc("c2:1:7"),
		enc("r1:1764500000000:0123456789abcdef01234567"), enc("r1:1:0123456789ABCDEF01234567"), enc("r1:1:../x"),
		base64.URLEncoding.EncodeToString([]byte("c1:1:77")),
		enc("v1:h"), enc("v1:u"), enc("v1:u:1764500000000:serial:42"), enc("v1:h:inf:key:AAAAC3NzaC1lZDI1NTE5AAAAIA=="),
		enc("v1:u:1:key_id:alice@example.com#7"), enc("v1:u:1:key_id:a:b"), enc("v1:u:inf:key:AAAA="), enc("v1:u:1:serial:0"),
		enc("q1:1764500000000:req_abcdefghijklmnop"), enc("q1:1:req_ABCDEFGHIJKLMNOP"), enc("q1:0:req_a"),
		enc("q2:1764500000000:req_abcdefghijklmnop"), enc("q2:1:req_ABCDEFGHIJKLMNOP"), enc("q2:0:req_a"), enc("q2:01:req_abcdefghijklmnop"),
		enc("d1:web-01.example.com"), enc("d1:"), enc("d1:a b"), enc("d1:2001:db8::1")} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if c, err := ca.ParseCertCursor(s); err != nil {
			if ca.KindOf(err) != ca.KindInvalid || err.Error()[:6] != "cursor" {
				t.Fatalf("ParseCertCursor(%q): %v, want Invalid naming the cursor", s, err)
			}
		} else if c.String() != s {
			t.Fatalf("ParseCertCursor(%q) = %+v, which encodes as %q", s, c, c.String())
		}
		if c, err := ca.ParseRecordingCursor(s); err != nil {
			if ca.KindOf(err) != ca.KindInvalid || err.Error()[:6] != "cursor" {
				t.Fatalf("ParseRecordingCursor(%q): %v, want Invalid naming the cursor", s, err)
			}
		} else if c.String() != s {
			t.Fatalf("ParseRecordingCursor(%q) = %+v, which encodes as %q", s, c, c.String())
		}
		if c, err := ca.ParseDiscoveryCursor(s); err != nil {
			if ca.KindOf(err) != ca.KindInvalid || err.Error()[:6] != "cursor" {
				t.Fatalf("ParseDiscoveryCursor(%q): %v, want Invalid naming the cursor", s, err)
			}
		} else if c.String() != s {
			t.Fatalf("ParseDiscoveryCursor(%q) = %+v, which encodes as %q", s, c, c.String())
		}
		if c, err := ca.ParseRequestCursor(s); err != nil {
			if ca.KindOf(err) != ca.KindInvalid || err.Error()[:6] != "cursor" {
				t.Fatalf("ParseRequestCursor(%q): %v, want Invalid naming the cursor", s, err)
			}
		} else if c.String() != s {
			t.Fatalf("ParseRequestCursor(%q) = %+v, which encodes as %q", s, c, c.String())
		}
		if c, err := ca.ParseRevocationCursor(s); err != nil {
			if ca.KindOf(err) != ca.KindInvalid || err.Error()[:6] != "cursor" {
				t.Fatalf("ParseRevocationCursor(%q): %v, want Invalid naming the cursor", s, err)
			}
		} else if c.String() != s {
			t.Fatalf("ParseRevocationCursor(%q) = %+v, which encodes as %q", s, c, c.String())
		}
	})
}
