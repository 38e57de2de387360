# For FuzzPlanMatchesTopdown: complete rules (assigned once, conflicts), locals, equality and
# inequality, defaults.
# statements: AssignVarStmt AssignVarOnceStmt EqualStmt NotEqualStmt ResetLocalStmt IsUndefinedStmt
package sshca

import rego.v1

default kind := "other"

kind := "small" if input.n < 10

kind := "large" if input.n >= 10

same if input.a == input.b

differ if input.a != input.b

decision := {"kind": kind, "same": same, "differ": differ, "x": x}

x := y if {
	y := input.a
	y != null
}
