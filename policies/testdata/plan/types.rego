# For FuzzPlanMatchesTopdown: type tests, lengths, lookups that may be undefined.
# statements: IsArrayStmt IsObjectStmt IsDefinedStmt LenStmt DotStmt AssignIntStmt MakeNumberIntStmt
package sshca

import rego.v1

arr if input.xs = [_, _]

obj if input.obj = {"k": _}

set_lit if {1, 2} = {input.n, 2}

n_xs := count(input.xs)

first := input.xs[0]

deep := input.obj.k.k

decision := {"arr": arr, "obj": obj, "set": set_lit, "n_xs": n_xs, "first": first, "deep": deep, "set_has": {1, 2}[input.n]}
