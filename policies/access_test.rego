package sshca_access_test

import rego.v1

import data.sshca

# Access requests (kinds "request" and "approve") and certificates under an approved request,
# with the shipped data: developers and ops may ask for root and prod-* (no group holds root
# standing); root needs one approval from sre-leads, prod-* two.

now := "2026-11-25T10:00:00Z"

alice := {"issuer": "https://idp", "subject": "u1", "email": "alice@example.com", "username": "alice", "groups": ["developers"], "amr": ["pwd", "mfa"], "auth_time": 1795600500, "workload": false, "claims": {}}

lead := {"issuer": "https://idp", "subject": "u7", "email": "lead@example.com", "username": "lead", "groups": ["sre-leads"], "amr": ["pwd", "hwk"], "auth_time": 1795600500, "workload": false, "claims": {}}

# The requester again, under another issuer with the same verified e-mail.
alice_elsewhere := {"issuer": "https://other-idp", "subject": "x9", "email": "Alice@Example.com", "username": "alice2", "groups": ["sre-leads"], "amr": ["hwk"], "auth_time": 1795600500, "workload": false, "claims": {}}

ci_lead := {"issuer": "https://ci", "subject": "repo:org/infra", "email": "", "username": "", "groups": ["sre-leads"], "amr": ["hwk"], "workload": true, "claims": {}}

access(principals, ttl, reason) := {"id": "req_aaaaaaaaaaaaaaaa", "requester": alice, "principals": principals, "ttl_seconds": ttl, "reason": reason, "approvals": [], "break_glass": false}

asking(id, principals, ttl, reason) := {
	"kind": "request", "identity": id, "now": now,
	"request": {"principals": principals, "ttl_seconds": ttl, "key_type": "", "key_fingerprint": "", "source_ip": "127.0.0.1", "reason": reason, "target": "request:req_aaaaaaaaaaaaaaaa"},
	"access_request": object.union(access(principals, ttl, reason), {"requester": id}),
}

approving(id, principals) := {
	"kind": "approve", "identity": id, "now": now,
	"request": {"principals": principals, "ttl_seconds": 1800, "key_type": "", "key_fingerprint": "", "source_ip": "", "reason": "ok", "target": "request:req_aaaaaaaaaaaaaaaa"},
	"access_request": access(principals, 1800, "OPS-1 disk full"),
}

test_request_root_needs_one_approval if {
	d := sshca.decision with input as asking(alice, ["root"], 1800, "OPS-1 disk full")
	d.allow
	d.approvals_required == 1
	d.ticket == "OPS-1"
}

test_request_prod_needs_two_approvals if {
	d := sshca.decision with input as asking(alice, ["prod-db", "root"], 1800, "OPS-1 disk full")
	d.allow
	d.approvals_required == 2
}

test_request_needs_ticket if {
	d := sshca.decision with input as asking(alice, ["root"], 1800, "disk full")
	not d.allow
	d.reasons == ["an access request needs a ticket matching [A-Z]+-[0-9]+ in --reason"]
}

test_request_window_capped if {
	d := sshca.decision with input as asking(alice, ["root"], 14401, "OPS-1 disk full")
	not d.allow
	d.reasons == ["access window 14401s exceeds the policy maximum of 14400s"]
}

test_request_window_at_cap if {
	d := sshca.decision with input as asking(alice, ["root"], 14400, "OPS-1 disk full")
	d.allow
}

test_request_not_requestable if {
	d := sshca.decision with input as asking(lead, ["root"], 1800, "OPS-1 disk full")
	not d.allow
	d.reasons == [`lead@example.com may not request principal root: no group of ["sre-leads"] may (access_requests.requestable)`]
}

test_request_other_principal_not_requestable if {
	d := sshca.decision with input as asking(alice, ["admin"], 1800, "OPS-1 disk full")
	not d.allow
}

test_workload_cannot_request if {
	job := object.union(ci_lead, {"groups": ["developers"]})
	d := sshca.decision with input as asking(job, ["root"], 1800, "OPS-1 disk full")
	not d.allow
	"a workload identity cannot request access" in d.reasons
}

test_lead_may_approve if {
	d := sshca.decision with input as approving(lead, ["root"])
	d.allow
	d.approvals_required == 1
}

test_lead_prod_needs_two if {
	d := sshca.decision with input as approving(lead, ["prod-web"])
	d.allow
	d.approvals_required == 2
}

test_requester_cannot_approve if {
	self := object.union(alice, {"groups": ["developers", "sre-leads"]})
	d := sshca.decision with input as approving(self, ["root"])
	not d.allow
	d.reasons == ["alice@example.com cannot approve their own access request"]
}

