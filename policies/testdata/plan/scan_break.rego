# For FuzzPlanMatchesTopdown: iteration over arrays, sets and objects, `some ... in`, every,
# early exit out of a scan.
# statements: ScanStmt BreakStmt BlockStmt NotStmt IsSetStmt IsUndefinedStmt
package sshca

import rego.v1

default all_short := false

all_short if every x in input.xs { count(sprintf("%v", [x])) < 4 }

any_big if {
	some x in input.xs
	is_number(x)
	x > 10
}

keys := {k | some k, _ in input.obj}

decision := {"all_short": all_short, "any_big": any_big, "keys": keys, "none": not_any, "unlisted": unlisted}

default not_any := true

not_any := false if input.xs[_] == "none"

default unlisted := false

unlisted if not "a" in input.names
