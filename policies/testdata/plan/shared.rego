# For FuzzPlanMatchesTopdown: rules of data alone, which the plan evaluator computes once per
# compiled program (limit, patterns, kinds, by_pattern), beside rules that read input; sets
# and objects that stay empty or fill depending on input (the evaluator gives them a value of
# their own at their first insert); glob.match over data's patterns.
# statements: MakeSetStmt SetAddStmt MakeObjectStmt ObjectInsertStmt ObjectInsertOnceStmt ScanStmt
package sshca

import rego.v1

limit := data.limit

patterns := data.patterns

kinds := {"user", "host"}

by_pattern[p] := count(p) if some p in patterns

names contains n if {
	some n in input.names
	n != ""
}

matched contains n if {
	some n in input.names
	some p in patterns
	glob.match(p, ["."], n)
}

obj[k] := v if {
	some k, v in input.obj
	k != ""
}

above := {x | some x in input.xs; x > limit}

never := {k: 1 | some k in input.names; k == "never"}

decision := {
	"limit": limit, "kinds": kinds, "by_pattern": by_pattern, "names": names, "matched": matched,
	"obj": obj, "above": above, "never": never, "none": count(names) == 0, "empty": above == set(),
	"union": names | above, "known": input.kind in kinds,
}
