# Known difference (policies/plan/README.md): an object comprehension that gives one key two
# values that compare equal (600 and 600.0) keeps the first where topdown keeps the last. The
# values compare equal, so the answers compare equal; only their JSON text differs.
package sshca

import rego.v1

decision := {"ttl": {"t": v | some v in [input.n, input.n * 1.0]}, "sum": sum([input.n, 0.0])}
