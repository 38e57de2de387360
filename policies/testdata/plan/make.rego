# For FuzzPlanMatchesTopdown: literals of every type, built from constants and from input.
# statements: MakeNullStmt MakeNumberRefStmt MakeArrayStmt MakeObjectStmt MakeSetStmt ArrayAppendStmt ObjectInsertStmt SetAddStmt
package sshca

import rego.v1

decision := {
	"null": null,
	"int": 42,
	"ref": 1.5e300,
	"big": 123456789012345678901234567890,
	"arr": [input.a, 1, "two"],
	"obj": {"a": input.a, "n": input.n},
	"set": {input.a, input.b, 3},
	"sum": input.n + 0.25,
}
