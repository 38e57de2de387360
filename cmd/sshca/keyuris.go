package main

import (
	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/kms"
)

// The keyring holds each key's KMS and key URIs, and a PKCS#11 URI may carry its PIN
// (pin-value). The key administration API answers with the URIs as kms.Redact shows them.

// shownKey is k as the API shows it.
func shownKey(k ca.CAKey, err error) (ca.CAKey, error) {
	k.KMS, k.Key = kms.Redact(k.KMS), kms.Redact(k.Key)
	return k, err
}

// shownKeyring is r as the API shows it; r itself is left as it is.
func shownKeyring(r ca.Keyring) ca.Keyring {
	keys := make([]ca.CAKey, len(r.Keys))
	for i, k := range r.Keys {
		keys[i], _ = shownKey(k, nil)
	}
	r.Keys = keys
	return r
}
