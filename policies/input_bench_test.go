package policies

import (
	"testing"

	"github.com/sshca/sshca/ca"
)

// BenchmarkInputValue: building a user certificate's input document, the part of Decide that
// inputValue adds to the evaluation.
func BenchmarkInputValue(b *testing.B) {
	in := ca.PolicyInput{Kind: ca.ActionUser, Now: "2026-11-25T10:00:00Z",
		Identity: ca.Identity{Issuer: "https://idp.example", Subject: "u1", Email: "alice@example.com", Username: "alice",
			Groups: []string{"ops", "bastion-users", "team-7"}, AMR: []string{"pwd", "mfa"}, ACR: "phr", AuthTime: 1795600500,
			Claims: map[string]any{"department": "sre", "groups": []any{"ops", "bastion-users"}, "email_verified": true, "iat": 1795600500.0}},
		Request: ca.PolicyRequest{Principals: []string{"alice"}, TTLSeconds: 300, KeyType: "ssh-ed25519",
			KeyFingerprint: "SHA256:1Fhx0GcLqgZQx8VzJ2e8QkXSpYLxTnLJKrYQeYxXqk4", SourceIP: "192.0.2.10", Reason: "OPS-1234 disk full"}}
	b.ReportAllocs()
	for b.Loop() {
		if inputValue(in) == nil {
			b.Fatal("no input")
		}
	}
}
