# Known difference (policies/plan/README.md): iterating a level of data where rules and data
# (diff_data_order.json) both have keys visits them in another order. Collected into a set,
# the order is gone.
package sshca

import rego.v1

lvl.a := input.n

lvl.c := 3

decision := {"keys": {k | some k, _ in data.sshca.lvl}, "values": {v | some v in data.sshca.lvl}}
