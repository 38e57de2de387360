# For FuzzPlanMatchesTopdown: the input's objects read whole rather than member by member.
# Decide's input makes an object's members only as the plan looks them up (plan.Object), and
# its OPA form for anything else: compared, scanned, counted, put into sets, arrays and
# objects, used as a key, given to built-ins and functions, returned, and looked up with keys
# of any type. The fuzz target runs every policy on both forms of its input.
# statements: EqualStmt NotEqualStmt ScanStmt LenStmt IsObjectStmt SetAddStmt ArrayAppendStmt ObjectInsertStmt AssignVarOnceStmt DotStmt
package sshca

import rego.v1

default same := false

default differs := false

default equal_literal := false

default n_obj := -1

default n_input := -1

default is_obj := false

default as_array := []

default as_value := {}

default as_key := {}

default in_set := false

default lookup := "none"

default set_lookup := "none"

default marshal := ""

default union := {}

default via_fn := "none"

default twice := "none"

default obj := "none"

obj := input.obj

same if input.obj == input.obj2

differs if input.obj != {"k": 1}

equal_literal if input.obj == {"k": {"k": 5}}

n_obj := count(input.obj)

n_input := count(input)

is_obj if is_object(input.obj)

keys := {k | some k, _ in input}

members := [v | some v in input.obj]

as_set := {input.obj, input.obj2}

as_array := [input.obj, input.obj.k]

as_value := {"v": input.obj, "deep": input.obj.k}

as_key := {input.obj: 1}

in_set if input.obj in {{"k": 1}, {"k": {"k": 5}}}

lookup := input.obj[input.key]

set_lookup := {{"k": 1}, {"k": {"k": 5}}}[input.obj]

marshal := json.marshal(input.obj)

union := object.union(input.obj, {"z": 1})

fn(x) := x if is_object(x)

via_fn := fn(input.obj)

# Two definitions of one complete rule: equal objects are one value, others a conflict.
twice := input.obj if input.n == 1

twice := input.obj2 if input.n == 1

decision := {
	"same": same, "differs": differs, "equal_literal": equal_literal, "n_obj": n_obj, "n_input": n_input,
	"is_obj": is_obj, "keys": keys, "members": members, "as_set": as_set, "as_array": as_array,
	"as_value": as_value, "as_key": as_key, "in_set": in_set, "lookup": lookup, "set_lookup": set_lookup,
	"marshal": marshal, "union": union, "via_fn": via_fn, "twice": twice, "whole": input, "obj": obj,
}
