package policies_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/policies"
)

// shippedGroups returns every group name the shipped data.json mentions: the keys of its
// group maps and the members of its group lists.
func shippedGroups(t *testing.T) []string {
	t.Helper()
	b, err := policies.Embedded.ReadFile("data.json")
	if err != nil {
		t.Fatal(err)
	}
	var data struct {
		Settings struct {
			AdminGroups   []string `json:"admin_groups"`
			AuditorGroups []string `json:"auditor_groups"`
			User          struct {
				GroupPrincipals      map[string]any `json:"group_principals"`
				GroupMaxTTL          map[string]any `json:"group_max_ttl_seconds"`
				GroupExtensions      map[string]any `json:"group_extensions"`
				GroupSourceAddresses map[string]any `json:"group_source_addresses"`
				TimeBoxes            map[string]any `json:"time_boxes"`
			} `json:"user"`
			Access struct {
				Requestable   map[string]any `json:"requestable"`
				DefaultGroups []string       `json:"default_approver_groups"`
				Approvals     []struct {
					ApproverGroups []string `json:"approver_groups"`
				} `json:"approvals"`
				BreakGlass struct {
					Groups []string `json:"groups"`
				} `json:"break_glass"`
			} `json:"access_requests"`
		} `json:"sshca_settings"`
	}
	if err := json.Unmarshal(b, &data); err != nil {
		t.Fatal(err)
	}
	s := data.Settings
	groups := slices.Concat(s.AdminGroups, s.AuditorGroups, s.Access.DefaultGroups, s.Access.BreakGlass.Groups)
	for _, a := range s.Access.Approvals {
		groups = append(groups, a.ApproverGroups...)
	}
	for _, m := range []map[string]any{s.User.GroupPrincipals, s.User.GroupMaxTTL, s.User.GroupExtensions,
		s.User.GroupSourceAddresses, s.User.TimeBoxes, s.Access.Requestable} {
		for g := range m {
			groups = append(groups, g)
		}
	}
	slices.Sort(groups)
	return slices.Compact(groups)
}

// TestShippedDataGrantsNoStandingRoot is issue 17's core complaint: with the shipped policy
// and data, no identity gets a privileged principal (root, prod-*) without an access request,
// whatever its groups, second factor, sign-in age and ticket. The same input under an approved
// request is granted, and so it is with an operator's data that maps ops to root: the refusal
// comes from the shipped data alone, not from anything else in the input.
func TestShippedDataGrantsNoStandingRoot(t *testing.T) {
	ctx := context.Background()
	groups := shippedGroups(t)
	if !slices.Contains(groups, "ops") || !slices.Contains(groups, "oncall") || !slices.Contains(groups, "sre-leads") {
		t.Fatalf("groups found in the shipped data: %v; want ops, oncall and sre-leads among them", groups)
	}
	now := "2026-11-25T10:00:00Z" // a Wednesday, inside the contractors' time box
	everyone := ca.Identity{Issuer: "https://idp", Subject: "u1", Email: "alice@example.com", Username: "alice",
		Groups: groups, AMR: []string{"pwd", "mfa", "hwk"}, ACR: "phrh", AuthTime: 1795600700, Claims: map[string]any{}}
	lead := ca.Identity{Issuer: "https://idp", Subject: "u7", Email: "lead@example.com", Username: "lead",
		Groups: []string{"sre-leads"}, AMR: []string{"hwk"}, AuthTime: 1795600700, Claims: map[string]any{}}

	operatorData := filepath.Join(t.TempDir(), "data.json")
	b, err := policies.Embedded.ReadFile("data.json")
	if err != nil {
		t.Fatal(err)
	}
	standing := strings.Replace(string(b), `"group_principals": {`, `"group_principals": {"ops": ["root", "prod-db"], `, 1)
	if standing == string(b) {
		t.Fatal("data.json has no group_principals to add a standing grant to")
	}
	if err := os.WriteFile(operatorData, []byte(standing), 0o600); err != nil {
		t.Fatal(err)
	}

	for _, ev := range []struct {
		name string
		opts []policies.Option
	}{{"compiled", nil}, {"interpreted", []policies.Option{policies.Interpreted()}}} {
		shipped, err := policies.LoadFS(ctx, policies.Embedded, ev.opts...)
		if err != nil {
			t.Fatal(err)
		}
		operator, err := policies.LoadFS(ctx, policies.Embedded, append([]policies.Option{policies.WithDataFile(operatorData)}, ev.opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{"root", "prod-db"} {
			t.Run(ev.name+"/"+p, func(t *testing.T) {
				in := ca.PolicyInput{Kind: ca.ActionUser, Identity: everyone, Now: now, Request: ca.PolicyRequest{
					Principals: []string{p}, TTLSeconds: 300, KeyType: "ssh-ed25519", KeyFingerprint: "SHA256:x",
					SourceIP: "127.0.0.1", Reason: "OPS-1234 disk full"}}
				d, err := shipped.Decide(ctx, in)
				if err != nil {
					t.Fatal(err)
				}
				want := "principal " + p + " is not granted to alice@example.com"
				if d.Allow || !slices.Contains(d.Reasons, want) {
					t.Errorf("shipped data, no request, groups %v: allow %v principals %v reasons %q; want refused with %q",
						groups, d.Allow, d.Principals, d.Reasons, want)
				}

				if d, err := operator.Decide(ctx, in); err != nil || !d.Allow || !slices.Equal(d.Principals, []string{p}) {
					t.Errorf("operator's standing grant: allow %v principals %v reasons %q err %v; want %s granted (the input is otherwise grantable)",
						d.Allow, d.Principals, d.Reasons, err, p)
				}

				in.AccessRequest = ca.PolicyAccessRequest{ID: "req_aaaaaaaaaaaaaaaa", Requester: everyone, Principals: []string{p},
					TTLSeconds: 1800, Reason: "OPS-1234 disk full",
					Approvals: []ca.PolicyApproval{{Approver: lead, At: "2026-11-25T09:59:00Z", Reason: "ok"}}}
				if d, err := shipped.Decide(ctx, in); err != nil || !d.Allow || !slices.Equal(d.Principals, []string{p}) {
					t.Errorf("shipped data under an approved request: allow %v principals %v reasons %q err %v; want %s granted",
						d.Allow, d.Principals, d.Reasons, err, p)
				}
			})
		}
	}
}
