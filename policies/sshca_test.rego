package sshca_test

import rego.v1

import data.sshca

alice := {"issuer": "https://idp", "subject": "u1", "email": "alice@example.com", "username": "alice", "groups": [], "amr": [], "workload": false, "claims": {}}

ci := {"issuer": "https://ci", "subject": "repo:org/infra", "email": "", "username": "", "groups": ["ci"], "amr": [], "workload": true, "claims": {}}

req(kind, id, principals, ttl) := {"kind": kind, "identity": id, "request": {"principals": principals, "ttl_seconds": ttl, "key_type": "ssh-ed25519", "key_fingerprint": "SHA256:x", "source_ip": "127.0.0.1", "reason": ""}, "now": "2026-11-25T10:00:00Z"}

at(r, now) := object.union(r, {"now": now})

test_user_gets_username_with_defaults if {
	d := sshca.decision with input as req("user", alice, [], 0)
	d.allow
	d.principals == ["alice"]
	d.ttl_seconds == 600
	d.extensions == {"permit-pty": ""}
	d.reasons == []
}

test_user_subset_and_ttl if {
	d := sshca.decision with input as req("user", alice, ["alice"], 300)
	d.allow
	d.principals == ["alice"]
	d.ttl_seconds == 300
}

test_user_denied_other_principal if {
	d := sshca.decision with input as req("user", alice, ["alice", "root"], 0)
	not d.allow
	d.reasons == ["principal root is not granted to alice@example.com"]
}

test_user_ttl_over_max_denied if {
	d := sshca.decision with input as req("user", alice, [], 7200)
	not d.allow
	d.reasons == ["ttl 7200s exceeds the policy maximum of 3600s for this request"]
}

test_user_ttl_at_max_allowed if {
	d := sshca.decision with input as req("user", alice, [], 3600)
	d.allow
}

test_group_maps_to_principal if {
	admin := object.union(alice, {"groups": ["admins"]})
	d := sshca.decision with input as req("user", admin, [], 0)
	d.allow
	d.principals == ["admin", "alice"]
}

test_group_mapping_from_data if {
	d := sshca.decision with input as req("user", object.union(alice, {"groups": ["dba"]}), ["postgres"], 0)
		with data.sshca_settings.user.group_principals as {"dba": ["postgres"]}
	d.allow
	d.principals == ["postgres"]
}

# A username claim never yields a protected principal: one granted to a group, one bound to a
# forced command, one privileged. Each is still granted through the data.
test_username_admin_without_group_not_granted if {
	d := sshca.decision with input as req("user", object.union(alice, {"username": "admin"}), [], 0)
	not d.allow
	startswith(d.reasons[0], "no principal can be granted")
}

test_username_admin_asked_for_is_protected if {
	d := sshca.decision with input as req("user", object.union(alice, {"username": "admin"}), ["admin"], 0)
	not d.allow
	"principal admin is protected: it comes from a group of the policy's data, never from the username claim" in d.reasons
}

test_username_admin_with_group_granted if {
	d := sshca.decision with input as req("user", object.union(alice, {"username": "admin", "groups": ["admins"]}), [], 0)
	d.allow
	d.principals == ["admin"]
}

test_username_forced_command_principal_not_granted if {
	d := sshca.decision with input as req("user", object.union(alice, {"username": "backup"}), ["backup"], 0)
	not d.allow
}

test_username_privileged_principal_not_granted if {
	d := sshca.decision with input as req("user", object.union(alice, {"username": "prod-db"}), ["prod-db"], 0)
	not d.allow
	not "prod-db" in d.principals
}

test_protected_helper if {
	sshca.protected("admin")
	sshca.protected("root")
	sshca.protected("prod-web")
	sshca.protected("backup")
	not sshca.protected("alice")
}

test_no_username_no_group_denied if {
	d := sshca.decision with input as req("user", object.union(alice, {"username": ""}), [], 0)
	not d.allow
	count(d.reasons) == 1
	startswith(d.reasons[0], "no principal can be granted to alice@example.com")
}

test_host_patterns if {
	d := sshca.decision with input as req("host", ci, ["web1.dev.internal", "localhost", "127.0.0.1"], 0)
	d.allow
	d.principals == ["127.0.0.1", "localhost", "web1.dev.internal"]
	d.ttl_seconds == 3600
	d.extensions == {}
}

test_host_outside_patterns if {
	some h in ["dev.internal", "a.b.dev.internal", "a.dev.internal.evil.com", "db.prod.internal", "localhost.evil.com"]
	d := sshca.decision with input as req("host", ci, [h], 0)
	not d.allow
	d.reasons == [sprintf("host name %s is not granted to repo:org/infra (groups [\"ci\"])", [h])]
}