test_requester_under_other_identity_cannot_approve if {
	d := sshca.decision with input as approving(alice_elsewhere, ["root"])
	not d.allow
	d.reasons == ["Alice@Example.com cannot approve their own access request"]
}

test_workload_cannot_approve if {
	d := sshca.decision with input as approving(ci_lead, ["root"])
	not d.allow
	"a workload identity cannot approve access requests" in d.reasons
}

test_non_lead_cannot_approve if {
	bob := object.union(lead, {"subject": "u8", "email": "bob@example.com", "groups": ["developers"]})
	d := sshca.decision with input as approving(bob, ["root"])
	not d.allow
	d.reasons == [`approving access to ["root"] needs membership of one of the groups ["sre-leads"]`]
}

test_approver_needs_mfa if {
	d := sshca.decision with input as approving(object.union(lead, {"amr": ["pwd"]}), ["root"])
	not d.allow
	d.reasons == ["approving needs a second factor: sign in with MFA"]
}

test_approver_needs_recent_sign_in if {
	d := sshca.decision with input as approving(object.union(lead, {"auth_time": 1795596000}), ["root"])
	not d.allow
	d.reasons == ["approving needs a sign-in within 3600s; yours was 4800s ago: sign in again"]
}

# A certificate under an approved request gets its principals, within the certificate TTL.
under_request(principals, ttl) := {
	"kind": "user", "identity": alice, "now": now,
	"request": {"principals": principals, "ttl_seconds": ttl, "key_type": "ssh-ed25519", "key_fingerprint": "SHA256:x", "source_ip": "127.0.0.1", "reason": "OPS-1 disk full"},
	"access_request": object.union(access(["root"], 1800, "OPS-1 disk full"), {"approvals": [{"approver": lead, "at": now, "reason": "ok"}]}),
}

test_certificate_under_request if {
	d := sshca.decision with input as under_request(["root"], 300)
	d.allow
	d.principals == ["root"]
	d.ttl_seconds == 300
	d.ticket == "OPS-1"
}

test_certificate_under_request_capped_by_privileged_ttl if {
	d := sshca.decision with input as under_request(["root"], 1800)
	not d.allow
	d.reasons == ["ttl 1800s exceeds the policy maximum of 900s for this request"]
}

test_root_without_request_denied if {
	d := sshca.decision with input as object.remove(under_request(["root"], 300), ["access_request"])
	not d.allow
	d.reasons == ["principal root is not granted to alice@example.com"]
}

# ops held root standing before issue 17; now they ask for it like anyone else.
test_ops_request_root_and_prod if {
	ops := object.union(alice, {"groups": ["ops"]})
	d := sshca.decision with input as asking(ops, ["prod-db"], 1800, "OPS-1 disk full")
	d.allow
	d.approvals_required == 2
	d2 := sshca.decision with input as asking(ops, ["root"], 1800, "OPS-1 disk full")
	d2.allow
	d2.approvals_required == 1
	d3 := sshca.decision with input as asking(ops, ["admin"], 1800, "OPS-1 disk full")
	not d3.allow
}

test_other_kinds_need_no_approvals if {
	d := sshca.decision with input as object.remove(under_request(["root"], 300), ["access_request"])
	d.approvals_required == 0
}

# Break-glass: oncall may take root at once, with a reason, at most 30 minutes, twice a day.
oncall := object.union(alice, {"groups": ["oncall"]})

breaking(id, principals, ttl, last24h) := object.union(asking(id, principals, ttl, "INC-9 site down"), {"access_request": object.union(
	access(principals, ttl, "INC-9 site down"),
	{"requester": id, "break_glass": true, "break_glass_last_24h": last24h},
)})

test_break_glass_granted_without_approval if {
	d := sshca.decision with input as breaking(oncall, ["root"], 1800, 1)
	d.allow
	d.approvals_required == 0
}

test_break_glass_needs_group if {
	d := sshca.decision with input as breaking(alice, ["root"], 1800, 0)
	not d.allow
	d.reasons == [`alice@example.com may not use break-glass: that needs membership of one of the groups ["oncall"]`]
}

test_break_glass_principals_limited if {
	d := sshca.decision with input as breaking(oncall, ["prod-db"], 1800, 0)
	not d.allow
	d.reasons == ["principal prod-db is not available through break-glass (access_requests.break_glass.principals)"]
}

test_break_glass_short if {
	d := sshca.decision with input as breaking(oncall, ["root"], 1801, 0)
	not d.allow
	d.reasons == ["break-glass access lasts at most 1800s"]
}

test_break_glass_per_day if {
	d := sshca.decision with input as breaking(oncall, ["root"], 1800, 2)
	not d.allow
	d.reasons == ["alice@example.com has used break-glass 2 times in the last 24 hours; the policy allows 2: ask for an approved request"]
}
