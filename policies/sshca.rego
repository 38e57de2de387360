# The default sshca policy. It decides what an authenticated identity may be granted; the
# service then signs no more than this, no more than was asked, and nothing beyond its own hard
# caps. Settings live in data.json (data.sshca_settings) so an organisation changes who gets
# what without touching this file. Contract: DESIGN.md, "Policy contract"; the data's shape:
# README.md beside this file.
package sshca

import rego.v1

settings := data.sshca_settings

default user_settings := {}

user_settings := settings.user

default host_settings := {}

host_settings := settings.host

default privileged_settings := {}

default privileged_patterns := []

privileged_patterns := privileged_settings.principals

default default_extensions := {}

default_extensions := user_settings.default_extensions

default admin_groups := []

admin_groups := settings.admin_groups

default auditor_groups := []

auditor_groups := settings.auditor_groups

privileged_settings := user_settings.privileged

# Constants as rules: a rule is evaluated once per decision, a literal each time it is met.
known_kinds := {"user", "host", "revoke", "renew", "admin", "read", "request", "approve"}

certificate_kinds := {"user", "host", "renew"}

host_kinds := {"host", "renew"}

no_delimiters := []

dns_delimiters := ["."]

# The decision is always defined: a request that no rule grants is denied with reasons.
decision := {
	"allow": count(deny) == 0,
	"reasons": sort([r | some r in deny]),
	"principals": granted,
	"ttl_seconds": ttl,
	"extensions": extensions,
	"critical_options": critical_options,
	"ticket": ticket,
	"approvals_required": approvals_required,
}

now_ns := time.parse_rfc3339_ns(input.now)

who := input.identity.email if input.identity.email != ""

else := input.identity.subject

requested := {p | some p in input.request.principals}

groups := {g | some g in input.identity.groups}

kind_settings := user_settings if input.kind == "user"

else := host_settings if input.kind in host_kinds

else := {}

# --- user certificates -------------------------------------------------------------------

# The identity's username, and what its groups map to. A username claim never yields a
# protected principal: those come from the data alone.
user_principals contains input.identity.username if {
	input.kind == "user"
	input.identity.username != ""
	not protected(input.identity.username)
}

# Protected principals: granted to a group (group_principals), bound to a forced command
# (principal_force_command), or privileged (privileged.principals). A token's username that is
# one of them (preferred_username "admin" with no group) is not granted; an operator's policy
# can reuse protected(p) for its own rules.
protected(p) if {
	some ps in user_settings.group_principals
	p in ps
}

protected(p) if forced_command(p) != ""

protected(p) if privileged(p)

user_principals contains p if {
	input.kind == "user"
	some g in groups
	some p in user_settings.group_principals[g]
}

# Under an approved access request (the service passes it only to its requester, approved, in
# its window, with its approvals still counting), its principals are granted. Privileged ones
# still need the second factor, fresh sign-in and ticket below.
user_principals contains p if {
	input.kind == "user"
	some p in input.access_request.principals
}

# Privileged principals (e.g. root, prod-*) need a second factor, a fresh sign-in and a ticket.
privileged(p) if {
	some pattern in privileged_patterns
	glob.match(pattern, no_delimiters, p)
}

default forced_commands_map := {}

forced_commands_map := user_settings.principal_force_command

forced_command(p) := c if {
	c := forced_commands_map[p]
} else := ""

# Privileged principals and principals bound to a forced command are granted only when asked
# for by name, so a plain login never needs MFA nor ends up restricted.
explicit_only(p) if privileged(p)

explicit_only(p) if forced_command(p) != ""

granted_user := sort([p | some p in requested; p in user_principals]) if count(requested) > 0

else := sort([p | some p in user_principals; not explicit_only(p)])

granted_privileged := {p | some p in granted_user; privileged(p)}

# A second factor by the issuer's own rule: amr values or an acr value, per issuer ("*" for
# any issuer without its own entry).
default mfa_rule := {}

mfa_rule := r if {
	r := user_settings.mfa[input.identity.issuer]
} else := r if {
	r := user_settings.mfa["*"]
}

has_mfa if {
	some a in input.identity.amr
	a in mfa_rule.amr
}

has_mfa if {
	acr := object.get(input.identity, "acr", "")
	acr != ""
	acr in mfa_rule.acr
}

auth_age := (now_ns / 1000000000) - object.get(input.identity, "auth_time", 0)

default max_auth_age := 0

max_auth_age := privileged_settings.max_auth_age_seconds

