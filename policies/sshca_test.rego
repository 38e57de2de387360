package sshca_test

import rego.v1

import data.sshca

alice := {"issuer": "https://idp", "subject": "u1", "email": "alice@example.com", "username": "alice", "groups": [], "amr": [], "workload": false, "claims": {}}

ci := {"issuer": "https://ci", "subject": "repo:org/infra", "email": "", "username": "", "groups": ["ci"], "amr": [], "workload": true, "claims": {}}

req(kind, id, principals, ttl) := {"kind": kind, "identity": id, "request": {"principals": principals, "ttl_seconds": ttl, "key_type": "ssh-ed25519", "key_fingerprint": "SHA256:x", "source_ip": "127.0.0.1", "reason": ""}, "now": "2026-11-25T10:00:00Z"}

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
	d.reasons == ["ttl 7200s exceeds the policy maximum of 3600s for user certificates"]
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
	d := sshca.decision with input as req("admin", alice, [], 0)
	not d.allow
	d.reasons == ["certificate kind \"admin\" is not supported"]
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
	d.reasons == ["alice@example.com may not revoke or read revocations: that needs membership of one of the groups [\"sshca-admins\"]"]
}
