package sshca

import rego.v1

fido_input(key_type) := {
	"kind": "user",
	"identity": {
		"issuer": "https://idp.example", "subject": "u1", "email": "alice@example.com", "username": "alice",
		"groups": ["ops"], "amr": ["pwd", "mfa"], "acr": "phr", "auth_time": 1795600500, "workload": false, "claims": {},
	},
	"request": {
		"principals": ["root"], "ttl_seconds": 0, "key_type": key_type, "key_fingerprint": "SHA256:x",
		"source_ip": "127.0.0.1", "reason": "OPS-1 disk",
	},
	# The shipped data grants root only under an approved access request.
	"access_request": {
		"id": "req_aaaaaaaaaaaaaaaa", "principals": ["root"], "ttl_seconds": 1800, "reason": "OPS-1 disk", "break_glass": false,
		"requester": {"issuer": "https://idp.example", "subject": "u1", "email": "alice@example.com", "username": "alice", "groups": ["ops"], "amr": ["pwd", "mfa"], "workload": false, "claims": {}},
		"approvals": [{"approver": {"issuer": "https://idp.example", "subject": "u7", "email": "lead@example.com", "username": "lead", "groups": ["sre-leads"], "amr": ["hwk"], "workload": false, "claims": {}}, "at": "2026-11-25T09:58:00Z", "reason": "ok"}],
	},
	"now": "2026-11-25T10:00:00Z",
}

test_root_with_plain_key_denied if {
	"principal root needs a FIDO key (sk-...), not ssh-ed25519" in deny with input as fido_input("ssh-ed25519")
	not decision.allow with input as fido_input("ssh-ed25519")
}

test_root_with_fido_key_allowed if {
	d := decision with input as fido_input("sk-ssh-ed25519@openssh.com")
	d.allow
	d.principals == ["root"]
}