test_host_all_outside_patterns_denied if {
	every h in ["dev.internal", "a.b.dev.internal", "a.dev.internal.evil.com", "db.prod.internal"] {
		d := sshca.decision with input as req("host", ci, [h], 0)
		not d.allow
	}
}

test_host_needs_group if {
	d := sshca.decision with input as req("host", alice, ["web1.dev.internal"], 0)
	not d.allow
}

test_host_needs_names if {
	d := sshca.decision with input as req("host", ci, [], 0)
	not d.allow
	d.reasons == ["no host names were requested"]
}

test_host_ttl_cap if {
	over := sshca.decision with input as req("host", ci, ["localhost"], 90000)
	not over.allow
	at := sshca.decision with input as req("host", ci, ["localhost"], 86400)
	at.allow
}

test_unknown_kind_denied if {
	d := sshca.decision with input as req("superuser", alice, [], 0)
	not d.allow
	d.reasons == ["certificate kind \"superuser\" is not supported"]
}

test_admin_kind_for_admins_only if {
	d := sshca.decision with input as req("admin", object.union(alice, {"groups": ["sshca-admins"]}), [], 0)
	d.allow
	n := sshca.decision with input as req("admin", alice, [], 0)
	not n.allow
}

test_admin_may_revoke if {
	admin := object.union(alice, {"groups": ["sshca-admins"]})
	d := sshca.decision with input as req("revoke", admin, [], 0)
	d.allow
	d.principals == []
}

test_others_may_not_revoke if {
	d := sshca.decision with input as req("revoke", alice, [], 0)
	not d.allow
	d.reasons == ["alice@example.com may not revoke: that needs membership of one of the groups [\"sshca-admins\"]"]
}

auditor := object.union(alice, {"groups": ["auditors"]})

test_auditor_may_read if {
	d := sshca.decision with input as req("read", auditor, [], 0)
	d.allow
	d.principals == []
}

test_admin_may_read if {
	d := sshca.decision with input as req("read", object.union(alice, {"groups": ["sshca-admins"]}), [], 0)
	d.allow
}

test_auditor_may_not_revoke_approve_or_administer if {
	not sshca.decision.allow with input as req("revoke", auditor, [], 0)
	not sshca.decision.allow with input as req("admin", auditor, [], 0)
	not sshca.decision.allow with input as object.union(req("approve", auditor, ["root"], 1800), {"access_request": {
		"id": "req_k5qw3bfn7yxa2dzc", "requester": alice, "principals": ["root"], "ttl_seconds": 1800,
		"reason": "OPS-1 disk", "approvals": [],
	}})
}

test_others_may_not_read if {
	d := sshca.decision with input as req("read", alice, [], 0)
	not d.allow
	d.reasons == ["alice@example.com may not read the certificate inventory or revocations: that needs membership of one of the groups [\"auditors\", \"sshca-admins\"]"]
}

# --- privileged principals ----------------------------------------------------------------

# The shipped data grants root to no group (issue 17): root comes through an approved access
# request or break-glass (access_test.rego). The privileged rules below run on a certificate
# under such a request, and each test checks that an operator's own standing grant (their
# data.json mapping a group to root) meets the very same rules.
ops := object.union(alice, {"groups": ["ops"], "amr": ["pwd", "mfa"], "auth_time": 1795000000})

# 2026-11-25T10:00:00Z is 1795600800; auth_time 1795598400 is 40 minutes earlier.
ops_fresh := object.union(ops, {"auth_time": 1795598400})

with_reason(r, reason) := object.union(r, {"request": object.union(r.request, {"reason": reason})})

lead := {"issuer": "https://idp", "subject": "u7", "email": "lead@example.com", "username": "lead", "groups": ["sre-leads"], "amr": ["pwd", "hwk"], "auth_time": 1795598400, "workload": false, "claims": {}}

# A certificate asked for under an approved request for root by id.
privileged_req(id, principals, ttl, reason) := object.union(with_reason(req("user", id, principals, ttl), reason), {"access_request": {
	"id": "req_aaaaaaaaaaaaaaaa", "requester": id, "principals": ["root"], "ttl_seconds": 1800, "reason": "OPS-1 disk full",
	"approvals": [{"approver": lead, "at": "2026-11-25T09:50:00Z", "reason": "ok"}], "break_glass": false,
}})

# The same certificate without a request, where the operator's data grants ops root standing.
standing(r) := d if {
	d := sshca.decision with input as object.remove(r, ["access_request"])
		with data.sshca_settings.user.group_principals as {"ops": ["root"]}
}

test_shipped_data_grants_no_standing_privileged_principal if {
	standing_grants := {[g, p] |
		some g, ps in data.sshca_settings.user.group_principals
		some p in ps
		sshca.privileged(p)
	}
	standing_grants == set()
}

