# For FuzzPlanMatchesTopdown: partial sets and objects (object keys inserted once, a key with
# two values a conflict), comprehensions.
# statements: ObjectInsertOnceStmt SetAddStmt ResultSetAddStmt
package sshca

import rego.v1

names contains n if {
	some n in input.names
	is_string(n)
	startswith(n, "a")
}

names contains "fixed"

by_name[n] := count(n) if {
	some n in input.names
	is_string(n)
}

decision := {
	"names": names,
	"by_name": by_name,
	"arr": [x | some x in input.xs; x != 0],
	"obj": {k: v | some k, v in input.obj},
}
