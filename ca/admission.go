package ca

import (
	"context"

	"golang.org/x/crypto/ssh"
)

// Admission is the last check before a certificate is signed, in one step: the signing-time
// refusals of RevocationStore.Refused (a revoked key, a blocked identity or alias, a store that
// lost its state) and, for a single-use token, TokenLedger.UseToken. A store that holds both
// answers them in one round trip instead of two (store.Redis: one pipeline).
//
// Admit answers the refusal ("" when there is none) and whether the token was fresh (always
// true for a token that is not single-use; false when it was used before or a rebuild refuses
// it). When it refuses, the token may have been spent all the same (store.Redis sends the
// token's SET NX beside the reads, since the token keys live in other hash slots than the
// refusal's and no script can read both on a Redis Cluster): the holder of a revoked key or
// identity loses a token it could not have used. A request the policy denies never reaches
// Admit, so it does not spend its token.
type Admission interface {
	Admit(ctx context.Context, caKey ssh.PublicKey, identities []string, key ssh.PublicKey, token TokenUse) (refusal string, fresh bool, err error)
}
