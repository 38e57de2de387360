// Package services exposes the authority over HTTP in go-kit's three layers: the Service (plain
// Go, no HTTP), its endpoints (one per method, request and response structs) and the HTTP
// transport (decoding, encoding, and the one place where a ca.ErrorKind becomes a status code).
// Middlewares (logging, metrics) wrap the Service and are stacked in cmd/sshca.
package services

import (
	"context"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
)

// Service is what the HTTP API needs of the authority. *ca.Authority implements it.
type Service interface {
	// IssueRequest authenticates the bearer token, then parses the request as sent and issues
	// the certificate it asks for. Nothing in the request is parsed for an anonymous caller.
	IssueRequest(ctx context.Context, token string, req ca.CertRequest) (ca.Issued, error)
	// UserCAKeys and HostCAKeys are the published CA public keys.
	UserCAKeys() []ssh.PublicKey
	HostCAKeys() []ssh.PublicKey
	// RevokedHostCAKeys are compromised host CA keys (@revoked lines in known_hosts).
	RevokedHostCAKeys() []ssh.PublicKey

	// Renew renews a host certificate on a proof of possession signed by the host key.
	Renew(ctx context.Context, token string) (ca.Issued, error)

	// Revoke revokes what the request names (policy kind "revoke").
	Revoke(ctx context.Context, token string, req ca.RevokeRequest) (ca.RevokeResult, error)
	// Unrevoke lifts the ban of a public key (policy kind "revoke", audited).
	Unrevoke(ctx context.Context, token string, req ca.UnrevokeRequest) (ca.UnrevokeResult, error)
	// RevocationsPage lists a page of what is revoked, per CA key (policy kind "read",
	// audited): at most limit entries after the position after.
	RevocationsPage(ctx context.Context, token string, after ca.RevocationCursor, limit int) (ca.RevocationPage, error)
	// ListCertificates lists a page of the unexpired certificates a query selects, flagged when
	// revoked (policy kind "read", audited).
	ListCertificates(ctx context.Context, token string, q ca.CertQuery) (ca.CertPage, error)
	// UserRevocationStates is the unauthenticated read behind GET /v1/krl: a KRL is public.
	UserRevocationStates(ctx context.Context) ([]ca.RevocationState, error)
	// HostRevocationStates is the unauthenticated read behind GET /v1/krl/host and the
	// @revoked lines of GET /v1/ca/known_hosts: every host CA key's scope, and the compromised
	// host CA keys (ca.Authority.HostRevocationStates).
	HostRevocationStates(ctx context.Context) ([]ca.RevocationState, error)
}