fresh_sign_in if max_auth_age == 0

fresh_sign_in if {
	object.get(input.identity, "auth_time", 0) > 0
	auth_age <= max_auth_age
}

default ticket_pattern := ""

ticket_pattern := privileged_settings.ticket_pattern

ticket := regex.find_n(ticket_pattern, input.request.reason, 1)[0] if {
	ticket_pattern != ""
	count(regex.find_n(ticket_pattern, input.request.reason, 1)) > 0
}

else := ""

# Extensions: the defaults plus what the identity's groups add (e.g. port forwarding for the
# principal a bastion is used with).
extensions := object.union_n(array.concat(
	[default_extensions],
	[e | some g in groups; e := user_settings.group_extensions[g]],
)) if input.kind == "user"

else := {}

source_addresses := sort({cidr |
	some g in groups
	some cidr in user_settings.group_source_addresses[g]
})

forced_commands := {c | some p in granted_user; c := forced_command(p); c != ""}

co_source := {"source-address": concat(",", source_addresses)} if count(source_addresses) > 0

else := {}

co_force := {"force-command": c} if {
	count(forced_commands) == 1
	some c in forced_commands
}

else := {}

critical_options := object.union(co_source, co_force) if input.kind == "user"

else := {}

# --- time-boxed access (contractors, vendors) ---------------------------------------------

default time_boxes := {}

time_boxes := user_settings.time_boxes

box_tz(box) := object.get(box, "timezone", "UTC")

minutes(hhmm) := (to_number(split(hhmm, ":")[0]) * 60) + to_number(split(hhmm, ":")[1])

after_start(box) if object.get(box, "not_before", "") == ""

after_start(box) if now_ns >= time.parse_rfc3339_ns(object.get(box, "not_before", ""))

before_end(box) if object.get(box, "not_after", "") == ""

before_end(box) if now_ns < time.parse_rfc3339_ns(object.get(box, "not_after", ""))

on_weekday(box) if count(object.get(box, "weekdays", [])) == 0

on_weekday(box) if time.weekday([now_ns, box_tz(box)]) in object.get(box, "weekdays", [])

in_hours(box) if count(object.get(box, "hours", [])) == 0

in_hours(box) if {
	[h, m, _] := time.clock([now_ns, box_tz(box)])
	(h * 60) + m >= minutes(box.hours[0])
	(h * 60) + m < minutes(box.hours[1])
}

inside(box) if {
	after_start(box)
	before_end(box)
	on_weekday(box)
	in_hours(box)
}

describe(box) := sprintf("from %s until %s, on %v, between %v (%s)", [
	object.get(box, "not_before", "any date"), object.get(box, "not_after", "any date"),
	object.get(box, "weekdays", ["any day"]), object.get(box, "hours", ["any time"]), box_tz(box),
])

# --- host certificates -------------------------------------------------------------------

host_patterns contains pattern if {
	input.kind == "host"
	some g in groups
	some pattern in host_settings.group_patterns[g]
}

# Workloads (CI jobs): patterns by claims such as repository_id and ref. Match immutable IDs
# where the platform has them: names can be re-registered.
host_patterns contains pattern if {
	input.kind == "host"
	input.identity.workload
	some rule in host_settings.workload_rules
	claims_match(rule.claims)
	some pattern in rule.patterns
}

claims_match(want) if {
	every k, v in want {
		object.get(input.identity.claims, k, null) == v
	}
}

# A pattern's "*" matches exactly one DNS label: "*.dev.internal" covers "a.dev.internal",
# not "dev.internal" nor "a.dev.internal.evil.com".
host_granted(h) if {
	some pattern in host_patterns
	glob.match(pattern, dns_delimiters, h)
}

# --- what is granted ---------------------------------------------------------------------

granted := granted_user if input.kind == "user"

else := sort([h | some h in requested; host_granted(h)]) if input.kind == "host"

# A renewal keeps the host names of the certificate it renews (its possession was proven).
else := sort([h | some h in requested]) if input.kind == "renew"

else := []

default kind_max_ttl := 0

default ttl := 0

group_max_ttls := [t |
	some g in groups
	t := user_settings.group_max_ttl_seconds[g]
]

kind_max_ttl := min(group_max_ttls) if {
	input.kind == "user"
	count(group_max_ttls) > 0
}

else := kind_settings.max_ttl_seconds

max_ttl := min([kind_max_ttl, privileged_settings.max_ttl_seconds]) if count(granted_privileged) > 0

else := kind_max_ttl

