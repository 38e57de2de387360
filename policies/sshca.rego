# The default sshca policy. It decides what an authenticated identity may be granted; the
# service then signs no more than this, no more than was asked, and nothing beyond its own hard
# caps. Settings live in data.json (data.sshca_settings) so an organisation changes who gets
# what without touching this file. Contract: DESIGN.md, "Policy contract".
package sshca

import rego.v1

settings := data.sshca_settings

# The decision is always defined: a request that no rule grants is denied with reasons.
decision := {
	"allow": count(deny) == 0,
	"reasons": sort([r | some r in deny]),
	"principals": granted,
	"ttl_seconds": ttl,
	"extensions": extensions,
	"critical_options": {},
}

who := input.identity.email if input.identity.email != ""

else := input.identity.subject

requested := {p | some p in input.request.principals}

kind_settings := settings.user if input.kind == "user"

else := settings.host if input.kind == "host"

else := {"default_ttl_seconds": 0, "max_ttl_seconds": 0}

# --- user certificates -------------------------------------------------------------------

# The identity's username, and what its groups map to.
user_principals contains input.identity.username if {
	input.kind == "user"
	input.identity.username != ""
}

user_principals contains p if {
	input.kind == "user"
	some g in input.identity.groups
	some p in settings.user.group_principals[g]
}

# --- host certificates -------------------------------------------------------------------

host_patterns contains pattern if {
	input.kind == "host"
	some g in input.identity.groups
	some pattern in settings.host.group_patterns[g]
}

# A pattern's "*" matches exactly one DNS label: "*.dev.internal" covers "a.dev.internal",
# not "dev.internal" nor "a.dev.internal.evil.com".
host_granted(h) if {
	some pattern in host_patterns
	glob.match(pattern, ["."], h)
}

# --- what is granted ---------------------------------------------------------------------

allowed := user_principals if input.kind == "user"

else := {h | some h in requested; host_granted(h)} if input.kind == "host"

else := set()

granted := sort([p | some p in requested; p in allowed]) if count(requested) > 0

else := sort([p | some p in allowed])

ttl := input.request.ttl_seconds if input.request.ttl_seconds > 0

else := kind_settings.default_ttl_seconds

extensions := object.get(settings.user, "default_extensions", {}) if input.kind == "user"

else := {}

# --- reasons to deny ---------------------------------------------------------------------

deny contains sprintf("certificate kind %q is not supported", [input.kind]) if {
	not input.kind in {"user", "host", "revoke"}
}

# --- revocation: revoking, and reading what is revoked or issued -----------------------

is_admin if {
	some g in input.identity.groups
	g in object.get(settings, "admin_groups", [])
}

deny contains sprintf("%s may not revoke or read revocations: that needs membership of one of the groups %v", [who, object.get(settings, "admin_groups", [])]) if {
	input.kind == "revoke"
	not is_admin
}

deny contains sprintf("principal %s is not granted to %s", [p, who]) if {
	input.kind == "user"
	some p in requested
	not p in user_principals
}

deny contains msg if {
	input.kind == "user"
	count(user_principals) == 0
	msg := sprintf("no principal can be granted to %s: the token carries no usable username and no group of %v grants one", [who, input.identity.groups])
}

deny contains "no host names were requested" if {
	input.kind == "host"
	count(requested) == 0
}

deny contains sprintf("host name %s is not granted to %s (groups %v)", [h, who, input.identity.groups]) if {
	input.kind == "host"
	some h in requested
	not host_granted(h)
}

deny contains sprintf("ttl %ds exceeds the policy maximum of %ds for %s certificates", [input.request.ttl_seconds, kind_settings.max_ttl_seconds, input.kind]) if {
	input.kind in {"user", "host"}
	input.request.ttl_seconds > kind_settings.max_ttl_seconds
}