# Whatever groups an identity has (every group the shipped data names anywhere), root without a
# request is refused, even with a second factor, a fresh sign-in and a ticket.
test_no_group_of_shipped_data_gets_root_without_request if {
	every_group := {g |
		some section in [
			data.sshca_settings.user.group_principals, data.sshca_settings.user.group_max_ttl_seconds,
			data.sshca_settings.user.group_extensions, data.sshca_settings.user.group_source_addresses,
			data.sshca_settings.access_requests.requestable,
		]
		some g, _ in section
	} | {g | some g in data.sshca_settings.admin_groups} | {g | some g in data.sshca_settings.auditor_groups} | {g | some g in data.sshca_settings.access_requests.default_approver_groups} | {g | some g in data.sshca_settings.access_requests.break_glass.groups}
	"ops" in every_group
	everyone := object.union(ops_fresh, {"groups": sort([g | some g in every_group])})
	d := sshca.decision with input as with_reason(req("user", everyone, ["root"], 300), "OPS-1234 disk full")
	not d.allow
	"principal root is not granted to alice@example.com" in d.reasons
}

test_root_not_in_default_grant if {
	r := privileged_req(ops_fresh, [], 0, "OPS-1")
	d := sshca.decision with input as r
	d.allow
	d.principals == ["alice"]
	standing(r) == d
}

test_root_with_mfa_fresh_and_ticket if {
	r := privileged_req(ops_fresh, ["root"], 0, "fix OPS-1234 now")
	d := sshca.decision with input as r
	d.allow
	d.principals == ["root"]
	d.ticket == "OPS-1234"
	d.ttl_seconds == 600
	standing(r) == d
}

test_root_ttl_capped_lower if {
	r := privileged_req(ops_fresh, ["root"], 1800, "OPS-1")
	d := sshca.decision with input as r
	not d.allow
	d.reasons == ["ttl 1800s exceeds the policy maximum of 900s for this request"]
	standing(r) == d
}

test_root_without_mfa if {
	r := privileged_req(object.union(ops_fresh, {"amr": ["pwd"]}), ["root"], 0, "OPS-1")
	d := sshca.decision with input as r
	not d.allow
	d.reasons == ["principal root needs a second factor: sign in with MFA and give a ticket in --reason"]
	standing(r) == d
}

test_root_with_acr if {
	r := privileged_req(object.union(ops_fresh, {"amr": [], "acr": "phrh"}), ["root"], 0, "OPS-1")
	d := sshca.decision with input as r
	d.allow
	standing(r) == d
}

test_root_per_issuer_mfa_rule if {
	r := privileged_req(object.union(ops_fresh, {"amr": ["otp"]}), ["root"], 0, "OPS-1")
	d := sshca.decision with input as r
		with data.sshca_settings.user.mfa as {"https://idp": {"acr": ["gold"]}, "*": {"amr": ["otp"]}}
	not d.allow
	d.reasons == ["principal root needs a second factor: sign in with MFA and give a ticket in --reason"]
}

test_root_stale_sign_in if {
	r := privileged_req(ops, ["root"], 0, "OPS-1")
	d := sshca.decision with input as r
	not d.allow
	d.reasons == ["principal root needs a recent sign-in (within 3600s; yours was 600800s ago): sign in again"]
	standing(r) == d
}

test_root_without_ticket if {
	r := privileged_req(ops_fresh, ["root"], 0, "because")
	d := sshca.decision with input as r
	not d.allow
	d.reasons == ["principal root needs a ticket matching [A-Z]+-[0-9]+ in --reason"]
	standing(r) == d
}

test_prod_glob_privileged if {
	id := object.union(ops_fresh, {"amr": []})
	d := sshca.decision with input as req("user", id, ["prod-db"], 0)
		with data.sshca_settings.user.group_principals as {"ops": ["prod-db"]}
	not d.allow
	count(d.reasons) == 2
}

# --- options, extensions, forced commands --------------------------------------------------

test_group_extensions if {
	d := sshca.decision with input as req("user", object.union(alice, {"groups": ["bastion-users"]}), [], 0)
	d.extensions == {"permit-pty": "", "permit-port-forwarding": ""}
}

test_source_address if {
	d := sshca.decision with input as req("user", object.union(alice, {"groups": ["contractors"]}), [], 0)
		with input.now as "2026-11-25T10:00:00Z"
	d.allow
	d.critical_options == {"source-address": "10.0.0.0/8,192.168.0.0/16"}
	d.ttl_seconds == 600
}

test_group_max_ttl if {
	d := sshca.decision with input as req("user", object.union(alice, {"groups": ["contractors"]}), [], 3600)
	not d.allow
	d.reasons == ["ttl 3600s exceeds the policy maximum of 1800s for this request"]
}