# A renewal asks for the lifetime of the certificate it renews: capped here, never refused,
# so that a lower maximum shortens hosts' certificates instead of ending them.
ttl := min([input.request.ttl_seconds, max_ttl]) if {
	input.kind == "renew"
	input.request.ttl_seconds > 0
}

else := input.request.ttl_seconds if input.request.ttl_seconds > 0

else := min([kind_settings.default_ttl_seconds, max_ttl])

# --- reasons to deny ---------------------------------------------------------------------

deny contains sprintf("certificate kind %q is not supported", [input.kind]) if {
	not input.kind in known_kinds
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

deny contains sprintf("principal %s is protected: it comes from a group of the policy's data, never from the username claim", [p]) if {
	input.kind == "user"
	some p in requested
	p == input.identity.username
	protected(p)
	not p in user_principals
}

deny contains msg if {
	input.kind == "user"
	count(user_principals) > 0
	count(requested) == 0
	count(granted_user) == 0
	msg := sprintf("every principal of %s needs to be asked for by name: use --principal (one of %v)", [who, sort([p | some p in user_principals])])
}

deny contains sprintf("principal %s needs a second factor: sign in with MFA and give a ticket in --reason", [p]) if {
	some p in granted_privileged
	not has_mfa
}

deny contains sprintf("principal %s needs a recent sign-in (within %ds; yours was %ds ago): sign in again", [p, max_auth_age, auth_age]) if {
	some p in granted_privileged
	has_mfa
	not fresh_sign_in
}

deny contains sprintf("principal %s needs a ticket matching %s in --reason", [p, ticket_pattern]) if {
	some p in granted_privileged
	ticket_pattern != ""
	ticket == ""
}

deny contains sprintf("principals %v carry different forced commands: ask for one of them at a time", [sort([p | some p in granted_user; forced_command(p) != ""])]) if {
	count(forced_commands) > 1
}

deny contains sprintf("principal %s is restricted to a forced command: ask for it alone", [p]) if {
	count(forced_commands) == 1
	some p in granted_user
	forced_command(p) != ""
	count(granted_user) > 1
}

deny contains sprintf("group %s has access only %s; it is now %s", [g, describe(box), input.now]) if {
	input.kind == "user"
	some g in groups
	box := time_boxes[g]
	not inside(box)
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

deny contains sprintf("ttl %ds exceeds the policy maximum of %ds for this request", [input.request.ttl_seconds, max_ttl]) if {
	input.kind in certificate_kinds
	input.kind != "renew"
	input.request.ttl_seconds > max_ttl
}

# --- revocation, and reading what is revoked or issued ------------------------------------

is_admin if {
	some g in groups
	g in admin_groups
}

deny contains sprintf("%s may not revoke: that needs membership of one of the groups %v", [who, admin_groups]) if {
	input.kind == "revoke"
	not is_admin
}

# Reading the inventory and the revocations (sshca certs list, GET /v1/revocations): admins,
# and auditors, who may read without being able to revoke, approve or administer keys.
may_read if is_admin

may_read if {
	some g in groups
	g in auditor_groups
}

deny contains sprintf("%s may not read the certificate inventory or revocations: that needs membership of one of the groups %v", [who, sort(array.concat(admin_groups, auditor_groups))]) if {
	input.kind == "read"
	not may_read
}

deny contains sprintf("%s may not administer CA keys: that needs membership of one of the groups %v", [who, admin_groups]) if {
	input.kind == "admin"
	not is_admin
}

# --- access requests: asking, approving ---------------------------------------------------

default access_settings := {}

access_settings := settings.access_requests

default access_rules := []

access_rules := access_settings.approvals

default requestable := {}

requestable := access_settings.requestable

ar := input.access_request

ar_principals := {p | some p in ar.principals}

# May the identity ask for principal p? A glob of one of its groups in requestable.
may_request(p) if {
	some g in groups
	some pattern in requestable[g]
	glob.match(pattern, no_delimiters, p)
}

# The approval rules that cover the request: those with a pattern matching one of its
# principals. A request no rule covers needs the default.
covering_rules contains i if {
	some i, rule in access_rules
	some p in ar_principals
	some pattern in rule.principals
	glob.match(pattern, no_delimiters, p)
}

default default_approvals := 1

default_approvals := access_settings.default_approvals

# The most any covering rule asks for.
# A break-glass request is granted at once: it needs no approval (only a review afterwards).
approvals_required := 0 if {
	input.kind in {"request", "approve"}
	ar.break_glass
}

else := max(array.concat([n | some i in covering_rules; n := access_rules[i].count], [default_approvals])) if {
	input.kind in {"request", "approve"}
}

else := 0

default default_approver_groups := []

default_approver_groups := access_settings.default_approver_groups

# Who may approve: a member of an approver group of every covering rule (or of the defaults when
# none covers).
approver_groups_needed contains gs if {
	some i in covering_rules
	gs := {g | some g in access_rules[i].approver_groups}
}

approver_groups_needed contains gs if {
	count(covering_rules) == 0
	gs := {g | some g in default_approver_groups}
}

default max_window := 0

max_window := access_settings.max_window_seconds

default approver_max_auth_age := 0

approver_max_auth_age := access_settings.approver_max_auth_age_seconds

# The same person as the requester: the same (issuer, subject), or the same verified e-mail.
is_requester if {
	input.identity.issuer == ar.requester.issuer
	input.identity.subject == ar.requester.subject
}

is_requester if {
	input.identity.email != ""
	lower(input.identity.email) == lower(ar.requester.email)
}

deny contains sprintf("%s may not request principal %s: no group of %v may (access_requests.requestable)", [who, p, input.identity.groups]) if {
	input.kind == "request"
	not ar.break_glass
	some p in requested
	not may_request(p)
}

deny contains "an access request names at least one principal" if {
	input.kind == "request"
	count(requested) == 0
}

deny contains "a workload identity cannot request access" if {
	input.kind == "request"
	input.identity.workload
}

deny contains sprintf("access window %ds exceeds the policy maximum of %ds", [input.request.ttl_seconds, max_window]) if {
	input.kind == "request"
	input.request.ttl_seconds > max_window
}

deny contains sprintf("an access request needs a ticket matching %s in --reason", [ticket_pattern]) if {
	input.kind == "request"
	ticket_pattern != ""
	ticket == ""
}

deny contains "a workload identity cannot approve access requests" if {
	input.kind == "approve"
	input.identity.workload
}

deny contains sprintf("%s cannot approve their own access request", [who]) if {
	input.kind == "approve"
	is_requester
}

deny contains sprintf("approving access to %v needs membership of one of the groups %v", [sort([p | some p in ar_principals]), sort([g | some g in gs])]) if {
	input.kind == "approve"
	some gs in approver_groups_needed
	count(gs & groups) == 0
}

deny contains "no approver group is configured for this access request (access_requests)" if {
	input.kind == "approve"
	count(approver_groups_needed) == 0
}

deny contains "approving needs a second factor: sign in with MFA" if {
	input.kind == "approve"
	not has_mfa
}

deny contains sprintf("approving needs a sign-in within %ds; yours was %ds ago: sign in again", [approver_max_auth_age, auth_age]) if {
	input.kind == "approve"
	approver_max_auth_age > 0
	has_mfa
	not approver_fresh
}

approver_fresh if {
	object.get(input.identity, "auth_time", 0) > 0
	auth_age <= approver_max_auth_age
}

# --- break-glass: emergency access without approval ----------------------------------------

default break_glass_settings := {}

break_glass_settings := access_settings.break_glass

may_break_glass if {
	some g in groups
	g in object.get(break_glass_settings, "groups", [])
}

break_glass_principal(p) if {
	some pattern in object.get(break_glass_settings, "principals", [])
	glob.match(pattern, no_delimiters, p)
}

deny contains sprintf("%s may not use break-glass: that needs membership of one of the groups %v", [who, object.get(break_glass_settings, "groups", [])]) if {
	input.kind == "request"
	ar.break_glass
	not may_break_glass
}

deny contains sprintf("principal %s is not available through break-glass (access_requests.break_glass.principals)", [p]) if {
	input.kind == "request"
	ar.break_glass
	some p in requested
	not break_glass_principal(p)
}

deny contains sprintf("break-glass access lasts at most %ds", [object.get(break_glass_settings, "max_window_seconds", 0)]) if {
	input.kind == "request"
	ar.break_glass
	input.request.ttl_seconds > object.get(break_glass_settings, "max_window_seconds", 0)
}

deny contains sprintf("%s has used break-glass %d times in the last 24 hours; the policy allows %d: ask for an approved request", [who, ar.break_glass_last_24h, object.get(break_glass_settings, "per_day", 0)]) if {
	input.kind == "request"
	ar.break_glass
	ar.break_glass_last_24h >= object.get(break_glass_settings, "per_day", 0)
}
