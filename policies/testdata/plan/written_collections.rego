# For FuzzPlanMatchesTopdown: sets and objects the plan builds, which the evaluator keeps as
# sorted slices of its own while their members are strings (policies/plan/build.go) and turns
# into OPA's values for a member that is not a string, past 32 members, or for any read but a
# scan, a count, a lookup or a membership test: each of those reads, on collections of names
# (strings, other values, duplicates, unicode, thousands) and of objects' members.
# statements: SetAddStmt ObjectInsertStmt ObjectInsertOnceStmt ScanStmt CallStmt DotStmt
package sshca

import rego.v1

names := {n | some n in input.names}

by_name := {n: i | some i, n in input.names}

members := {k: v | some k, v in input.obj}

tagged contains n if some n in input.names

tagged contains "fixed"

default n_names := 0

n_names := count(names)

default n_by_name := 0

n_by_name := count(by_name)

default in_names := false

in_names if input.kind in names

default in_values := false

in_values if input.kind in members

default looked := null

looked := names[input.kind]

default looked_up := null

looked_up := by_name[input.kind]

first_few := array.slice([n | some n in names], 0, 3)

keys_in_order := [k | some k, _ in members]

sorted := sort(tagged)

default same := false

same if names == tagged

union := names | {"fixed"}

default merged := {}

merged := object.union(members, {"kind": 1})

nested := {"names": names, "members": members}

decision := {
	"n_names": n_names, "n_by_name": n_by_name, "in_names": in_names, "in_values": in_values, "looked": looked,
	"looked_up": looked_up, "first_few": first_few, "keys_in_order": keys_in_order, "sorted": sorted,
	"same": same, "union": union, "merged": merged, "nested": nested,
}
