# A policy that tells what it was shown: the input document, as JSON, is the decision's one
# reason. TestEchoSeesGolden (policies) and TestPolicyEvalSeesGolden (cmd/sshca) run it through
# the compiled evaluator, topdown and `sshca policy eval`, and compare with testdata/input.
package sshca

import rego.v1

decision := {
	"allow": false,
	"reasons": [json.marshal(input)],
	"principals": [],
	"ttl_seconds": 0,
	"extensions": {},
	"critical_options": {},
	"ticket": "",
}
