// Package ca is the domain core of sshca: the request, identity, decision and certificate
// types, and the Authority that turns a bearer token and a request into a signed, recorded
// OpenSSH certificate (authenticate → decide → sign → record).
//
// The package declares the small interfaces it consumes (Authenticator, Policy, Signer,
// CertStore) and imports nothing of ours; adapters in identity/, policies/, signer/ and
// revocation/ implement them and cmd/sshca wires them together. Errors leave this package as
// *Error values carrying a Kind; only the transport turns a Kind into an HTTP status code.
package ca