test_force_command if {
	id := object.union(alice, {"groups": ["backup-operators"]})
	d := sshca.decision with input as req("user", id, ["backup"], 0)
	d.allow
	d.critical_options == {"force-command": "/usr/local/bin/backup-only"}
	plain := sshca.decision with input as req("user", id, [], 0)
	plain.principals == ["alice"]
	plain.critical_options == {}
	mixed := sshca.decision with input as req("user", id, ["alice", "backup"], 0)
	not mixed.allow
	mixed.reasons == ["principal backup is restricted to a forced command: ask for it alone"]
}

# --- time boxes -----------------------------------------------------------------------------

contractor := object.union(alice, {"groups": ["contractors"]})

test_time_box_inside if {
	d := sshca.decision with input as at(req("user", contractor, [], 0), "2026-11-25T17:59:00Z")
	d.allow
}

test_time_box_weekend if {
	d := sshca.decision with input as at(req("user", contractor, [], 0), "2026-11-28T10:00:00Z")
	not d.allow
	startswith(d.reasons[0], "group contractors has access only from 2026-01-01T00:00:00Z until 2027-07-01T00:00:00Z")
}

test_time_box_night if {
	d := sshca.decision with input as at(req("user", contractor, [], 0), "2026-11-25T18:00:00Z")
	not d.allow
}

test_time_box_after_end if {
	d := sshca.decision with input as at(req("user", contractor, [], 0), "2027-07-01T10:00:00Z")
	not d.allow
}

test_time_box_timezone if {
	# 07:30 UTC is 08:30 in Berlin in winter.
	d := sshca.decision with input as at(req("user", contractor, [], 0), "2026-11-25T07:30:00Z")
		with data.sshca_settings.user.time_boxes.contractors.timezone as "Europe/Berlin"
	d.allow
}

# --- workloads --------------------------------------------------------------------------------

gha := {"issuer": "https://token.actions.githubusercontent.com", "subject": "repo:org/infra:ref:refs/heads/main", "email": "", "username": "", "groups": [], "amr": [], "workload": true, "claims": {"repository": "org/infra", "repository_id": "123456789", "ref": "refs/heads/main"}}

test_workload_main_gets_prod if {
	d := sshca.decision with input as req("host", gha, ["db1.prod.internal"], 0)
	d.allow
}

test_workload_other_branch_denied if {
	id := object.union(gha, {"claims": object.union(gha.claims, {"ref": "refs/heads/feature"})})
	d := sshca.decision with input as req("host", id, ["db1.prod.internal"], 0)
	not d.allow
}

test_workload_renamed_repo_denied if {
	# Same name, another repository ID: a re-registered name gets nothing.
	id := object.union(gha, {"claims": object.union(gha.claims, {"repository_id": "999"})})
	d := sshca.decision with input as req("host", id, ["db1.prod.internal"], 0)
	not d.allow
}

test_person_with_matching_claims_denied if {
	id := object.union(gha, {"workload": false})
	d := sshca.decision with input as req("host", id, ["db1.prod.internal"], 0)
	not d.allow
}

gitlab := {"issuer": "https://gitlab.example.com", "subject": "project_path:org/app:ref_type:branch:ref:main", "email": "", "username": "", "groups": [], "amr": [], "workload": true, "claims": {"project_path": "org/app", "project_id": "4242", "namespace_path": "org", "ref": "main", "ref_type": "branch", "pipeline_source": "push"}}

test_gitlab_main_gets_staging if {
	d := sshca.decision with input as req("host", gitlab, ["web.staging.internal"], 0)
	d.allow
	not_prod := sshca.decision with input as req("host", gitlab, ["web.prod.internal"], 0)
	not not_prod.allow
}

test_gitlab_tag_denied if {
	id := object.union(gitlab, {"claims": object.union(gitlab.claims, {"ref_type": "tag"})})
	d := sshca.decision with input as req("host", id, ["web.staging.internal"], 0)
	not d.allow
}

test_renew_keeps_host_names if {
	host := {"issuer": "sshca:renew", "subject": "ci-job", "email": "", "username": "", "groups": [], "amr": [], "workload": true, "claims": {"serial": "7"}}
	d := sshca.decision with input as req("renew", host, ["web1.dev.internal", "localhost"], 0)
	d.allow
	d.principals == ["localhost", "web1.dev.internal"]
	d.ttl_seconds == 3600
}

test_renew_keeps_its_lifetime_capped_not_refused if {
	host := {"issuer": "sshca:renew", "subject": "ci-job", "email": "", "username": "", "groups": [], "amr": [], "workload": true, "claims": {"serial": "7"}}
	short := sshca.decision with input as req("renew", host, ["localhost"], 120)
	short.allow
	short.ttl_seconds == 120
	long := sshca.decision with input as req("renew", host, ["localhost"], 172800)
	long.allow
	long.ttl_seconds == 86400
}
