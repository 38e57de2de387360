package policies_test

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/policies"
)

// BenchmarkDecideUser: one decision of the embedded policy and data on the compiled path, for
// the requests a user certificate's issuance makes (what serve spends per certificate):
// plain is a login without groups (what `sshca bench` sends), groups one in a few groups
// asking for its own name, privileged one asking for root with MFA and a ticket, token plain
// with the claims of a development issuer's token.
func BenchmarkDecideUser(b *testing.B) {
	ctx := context.Background()
	e, err := policies.LoadFS(ctx, policies.Embedded, policies.WithEvaluator(policies.EvaluatorCompiled))
	if err != nil {
		b.Fatal(err)
	}
	id := ca.Identity{Issuer: "https://idp.example", Subject: "u1", Email: "alice@example.com", Username: "alice",
		AMR: []string{"pwd"}, Claims: map[string]any{"email_verified": true}}
	req := ca.PolicyRequest{TTLSeconds: 300, KeyType: "ssh-ed25519",
		KeyFingerprint: "SHA256:1Fhx0GcLqgZQx8VzJ2e8QkXSpYLxTnLJKrYQeYxXqk4", SourceIP: "127.0.0.1"}
	grouped := id
	grouped.Groups = []string{"ops", "bastion-users", "backup-operators", "team-7"}
	privileged := grouped
	privileged.AMR, privileged.ACR, privileged.AuthTime = []string{"pwd", "mfa"}, "phr", 1764064700
	// token: plain with every claim of a token from `sshca bench`'s development issuer, as
	// identity decodes them (numbers as json.Number): what serve's decisions see.
	token := id
	token.Claims = map[string]any{"iss": "https://127.0.0.1:8443", "aud": "sshca", "sub": "bench-a-17",
		"iat": json.Number("1764064700"), "nbf": json.Number("1764064700"), "exp": json.Number("1764068300"),
		"jti": "9f2c1e0b7a4d4c55b1d3e8f06a7c2b91", "preferred_username": "bencha17",
		"email": "bencha17@example.com", "email_verified": true}
	for _, c := range []struct {
		name       string
		id         ca.Identity
		principals []string
		reason     string
		allow      bool
	}{
		{"plain", id, nil, "", true},
		{"groups", grouped, []string{"alice"}, "", true},
		{"privileged", privileged, []string{"root"}, "OPS-1234 disk full", false}, // root is requestable, not granted
		{"token", token, nil, "", true},
	} {
		b.Run(c.name, func(b *testing.B) {
			r := req
			r.Principals, r.Reason = c.principals, c.reason
			in := ca.PolicyInput{Kind: ca.ActionUser, Identity: c.id, Request: r, Now: "2026-11-25T10:00:00Z"}
			d, err := e.Decide(ctx, in)
			if err != nil || d.Allow != c.allow {
				b.Fatalf("decision %+v %v", d, err)
			}
			b.ReportAllocs()
			cpu, ops := testenv.CPUPerOp(b), 0
			for b.Loop() {
				if _, err := e.Decide(ctx, in); err != nil {
					b.Fatal(err)
				}
				ops++
			}
			cpu(ops)
		})
	}
}
