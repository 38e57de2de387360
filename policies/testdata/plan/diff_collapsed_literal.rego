# Known difference (policies/plan/README.md): a set or object literal built from input with
# two equal members is collapsed, where topdown keeps both when it iterates over the literal.
# Collected into a set (or counted through one), the answers agree.
package sshca

import rego.v1

decision := {"members": {x | some x in {input.a, input.b}}, "n": count({x | some x in {input.a, input.b}})}
