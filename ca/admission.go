package ca

import (
	"context"
	"time"

	"golang.org/x/crypto/ssh"
)

// Admission is the last check before a certificate is signed, in one step: the signing-time
// refusals of RevocationStore.Refused (a revoked key, a blocked identity or alias, a store that
// lost its state), for a single-use token TokenLedger.UseToken, and the reservation of the
// certificate's serial (what the signer would otherwise reserve itself). A store that holds all
// three answers them in one round trip instead of three (store.Redis: one pipeline).
//
// When it refuses, the token may have been spent and the serial reserved all the same
// (store.Redis sends the token's and the serial's SET NX beside the reads, since the token
// keys live in other hash slots than the refusal's and no script can read both on a Redis
// Cluster): the holder of a revoked key or identity loses a token it could not have used. A
// request the policy denies never reaches Admit, so it does not spend its token.
//
// A refusal that is the server's own fault (a KindUnavailable error: the CA key banned before
// this replica's key ring moved, a replica configured with another number of inventory shards,
// the signature failing after the admission) must not cost the caller its token: Admitted.Spent
// names this admission's spend even beside such an error, and ReturnToken gives the token
// back, so that the same token may be sent once more. The caller's own refusals (a revoked key
// or identity, a replay) keep it spent.
//
// With AdmissionRequest.Record, Admit also records the certificate in the inventory in the same
// round trip (CertStore.Record's check of the identity's blocks included), before it is signed;
// Unrecord withdraws that record when the certificate is then not signed or not handed out (a
// refusal, a spent token, a serial taken, a failed signature).
type Admission interface {
	Admit(ctx context.Context, r AdmissionRequest) (Admitted, error)
	Unrecord(ctx context.Context, c Certificate) error
	// ReturnToken undoes the spend of t named spent (Admitted.Spent): the token's record is
	// deleted only while it is still that spend's (compare and delete, one atomic step), so a
	// spend by another request, a ledger entry gone with the token's expiry or a store that
	// lost its state are never undone. It answers true only when this call deleted the record:
	// the token may then be used once more. false, or an error (the answer lost: the delete
	// may or may not have run), and the caller must take the token as spent. The caller
	// returns a token only when it signed nothing with it, and signs nothing after returning.
	ReturnToken(ctx context.Context, t TokenUse, spent string) (bool, error)
}

// TokenReturns learns what became of each single-use token that a refusal of the server's own
// tried to give back (Authority.giveBack): metrics. It is called once per such refusal, after
// the return, never with the token or its spend.
type TokenReturns interface {
	TokenReturn(outcome TokenReturnOutcome)
}

// TokenReturnOutcome is what a return of a token came to.
type TokenReturnOutcome string

const (
	// TokenGivenBack: the token's record was this spend's and is deleted: it may be used again.
	TokenGivenBack TokenReturnOutcome = "given_back"
	// TokenKeptSpent: no record of this spend was left to delete (the token expired, or the
	// store lost its state): the token counts as spent.
	TokenKeptSpent TokenReturnOutcome = "spent"
	// TokenReturnUnknown: the store did not answer the return (it may have run): the token
	// counts as spent.
	TokenReturnUnknown TokenReturnOutcome = "unknown"
)

// TokenReturnOutcomes are every TokenReturnOutcome, for metrics that export each at zero.
var TokenReturnOutcomes = []TokenReturnOutcome{TokenGivenBack, TokenKeptSpent, TokenReturnUnknown}

// AdmissionRequest is what Admission.Admit checks and writes.
type AdmissionRequest struct {
	CAKey      ssh.PublicKey // the key that would sign: its revocation scope
	Identities []string      // the identity's canonical name, then its aliases
	Key        ssh.PublicKey // the key to be certified
	Token      TokenUse      // spent when SingleUse
	// CAFingerprint is ssh.FingerprintSHA256(CAKey), as the key computed it once
	// (SigningKey.Fingerprint); empty, the store computes it.
	CAFingerprint string
	// Serial, when not zero, is reserved until SerialUntil (as signer.SerialReserver does);
	// Admitted.SerialReserved says whether it was free.
	Serial      uint64
	SerialUntil time.Time
	// Record, when not nil, is the inventory record of the certificate about to be signed
	// (with Serial as its serial): recorded unless the identity is blocked or the serial is
	// already recorded with another certificate. Admitted.Recorded says whether it was.
	Record *Certificate
}

// Admitted is Admission.Admit's answer.
type Admitted struct {
	// Refusal says why the request must be refused ("" when it need not be).
	Refusal string
	// Fresh: the token was not used before (always true for a token that is not single-use).
	Fresh bool
	// Spent names this admission's spend of a single-use token (opaque, unique to the spend):
	// set when this admission spent it, also beside an error of the store's own
	// (KindUnavailable), so that the caller can give it back (Admission.ReturnToken); "" when
	// it spent nothing or cannot tell whether it did (the answer lost).
	Spent string
	// SerialReserved: AdmissionRequest.Serial is reserved for this certificate.
	SerialReserved bool
	// Recorded: AdmissionRequest.Record is in the inventory (whatever the other answers say:
	// the caller withdraws it with Unrecord when it does not sign).
	Recorded bool
}
