// Package krl encodes and decodes OpenSSH key revocation lists (KRLs, the binary format of
// PROTOCOL.krl that sshd reads from RevokedKeys and `ssh-keygen -k` writes), so sshca can
// publish revocations without shelling out to ssh-keygen.
//
// A KRL is a plain value: build one with the Revoke* methods (or fill the fields), encode it
// with MarshalBinary, decode one with Parse, and ask it about a certificate with IsRevoked.
// The encoder writes the same sections as OpenSSH's krl.c and, for each CA, picks the smallest
// mix of serial list, range and bitmap subsections with krl.c's cost model. It never writes
// signature sections (OpenSSH 9.4 and later refuse signed KRLs; sign the file with
// `ssh-keygen -Y sign` instead) and Parse rejects them.
//
// The package imports only the standard library and golang.org/x/crypto/ssh.
package krl
