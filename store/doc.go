// Package store keeps all of sshca's shared state: the inventory of live certificates,
// serial reservations, the token ledger, the keyring document, the CA trust registry, the
// revocation scopes and their change feed. Each role has its own file, with its Redis
// implementation (production: several replicas and bastions share one Redis, single,
// Sentinel or Cluster) and its in-memory one side by side; one contract test per role runs
// against memory, redis-server and miniredis. keys.go names every Redis key of sshca, its
// hash tag and the layout version; layout.go is how a store moves to a new layout while
// replicas of both run (a rolling upgrade), finished by `sshca store migrate`.
//
// The interfaces are declared by their consumers: ca (CertStore, TokenLedger,
// RevocationStore), signer (SerialReserver), keyring (Document, Manager's
// store) and bastion (Feed). Only cmd/sshca picks an implementation.
package store
