# Issue 11's example, written to the documented input (DESIGN.md, "Policy contract"): root
# only with a FIDO key. Loaded beside the shipped policy by TestFIDODenyRuleFires; its message
# names the key type, so the rule fires only when request.key_type reaches the policy.
package sshca

import rego.v1

deny contains sprintf("principal root needs a FIDO key (sk-...), not %s", [input.request.key_type]) if {
	"root" in input.request.principals
	not startswith(input.request.key_type, "sk-")
}
