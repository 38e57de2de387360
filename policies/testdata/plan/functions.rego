# For FuzzPlanMatchesTopdown: functions with else, built-in calls (undefined on error, as in
# topdown without strict mode), memoised rules of input and data.
# statements: CallStmt ReturnLocalStmt
package sshca

import rego.v1

double(x) := x * 2

pick(x) := "small" if x < 2
else := "big"

f(x, y) := z if {
	z := x + y
	z > 0
} else := 0

decision := {
	"d": [double(v) | some v in input.xs],
	"p": [pick(v) | some v in input.xs],
	"f": f(input.n, -1),
	"up": upper(input.a),
	"glob": glob.match("a*", [], input.a),
	"time": time.parse_rfc3339_ns(input.a),
}
